"""The pip requirements of every model the ML steps log, and a cheaper way for MLflow to check
them against the environment. Imports mlflow lazily."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Explicit: inferring them costs ~10 s per log_model.
PIP_REQUIREMENTS = ["torch", "numpy"]


@contextmanager
def requirements_mapped() -> Iterator[None]:
    """MLflow checks the model's pip requirements (PIP_REQUIREMENTS and its own pin) against
    the installed versions, on logging and again on loading the input example. To do so it
    first maps every module of every installed distribution to its package
    (importlib_metadata.packages_distributions: every RECORD file of the environment), ~3 s of
    CPU on a 2-core VM, more than the rest of the registration; the map serves only to find a
    requirement's module when its distribution has no metadata. Our requirements' modules are
    their names: for this call MLflow gets that map, and the check itself still runs (the
    installed versions are read as before). A map MLflow built already is left alone, and it
    is not left behind for requirement inference elsewhere in the process."""
    from mlflow.utils import requirements_utils

    req: Any = requirements_utils   # its private map, typed None there

    if getattr(req, "_MODULES_TO_PACKAGES", ...) is not None:
        yield   # built already, or an MLflow without it: nothing to save
        return
    mapped = {name: [name] for name in (*PIP_REQUIREMENTS, "mlflow")}
    req._MODULES_TO_PACKAGES = mapped
    try:
        yield
    finally:
        if req._MODULES_TO_PACKAGES is mapped:
            req._MODULES_TO_PACKAGES = req._PACKAGES_TO_MODULES = None
