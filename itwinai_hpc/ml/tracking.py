"""The MLflow calls of the ML steps: the store, experiments, runs (with system metrics),
params, metrics, artifacts and the evaluation a user looks at (figures and tables). Only rank 0
calls this module; the model registry lives in registry.py, provenance in provenance.py.

Imports mlflow lazily (1.6-6 s); never imported by the CLI's fast paths or the orchestration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.evaluation import Evaluation


def store_uri(tracking_uri: str | None) -> str:
    """The store's URI: `tracking_uri`, else $MLFLOW_TRACKING_URI, else ./mlruns. A plain path
    becomes a file: URI; the file store is allowed (MLflow 3 hides it behind
    MLFLOW_ALLOW_FILE_STORE), since a folder is this project's default store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if "://" not in uri and not uri.startswith("file:"):
        uri = "file:" + str(Path(uri).resolve())
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # Progress bars of artifact downloads are noise in a job log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


def configure(tracking_uri: str | None) -> str:
    """Point MLflow (tracking and registry) at store_uri(`tracking_uri`) and return it."""
    import mlflow

    uri = store_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing. Two jobs may create it at once: the
    loser finds the winner's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted; restore it "
                            "(mlflow experiments restore) or choose another tracking.experiment",
                            field="tracking.experiment")
        return found.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(experiment: str, *, run_id: str | None = None, run_name: str | None = None,
              tags: dict[str, str] | None = None, system_metrics_every_s: int = 0) -> str:
    """Start a run (or resume `run_id`, so metrics continue in the same run); returns its id.
    With `system_metrics_every_s` > 0, CPU, memory, disk, network (and GPU use and power,
    where nvidia-ml-py finds one) of this node are logged as system/* metrics."""
    import mlflow

    system = system_metrics_every_s > 0
    if system and "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ:
        mlflow.set_system_metrics_sampling_interval(system_metrics_every_s)
    if run_id:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=system)
        for key in ("itwinai_hpc.stopped", "itwinai_hpc.failed"):
            if key in run.data.tags:
                mlflow.delete_tag(key)   # it is running again
    else:
        run = mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name,
                               log_system_metrics=system)
    if tags:
        mlflow.set_tags(tags)
    return run.info.run_id


def end_run(status: str = "FINISHED") -> None:
    import mlflow

    mlflow.end_run(status=status)


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow

    mlflow.log_metrics(metrics, step=step)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    mlflow.set_tags(tags)


def delete_tag(key: str) -> None:
    import mlflow

    run = mlflow.active_run()
    if run is not None and key in mlflow.get_run(run.info.run_id).data.tags:
        mlflow.delete_tag(key)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def log_evaluation(evaluation: Evaluation, split: str, *, class_names: list[str] | None = None,
                   drawn: dict[str, Path] | None = None) -> list[str]:
    """What a user looks at for a split, under evaluation/SPLIT/: the confusion matrix
    (figure and JSON), the per-class table (shown as a table in the UI) and a grid of
    misclassified images. `drawn`: the figures as PNG files already (figure_process), else
    they are drawn here. Returns the artifact paths."""
    import mlflow

    folder = f"evaluation/{split}"
    table = evaluation.per_class()
    if class_names:
        table = {"name": class_names, **table}
    paths = [f"{folder}/confusion_matrix.png", f"{folder}/confusion_matrix.json",
             f"{folder}/per_class.json", f"{folder}/misclassified.png"]
    _log_figures(evaluation, split, "classification", folder, drawn)
    mlflow.log_dict({"rows": "true class", "columns": "predicted class",
                     "matrix": evaluation.confusion.tolist()}, paths[1])
    mlflow.log_table(table, paths[2])
    return paths


def log_regression(evaluation, split: str, *, drawn: dict[str, Path] | None = None
                   ) -> list[str]:
    """A regression's figures under evaluation/SPLIT/: predicted vs true fields with their
    error maps (fields.png), the predicted-vs-true scatter (scatter.png) and the metrics
    (metrics.json). `drawn` as for log_evaluation. Returns the artifact paths."""
    import mlflow

    folder = f"evaluation/{split}"
    paths = [f"{folder}/fields.png", f"{folder}/scatter.png", f"{folder}/metrics.json"]
    _log_figures(evaluation, split, "regression", folder, drawn)
    mlflow.log_dict({"loss": evaluation.loss, "samples": evaluation.num_samples,
                     **evaluation.metrics}, paths[2])
    return paths


def _log_figures(evaluation, split: str, task: str, folder: str,
                 drawn: dict[str, Path] | None) -> None:
    """The split's figures as FOLDER/NAME.png: the files in `drawn`, else drawn now."""
    import mlflow

    if drawn is not None:
        for path in drawn.values():
            mlflow.log_artifact(str(path), artifact_path=folder)
        return
    from itwinai_hpc.ml.figure_process import figures_of

    for name, fig in figures_of(evaluation, split, task).items():
        mlflow.log_figure(fig, f"{folder}/{name}")
