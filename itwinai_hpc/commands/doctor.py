"""`itwinai-hpc doctor`: a smoke job planned as the training step (doctor_plan.py), submitted and
waited for; its facts (ml/doctor.py) judged per check (doctor_checks.py, doctor_network.py) and
printed as a table with advice, or as one JSON object. Exit 0 when no check failed, 1 otherwise,
2 for bad input (nothing written or queued)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from itwinai_hpc.commands.doctor_checks import FAIL, WARN, Check, Expected
from itwinai_hpc.core.errors import UserError

LOG_TAIL = 15


def cmd_doctor(args) -> int:
    from itwinai_hpc.backends import get_backend, resolve_backend_name
    from itwinai_hpc.commands.common import before_queueing
    from itwinai_hpc.commands.doctor_plan import render_doctor
    from itwinai_hpc.core.slurm_syntax import time_seconds
    from itwinai_hpc.ops import operations
    from itwinai_hpc.run.manifest import RunManifest

    _check_numbers(args)
    try:
        time_seconds(args.time)
    except (UserError, ValueError):
        raise UserError(f"{args.time!r} is not a SLURM time such as 5, 00:05:00 or "
                        "1-00:00:00", field="--time") from None
    name = resolve_backend_name(args.backend)
    backend = get_backend(name)
    doctor = render_doctor(args, name)
    run = doctor.run
    before_queueing(run.manifest, backend, run.files, args.no_preflight)
    doctor.write(args.group_share)
    job = run.plan[0]
    print(f"doctor: run {run.run_id} in {run.run_dir}: step '{doctor.step}' as planned "
          f"({_shape(job)}), backend {name}", file=sys.stderr)
    operations.submit(run.manifest, backend)
    rc = operations.wait(run.manifest, interval=1.0, timeout=args.timeout,
                         progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    manifest = RunManifest.load(run.run_dir)
    if rc == operations.EXIT_ACTIVE:
        operations.cancel(manifest)
        manifest = RunManifest.load(run.run_dir)
    report = _report(manifest, doctor, job, name, gave_up=rc == operations.EXIT_ACTIVE,
                     timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return report["exit_code"]


def _check_numbers(args) -> None:
    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node,
                                                          0)):
        if value is not None and value < low:
            raise UserError(f"{value} is not a whole number of at least {low}",
                            field=flag)
    for flag, value in (("--allreduce-mb", args.allreduce_mb), ("--timeout", args.timeout)):
        if value is not None and not 0 < value < float("inf"):
            raise UserError(f"{value:g} is not a number above 0", field=flag)


def _shape(job) -> str:
    r = job.resources
    per = job.nproc_per_node if job.launcher == "torchrun" else 1
    c = job.container
    return (f"{r.nodes} node(s) x {per} process(es), {r.gpus_per_node} GPU(s) per node, "
            f"launcher {job.launcher}, " +
            (f"container {c.runtime} {c.image}" if c else "no container"))


def _report(manifest, doctor, job, backend: str, gave_up: bool, timeout) -> dict:
    from itwinai_hpc.ml.doctor import LOG_DIR, RESULT
    step = manifest.steps[0]
    run_dir = Path(manifest.run_dir)
    facts_file = run_dir / RESULT
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else None
    c = job.container
    # The local backend runs every step on this machine alone, whatever nodes it asks for.
    local_only = backend == "local" and job.resources.nodes > 1
    want = Expected(nodes=1 if backend == "local" else job.resources.nodes,
                    processes_per_node=job.nproc_per_node if job.launcher == "torchrun" else 1,
                    gpus_per_node=job.resources.gpus_per_node,
                    container=f"{c.runtime} {c.image}" if c else None,
                    container_gpu=c.gpu if c else "none", data=doctor.data,
                    data_here=bool(doctor.data) and Path(doctor.data).is_dir(),
                    alone=job.launcher != "torchrun")
    if facts is None:
        checks = [_job_failed(manifest, step, gave_up, timeout)]
    else:
        logs = [p.read_text(errors="replace") for p in sorted((run_dir / LOG_DIR).glob("*"))
                if p.is_file()]
        checks = judge(facts, want, logs)
        if local_only:
            checks.insert(0, Check("backend", WARN, f"the step asks for {job.resources.nodes} "
                                   "nodes; the local backend runs it on this machine alone",
                                   ["--backend slurm (or submitit) to check the nodes"]))
        if step.state != "COMPLETED":
            checks.append(Check("job", FAIL, f"the smoke job ended {step.state} (exit code "
                                f"{step.exit_code}) after its checks", [
                                    f"read its log: itwinai-hpc logs {manifest.run_id}"],
                                {"log": step.log}))
    failed = sum(c.status == FAIL for c in checks)
    return {"run_id": manifest.run_id, "run_dir": str(run_dir), "backend": backend,
            "step": doctor.step, "job_id": step.job_id, "job_state": step.state,
            "nodes": want.nodes, "processes_per_node": want.processes_per_node,
            "gpus_per_node": want.gpus_per_node, "container": want.container,
            "checks": [asdict(c) for c in checks], "failed": failed,
            "warned": sum(c.status == WARN for c in checks),
            "passed": sum(c.status == "pass" for c in checks),
            "facts": str(facts_file) if facts is not None else None,
            "exit_code": 1 if failed else 0}


def judge(facts: dict, want: Expected, nccl_logs: list[str]) -> list[Check]:
    from itwinai_hpc.commands import doctor_checks as c
    from itwinai_hpc.commands.doctor_network import check_allreduce
    return [c.check_ranks(facts, want), c.check_gpus(facts, want),
            check_allreduce(facts, want, nccl_logs), c.check_data(facts, want),
            c.check_mlflow(facts)]


def _job_failed(manifest, step, gave_up: bool, timeout) -> Check:
    """No facts: the job never got to write them. What its log says, and the likely cause."""
    from itwinai_hpc.ops import operations
    tail = ""
    for path in operations.backend_for(manifest).log_files(manifest, step):
        if path.is_file():
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL:])
    if gave_up:
        summary = (f"the smoke job had not ended after --timeout {timeout:g} s "
                   f"({step.state}); cancelled")
    else:
        summary = (f"the smoke job ended {step.state} (exit code {step.exit_code}) before its "
                   "checks wrote their facts")
    return Check("job", FAIL, summary, _failure_advice(tail, step.state, gave_up),
                 {"log": step.log, "log_tail": tail})


def _failure_advice(tail: str, state: str, gave_up: bool) -> list[str]:
    advice = []
    if "No module named" in tail and ("itwinai_hpc" in tail or "torch" in tail):
        advice.append("python3 where the step runs lacks itwinai-hpc or torch: install "
                      "itwinai-hpc[ml] in the image (or the environment the job starts in)")
    if "python3: command not found" in tail or "python3: No such file" in tail:
        advice.append("no python3 where the step runs: the image (or the setup lines) must "
                      "provide it")
    if gave_up or "PENDING" in state:
        advice.append("the job waited in the queue: run the doctor again with a longer "
                      "--timeout, or a partition/QOS that starts sooner (--set "
                      "defaults.resources.partition=...)")
    if state == "TIMEOUT":
        advice.append("the ranks did not all meet before the time limit: can every node "
                      "reach the first one (rendezvous on its port)? gloo and NCCL pick an "
                      "interface by themselves: name the node's fast one in the step's env "
                      "(GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME; Vega: ib0); the log shows which "
                      "node's agent waited")
    if state == "OUT_OF_MEMORY":
        advice.append("the job ran out of memory: raise resources.mem (or --allreduce-mb "
                      "lower)")
    advice.append("read the whole log: itwinai-hpc logs RUN")
    return advice


def format_report(report: dict) -> str:
    width = max(len(c["name"]) for c in report["checks"])
    lines = [f"itwinai-hpc doctor: step '{report['step']}' as run {report['run_id']} "
             f"(backend {report['backend']}, job {report['job_id']}, {report['job_state']}): "
             f"{report['nodes']} node(s) x {report['processes_per_node']} process(es), "
             f"{report['gpus_per_node']} GPU(s) per node, "
             f"{report['container'] or 'no container'}"]
    for c in report["checks"]:
        lines.append(f"  {c['status'].upper():<4}  {c['name']:<{width}}  {c['summary']}")
        for advice in c["advice"]:
            lines.append(f"  {'':<4}  {'':<{width}}  advice: {advice}")
    lines.append(f"{report['passed']} passed, {report['warned']} warned, {report['failed']} "
                 f"failed" + (f"; facts: {report['facts']}" if report["facts"] else ""))
    return "\n".join(lines)
