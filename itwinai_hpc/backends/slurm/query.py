"""Ask SLURM what became of some jobs: build the query commands and parse their text output.

The build_*/parse_* functions are pure (tested on captured output); only query_jobs() and
detect_accounting() run commands, one query per refresh. Nothing here submits or cancels.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from itwinai_hpc.core.clock import slurm_time
from itwinai_hpc.core.slurm_syntax import parse_elapsed  # noqa: F401  (used by the parsers here)
from itwinai_hpc.run.states import FINISHED, SUCCEEDED, StepState

# Final states after normalize_state(); the others are PENDING, RUNNING, SUSPENDED, REQUEUED.
FINAL_STATES = FINISHED
# The final state of an array is the worst of its tasks': a failure of the job's own code
# beats a consequence of it (CANCELLED often just follows a failed dependency).
# itwinai-hpc's STOPPED (a task that exited 75, read from its exit status file; SLURM's own
# "STOPPED" is folded into SUSPENDED below) is worse than success only.
_WORSE = ("COMPLETED", "STOPPED", "CANCELLED", "PREEMPTED", "TIMEOUT", "OUT_OF_MEMORY",
          "NODE_FAIL", "FAILED")
# SLURM's other names, folded into the states above. COMPLETING is not final yet: its exit
# code is known but the job is still winding down, and a caller that caches final states
# must not cache it.
_ALIASES = {"COMPLETING": "RUNNING", "CONFIGURING": "RUNNING", "RESIZING": "RUNNING",
            "SIGNALING": "RUNNING", "STAGE_OUT": "RUNNING", "STOPPED": "SUSPENDED",
            "REQUEUE_FED": "REQUEUED", "REQUEUE_HOLD": "PENDING", "RESV_DEL_HOLD": "PENDING",
            "SPECIAL_EXIT": "FAILED", "BOOT_FAIL": "NODE_FAIL", "DEADLINE": "TIMEOUT",
            "REVOKED": "CANCELLED"}
_NO_NODES = {"", "(null)", "None assigned", "None"}

SACCT_FIELDS = "JobIDRaw,JobID,State,ExitCode,Elapsed,NodeList,Reason"
# sacct -c (jobcomp/filetxt) knows no Reason; the parser accepts 6 or 7 columns.
JOBCOMP_FIELDS = "JobIDRaw,JobID,State,ExitCode,Elapsed,NodeList"
SQUEUE_FORMAT = "%A|%i|%T|%r|%M|%N"  # same column order as SACCT_FIELDS, no exit code


class SlurmQueryError(RuntimeError):
    """A query command failed (controller down, command missing); the message has its stderr."""


@dataclass(frozen=True)
class JobInfo:
    """What SLURM says about one submitted job id (an array: all its tasks, aggregated).

    exit_code/signal are None while the job is active or when it never started.
    elapsed is in seconds. tasks maps an array's task ids ("0", "[5-9]") to their own info.
    """

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    elapsed: int | None = None
    nodes: str = ""
    reason: str = ""
    tasks: dict[str, JobInfo] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCEEDED



def normalize_state(raw: str) -> StepState | str:
    """'CANCELLED by 0' -> CANCELLED, COMPLETING -> RUNNING, ...; unknown names pass upper-cased."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    return StepState.parse(_ALIASES.get(word, word))


def _info(job_id: str, state: str, exit_text: str, elapsed: str, nodes: str,
          reason: str) -> JobInfo:
    st = normalize_state(state)
    nodes = "" if nodes.strip() in _NO_NODES else nodes.strip()
    seconds = parse_elapsed(elapsed)
    code = sig = None
    ran = bool(nodes) or bool(seconds)
    m = re.fullmatch(r"(\d+):(\d+)", exit_text.strip())
    if m and st in FINAL_STATES and ran:
        code, sig = int(m.group(1)), int(m.group(2))
    reason = "" if reason.strip() in ("None", "(null)") else reason.strip()
    return JobInfo(job_id, st, code, sig, seconds, nodes, reason)


def _split_array_id(job_id: str) -> tuple[str, str | None]:
    """'123_4' -> ('123', '4'), '123_[5-9%2]' -> ('123', '[5-9%2]'), '123+1' -> ('123', '+1')."""
    m = re.fullmatch(r"(\d+)(?:_(\S+)|(\+\d+))?", job_id.strip())
    if not m:
        return job_id.strip(), None
    return m.group(1), m.group(2) or m.group(3)


