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

from itwinai_hpc.core.errors import UserError

# What a busy or restarting controller answers; anything else is a real refusal.
TRANSIENT = ("Socket timed out", "Unable to contact slurm controller",
             "Resource temporarily unavailable", "Slurm temporarily unable",
             "Connection refused", "Transport endpoint is not connected")
BACKOFF_S = (1, 2, 4, 8, 16)
Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class Preflight:
    step: str
    script: str
    estimate: str          # SLURM's "Job N to start at T using C processors on nodes ..."


def preflight(scripts: dict[str, tuple[str, str]], env: dict[str, str],
              run: Runner = subprocess.run,
              sleep: Callable[[float], None] = time.sleep) -> list[Preflight]:
    """`sbatch --test-only` for each step's script (step -> (script name, text)); the first
    refusal is a UserError with SLURM's own message and the step's name. A busy or restarting
    controller (TRANSIENT) is asked again with backoff, as a submission is. Nothing is queued."""
    checked = []
    with tempfile.TemporaryDirectory(prefix="itwinai-hpc-preflight-") as tmp:
        for step, (name, text) in scripts.items():
            path = Path(tmp) / name
            path.write_text(text)
            for pause in (*BACKOFF_S, None):
                try:
                    p = run(["sbatch", "--test-only", str(path)], capture_output=True,
                            text=True, env=env, cwd=tmp, timeout=120)
                except FileNotFoundError:
                    raise UserError("sbatch is not on PATH: is this a SLURM login node? "
                                    "(--backend local runs the workflow without SLURM)",
                                    field="--backend") from None
                if p.returncode == 0 or pause is None or \
                        not any(t in p.stderr + p.stdout for t in TRANSIENT):
                    break
                sleep(pause)
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
    for pause in (*BACKOFF_S, None):
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
