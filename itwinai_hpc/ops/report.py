"""`itwinai-hpc report RUN`: how well each step used what it asked for, from the backend's
accounting (SLURM: sacct, backends/slurm/accounting.py).

usage_rows turns that and the run's manifest into rows, with one line of advice where a request
is far off. Where no slurmdbd runs, it says what cannot be known and shows what can (state,
elapsed). No torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from itwinai_hpc.core.slurm_syntax import MEM_UNITS as _UNITS
from itwinai_hpc.core.slurm_syntax import clock
from itwinai_hpc.run.manifest import RunManifest


@dataclass
class Usage:
    """One job (or array task): what it was given and what it used; None where unknown."""

    step: str
    job_id: str
    state: str
    elapsed: int | None = None           # seconds
    limit: int | None = None             # seconds
    cpus: int | None = None
    cpu_seconds: float | None = None
    max_rss: int | None = None           # bytes, the largest of the job's steps
    req_mem: int | None = None           # bytes per node
    gpus: int | None = None
    energy_j: int | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def cpu_efficiency(self) -> float | None:
        if not self.cpu_seconds or not self.elapsed or not self.cpus:
            return None
        return self.cpu_seconds / (self.elapsed * self.cpus)


def advise(u: Usage) -> list[str]:
    """One line per request that is far off what the job used (finished jobs only)."""
    out = []
    if u.req_mem and u.max_rss is not None and u.req_mem >= 2**30 and u.max_rss < u.req_mem / 4:
        out.append(f"asked {human(u.req_mem)} of memory, used {human(u.max_rss)}: a smaller "
                   "--mem starts sooner and leaves the node to others")
    eff = u.cpu_efficiency
    if eff is not None and u.cpus and u.cpus > 1 and eff < 0.25:
        out.append(f"used {eff:.0%} of {u.cpus} CPUs: fewer cpus-per-task, or more data "
                   "loader workers / threads")
    if u.limit and u.elapsed is not None and u.limit >= 3600 and u.elapsed < u.limit / 10:
        out.append(f"asked {clock(u.limit)}, ran {clock(u.elapsed)}: a shorter time limit "
                   "starts sooner (backfill)")
    return out


def usage_rows(manifest: RunManifest, sacct: dict[str, dict] | None) -> list[Usage]:
    """A row per job of the run (array tasks each); from sacct where given, else run.json."""
    rows = []
    for s in sorted(manifest.steps, key=lambda s: s.index):
        if not s.job_id:
            continue
        if sacct is None:
            rows.append(Usage(s.name, s.job_id, str(s.state), elapsed=s.elapsed))
            continue
        ids = sorted((j for j in sacct if j == s.job_id or j.startswith(f"{s.job_id}_")),
                     key=_task_order) or [s.job_id]
        for jid in ids:
            info = sacct.get(jid, {})
            u = Usage(s.name, jid, info.get("state", str(s.state)),
                      **{k: info.get(k) for k in ("elapsed", "limit", "cpus", "cpu_seconds",
                                                  "max_rss", "req_mem", "gpus", "energy_j")})
            u.advice = advise(u)
            rows.append(u)
    return rows


def format_report(manifest: RunManifest, rows: list[Usage], note: str | None) -> str:
    head = ("STEP", "JOB ID", "STATE", "ELAPSED/LIMIT", "CPU EFF", "MAX RSS/MEM", "GPUS",
            "ENERGY")
    body = [(u.step, u.job_id, u.state,
             f"{clock(u.elapsed)}/{clock(u.limit)}",
             "-" if u.cpu_efficiency is None else f"{u.cpu_efficiency:.0%} of {u.cpus}",
             f"{human(u.max_rss)}/{human(u.req_mem)}",
             "-" if u.gpus is None else str(u.gpus),
             "-" if u.energy_j is None else f"{u.energy_j} J") for u in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [f"run {manifest.run_id} ({manifest.backend or 'not submitted'}): usage"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
    for u in rows:
        lines += [f"advice: {u.step} ({u.job_id}): {a}" for a in u.advice]
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def to_json(manifest: RunManifest, rows: list[Usage], note: str | None) -> str:
    return json.dumps({"run": manifest.run_id, "note": note,
                       "jobs": [{**asdict(u), "cpu_efficiency": u.cpu_efficiency}
                                for u in rows]}, indent=2)


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n}B"


def _task_order(job_id: str) -> tuple:
    head, _, task = job_id.partition("_")
    return (head, int(task) if task.isdigit() else -1)
