"""`itwinai-hpc submit`: render (or take a rendered folder), check, queue, optionally wait."""

from __future__ import annotations

from itwinai_hpc.commands.common import before_queueing, rendered_folder, wait_and_report
from itwinai_hpc.commands.render import prepare_run


def cmd_submit(args) -> int:
    from itwinai_hpc.backends import get_backend, resolve_backend_name
    from itwinai_hpc.ops import operations
    name = resolve_backend_name(args.backend)
    backend = get_backend(name)
    manifest = rendered_folder(args)
    if manifest is None:
        run = prepare_run(args, name)
        before_queueing(run.manifest, backend, run.files, args.no_preflight)
        run.write(group_share=args.group_share)
        manifest = run.manifest
    else:
        before_queueing(manifest, backend, None, args.no_preflight)
    print(f"run {manifest.run_id}")
    print(f"run folder {manifest.run_dir}")
    if args.dry_run:
        print(f"dry run: nothing submitted; with --backend {name} it would run:")
        for line in backend.dry_run_lines(manifest):
            print(f"  {line}")
        return 0
    operations.submit(manifest, backend)
    for step in manifest.steps:
        print(f"  {step.name:<16} {step.job_id}")
    if not args.wait:
        print(f"follow it with: itwinai-hpc status {manifest.run_id}")
        return 0
    return wait_and_report(manifest, args.timeout)
