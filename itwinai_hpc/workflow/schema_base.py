"""The building blocks of the workflow schema: the strict base model, list fields that extend
or replace the defaults' lists, and the merge of defaults < step. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Union

from itwinai_hpc.core import job_env
from itwinai_hpc.core.records import Record, StrictBool, StrictInt

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Scalar = Union[StrictBool, StrictInt, float, str]


class _Model(Record):
    """Every model of the workflow format (core/records.py: strict, frozen, kebab-case keys,
    unknown keys refused)."""


class ListReplace(_Model):
    """`{replace: [...]}`: this list replaces the defaults' list instead of extending it."""

    replace: list[str]


# A list field of a step extends the same list of the defaults (duplicates dropped);
# `{replace: [...]}` replaces it.
ListField = Union[list[str], ListReplace, None]


def list_items(value) -> list[str]:
    """The items of a ListField value as written."""
    if value is None:
        return []
    return list(value.replace) if isinstance(value, ListReplace) else list(value)


def merge_lists(base, override) -> list[str] | None:
    """defaults' list < step's list: extend (keeping order, dropping repeats) or replace."""
    if override is None:
        return None if base is None else list_items(base)
    if isinstance(override, ListReplace):
        return list(override.replace)
    merged = list_items(base)
    return merged + [item for item in override if item not in merged]


def check_options(opts):
    """A list field of command-line options (container options, srun/torchrun arguments)."""
    for opt in list_items(opts):
        if not opt.startswith("-"):
            raise ValueError(f"'{opt}' is not an option (it must start with '-')")
    return opts


def check_env(env: dict | None) -> dict | None:
    for key in env or {}:
        check_env_name(key)
    return env


def check_env_name(name: str) -> str:
    """A variable a workflow may set (env, runtime-env, container.env) or pass through: a valid
    name, and none of the variables itwinai-hpc owns (core/job_env.py)."""
    if not ENV_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid environment variable name")
    problem = job_env.owned_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def merge(base, override):
    """Field-wise merge of two models of the same type: fields set in `override` win, list
    fields extend (or are replaced, see ListField), nested models merge the same way."""
    if base is None and override is None:
        return None
    model = type(override if base is None else base)
    values = {}
    for name in model.model_fields:
        old = None if base is None else getattr(base, name)
        new = None if override is None else getattr(override, name)
        if (_is_model(old) or old is None) and (_is_model(new) or new is None):
            values[name] = merge(old, new)
        elif isinstance(old, dict) and isinstance(new, dict):
            values[name] = {**old, **new}
        elif isinstance(new, (list, ListReplace)) or \
                new is None and isinstance(old, (list, ListReplace)):
            values[name] = merge_lists(old, new)
        else:
            values[name] = old if new is None else new
    return model.model_construct(**{k: v for k, v in values.items() if v is not None})


def _is_model(value) -> bool:
    return isinstance(value, Record) and not isinstance(value, ListReplace)
