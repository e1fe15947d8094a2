"""`itwinai-hpc validate`: load and check a workflow, print its plan; nothing is written."""

from __future__ import annotations

import shlex
import sys

from itwinai_hpc.commands.common import workflow_path


def cmd_validate(args) -> int:
    from itwinai_hpc.render.plan import plan
    from itwinai_hpc.workflow.graph import implausible_values
    from itwinai_hpc.workflow.load import load_workflow
    args.workflow = workflow_path(args)
    loaded = load_workflow(args.workflow, args.overrides, profile=args.profile)
    from itwinai_hpc.workflow.site_checks import site_warnings
    for warning in implausible_values(loaded.workflow, loaded.doc, loaded.site.profile) + \
            site_warnings(loaded.workflow, loaded.doc, loaded.site, loaded.workdir):
        print(f"warning: {warning.format()}", file=sys.stderr)
    jobs = plan(loaded.workflow, loaded.site.profile)
    print(f"{args.workflow}: OK: workflow '{loaded.workflow.name}', {len(jobs)} step(s), "
          f"site profile '{loaded.site.name}'")
    for job in jobs:
        needs = ", ".join(n + (" ended" if n in job.needs_any else "") for n in job.needs)
        after = f"  (after {needs})" if job.needs else ""
        r = job.resources
        print(f"  {job.index:>2}. {job.name:<16} {job.launcher:<9} nodes={r.nodes}"
              f" gpus-per-node={r.gpus_per_node}"
              f" cpus-per-task={r.cpus_per_task or '-'} mem={r.mem or '-'}{after}")
        if job.sweep and job.sweep_task is None:
            print(f"      sweep: {job.sweep_size} tasks over {', '.join(job.matrix_keys)}, "
                  f"one job array ({job.array})")
        elif job.sweep:
            values = " ".join(f"{k}={v}" for k, v in job.matrix[0].items())
            print(f"      sweep: task {job.sweep_task} of '{job.sweep}' ({values}), a job of "
                  "its own: the tasks' resources differ")
        # Lists after defaults < step (they extend unless the step says {replace: [...]}).
        merged = {"setup": job.setup, "node-setup": job.node_setup,
                  "extra-sbatch": r.extra_sbatch,
                  "container.binds": job.container.binds if job.container else (),
                  "launch.srun-args": job.launch.srun_args,
                  "launch.torchrun-args": job.launch.torchrun_args}
        for key, items in merged.items():
            if items:
                print(f"      {key}: {' '.join(shlex.quote(i) for i in items)}")
    return 0
