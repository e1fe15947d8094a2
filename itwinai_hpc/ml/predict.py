"""The `predict` step: a model from the MLflow registry -> one prediction per sample of a split,
written atomically, plus an MLflow run with what a user looks at, the data and the model as its
inputs, and where it came from. MNIST pixels: predictions.csv `index,predicted,probability,
label`, accuracy, loss, confusion matrix, per-class table, misclassified digits. A classifier on
write_shards' arrays (predict_classes.py): the same columns in sample order (`label`, accuracy
and the tables only where the split has targets). A regression (predict_arrays.py):
DIR/predictions.h5, and rmse, mae, r2 and field figures against targets. A single process; it
never imports itwinai_hpc.backends and never learns which scheduler runs it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc.core import atomic, startup
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.config import InferenceConfig
from itwinai_hpc.ml.predict_arrays import PredictionsNotWritten

__all__ = ["PredictionsNotWritten", "PredictResult", "predict"]

COLUMNS = ("index", "predicted", "probability", "label")
DEFAULT_FILE = "predictions.csv"
MISCLASSIFIED_SHOWN = 32


@dataclass
class PredictResult:
    output: Path
    rows: int
    accuracy: float | None
    model_uri: str
    model_version: str | None
    run_id: str


def output_file(location: str | os.PathLike) -> Path:
    """`--output`/`--predictions-location`: a file, or a folder (one that exists, or a path
    ending in '/') that gets predictions.csv."""
    text = str(location)
    path = Path(location)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / DEFAULT_FILE
    return path


def predict(config: InferenceConfig, data: str, model_uri: str, output: str | os.PathLike, *,
            tracking_uri: str | None = None) -> PredictResult:
    """Predict `config.split` of the shards in `data` with `model_uri`. A missing model, a bad
    URI, a store MLflow cannot read the model from, shards the model does not take (its
    signature) and a manifest that does not describe its shards are UserErrors raised before
    anything is written or an MLflow run starts; a failed write of the predictions (a full
    disk) is PredictionsNotWritten, with no part of the file left."""
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml import registry, tracking
    from itwinai_hpc.ml.store_reading import reading_model, served_shapes

    if not model_uri:
        raise UserError("no model given: pass --model URI or set model_uri in the config",
                        field="--model")
    manifest = read_manifest(data)
    if manifest.dataset != config.dataset:
        raise UserError(f"the shards in {data} hold data set {manifest.dataset!r}, the config "
                        f"says dataset: {config.dataset!r}", field="dataset")
    if config.split not in manifest.splits:
        raise UserError(f"no split {config.split!r} in {manifest.path}; it has "
                        f"{', '.join(manifest.splits)}", field="split")
    tracking.configure(tracking_uri)
    resolved, about = registry.resolve_model_uri(model_uri)
    with reading_model(model_uri):
        shapes = served_shapes(resolved)
        task = served_task(resolved)
    if task not in ("classification", "regression"):
        raise UserError(f"model {model_uri!r} records no task predict knows ({task or 'none'}),"
                        " so its outputs cannot be read: register it with job.register(..., "
                        "task='classification') or task='regression', or load it with "
                        "mlflow.pyfunc.load_model in a predict script of your own",
                        field="--model")
    if task == "regression" or manifest.arrays:   # shards of write_shards: stored arrays in
        return _predict_arrays(config, manifest, model_uri, resolved, about, shapes, task,
                               output, data)
    output = output_file(output)
    check_model_fits(model_uri, about, manifest, *shapes)
    loader = _loader(manifest, config)    # reads and checks the split before any MLflow run
    from itwinai_hpc.ml.served import graph_on  # torch: only once the data is known good

    device = inference_device()
    with reading_model(model_uri):
        model = registry.load_model(resolved)
    model = graph_on(model, device)
    run_id = _start_run(config, about)
    startup.release_collector()   # torch, MLflow and the model are loaded (core/startup.py)
    try:
        rows, evaluation, text = _predict_rows(model, manifest, config, device, loader)
        _write(output, text)
        _log_run(config, manifest, model_uri, about, rows, evaluation, output, data)
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run("FINISHED")
    accuracy = evaluation.accuracy if rows else None
    return PredictResult(output, rows, accuracy, model_uri, about.get("model_version"), run_id)


def served_task(uri: str) -> str | None:
    """The `task` in a registered model's MLmodel metadata (served_arrays.contract,
    job.register(task=)); classification for the MNIST pixel classifier (uint8 pixels in),
    whose contract predates the key; None where neither says."""
    import mlflow.models
    import numpy as np

    info = mlflow.models.get_model_info(uri)
    task = (info.metadata or {}).get("task")
    inputs = info.signature.inputs if info.signature is not None else None
    if task is None and inputs is not None and inputs.is_tensor_spec() \
            and len(inputs.inputs) == 1 and inputs.inputs[0].type == np.dtype("uint8"):
        return "classification"
    return task


def _predict_arrays(config, manifest, model_uri, resolved, about, shapes, task, output, data
                    ) -> PredictResult:
    """A model on write_shards' arrays (stored dtype and shape in). A regression's outputs ->
    DIR/predictions.h5 (predict_arrays.py), its metrics and figures against the split's
    targets where it has them; a classifier's class and probability per sample ->
    predictions.csv (predict_classes.py), accuracy and the confusion matrix where it has them."""
    from itwinai_hpc.ml import predict_arrays as A
    from itwinai_hpc.ml import predict_classes as C
    from itwinai_hpc.ml import registry, tracking
    from itwinai_hpc.ml.store_reading import reading_model

    classes = task == "classification"
    with reading_model(model_uri):
        dtype = A.served_input_dtype(resolved)
    if classes:
        path = C.output_file(output)
        C.check_model_fits(model_uri, manifest, config.split, shapes[0], shapes[1], dtype)
        loader = C.loader(manifest, config)   # reads and checks the split before any run
    else:
        path = A.output_file(output)
        A.check_model_fits(model_uri, manifest, shapes[0], dtype)
    from itwinai_hpc.ml.served import graph_on

    device = inference_device()
    with reading_model(model_uri):
        model = graph_on(registry.load_model(resolved), device)
    run_id = _start_run(config, about)
    startup.release_collector()
    evaluation = None
    try:
        if classes:
            rows, evaluation, text = C.predict_rows(model, manifest, config, device, loader)
            _write(path, text)
            _log_run(config, manifest, model_uri, about, rows, evaluation, path, data)
        else:
            predictions, regression = A.predict_rows(model, manifest, config, device)
            rows = len(predictions)
            A.write_h5(path, predictions, {"model_uri": model_uri, "split": config.split,
                                           **{f"model.{k}": v for k, v in about.items()}})
            _log_run(config, manifest, model_uri, about, rows, None, path, data)
            if regression is not None:
                tracking.log_metrics({**regression.metrics, "loss": regression.loss}, 0)
                tracking.log_regression(regression, config.split)
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run("FINISHED")
    accuracy = evaluation.accuracy if evaluation is not None and rows else None
    return PredictResult(path, rows, accuracy, model_uri, about.get("model_version"), run_id)


def _write(output: Path, text: str) -> None:
    existed = output.is_file()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(output, text)
    except OSError as e:
        kept = "the predictions file there is unchanged" if existed else "nothing was written"
        raise PredictionsNotWritten(
            f"cannot write the predictions to {output} ({e.strerror or e}); {kept}. Free space "
            "(or quota) there, or choose another --output, and rerun") from None


def check_model_fits(model_uri: str, about: dict[str, str], manifest, input_shape=None,
                     output_shape=None) -> None:
    """The model's signature (input (-1, H, W) or (-1, 1, H, W); output (-1, classes)) against
    the shards' image shape and class count: a UserError naming both instead of a torch.export
    guard failing (or, for the class count, a silently wrong confusion matrix)."""
    from itwinai_hpc.data.manifest_checks import dims

    version = f" (version {about['model_version']})" if about.get("model_version") else ""
    where, images = str(manifest.path), list(manifest.image_shape)
    if input_shape is not None and len(input_shape) >= 2:
        takes = list(input_shape[1:])
        if len(takes) == len(images) + 1 and takes[0] == 1:
            takes = takes[1:]   # a channel axis of 1
        if len(takes) != len(images) or any(t not in (-1, i) for t, i in zip(takes, images)):
            raise UserError(f"the shards hold {dims(images)} images, model {model_uri!r}"
                            f"{version} takes {dims(takes)} images (its signature); predict "
                            "with shards preprocessed like its training data, or with a model "
                            f"trained on {dims(images)} images", file=where, field="image_shape")
    if output_shape is not None and len(output_shape) == 2 \
            and output_shape[1] not in (-1, manifest.num_classes):
        raise UserError(f"the shards have {manifest.num_classes} classes, model {model_uri!r}"
                        f"{version} predicts {output_shape[1]} (its signature); predict with "
                        "shards of the data set it was trained on, or with a model trained on "
                        f"{manifest.num_classes} classes", file=where, field="num_classes")


def inference_device():
    """This process's GPU (LOCAL_RANK's, else the first) where there is one, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")


