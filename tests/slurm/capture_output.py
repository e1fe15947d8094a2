"""Record what a real SLURM cluster prints about jobs in known end states, for the parser tests.

Run against a started test cluster (SLURM_CONF set); writes captured/<mode>/. Not a test.
    SLURM_CONF=/tmp/itwinai-hpc-slurm/slurm.conf python tests/slurm/capture_output.py
It submits: completed, failed (exit 3), cancelled while pending, a 4-task array whose task 2
exits 5, a dependent of the failed job (pending forever), a running job, a throttled array
(one task running, the rest pending), and a job that hits its 1-minute time limit (~1.5 min).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from itwinai_hpc.backends.slurm import query as q


def sh(*cmd: str, check: bool = True) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {p.stderr}")
    return p.stdout


def sbatch(*args: str) -> str:
    return sh("sbatch", "--parsable", "-o", "/dev/null", *args).strip().split(";")[0]


def state(job_id: str) -> str:
    out = sh("scontrol", "show", "job", "-o", job_id, check=False)
    return q.parse_scontrol_fields(out).get("JobState", "GONE")


def wait(pred, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not pred():
        if time.time() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.3)


def snapshot(out: Path, tag: str, ids: list[str], start: datetime, mode: str) -> None:
    (out / f"scontrol-{tag}.txt").write_text(sh(*q.build_scontrol_command()))
    (out / f"squeue-{tag}.txt").write_text(sh(*q.build_squeue_command(ids)))
    if mode == "dbd":
        (out / f"sacct-{tag}.txt").write_text(sh(*q.build_sacct_command(ids, start)))
    elif mode == "jobcomp":
        (out / f"jobcomp-{tag}.txt").write_text(sh(*q.build_jobcomp_command(ids)))


def main() -> None:
    config = sh("scontrol", "show", "config")
    mode = q.parse_accounting_mode(config)
    out = Path(__file__).parent / "captured" / mode
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.txt").write_text(config)
    if mode == "none":
        return
    start = datetime.now() - timedelta(minutes=5)
    jobs: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs["completed"] = sbatch("-D", tmp, "--wrap", "true")
        jobs["failed"] = sbatch("-D", tmp, "--wrap", "exit 3")
        jobs["cancelled_pending"] = sbatch("-D", tmp, "--begin=now+3600", "--wrap", "true")
        sh("scancel", jobs["cancelled_pending"])
        jobs["array"] = sbatch("-D", tmp, "--array=0-3", "--wrap",
                               "exit $((SLURM_ARRAY_TASK_ID == 2 ? 5 : 0))")
        jobs["dependent_of_failed"] = sbatch("-D", tmp, f"--dependency=afterok:{jobs['failed']}",
                                             "--wrap", "true")
        jobs["timeout"] = sbatch("-D", tmp, "-t", "1", "--wrap", "sleep 300")
        jobs["running"] = sbatch("-D", tmp, "--wrap", "sleep 300")
        jobs["array_throttled"] = sbatch("-D", tmp, "--array=0-3%1", "--wrap", "sleep 300")
        ids = list(jobs.values())
        wait(lambda: state(jobs["running"]) == "RUNNING", 30, "the running job")
        wait(lambda: all(state(jobs[k]) in q.FINAL_STATES for k in ("completed", "failed")),
             30, "the short jobs")
        time.sleep(3)  # let the array tasks finish and slurmdbd catch up
        snapshot(out, "live", ids, start, mode)
        sh("scancel", jobs["running"], jobs["array_throttled"], jobs["dependent_of_failed"])
        wait(lambda: state(jobs["timeout"]) == "TIMEOUT", 150, "the time limit")
        time.sleep(3)
        snapshot(out, "final", ids, start, mode)
    (out / "jobs.json").write_text(json.dumps(jobs, indent=1) + "\n")
    print(f"captured {mode} output for jobs {jobs} in {out}")


if __name__ == "__main__":
    main()
