"""`itwinai-hpc render`: a workflow becomes a run folder (scripts, submit.sh, run.json)."""

from __future__ import annotations

from itwinai_hpc.commands.common import command_line, workflow_path


def prepare_run(args, backend: str | None = None):
    """Load and render the workflow into a RenderedRun (not yet written). For the local backend
    the paths need not suit #SBATCH lines."""
    from itwinai_hpc.render.folder import render_workflow
    return render_workflow(workflow_path(args), args.overrides, run_dir=args.output,
                           runs_dir=args.runs_dir, templates_dir=args.templates,
                           command_line=command_line(), profile=args.profile,
                           local=backend == "local")


def cmd_render(args) -> int:
    run = prepare_run(args)
    run.write(group_share=args.group_share)
    print(f"run {run.run_id}")
    print(f"run folder {run.run_dir}")
    for name in run.files:
        print(f"  {name}")
    print(f"submit it with: bash {run.run_dir / 'submit.sh'}  (or: itwinai-hpc submit "
          f"{run.run_dir})")
    return 0
