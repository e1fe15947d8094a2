"""Subcommands whose arguments live outside cli.py (which keeps under the 300-line module
limit): cli.py makes one call, `register(parts)` here, and each module of MODULES adds its
parser with `register((sub, workflow_args, run_folder_args, _command))`. Add a command here,
not in cli.py. Imports nothing heavy."""

from __future__ import annotations

import importlib

MODULES = ("schema_args", "doctor_args", "init_args")


def register(parts: tuple) -> None:
    for module in MODULES:
        importlib.import_module(f"itwinai_hpc.commands.{module}").register(parts)
