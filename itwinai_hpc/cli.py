"""The `itwinai-hpc` command: parses arguments and calls functions that tests can call too.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (file and field named, no traceback),
3 (status) work still pending or running. Heavy modules (torch, mlflow, h5py) are imported only
by the commands that need them, never by validate, render, status or --help.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import __version__
from .errors import UserError

EPILOG = """examples:
  itwinai-hpc validate use-cases/mnist/training-workflow.yml
  itwinai-hpc render   use-cases/mnist/training-workflow.yml -o runs/try1
  itwinai-hpc submit   use-cases/mnist/training-workflow.yml --set steps.train.resources.nodes=2
  itwinai-hpc status

exit codes: 0 ok; 1 a job or step failed; 2 bad input; 3 (status) still pending or running
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itwinai-hpc", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One workflow YAML becomes dependent SLURM jobs (or a local run).",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"itwinai-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def workflow_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("workflow", help="the workflow YAML file")
        p.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="PATH=VALUE",
                       help="override any field, e.g. steps.train.resources.nodes=4 or "
                            "vars.data_dir=/scratch/x (repeatable; VALUE is read as YAML)")

    p = sub.add_parser("validate", help="check a workflow file; writes nothing",
                       description="Check a workflow file: schema, types, needs, cycles. "
                                   "Prints every problem with file, line and field; exit 2 "
                                   "if there is any. Writes nothing.")
    workflow_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="write the run folder (scripts, submit.sh) without "
                                      "submitting",
                       description="Write a run folder: one sbatch script per step, submit.sh "
                                   "(works by hand with only sbatch), the resolved workflow "
                                   "and run.json. Submits nothing.")
    workflow_args(p)
    p.add_argument("-o", "--output", metavar="DIR",
                   help="the run folder to create (default: RUNS/<run id>)")
    p.add_argument("--runs-dir", type=Path, metavar="RUNS",
                   help="where run folders go (default: $ITWINAI_HPC_RUNS or ./runs)")
    p.add_argument("--templates", metavar="DIR",
                   help="a folder of templates that replace the built-in ones of the same name")
    p.set_defaults(func=cmd_render)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Commands that live in other modules; each registers its own parser."""
    import importlib.util
    if importlib.util.find_spec("itwinai_hpc.data.cli"):   # TODO(lead): drop once data/cli lands
        from .data import cli as data_cli
        data_cli.add_parser(sub)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["itwinai-hpc", *sys.argv[1:]])


def cmd_validate(args) -> int:
    from .plan import plan
    from .workflow import load_workflow
    loaded = load_workflow(args.workflow, args.overrides)
    jobs = plan(loaded.workflow)
    print(f"{args.workflow}: OK: workflow '{loaded.workflow.name}', {len(jobs)} step(s)")
    for job in jobs:
        after = f"  (after {', '.join(job.needs)})" if job.needs else ""
        r = job.resources
        print(f"  {job.index:>2}. {job.name:<16} {job.launcher:<9} nodes={r.nodes}"
              f" gpus-per-node={r.gpus_per_node}{after}")
    return 0


def prepare_run(args, backend: str | None = None):
    """Load and render the workflow into a RenderedRun (not yet written)."""
    from .render import render_run
    from .runs import default_runs_dir, new_run_id
    from .workflow import load_workflow, peek_name
    run_id = new_run_id(peek_name(args.workflow))
    runs_dir = args.runs_dir or default_runs_dir()
    run_dir = Path(args.output) if getattr(args, "output", None) else runs_dir / run_id
    run_dir = run_dir.absolute()
    loaded = load_workflow(args.workflow, args.overrides,
                           builtins={"run_dir": str(run_dir), "run_id": run_id})
    return render_run(loaded, run_dir, run_id, backend=backend,
                      templates_dir=args.templates, command_line=command_line())


def cmd_render(args) -> int:
    run = prepare_run(args)
    run.write()
    print(f"run {run.run_id}")
    print(f"run folder {run.run_dir}")
    for name in run.files:
        print(f"  {name}")
    print(f"submit it with: bash {run.run_dir / 'submit.sh'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc.format()}".replace("\n", "\nerror: "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
