"""Code of the use case's own, named in the train config by import path `package.module:name`:
the model factory (`model:` with `model_args:`), a loss, a metric. Resolved with importlib, as
Hydra's `_target_` and Lightning CLI's `class_path` do; the use case puts its folder on
PYTHONPATH (a workflow step's `env: {PYTHONPATH: "${workflow_dir}"}`).

Every failure is one UserError at the config's key (file, line, field), raised before any
training starts or a GPU is touched: a module that does not import (with the folders searched),
a missing attribute, a callable that is not callable, a model factory whose result is not an
`nn.Module` or that rejects `model_args`.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable

from itwinai_hpc.core.errors import UserError


def is_import_path(spec: str) -> bool:
    """`pkg.mod:name` (a colon, a dotted module before it, an attribute after it)."""
    module, sep, attr = spec.partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in module.split(".")) \
        and all(p.isidentifier() for p in attr.split("."))


def _searched() -> str:
    import os

    pp = os.environ.get("PYTHONPATH", "")
    paths = [p or "." for p in sys.path]
    return (f"PYTHONPATH={pp!r}; sys.path searched: {', '.join(paths[:8])}"
            + (f" and {len(paths) - 8} more" if len(paths) > 8 else ""))


def resolve_callable(spec: str, *, where: tuple[str | None, int | None] = (None, None),
                     field: str = "model") -> Callable:
    """The object `spec` (`pkg.mod:name`, `name` may be dotted: `mod:Class.build`) names."""
    file, line = where
    if not is_import_path(spec):
        raise UserError(f"{spec!r} is not an import path: expected package.module:callable",
                        file=file, line=line, field=field)
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        raise UserError(f"cannot import {module_name!r} for {spec!r}: no module named "
                        f"{missing!r} ({_searched()}); put the use case's folder on PYTHONPATH "
                        "(a workflow step's env: {PYTHONPATH: \"${workflow_dir}\"})",
                        file=file, line=line, field=field) from None
    except Exception as e:   # the user's module raised while importing
        last = traceback.extract_tb(e.__traceback__)[-1]
        raise UserError(f"importing {module_name!r} for {spec!r} failed: "
                        f"{type(e).__name__}: {e} ({last.filename}:{last.lineno})",
                        file=file, line=line, field=field) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise UserError(f"module {module_name!r} ({getattr(obj, '__file__', '?')}) has no "
                            f"attribute {part!r}; it has: {', '.join(have) or 'nothing public'}",
                            file=file, line=line, field=field)
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{spec!r} is a {type(obj).__name__}, not a callable",
                        file=file, line=line, field=field)
    return obj


def build_from_path(spec: str, args: dict, *, where: tuple[str | None, int | None] = (None, None)):
    """`callable(**args)` for `model: spec`, checked to be a torch `nn.Module`."""
    import torch

    factory = resolve_callable(spec, where=where, field="model")
    file, line = where
    try:
        model = factory(**args)
    except Exception as e:   # a wrong keyword, a value the factory refuses
        raise UserError(f"{spec}(**model_args) failed: {type(e).__name__}: {e}; model_args "
                        f"were {sorted(args) or 'empty'}", file=file, line=line,
                        field="model_args") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{spec}(**model_args) returned a {type(model).__name__}, not a "
                        "torch.nn.Module", file=file, line=line, field="model")
    return model
