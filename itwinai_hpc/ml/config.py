"""The train and inference configs (YAML) and their validation. Reads a file; imports no torch.

Every section and key has a default; an unknown key or a wrong type is a UserError naming the
file, the line and the key, with the valid choices.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from itwinai_hpc.errors import UserError
from itwinai_hpc.yamlsrc import load_yaml

# section -> key -> (accepted types, default). A top-level key with types (not a dict) is a scalar.
TRAIN_SCHEMA: dict[str, Any] = {
    "dataset": ((str,), "mnist"),
    "model": ((str,), "mnist-cnn"),
    "trainer": {
        "name": ((str,), "classifier"),
        "epochs": ((int,), 2),
        "batch_size": ((int,), 128),
        "eval_batch_size": ((int,), 1000),
        "optimizer": ((str,), "adam"),
        "lr": ((int, float), 1e-3),
        "lr_schedule": ((str,), "onecycle"),
        "max_lr": ((int, float), 1e-2),
        "seed": ((int,), 42),
        "channels_last": ((bool,), True),
        "checkpoint_every_epochs": ((int,), 1),
        "stop_check_every_steps": ((int,), 10),
    },
    "tracking": {
        "experiment": ((str,), "itwinai-hpc"),
        "log_every_steps": ((int,), 50),
    },
    "registry": {
        "model_name": ((str,), "model"),
        "alias": ((str,), "champion"),
        "select_by": ((str,), "val_accuracy"),
    },
}

INFERENCE_SCHEMA: dict[str, Any] = {
    "dataset": ((str,), "mnist"),
    "model_uri": ((str,), ""),
    "batch_size": ((int,), 1000),
    "split": ((str,), "test"),
    "output": {"format": ((str,), "csv")},
    "tracking": {"experiment": ((str,), "itwinai-hpc-inference")},
}

POSITIVE = {"epochs", "batch_size", "eval_batch_size", "checkpoint_every_epochs",
            "stop_check_every_steps", "log_every_steps"}
CHOICES = {"optimizer": ("adam", "sgd"), "lr_schedule": ("onecycle", "constant"),
           "select_by": ("val_accuracy",), "format": ("csv",),
           "split": ("train", "validation", "test")}


def _defaults(schema: dict) -> dict:
    return {k: (_defaults(v) if isinstance(v, dict) else copy.deepcopy(v[1]))
            for k, v in schema.items()}


def _check(values: Any, schema: dict, path: tuple, doc, out: dict) -> None:
    file, line = (doc.where(path) if doc else (None, None))
    name = ".".join(map(str, path)) or "config"
    if not isinstance(values, dict):
        raise UserError(f"must be a mapping with keys {', '.join(schema)}", file=file, line=line,
                        field=name)
    for key, value in values.items():
        where = path + (key,)
        file, line = doc.where(where) if doc else (None, None)
        field = ".".join(map(str, where))
        if key not in schema:
            raise UserError(f"unknown key {key!r}; valid keys here: {', '.join(schema)}",
                            file=file, line=line, field=field)
        spec = schema[key]
        if isinstance(spec, dict):
            _check(value, spec, where, doc, out[key])
            continue
        types, _ = spec
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            want = " or ".join(t.__name__ for t in types)
            raise UserError(f"must be {want}, got {value!r}", file=file, line=line, field=field)
        if key in POSITIVE and value < 1:
            raise UserError(f"must be >= 1, got {value}", file=file, line=line, field=field)
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"must be one of {', '.join(CHOICES[key])}, got {value!r}",
                            file=file, line=line, field=field)
        out[key] = float(value) if types == (int, float) else value


def make_config(values: dict | None, schema: dict = TRAIN_SCHEMA, *, doc=None) -> dict:
    """Defaults merged with `values`, validated; returns a plain nested dict."""
    out = _defaults(schema)
    if values:
        _check(values, schema, (), doc, out)
    return out


def load_config(path: str | os.PathLike, schema: dict = TRAIN_SCHEMA) -> dict:
    doc = load_yaml(path)
    return make_config(doc.data, schema, doc=doc)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 2}} -> {"trainer.epochs": 2}, for MLflow params."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