def aggregate(job_id: str, tasks: dict[str, JobInfo]) -> JobInfo:
    """One JobInfo for an array from its tasks' infos.

    While any task is active the array is RUNNING (some task runs) or else PENDING; once all
    are final it takes the worst final state (order in _WORSE), with that task's exit code and
    reason. elapsed is the longest task's, nodes all nodes used.
    """
    infos = list(tasks.values())
    active = [i for i in infos if not i.finished]
    if active:
        state = "RUNNING" if any(i.state == "RUNNING" for i in active) else active[0].state
        worst = next(i for i in active if i.state == state)
    else:
        rank = {s: n for n, s in enumerate(_WORSE)}
        worst = max(infos, key=lambda i: rank.get(i.state, len(_WORSE)))
        state = worst.state
    nodes = ",".join(dict.fromkeys(i.nodes for i in infos if i.nodes))
    elapsed = max((i.elapsed for i in infos if i.elapsed is not None), default=None)
    return JobInfo(job_id, state, worst.exit_code, worst.signal, elapsed, nodes, worst.reason,
                   dict(tasks))


def _collect(rows: Iterable[tuple[str, str | None, JobInfo]]) -> dict[str, JobInfo]:
    plain: dict[str, JobInfo] = {}
    arrays: dict[str, dict[str, JobInfo]] = {}
    for master, task, info in rows:
        if task is None:
            plain[master] = info
        else:
            arrays.setdefault(master, {})[task] = info
    plain.update({m: aggregate(m, t) for m, t in arrays.items()})
    return plain


def build_sacct_command(job_ids: Iterable[str], start_time: datetime | str) -> list[str]:
    """Full sacct (slurmdbd). An explicit --starttime, else sacct looks only at today's jobs
    (and never-started cancelled jobs need one). -X: allocations only, no steps."""
    start = slurm_time(start_time)
    return ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "--starttime", start,
            "-o", SACCT_FIELDS]


