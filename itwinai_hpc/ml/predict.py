"""The `predict` step: a model from the MLflow registry -> one prediction per image of a split
-> a CSV written atomically + accuracy and the file logged to MLflow. A single process; it never
imports itwinai_hpc.backends and never learns which scheduler runs it."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc.errors import UserError

COLUMNS = ("index", "predicted", "probability", "label")


@dataclass
class PredictResult:
    output: Path
    rows: int
    accuracy: float | None
    model_uri: str
    model_version: str | None
    run_id: str


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def predict(config: dict, data: str, model_uri: str, output: str | os.PathLike, *,
            tracking_uri: str | None = None) -> PredictResult:
    """Predict `config['split']` of the shards in `data` with `model_uri`. A missing model or a
    bad URI is a UserError raised before anything is written."""
    import torch

    from itwinai_hpc import tracking
    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import read_manifest

    if not model_uri:
        raise UserError("no model given: pass --model URI or set model_uri in the config",
                        field="--model")
    manifest = read_manifest(data)
    if manifest.dataset != config["dataset"]:
        raise UserError(f"the shards in {data} hold data set {manifest.dataset!r}, the config "
                        f"says dataset: {config['dataset']!r}", field="dataset")
    if config["split"] not in manifest.splits:
        raise UserError(f"no split {config['split']!r} in {manifest.path}; it has "
                        f"{', '.join(manifest.splits)}", field="split")
    tracking.configure(tracking_uri)
    resolved, about = tracking.resolve_model_uri(model_uri)
    model = tracking.load_model(resolved)
    loader = ShardedLoader(manifest, config["split"], config["batch_size"], shuffle=False,
                           rank=0, world_size=1, rank_remainder="keep", return_index=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    correct = rows = 0
    with torch.inference_mode():
        for images, labels, index in loader:
            probs = torch.softmax(model(images).float(), dim=1)
            p, pred = probs.max(dim=1)
            correct += int((pred == labels).sum())
            rows += len(labels)
            writer.writerows(zip(index.tolist(), pred.tolist(),
                                 (f"{x:.6f}" for x in p.tolist()), labels.tolist()))
    output = Path(output)
    write_atomic(output, buf.getvalue())
    accuracy = correct / rows if rows else None

    experiment = config["tracking"]["experiment"]
    run_id = tracking.start_run(experiment, run_name=os.environ.get("ITWINAI_HPC_RUN_ID"),
                                tags={"itwinai_hpc.step": os.environ.get("ITWINAI_HPC_STEP",
                                                                         "predict"),
                                      **{f"model.{k}": v for k, v in about.items()}})
    try:
        tracking.log_params({"model_uri": model_uri, "data": os.path.abspath(data),
                             "split": config["split"], "batch_size": config["batch_size"],
                             "num_samples": rows, **{f"model.{k}": v for k, v in about.items()}})
        if accuracy is not None:
            tracking.log_metrics({"accuracy": accuracy}, 0)
        tracking.log_artifact(output)
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run("FINISHED")
    return PredictResult(output, rows, accuracy, model_uri, about.get("model_version"), run_id)
