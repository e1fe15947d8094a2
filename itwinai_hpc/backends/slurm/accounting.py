"""SLURM's accounting of a run's jobs (sacct, where slurmdbd runs): what each job was given and
what it used, for `itwinai-hpc report`. build_sacct_command/parse_usage are pure (tested on
captured output); usage() runs the one query.
"""

from __future__ import annotations

import re
import subprocess

from itwinai_hpc.backends.slurm.query import normalize_state
from itwinai_hpc.core.clock import slurm_time
from itwinai_hpc.core.slurm_syntax import duration_seconds as seconds
from itwinai_hpc.core.slurm_syntax import mem_bytes, parse_elapsed
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.submit_env import submit_environment

USAGE_FIELDS = ("JobIDRaw,JobID,State,Elapsed,Timelimit,TotalCPU,NCPUS,MaxRSS,ReqMem,"
                "AllocTRES,ConsumedEnergyRaw")


def build_sacct_command(job_ids: list[str], start: str) -> list[str]:
    """Allocations and their steps (no -X): MaxRSS lives on the steps."""
    return ["sacct", "-n", "-P", "-j", ",".join(job_ids), "--starttime", slurm_time(start),
            "-o", USAGE_FIELDS]


def parse_usage(text: str) -> dict[str, dict]:
    """sacct output -> {job id as submitted (array tasks: ID_N): fields}, steps folded in."""
    jobs: dict[str, dict] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) != 11:
            continue
        raw, jid, state, elapsed, limit, total_cpu, ncpus, max_rss, req_mem, tres, energy = cols
        owner, _, sub = jid.partition(".")
        job = jobs.setdefault(owner, {})
        if not sub:                                       # the allocation line
            gpus = re.search(r"gres/gpu=(\d+)", tres)
            job.update(state=str(normalize_state(state)), elapsed=parse_elapsed(elapsed),
                       limit=seconds(limit), cpu_seconds=seconds(total_cpu),
                       cpus=int(ncpus) if ncpus.isdigit() else None, req_mem=mem_bytes(req_mem),
                       gpus=int(gpus.group(1)) if gpus else 0,
                       energy_j=int(energy) if energy.isdigit() and int(energy) else None)
        rss = mem_bytes(max_rss) if max_rss else None
        if rss is not None:
            job["max_rss"] = max(job.get("max_rss") or 0, rss)
    return jobs


def usage(manifest: RunManifest) -> tuple[dict[str, dict] | None, str | None]:
    """(sacct's fields per job id, None) where slurmdbd keeps accounting; else (None, a note
    saying what cannot be known). RuntimeError when sacct itself fails."""
    accounting = manifest.extra.get("accounting")
    ids = [s.job_id for s in manifest.steps if s.job_id]
    if accounting != "dbd" or not ids:
        return None, (f"CPU efficiency, memory use and energy need slurmdbd accounting (this "
                      f"cluster: {accounting or 'unknown'}); shown: states and elapsed time")
    start = manifest.extra.get("submitted_since") or manifest.created
    p = subprocess.run(build_sacct_command(ids, start), capture_output=True, text=True,
                       timeout=60, env=submit_environment())
    if p.returncode != 0:
        raise RuntimeError(f"sacct failed: {p.stderr.strip()}")
    return parse_usage(p.stdout), None
