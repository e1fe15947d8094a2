"""The MLflow model registry as the ML steps use it: log and register the served model with its
contract, move the champion alias only to a better version (one writer at a time per store,
whatever process or node it runs on), resolve what `--model` names, and record the model an
inference run used as that run's input.

Rank 0 only. Imports mlflow lazily; knows nothing about training loops or schedulers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from itwinai_hpc.errors import UserError

# Explicit: inferring them costs ~10 s per log_model.
PIP_REQUIREMENTS = ["torch", "numpy"]
MODEL_SCHEMES = ("models:/", "runs:/", "best:")
# flock'ed around each registration: inside a file store's folder, beside a sqlite database.
REGISTRY_LOCK = ".itwinai-hpc-registry.lock"
LOCK_WAIT_S = 600.0
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


def log_and_register(reg: Registration) -> tuple[str, bool]:
    """Log `reg.model` to the active run and register it (register_version). Returns (version,
    became_alias_holder)."""
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
    info = Model.log(artifact_path=None, name="model", flavor=_PortablePytorchFlavor,
                     pytorch_model=reg.model, input_example=reg.input_example,
                     signature=tensor_signature(reg.model, reg.input_example),
                     pip_requirements=PIP_REQUIREMENTS, step=0, metadata=reg.metadata or None,
                     extra_files=reg.extra_files or None,
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
    and description; move `reg.alias` to it when `reg.value` beats the holder's `reg.metric`.
    Returns (version, became_alias_holder).

    All of it runs under the store's registry lock (registry_lock): the tasks of a sweep finish
    together, and without it two of them both read the old holder's metric, both "win", and
    the later write leaves the worse one holding the alias; MLflow's file store also fails to
    create a model, a version number or the alias folder when two processes do it at once."""
    import mlflow
    from mlflow import MlflowClient

    with registry_lock(mlflow.get_registry_uri()):
        version = str(mlflow.register_model(model_uri, reg.name).version)
        client = MlflowClient()
        for key, val in {reg.metric: repr(float(reg.value)), **reg.tags}.items():
            client.set_model_version_tag(reg.name, version, key, val)
        if reg.description:
            client.update_model_version(reg.name, version, description=reg.description)
            if not client.get_registered_model(reg.name).description:
                client.update_registered_model(reg.name, description=reg.description)
        current = champion_metric(reg.name, reg.alias, reg.metric)
        wins = current is None or float(reg.value) > current
        if wins:
            client.set_registered_model_alias(reg.name, reg.alias, version)
    return version, wins


def registry_lock_file(uri: str) -> Path | None:
    """The lock file of the store at `uri`: inside a file store's folder (file: URI or plain
    path), beside a sqlite database file; None for a tracking server (http:, https:,
    databricks...) or an in-memory database, which no file lock can guard."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db; sqlite:// alone is in memory.
        db = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
        return Path(db).parent / REGISTRY_LOCK if db and db != ":memory:" else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)) / REGISTRY_LOCK
    if "://" not in uri and len(parsed.scheme) <= 1:   # a plain path (C: on Windows)
        return Path(uri) / REGISTRY_LOCK
    return None


@contextlib.contextmanager
def registry_lock(uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the registry lock of store `uri` (an exclusive flock, across processes and, on a
    shared file system with working flock, across nodes); yields the lock file, or None where
    there is none: a tracking server (last writer wins there), or a file system without
    flock, which gets a warning on stderr. Waiting longer than `wait_s` is a RuntimeError."""
    path = registry_lock_file(uri)
    if path is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        locked = None
        try:
            f = stack.enter_context(open(path, "a"))
            locked = _flock(f, path, wait_s)
        except OSError as e:   # ENOLCK, ENOSYS, EOPNOTSUPP: e.g. Lustre mounted without flock
            print(f"warning: cannot lock {path} ({e.strerror or e}); registering without the "
                  "lock: tasks finishing at the same moment may leave a worse version holding "
                  "the alias", file=sys.stderr, flush=True)
        try:
            yield locked
        finally:
            if locked is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def registry_read_lock(uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the registry lock shared while reading an alias, so that a registration that is
    moving it (MLflow's file store rewrites the alias file in place) is never read half done.
    Only where the lock file exists and can be opened: a reader of a read-only store, or of
    one no registration has locked yet, reads without it (as MLflow alone would)."""
    path = registry_lock_file(uri)
    try:
        f = open(path, "r") if path is not None else None
    except OSError:
        f = None
    if f is None:
        yield None
        return
    with f:
        try:
            locked = _flock(f, path, wait_s, fcntl.LOCK_SH)
        except OSError:        # no flock on this file system: read as MLflow alone would
            locked = None
        try:
            yield locked
        finally:
            if locked is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _flock(f, path: Path, wait_s: float, mode: int = fcntl.LOCK_EX) -> Path:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return path
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"waited {wait_s:.0f} s for the registry lock {path}; the "
                                   "process holding it is stuck (a hung file system?)") from None
            time.sleep(0.05)


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
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    store = mlflow.get_tracking_uri()
    if not uri.startswith(MODEL_SCHEMES):
        raise UserError(f"{uri!r} is not a model URI; use models:/NAME@ALIAS, models:/NAME/"
                        "VERSION, runs:/RUN_ID/model or best:EXPERIMENT:METRIC", field="--model")
    try:
        if uri.startswith("best:"):
            return _best_run_model(client, uri, store)
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                with registry_read_lock(store):     # not while a registration moves it
                    mv = client.get_model_version_by_alias(name, alias)
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
        except MlflowException:
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

    graph = mlflow.pytorch.load_model(uri)
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