def _loader(manifest, config: InferenceConfig):
    """The split, raw (the registered model takes uint8 pixels), every row once, with indices;
    in memory mode read and checked against the manifest here."""
    from itwinai_hpc.data.dataset import ShardedLoader

    return ShardedLoader(manifest, config.split, config.batch_size, shuffle=False, rank=0,
                         world_size=1, rank_remainder="keep", raw=True, return_index=True)


def _predict_rows(model, manifest, config: InferenceConfig, device=None, loader=None):
    """(rows, Evaluation, CSV text). The registered model takes raw uint8 pixels and returns
    probabilities (served.py), so the shards are read raw (`loader`, default _loader's); the
    model runs on `device`."""
    import numpy as np
    import torch

    from itwinai_hpc.ml.evaluation import Tally

    loader = loader if loader is not None else _loader(manifest, config)
    tally = Tally(manifest.num_classes, keep_examples=MISCLASSIFIED_SHOWN)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = 0
    with torch.inference_mode():
        for pixels, labels, index in loader:
            probs = model(pixels.to(device) if device is not None else pixels).float().cpu()
            p, pred = probs.max(dim=1)
            of_label = probs.gather(1, labels[:, None])[:, 0].clamp_min(1e-12)
            tally.add(labels.numpy(), pred.numpy(), float(-torch.log(of_label).sum()),
                      probability=p.numpy(), pixels=np.asarray(pixels), index=index.numpy())
            rows += len(labels)
            writer.writerows(zip(index.tolist(), pred.tolist(),
                                 (f"{x:.6f}" for x in p.tolist()), labels.tolist()))
    return rows, tally.result(), buf.getvalue()


