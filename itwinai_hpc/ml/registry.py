"""The MLflow model registry as the ML steps use it: log and register the served model with its
contract, move the champion alias only to a better version (one writer at a time per store,
whatever process or node it runs on), resolve what `--model` names, and record the model an
inference run used as that run's input.

Rank 0 only. Imports mlflow lazily; knows nothing about training loops or schedulers.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.model_requirements import PIP_REQUIREMENTS, requirements_mapped
from itwinai_hpc.ml.registry_lock import registry_lock, registry_read_lock
from itwinai_hpc.ml.store_reading import check_alias_target, reading_model

MODEL_SCHEMES = ("models:/", "runs:/", "best:")
# flock'ed around each registration: inside a file store's folder, beside a sqlite database.
# Where mlflow.pyfunc runs the model: the pt2 export holds CPU weights, which MLflow refuses to
# load onto a GPU, and by default its pyfunc loader picks the GPU wherever CUDA is present.
PYFUNC_DEVICE = "cpu"


def _save_portable(path, mlflow_model, **kwargs):
    """mlflow.pytorch.save_model, then the pyfunc flavor's device pinned to PYFUNC_DEVICE, so
    that `mlflow.pyfunc.load_model`, `mlflow models serve` and MLflow's own check of the input
    example at log time load the model on GPU nodes as on CPU ones."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    pyfunc = mlflow_model.flavors.get("python_function")
    if pyfunc is not None:
        pyfunc.setdefault("config", {})["device"] = PYFUNC_DEVICE
        mlflow_model.save(os.path.join(path, "MLmodel"))


class _PortablePytorchFlavor:
    """The pytorch flavor for mlflow.models.Model.log, saving through _save_portable."""

    __name__ = "mlflow.pytorch"
    save_model = staticmethod(_save_portable)


@dataclass
class Registration:
    """What to register: the model, an input example (batch >= 2) and what to write on it."""

    model: object                    # the torch module to export (eval mode, CPU)
    input_example: object            # numpy array: the signature's input dtype and shape
    name: str
    alias: str
    metric: str
    value: float
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)     # MLmodel metadata
    description: str = ""                                      # the version's page
    extra_files: list[str] = field(default_factory=list)
    mode: str = "max"                # which way `metric` is better: max or min


def better(value: float, current: float | None, mode: str = "max") -> bool:
    """Whether `value` beats the alias holder's `current` by `mode` (max: higher is better,
    min: lower is): strictly (a tie keeps the holder); any finite value beats none or a
    non-finite one."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if current is None or not math.isfinite(current):
        return True
    return value > current if mode == "max" else value < current


def check_value(reg: Registration) -> float:
    """`reg.value` as a float; a ValueError when it is not a finite number (NaN, inf, None): a
    diverged model must never become a version, let alone hold the alias."""
    try:
        value = float(reg.value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"refusing to register {reg.name!r}: its {reg.metric} is "
                         f"{reg.value!r}, not a finite number")
    return value


def log_and_register(reg: Registration) -> tuple[str, bool]:
    """Log `reg.model` to the active run and register it (register_version). Returns (version,
    became_alias_holder). A non-finite `reg.value` is refused before anything is logged."""
    check_value(reg)
    return register_version(reg, log_served_model(reg))


def log_served_model(reg: Registration) -> str:
    """Log `reg.model` (pt2 format, pyfunc pinned to the CPU) to the active run; returns its
    model URI.

    The model is logged at step 0, where the trainer logs no metrics: MLflow 3 copies a run's
    metrics of the model's step into the history again (with the model id, which the file store
    does not return), and per-epoch metrics must appear once per epoch."""
    import mlflow.pytorch.pickle_module
    from mlflow.models import Model

    # What mlflow.pytorch.log_model does, through the flavor that pins pyfunc to the CPU.
    with requirements_mapped():
        info = Model.log(artifact_path=None, name="model", flavor=_PortablePytorchFlavor,
                         pytorch_model=reg.model, input_example=reg.input_example,
                         signature=tensor_signature(reg.model, reg.input_example),
                         pip_requirements=PIP_REQUIREMENTS, step=0,
                         metadata=reg.metadata or None, extra_files=reg.extra_files or None,
                         pickle_module=mlflow.pytorch.pickle_module, serialization_format="pt2")
    return info.model_uri



def tensor_signature(model, example):
    """The model's signature, from one forward pass of `example`: one tensor in, one out, the
    batch dimension free (-1). MLflow would infer the same from the input example, but its
    inference imports scipy, which mlflow-skinny does not install; without it the signature
    was lost and the pt2 export refused."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(example.dtype), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(out.dtype), (-1, *out.shape[1:]))]))


