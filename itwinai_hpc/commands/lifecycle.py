"""`itwinai-hpc cancel` and `itwinai-hpc resume`: stop a run, or queue again what did not finish."""

from __future__ import annotations

from itwinai_hpc.commands.common import before_queueing, load_run, wait_and_report


def cmd_cancel(args) -> int:
    from itwinai_hpc.ops import operations
    manifest = load_run(args)
    cancelled = operations.cancel(manifest)
    if cancelled:
        print(f"cancelled: {', '.join(cancelled)}")
    elif not manifest.backend:
        print(f"nothing to cancel: run {manifest.run_id} was never submitted")
    else:
        print(f"nothing to cancel: no step of run {manifest.run_id} is pending or running")
    return 0


def cmd_resume(args) -> int:
    from itwinai_hpc.ops import operations
    manifest = load_run(args)

    # As for submit, on the steps resume is about to queue (a script edited since, a partition
    # gone): refused there, nothing is queued and run.json stays as it is.
    todo = operations.resume(manifest, lambda steps: before_queueing(
        manifest, operations.backend_for(manifest), None, args.no_preflight, steps),
        exclude=operations.node_list(args.exclude))
    if not todo:
        print(f"nothing to resume: every step of run {manifest.run_id} completed")
        return 0
    for name in todo:
        print(f"  {name:<16} {manifest.step(name).job_id}")
    return wait_and_report(manifest, args.timeout) if args.wait else 0
