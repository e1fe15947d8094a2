"""Talking to sbatch robustly: a preflight that asks the controller about every step before
anything is queued (`sbatch --test-only`), and submission that survives transient scheduler
errors without queuing a step twice. No torch, no workflow loading.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# What a busy or restarting controller answers; anything else is a real refusal.
TRANSIENT = ("Socket timed out", "Unable to contact slurm controller",
             "Resource temporarily unavailable", "Slurm temporarily unable",
             "Connection refused", "Transport endpoint is not connected")
BACKOFF_S = (1, 2, 4, 8, 16)
Runner = Callable[..., subprocess.CompletedProcess]


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


@dataclass(frozen=True)
class Preflight:
    step: str
    script: str
    estimate: str          # SLURM's "Job N to start at T using C processors on nodes ..."


def preflight(scripts: dict[str, str], env: dict[str, str], run: Runner = subprocess.run,
              ) -> list[Preflight]:
    """`sbatch --test-only` for each step's script (step -> (script name, text)); the first
    refusal is a UserError with SLURM's own message and the step's name. Nothing is queued."""
    checked = []
    with tempfile.TemporaryDirectory(prefix="itwinai-hpc-preflight-") as tmp:
        for step, (name, text) in scripts.items():
            path = Path(tmp) / name
            path.write_text(text)
            try:
                p = run(["sbatch", "--test-only", str(path)], capture_output=True, text=True,
                        env=env, cwd=tmp, timeout=120)
            except FileNotFoundError:
                raise UserError("sbatch is not on PATH: is this a SLURM login node? "
                                "(--backend local runs the workflow without SLURM)",
                                field="--backend") from None
            said = (p.stderr.strip() or p.stdout.strip()).replace(f"{path}", name)
            if p.returncode != 0:
                raise UserError(f"SLURM refuses step '{step}' ({name}): {said}; nothing was "
                                "queued (--no-preflight skips this check)")
            estimate = next((ln.removeprefix("sbatch: ") for ln in said.splitlines()
                             if "to start at" in ln), said)
            checked.append(Preflight(step, name, estimate))
    return checked


def submit_with_retry(cmd: list[str], *, cwd: str, env: dict[str, str], job_name: str,
                      comment: str, run: Runner = subprocess.run,
                      sleep: Callable[[float], None] = time.sleep) -> subprocess.CompletedProcess:
    """Run `cmd` (an `sbatch --parsable ...`); on a transient error or a timeout, first look for
    the job by its name and comment (sbatch may have queued it before its answer got lost),
    then retry with backoff. Returns sbatch's result, or one made from the job found."""
    for attempt, pause in enumerate((*BACKOFF_S, None)):
        try:
            p = run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            p = subprocess.CompletedProcess(cmd, 1, "", "sbatch: Socket timed out (itwinai-hpc "
                                            "gave up waiting after 120 s)")
        message = p.stderr.strip() or p.stdout.strip()
        if p.returncode == 0 or not any(t in message for t in TRANSIENT):
            return p
        queued = find_queued(job_name, comment, env, run)
        if queued:
            return subprocess.CompletedProcess(cmd, 0, queued + "\n", "")
        if pause is None:
            return p
        sleep(pause)
    return p                                                # unreachable; for type checkers


def find_queued(job_name: str, comment: str, env: dict[str, str], run: Runner) -> str | None:
    """The id of a queued or running job of this run and step, if the controller knows one."""
    try:
        p = run(["squeue", "-h", "-n", job_name, "-o", "%F|%k"], capture_output=True, text=True,
                env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in p.stdout.splitlines():
        job_id, _, tag = line.partition("|")
        if tag.strip() == comment and re.fullmatch(r"\d+", job_id.strip()):
            return job_id.strip()
    return None
