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
from .backends import SubmitError
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

    def run_folder_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", metavar="DIR",
                       help="the run folder to create (default: RUNS/<run id>)")
        p.add_argument("--runs-dir", type=Path, metavar="RUNS",
                       help="where run folders go (default: $ITWINAI_HPC_RUNS or ./runs)")
        p.add_argument("--templates", metavar="DIR",
                       help="a folder of templates that replace the built-in ones of the same "
                            "name")

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
    run_folder_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("submit", help="render a run folder and submit it",
                       description="Render the workflow into a run folder (as `render` does) "
                                   "and submit it: one job per step, each after the steps it "
                                   "needs. Prints the run id and folder.")
    workflow_args(p)
    p.add_argument("--backend", default="auto", choices=["auto", "slurm", "local", "submitit"],
                   help="auto (default): slurm where sbatch works, else local")
    run_folder_args(p)
    p.add_argument("--wait", action="store_true",
                   help="wait with live progress; exit like `status` (non-zero if a step fails)")
    p.add_argument("--dry-run", action="store_true",
                   help="render the run folder and print what would be submitted; submit nothing")
    p.set_defaults(func=cmd_submit)

    def run_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument("run", nargs=None if required else "?", metavar="RUN",
                       help="run id, id prefix or run folder" +
                            ("" if required else " (default: the newest run)"))
        p.add_argument("--runs-dir", type=Path, metavar="RUNS",
                       help="where run folders are (default: $ITWINAI_HPC_RUNS or ./runs)")

    p = sub.add_parser("status", help="one table for a whole run",
                       description="Show every step of a run: job id, state, elapsed, exit "
                                   "code, nodes, log. One scheduler query per refresh.",
                       epilog="exit status: 0 every step completed; 1 a step failed or was "
                              "cancelled; 3 work is still pending or running",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    run_arg(p)
    p.add_argument("--json", action="store_true", help="print {run, steps} as JSON")
    p.add_argument("--watch", action="store_true", help="refresh in place until the run is done")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print or follow a step's output",
                       description="Print a step's log (default: the first step that failed, "
                                   "else the last one that ran).")
    run_arg(p, required=True)
    p.add_argument("step", nargs="?", help="the step name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows, "
                                                               "until the step ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel every unfinished job of a run")
    run_arg(p, required=True)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="re-submit the steps that did not complete",
                       description="Re-submit the steps of a run that did not complete, and "
                                   "the steps that need them; completed steps are kept.")
    run_arg(p, required=True)
    p.add_argument("--wait", action="store_true", help="wait with live progress")
    p.set_defaults(func=cmd_resume)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Commands that live in other modules; each registers its own parser."""
    from .data import cli as data_cli
    from .train import cli as train_cli
    data_cli.add_parser(sub)
    train_cli.add_parser(sub)


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


def cmd_submit(args) -> int:
    from .backends import get_backend, resolve_backend_name
    from . import operations
    name = resolve_backend_name(args.backend)
    backend = get_backend(name)
    run = prepare_run(args, backend=name)
    backend.preflight(run.jobs)
    run.write()
    print(f"run {run.run_id}")
    print(f"run folder {run.run_dir}")
    if args.dry_run:
        print(f"dry run: nothing submitted; with --backend {name} it would run:")
        for job in run.jobs:
            script = job.script if name == "slurm" else job.local_script
            print(f"  {script}" + (f"  (after {', '.join(job.needs)})" if job.needs else ""))
        if name == "slurm":
            print(f"  i.e. bash {run.run_dir / 'submit.sh'}")
        return 0
    assert run.manifest is not None
    operations.submit(run.manifest, backend)
    for step in run.manifest.steps:
        print(f"  {step.name:<16} {step.job_id}")
    if not args.wait:
        print(f"follow it with: itwinai-hpc status {run.run_id}")
        return 0
    return _wait_and_report(run.manifest)


def _wait_and_report(manifest) -> int:
    from . import operations
    from .status_view import format_table
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        print(("\r\x1b[K" if tty else "") + line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    rc = operations.wait(manifest, progress=progress)
    if tty:
        print(file=sys.stderr)
    print(format_table(manifest))
    if rc != 0:
        operations.print_failures(manifest)
    return rc


def _load_run(args):
    from .runs import RunManifest, find_run
    return RunManifest.load(find_run(args.run, args.runs_dir))


def cmd_status(args) -> int:
    import time
    from . import operations
    from .status_view import format_table, to_json
    manifest = _load_run(args)
    while True:
        operations.refresh(manifest)
        rc = operations.exit_code(manifest)
        text = to_json(manifest) if args.json else format_table(manifest)
        if args.watch and sys.stdout.isatty():
            print("\x1b[H\x1b[2J" + text, flush=True)
        else:
            print(text, flush=True)
        if not args.watch or rc != operations.EXIT_ACTIVE:
            return rc
        time.sleep(args.interval)


def cmd_logs(args) -> int:
    from . import logs
    return logs.show(_load_run(args), args.step, follow=args.follow)


def cmd_cancel(args) -> int:
    from . import operations
    manifest = _load_run(args)
    cancelled = operations.cancel(manifest)
    print(f"cancelled: {', '.join(cancelled)}" if cancelled else
          f"nothing to cancel: every step of run {manifest.run_id} has finished")
    return 0


def cmd_resume(args) -> int:
    from . import operations
    manifest = _load_run(args)
    todo = operations.resume(manifest)
    if not todo:
        print(f"nothing to resume: every step of run {manifest.run_id} completed")
        return 0
    for name in todo:
        print(f"  {name:<16} {manifest.step(name).job_id}")
    return _wait_and_report(manifest) if args.wait else 0


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
    except SubmitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
