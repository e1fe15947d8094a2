"""Path rules of a run folder that every submitter must honour: how a folder is written in an
sbatch log file name, what a container bind cannot express, and how a step's dependencies are
written for sbatch (submit.sh and the SLURM and submitit backends use the same rule). Pure.
"""

from __future__ import annotations

import re

from itwinai_hpc.core.errors import UserError


def dependency_option(ok: list[str], ended: list[str]) -> list[str]:
    """sbatch options to start after the jobs `ok` succeeded and the jobs `ended` ended in any
    state (a comma: both must hold); a dependency that can no longer be met cancels the job
    instead of leaving it pending forever. submit.sh passes shell variables as the ids."""
    parts = [f"{kind}:{':'.join(ids)}" for kind, ids in (("afterok", ok), ("afterany", ended))
             if ids]
    return ["--kill-on-invalid-dep=yes", "--dependency=" + ",".join(parts)] if parts else []


# Container runtimes whose bind options list paths as SRC[:DST[:OPTS]], several joined by
# commas (apptainer/singularity --bind, shifter --volume, podman -v, pyxis --container-mounts):
# a ':' or ',' inside a path cannot be written there, and no quoting helps.
BINDING_RUNTIMES = ("apptainer", "singularity", "shifter", "podman-hpc", "pyxis")


def sbatch_folder(path: str, *, file: str | None = None) -> str:
    """A folder as it must appear in an sbatch --output/--error filename pattern: sbatch
    replaces %j, %A, %a ... there, and reads %% as a literal %, so each % is doubled. A
    backslash makes sbatch ignore every replacement symbol (our %j and %A_%a included), and
    cannot be escaped: such a folder is refused (UserError, located at `file`)."""
    path = str(path)
    if "\\" in path:
        raise UserError(f"the run folder {path!r} contains a backslash, which sbatch reads in a "
                        "log file name as 'replace nothing' (so %j, %A_%a stay literal and the "
                        "jobs cannot write their logs); use a path without one",
                        file=file or path)
    return path.replace("%", "%%")


# Paths end up on #SBATCH lines, which sbatch splits itself: no quoting can protect them there.
SBATCH_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%:,=-]+$")


def check_sbatch_paths(run_dir: str, workdir: str) -> None:
    """The run folder and the working directory as sbatch reads them on #SBATCH lines (--output,
    --chdir): plain characters only. Only for runs that go through sbatch: a local run may live
    in a folder with spaces or umlauts."""
    for label, p in (("run folder", run_dir), ("working directory", workdir)):
        if not SBATCH_SAFE_PATH.fullmatch(str(p)):
            raise UserError(f"the {label} {str(p)!r} contains characters that cannot appear on "
                            "an #SBATCH line (spaces, quotes, non-ASCII or shell characters); "
                            "use a plain path, or run it here with --backend local")


def bind_problem(path: str) -> str | None:
    """Why `path` cannot be one side of a container bind, or None."""
    bad = [c for c in (":", ",") if c in str(path)]
    if not bad:
        return None
    return (f"contains {' and '.join(repr(c) for c in bad)}, which container runtimes read in "
            "a bind as separators (SRC:DST, one bind per comma), so it cannot be bound into the "
            "step's container; use a path without them")


def check_run_folder(run_dir: str, steps, *, file: str | None = None) -> None:
    """What a run folder's path must allow before anything is submitted from it: sbatch's
    log file names (sbatch_folder), and binding it into the containers of `steps` (planned
    steps). UserError otherwise, located at `file` (default: the folder)."""
    sbatch_folder(run_dir, file=file)
    check_bindable(run_dir, steps, file=file)


def check_bindable(run_dir: str, steps, *, file: str | None = None) -> None:
    """The run folder's path can be bound into the containers of `steps` (planned steps):
    UserError otherwise, located at `file` (default: the folder)."""
    for job in steps:
        c = job.container
        if c is not None and c.runtime in BINDING_RUNTIMES:
            why = bind_problem(run_dir)
            if why:
                raise UserError(f"the run folder {str(run_dir)!r} {why} (step '{job.name}' runs "
                                f"in a container ({c.runtime}), which binds the run folder)",
                                file=file or str(run_dir))