def _start_run(config: InferenceConfig, about: dict[str, str]) -> str:
    from itwinai_hpc.ml import tracking
    from itwinai_hpc.ml.provenance import Provenance

    origin = Provenance.from_env()
    tags = {**origin.tags(_slurm_env()), **{f"model.{k}": v for k, v in about.items() if v}}
    tags.setdefault("itwinai_hpc.step", "predict")
    run_id = tracking.start_run(config.tracking.experiment, run_name=origin.run_name(), tags=tags,
                                system_metrics_every_s=config.tracking.system_metrics_every_s)
    for key in origin.stale_tags():
        tracking.delete_tag(key)
    return run_id


def _log_run(config, manifest, model_uri, about, rows, evaluation, output: Path, data) -> None:
    from itwinai_hpc.ml import registry, tracking
    from itwinai_hpc.ml.provenance import Provenance, log_run_scripts, log_shards

    tracking.log_params({"model_uri": model_uri, "data": os.path.abspath(data),
                         "split": config.split, "batch_size": config.batch_size,
                         "num_samples": rows, **{f"model.{k}": v for k, v in about.items()}})
    if rows and evaluation is not None:
        tracking.log_metrics({"accuracy": evaluation.accuracy, "loss": evaluation.loss}, 0)
        tracking.log_evaluation(evaluation, config.split)
    log_shards(manifest, {config.split: "inference"})
    registry.log_model_input(about.get("model_id", ""))
    tracking.log_artifact(output)
    run_dir = Provenance.from_env().run_dir
    if run_dir and run_dir.is_dir():
        log_run_scripts(run_dir)


def _slurm_env() -> dict[str, str]:
    from itwinai_hpc.ml.distributed import SLURM_KEYS

    return {k: os.environ[k] for k in SLURM_KEYS if k in os.environ}