def register_version(reg: Registration, model_uri: str) -> tuple[str, bool]:
    """Register `model_uri` (a logged model) as a new version of `reg.name` with `reg`'s tags
    and description; move `reg.alias` to it when `reg.value` beats the holder's `reg.metric`
    by `reg.mode` (`better`: max, higher is better; min, lower is).
    Returns (version, became_alias_holder). A non-finite `reg.value` is refused (check_value);
    a holder whose metric is not finite (registered before that check) loses the alias.

    All of it runs under the store's registry lock (registry_lock): the tasks of a sweep finish
    together, and without it two of them both read the old holder's metric, both "win", and
    the later write leaves the worse one holding the alias; MLflow's file store also fails to
    create a model, a version number or the alias folder when two processes do it at once."""
    import mlflow
    from mlflow import MlflowClient

    value = check_value(reg)
    with registry_lock(mlflow.get_registry_uri()):
        version = str(mlflow.register_model(model_uri, reg.name).version)
        client = MlflowClient()
        for key, val in {reg.metric: repr(value), **reg.tags}.items():
            client.set_model_version_tag(reg.name, version, key, val)
        if reg.description:
            client.update_model_version(reg.name, version, description=reg.description)
            if not client.get_registered_model(reg.name).description:
                client.update_registered_model(reg.name, description=reg.description)
        current = champion_metric(reg.name, reg.alias, reg.metric)
        wins = better(value, current, reg.mode)
        if wins:
            client.set_registered_model_alias(reg.name, reg.alias, version)
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
    """Check that `uri` names a model that exists, and return (loadable uri, what it is:
    model_name, model_version, run_id, model_id where known): models:/NAME@ALIAS,
    models:/NAME/VERSION, runs:/RUN_ID/PATH, or best:EXPERIMENT:METRIC (the run with the
    highest METRIC in EXPERIMENT that logged a model)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    store = mlflow.get_tracking_uri()
    if not uri.startswith(MODEL_SCHEMES):
        raise UserError(f"{uri!r} is not a model URI; use models:/NAME@ALIAS, models:/NAME/"
                        "VERSION, runs:/RUN_ID/model or best:EXPERIMENT:METRIC", field="--model")
    with reading_model(uri):
        return _resolve(client, uri, store)


def _resolve(client, uri: str, store: str) -> tuple[str, dict[str, str]]:
    from mlflow.exceptions import MlflowException

    try:
        if uri.startswith("best:"):
            return _best_run_model(client, uri, store)
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                with registry_read_lock(store):     # not while a registration moves it
                    try:
                        mv = client.get_model_version_by_alias(name, alias)
                    except MlflowException:
                        check_alias_target(client, uri, name, alias)
                        raise
                # the version the alias named now: loading by alias again could find another
                uri = f"models:/{mv.name}/{mv.version}"
            elif "/" in rest and rest.rsplit("/", 1)[1].isdigit():
                name, version = rest.rsplit("/", 1)
                mv = client.get_model_version(name, version)
            else:
                raise UserError(f"{uri!r}: name a version or an alias, e.g. models:/{rest}/1 or "
                                f"models:/{rest}@champion", field="--model")
            return uri, {"model_name": mv.name, "model_version": str(mv.version),
                         "run_id": mv.run_id or "", "model_id": mv.model_id or ""}
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        run = client.get_run(run_id)
        outputs = run.outputs.model_outputs if run.outputs else []
        return uri, {"run_id": run_id, "model_id": outputs[-1].model_id if outputs else ""}
    except MlflowException as e:
        names = []
        try:
            names = [m.name for m in client.search_registered_models()]
        except Exception:   # a damaged store: the first error is the one to report
            pass
        known = f"; registered models: {', '.join(names)}" if names else "; the registry is empty"
        first = str(e.message if hasattr(e, "message") else e).splitlines()[0]
        raise UserError(f"cannot find model {uri!r} in {store} ({first}){known}",
                        field="--model") from None


def _best_run_model(client, uri: str, store: str) -> tuple[str, dict[str, str]]:
    import mlflow

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
            return f"models:/{model_id}", {"run_id": run.info.run_id, "model_id": model_id,
                                           metric: str(run.data.metrics[metric])}
    raise UserError(f"{uri!r}: no run in experiment {experiment!r} has metric {metric!r} and "
                    "a logged model", field="--model")


def load_model(uri: str, device=None):
    """The served model behind a (resolved) model URI, as a callable torch module on `device`
    (default CPU): the registered torch.export graph, moved there (served.graph_on)."""
    import mlflow.pytorch

    from itwinai_hpc.ml.served import graph_on

    # A damaged pt2 file: torch.export logs the error with its traceback as a warning, then
    # tries the legacy format, whose error is the one raised (reading_model turns it into one
    # line); its warning would be a traceback in the job's log for nothing.
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        graph = mlflow.pytorch.load_model(uri)
    finally:
        quiet.setLevel(level)
    return graph if device is None else graph_on(graph, device)


def log_model_input(model_id: str) -> None:
    """Record on the active run that it used model `model_id` (its page then lists this run).
    Through the client: MLflow's fluent log_inputs refuses models outside Databricks, its
    stores do not."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput

    if model_id:
        MlflowClient().log_inputs(mlflow.active_run().info.run_id,
                                  models=[LoggedModelInput(model_id)])