def build_jobcomp_command(job_ids: Iterable[str]) -> list[str]:
    """sacct -c reads the jobcomp/filetxt log: finished jobs only; an array's tasks are
    found only by their own raw ids (the submitted id matches just one task)."""
    return ["sacct", "-c", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", JOBCOMP_FIELDS]


def build_scontrol_command() -> list[str]:
    """Every job the controller still knows (MinJobAge after its end): scontrol takes at most
    one id per call, so one call for all jobs is the batched query."""
    return ["scontrol", "show", "job", "-o"]


def build_squeue_command(job_ids: Iterable[str]) -> list[str]:
    """squeue with finished jobs (-t all): batched by id, but without exit codes."""
    return ["squeue", "-h", "-a", "-t", "all", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT]


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Parse build_sacct_command() or build_jobcomp_command() output, keyed by submitted id."""
    rows = []
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 6:
            continue
        raw, jid, state, code, elapsed, nodes = cols[:6]
        master, task = _split_array_id(jid)
        reason = cols[6] if len(cols) > 6 else ""
        rows.append((master, task, _info(jid, state, code, elapsed, nodes, reason)))
    return _collect(rows)


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse build_squeue_command() output (no exit codes: exit_code stays None)."""
    rows = []
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) != 6:
            continue
        raw, jid, state, reason, elapsed, nodes = cols
        master, task = _split_array_id(jid)
        info = _info(jid, state, "", elapsed, nodes, reason)
        rows.append((master, task, info))
    return _collect(rows)


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """One `scontrol show job -o` line -> {key: value}. Keys are CamelCase words (also with
    ':' or '/', e.g. 'ReqB:S:C:T'); a value runs until the next ' Key='."""
    parts = re.split(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
    return dict(p.split("=", 1) for p in parts if "=" in p)


def parse_scontrol_jobs(text: str) -> dict[str, JobInfo]:
    """Parse build_scontrol_command() output ('No jobs in the system' -> {})."""
    rows = []
    for line in text.splitlines():
        f = parse_scontrol_fields(line)
        if "JobId" not in f:
            continue
        master = f.get("ArrayJobId") or f.get("HetJobId") or f["JobId"]
        task = f.get("ArrayTaskId")
        if task is None and "HetJobOffset" in f:
            task = "+" + f["HetJobOffset"]
        if task is not None and not task.isdigit() and not task.startswith("+"):
            task = f"[{task}]"  # pending rest of an array, e.g. 5-9%1, as sacct writes it
        jid = f["JobId"] if task is None else f"{master}_{task}"
        info = _info(jid, f.get("JobState", ""), f.get("ExitCode", ""), f.get("RunTime", ""),
                     f.get("NodeList", ""), f.get("Reason", ""))
        rows.append((master, task, info))
    return _collect(rows)


def parse_accounting_mode(config_text: str) -> str:
    """`scontrol show config` -> 'dbd' (full sacct), 'jobcomp' (sacct -c) or 'none'."""
    conf = dict(re.findall(r"^(\w+)\s*=\s*(\S*)", config_text, flags=re.M))
    if conf.get("AccountingStorageType", "").endswith("/slurmdbd"):
        return "dbd"
    if conf.get("JobCompType", "") == "jobcomp/filetxt":
        return "jobcomp"
    return "none"


Runner = Callable[..., subprocess.CompletedProcess]


def _run(run: Runner, cmd: list[str], ok_errors: tuple[str, ...] = ()) -> str:
    try:
        p = run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise SlurmQueryError(f"{cmd[0]} not found: is this a SLURM cluster?") from e
    if p.returncode != 0 and not any(s in p.stderr for s in ok_errors):
        raise SlurmQueryError(f"`{' '.join(cmd)}` failed (exit {p.returncode}): "
                              f"{p.stderr.strip()}")
    return p.stdout


def detect_accounting(run: Runner = subprocess.run) -> str:
    """Which query works on this cluster: 'dbd', 'jobcomp' or 'none' (see query_jobs)."""
    return parse_accounting_mode(_run(run, ["scontrol", "show", "config"]))


def query_jobs(job_ids: Iterable[str], start_time: datetime | str, mode: str,
               run: Runner = subprocess.run, ended: Collection[str] = ()) -> dict[str, JobInfo]:
    """Infos for the submitted ids that SLURM knows; an absent id is unknown to it right now.

    One call where the answer is in one place. dbd: one sacct call (a job submitted a moment
    ago may not be recorded yet). none: one scontrol call; a purged job is simply absent (cache
    final states you have seen). jobcomp: live jobs are only in scontrol, purged ones only in the
    job completion log (`sacct -c`). So when the caller knows that every job has `ended` (it left
    an exit status), the log alone is asked and scontrol only for what the log does not hold as
    final yet (a requeued run's record says PENDING); otherwise scontrol, then the log for the
    ids the controller has purged. Two calls only for a mix of live and purged jobs.
    """
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    if mode == "dbd":
        found = parse_sacct(_run(run, build_sacct_command(ids, start_time)))
        return {j: found[j] for j in ids if j in found}
    if mode == "jobcomp" and set(ids) <= set(ended):
        done = parse_sacct(_run(run, build_jobcomp_command(ids)))
        result = {j: done[j] for j in ids if j in done and done[j].finished}
        rest = [j for j in ids if j not in result]
        if rest:
            live = parse_scontrol_jobs(_run(run, build_scontrol_command()))
            result.update({j: live[j] for j in rest if j in live})
        return result
    found = parse_scontrol_jobs(_run(run, build_scontrol_command()))
    result = {j: found[j] for j in ids if j in found}
    missing = [j for j in ids if j not in result]
    if missing and mode == "jobcomp":
        done = parse_sacct(_run(run, build_jobcomp_command(missing)))
        result.update({j: done[j] for j in missing if j in done})
    return result


# Every state in which a job still holds (or waits for) nodes: pending, running, configuring,
# COMPLETING (a cancelled job's processes still being killed, still able to write), suspended,
# stopped, signaling, stage-out, resizing, and requeued or held for requeue. Named, because an
# explicit -t overrides a user's SQUEUE_STATES.
QUEUED_STATES = "PD,R,CF,CG,S,ST,SI,SO,RS,RQ,RH,RF"


def still_queued(job_ids: Iterable[str], run: Runner = subprocess.run) -> set[str]:
    """Which of `job_ids` SLURM has not let go yet (QUEUED_STATES). `-o %F`: an array's tasks
    as its id. Jobs it no longer knows are simply not listed; a single such id makes squeue
    exit 1 ("Invalid job id specified"), which means the same."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return set()
    out = _run(run, ["squeue", "-h", "-t", QUEUED_STATES, "-j", ",".join(ids), "-o", "%F"],
               ok_errors=("Invalid job id",))
    return set(out.split()) & set(ids)
