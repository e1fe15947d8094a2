"""`itwinai-hpc scaling`: render a scaling study of one step, run it, report from MLflow."""

from __future__ import annotations

import sys

from itwinai_hpc.commands.common import (
    before_queueing,
    command_line,
    wait_and_report,
    workflow_path,
)
from itwinai_hpc.core.errors import UserError


def cmd_scaling(args) -> int:
    """Render the study (scaling.study), submit it, wait, and report from MLflow."""
    import json
    import os

    from itwinai_hpc.backends import get_backend, resolve_backend_name
    from itwinai_hpc.ops import operations
    from itwinai_hpc.render.folder import render_workflow
    from itwinai_hpc.run import layout
    from itwinai_hpc.workflow import scaling
    sizes = {"nodes": scaling.parse_sizes(args.nodes, "--nodes")}
    if args.gpus_per_node:
        sizes["gpus-per-node"] = scaling.parse_sizes(args.gpus_per_node, "--gpus-per-node")
    run = render_workflow(workflow_path(args), args.overrides, run_dir=args.output,
                          runs_dir=args.runs_dir, templates_dir=args.templates,
                          command_line=command_line(), profile=args.profile,
                          edit=lambda doc: scaling.study(doc, args.step, sizes))
    job = next(j for j in run.plan if j.sweep == args.step)
    if job.launcher != "torchrun":
        raise UserError(f"step '{args.step}' has launcher '{job.launcher}', which does not spread "
                        "one training over the nodes, so its size cannot change its speed; a "
                        "scaling study measures a torchrun step (launcher: torchrun)",
                        file=str(workflow_path(args)), field=f"steps.{args.step}.launcher")
    env = dict(job.env)
    tracking = args.tracking_uri or env.get("MLFLOW_TRACKING_URI")
    if not tracking:
        raise UserError(f"step '{args.step}' sets no MLFLOW_TRACKING_URI in its env, so the "
                        "study cannot find its runs; set it there or pass --tracking-uri",
                        field="--tracking-uri")
    backend = get_backend(resolve_backend_name(args.backend))
    before_queueing(run.manifest, backend, run.files, args.no_preflight)
    run.write(group_share=args.group_share)
    print(f"scaling study of '{args.step}': run {run.run_id} in {run.run_dir}", file=sys.stderr)
    operations.submit(run.manifest, backend)
    rc = wait_and_report(run.manifest, args.timeout, out=sys.stderr)
    if rc == operations.EXIT_ACTIVE:
        return rc
    # The store as the jobs used it (MLflow 3's file store, for one, is behind a switch).
    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_")})
    from itwinai_hpc.ml.scaling import format_table, scaling_report
    report = scaling_report(tracking, layout.sweep_id(run.run_id, args.step), run.run_dir)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    for skipped in report.get("skipped") or []:     # a size that failed or logged no epoch
        print(f"not in the report: {skipped}", file=sys.stderr)
    print(f"scaling.png and scaling.json are in {run.run_dir}", file=sys.stderr)
    return rc
