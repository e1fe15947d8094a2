"""The `predict` step: a model from the MLflow registry -> one prediction per image of a split
-> a CSV written atomically, plus an MLflow run with what a user looks at (accuracy, loss,
confusion matrix, per-class table, misclassified digits), the data and the model as its inputs,
and where it came from. A single process; it never imports itwinai_hpc.backends and never learns
which scheduler runs it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc import atomic
from itwinai_hpc.errors import UserError
from itwinai_hpc.ml.config import InferenceConfig

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
    """Predict `config.split` of the shards in `data` with `model_uri`. A missing model or a
    bad URI is a UserError raised before anything is written."""
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml import registry, tracking

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
    output = output_file(output)
    tracking.configure(tracking_uri)
    resolved, about = registry.resolve_model_uri(model_uri)
    device = inference_device()
    model = registry.load_model(resolved, device)
    run_id = _start_run(config, about)
    try:
        rows, evaluation, text = _predict_rows(model, manifest, config, device)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(output, text)
        _log_run(config, manifest, model_uri, about, rows, evaluation, output, data)
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run("FINISHED")
    accuracy = evaluation.accuracy if rows else None
    return PredictResult(output, rows, accuracy, model_uri, about.get("model_version"), run_id)


def inference_device():
    """This process's GPU (LOCAL_RANK's, else the first) where there is one, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")


def _predict_rows(model, manifest, config: InferenceConfig, device=None):
    """(rows, Evaluation, CSV text). The registered model takes raw uint8 pixels and returns
    probabilities (served.py), so the shards are read raw; the model runs on `device`."""
    import numpy as np
    import torch

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.ml.evaluation import Tally

    loader = ShardedLoader(manifest, config.split, config.batch_size, shuffle=False, rank=0,
                           world_size=1, rank_remainder="keep", raw=True, return_index=True)
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
    if rows:
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
