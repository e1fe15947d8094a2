"""All MLflow calls of the ML steps: experiments, runs, metrics, artifacts, the model registry
(versions and the champion alias) and loading registered models. Only rank 0 calls this module.

Imports mlflow lazily (1.6-6 s); never imported by the CLI's fast paths or the orchestration.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from itwinai_hpc.errors import UserError

PIP_REQUIREMENTS = ["torch", "numpy"]   # explicit: inferring them costs ~10 s per log_model
RUN_SCRIPT_PATTERNS = ("*.sbatch", "*.sh", "workflow.yml")
MODEL_SCHEMES = ("models:/", "runs:/", "best:")


def configure(tracking_uri: str | None) -> str:
    """Point MLflow at `tracking_uri` (default: $MLFLOW_TRACKING_URI, else ./mlruns) and return
    it. A plain path becomes a file: URI; the file store is allowed (MLflow 3 hides it behind
    MLFLOW_ALLOW_FILE_STORE), since a folder is this project's default store."""
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if "://" not in uri and not uri.startswith("file:"):
        uri = "file:" + str(Path(uri).resolve())
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
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
              tags: dict[str, str] | None = None) -> str:
    """Start a run (or resume `run_id`, so metrics continue in the same run); returns its id."""
    import mlflow

    if run_id:
        run = mlflow.start_run(run_id=run_id)
        if "itwinai_hpc.stopped" in run.data.tags:
            mlflow.delete_tag("itwinai_hpc.stopped")   # it is running again
    else:
        run = mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name)
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


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_run_scripts(run_dir: str | os.PathLike) -> list[str]:
    """The rendered run folder's scripts (what actually ran) as artifacts under run_scripts/."""
    import mlflow

    names = []
    for pattern in RUN_SCRIPT_PATTERNS:
        for path in sorted(glob.glob(os.path.join(run_dir, pattern))):
            mlflow.log_artifact(path, artifact_path="run_scripts")
            names.append(os.path.basename(path))
    return names


def log_and_register(model, input_example, *, name: str, alias: str, metric: str,
                     value: float, tags: dict[str, str] | None = None
                     ) -> tuple[str, bool]:
    """Log `model` (eval mode, pt2 format) to the active run and register it as a new version of
    `name`; move `alias` to it when `value` of `metric` beats the current holder's (higher is
    better; a tie keeps the current one). Returns (version, became_alias_holder).

    The model is logged at step 0, where the trainer logs no metrics: MLflow 3 copies a run's
    metrics of the model's step into the history again (with the model id, which the file store
    does not return), and per-epoch metrics must appear once per epoch."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    info = mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                    pip_requirements=PIP_REQUIREMENTS, step=0)
    version = str(mlflow.register_model(info.model_uri, name).version)
    client = MlflowClient()
    for key, val in {metric: repr(float(value)), **(tags or {})}.items():
        client.set_model_version_tag(name, version, key, val)
    current = champion_metric(name, alias, metric)
    wins = current is None or float(value) > current
    if wins:
        client.set_registered_model_alias(name, alias, version)
    return version, wins


def champion_metric(name: str, alias: str, metric: str) -> float | None:
    """`metric` of the version holding `alias`: its version tag, else its run's metric; None
    when no version holds the alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    if metric in mv.tags:
        return float(mv.tags[metric])
    if mv.run_id:
        return client.get_run(mv.run_id).data.metrics.get(metric)
    return None


def resolve_model_uri(uri: str) -> tuple[str, dict[str, str]]:
    """Check that `uri` names a model that exists, and return (loadable uri, what it is):
    models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, or best:EXPERIMENT:METRIC
    (the run with the highest METRIC in EXPERIMENT that logged a model)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    store = mlflow.get_tracking_uri()
    if not uri.startswith(MODEL_SCHEMES):
        raise UserError(f"{uri!r} is not a model URI; use models:/NAME@ALIAS, models:/NAME/"
                        "VERSION, runs:/RUN_ID/model or best:EXPERIMENT:METRIC", field="--model")
    try:
        if uri.startswith("best:"):
            experiment, _, metric = uri[len("best:"):].rpartition(":")
            found = mlflow.get_experiment_by_name(experiment) if experiment else None
            if found is None or not metric:
                raise UserError(f"{uri!r}: no experiment {experiment!r} in {store}; "
                                "expected best:EXPERIMENT:METRIC", field="--model")
            runs = client.search_runs([found.experiment_id], f"metrics.{metric} > -1e308",
                                      order_by=[f"metrics.{metric} DESC"], max_results=50)
            for run in runs:
                if run.outputs and run.outputs.model_outputs:
                    model_id = run.outputs.model_outputs[-1].model_id
                    return f"models:/{model_id}", {"run_id": run.info.run_id, metric:
                                                   str(run.data.metrics[metric])}
            raise UserError(f"{uri!r}: no run in experiment {experiment!r} has metric "
                            f"{metric!r} and a logged model", field="--model")
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            elif "/" in rest and rest.rsplit("/", 1)[1].isdigit():
                name, version = rest.rsplit("/", 1)
                mv = client.get_model_version(name, version)
            else:
                raise UserError(f"{uri!r}: name a version or an alias, e.g. models:/{rest}/1 or "
                                f"models:/{rest}@champion", field="--model")
            return uri, {"model_name": mv.name, "model_version": str(mv.version),
                         "run_id": mv.run_id or ""}
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        client.get_run(run_id)
        return uri, {"run_id": run_id}
    except MlflowException as e:
        names = []
        try:
            names = [m.name for m in client.search_registered_models()]
        except MlflowException:
            pass
        known = f"; registered models: {', '.join(names)}" if names else "; the registry is empty"
        first = str(e.message if hasattr(e, "message") else e).splitlines()[0]
        raise UserError(f"cannot find model {uri!r} in {store} ({first}){known}",
                        field="--model") from None


def load_model(uri: str):
    """The torch module behind a (resolved) model URI."""
    import mlflow.pytorch

    return mlflow.pytorch.load_model(uri, map_location="cpu")
