"""The `itwinai-hpc` console script and `python -m itwinai_hpc`: cli.main() in a process that is
ours (core/startup.py: train and predict hold the garbage collector off while they import), then
an exit without Python's module teardown (commands/process.py: exit_now, about 2 s of CPU less
per training or prediction process)."""

from __future__ import annotations

from typing import NoReturn

from itwinai_hpc.cli import main
from itwinai_hpc.commands.process import run_as_program


def run() -> NoReturn:
    run_as_program(main)


if __name__ == "__main__":
    run()
