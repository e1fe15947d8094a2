"""Reading a model back from an MLflow store, for `predict`: its signature's shapes, an alias
that names a deleted version, and whatever MLflow raises on a store it cannot read back (a
meta.yaml or MLmodel cut short or garbled, a model's files deleted, weights cut short) as one
UserError naming the model, the store and, where known, the file and line.

Imports mlflow lazily; registry.py resolves and loads through these.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from itwinai_hpc.core.errors import UserError


@contextlib.contextmanager
def reading_model(uri: str) -> Iterator[None]:
    """Around MLflow reading model `uri` (as the user named it) from its store: whatever it
    raises because the store is damaged or incomplete becomes one UserError (store_damaged)."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:   # MLflow could not read its own store: one line, not a traceback
        import mlflow

        raise store_damaged(uri, mlflow.get_tracking_uri(), e) from None


def check_alias_target(client, uri: str, name: str, alias: str) -> None:
    """After looking `alias` up failed: a UserError when it still names a version that is gone
    (deleted from a file store by hand, or by an older MLflow that left the alias behind)."""
    try:
        target = client.get_registered_model(name).aliases.get(alias)
    except Exception:
        return   # no such model, or no such alias: the caller's error says so
    if target is None:
        return
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except Exception:
        versions = []
    exists = (f"existing versions: {', '.join(map(str, versions))}" if versions
              else "the model has no version left")
    raise UserError(f"{uri!r}: alias {alias!r} of model {name!r} points to version {target}, "
                    f"which no longer exists ({exists}); name a version (models:/{name}/N) or "
                    "move the alias to one (MlflowClient().set_registered_model_alias)",
                    field="--model")


def store_damaged(uri: str, store: str, e: BaseException) -> UserError:
    """The one-line error for a store MLflow cannot read back (a meta.yaml or MLmodel that is
    no longer YAML or lacks its keys, weights cut short, a model's files deleted): which model,
    which store, what MLflow found, and the file and line where MLflow says."""
    import yaml
    from mlflow.exceptions import MlflowException

    file = line = None
    what = next((x for x in str(e).splitlines() if x.strip()), "") or type(e).__name__
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
        file, line, what = mark.name, mark.line + 1, e.problem or what
    elif isinstance(e, yaml.reader.ReaderError):
        file, what = e.name, e.reason
    else:
        file = _file_being_read(e)
    detail = f"{type(e).__name__}: {what}"
    if file and isinstance(e, KeyError) and e.args:
        detail = f"this file lacks the key {e.args[0]!r}"
    elif file and os.path.isfile(file) and not os.path.getsize(file):
        detail = "this file is empty"
    missing = isinstance(e, FileNotFoundError) or (
        isinstance(e, MlflowException) and (
            e.error_code == "RESOURCE_DOES_NOT_EXIST" or "No such artifact" in e.message))
    if missing:
        return UserError(f"the files of model {uri!r} are missing from the MLflow store {store} "
                         f"({what}): deleted or moved; register the model again (rerun "
                         "training) or name another version", field="--model")
    return UserError(f"cannot read model {uri!r}: the MLflow store {store} is damaged "
                     f"({detail}); restore the store from a backup, or "
                     "register the model again (rerun training) in a new store",
                     file=file, line=line, field="--model")


def _file_being_read(e: BaseException) -> str | None:
    """The metadata file (meta.yaml) a file store was reading when `e` was raised: the folder
    that the innermost MLflow frame holding one was working on. Only for the message."""
    frames, tb = [], e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if f"{os.sep}mlflow{os.sep}" not in frame.f_code.co_filename:
            continue
        for value in list(frame.f_locals.values()):
            if isinstance(value, str) and value.startswith(os.sep):
                meta = os.path.join(value, "meta.yaml")
                if os.path.isfile(meta):
                    return meta
    return None


def served_shapes(uri: str) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The input and output tensor shapes of a (resolved) model's signature (-1: any size),
    None where it has no tensor signature. Reads only its MLmodel file."""
    import mlflow.models

    signature = mlflow.models.get_model_info(uri).signature

    def shape(schema):
        if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1:
            return None
        return tuple(int(d) for d in schema.inputs[0].shape)

    if signature is None:
        return None, None
    return shape(signature.inputs), shape(signature.outputs)
