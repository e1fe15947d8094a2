"""What several commands share: the workflow argument, a rendered folder named instead of a
workflow, the checks before anything is queued, waiting with a progress line, finding a run."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from itwinai_hpc.core.errors import UserError


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["itwinai-hpc", *sys.argv[1:]])


def workflow_path(args) -> str:
    """WORKFLOW as a positional argument or as -f/--file (one of them, not both)."""
    if args.workflow and args.workflow_file:
        raise UserError(f"give the workflow once: either {args.workflow} or -f "
                        f"{args.workflow_file}", field="WORKFLOW")
    path = args.workflow or args.workflow_file
    if not path:
        raise UserError("no workflow file given (itwinai-hpc COMMAND WORKFLOW, or -f WORKFLOW)",
                        field="WORKFLOW")
    return path


def rendered_folder(args):
    """The manifest of a run folder named instead of a workflow file (None for a file)."""
    from itwinai_hpc.run.layout import MANIFEST
    from itwinai_hpc.run.manifest import RunManifest
    path = Path(workflow_path(args))
    if not path.is_dir():
        return None
    if not (path / MANIFEST).is_file():
        raise UserError("is a folder but not a run folder (no run.json); name a workflow file "
                        "or a folder written by `itwinai-hpc render`", file=str(path))
    unused = [flag for flag, value in (("--set", args.overrides), ("-o", args.output),
                                       ("--runs-dir", args.runs_dir),
                                       ("--templates", args.templates),
                                       ("--profile", args.profile),
                                       ("--group-share", args.group_share)) if value]
    if unused:
        raise UserError(f"{', '.join(unused)} cannot change a run folder that is already "
                        "rendered; render the workflow again", file=str(path))
    return RunManifest.load(path)


def check_passthrough(manifest) -> None:
    """env-passthrough variables must be set where the run is submitted (they travel by name
    in the job's environment): say so before anything is written or queued."""
    import os
    for step in manifest.steps:
        missing = [n for n in step.plan.env_passthrough if n not in os.environ]
        if missing:
            raise UserError(f"step '{step.name}' takes {', '.join(missing)} from your "
                            "environment (env-passthrough), but it is not set here; export it "
                            "and submit again", field="env-passthrough")
        empty = [n for n in step.plan.env_passthrough if not os.environ[n]]
        if empty:
            raise UserError(f"step '{step.name}' takes {', '.join(empty)} from your "
                            "environment (env-passthrough), but it is set and empty here; "
                            "export its value and submit again", field="env-passthrough")


def before_queueing(manifest, backend, files: dict[str, str] | None, no_preflight: bool,
                     steps: list[str] | None = None):
    """What must hold before anything is written or queued: passed-through variables set, the
    backend usable here, and its scheduler accepting every step (or `steps`) as written (SLURM:
    `sbatch --test-only`; skipped with --no-preflight)."""
    check_passthrough(manifest)
    backend.preflight(manifest)
    if no_preflight:
        return
    scripts = {}
    for step in manifest.steps:
        if steps is None or step.name in steps:
            text = files[step.script] if files is not None else \
                (Path(manifest.run_dir) / step.script).read_text()
            scripts[step.name] = (step.script, text)
    for line in backend.ask_scheduler(manifest, scripts):
        print(line, file=sys.stderr)


def wait_and_report(manifest, timeout: float | None = None, out=None) -> int:
    from itwinai_hpc.ops import operations
    from itwinai_hpc.ops.status_view import format_table
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        print(("\r\x1b[K" if tty else "") + line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    rc = operations.wait(manifest, timeout=timeout, progress=progress)
    if tty:
        print(file=sys.stderr)
    if rc == operations.EXIT_ACTIVE:      # only a timeout ends the wait with work left
        print(f"gave up waiting after --timeout {timeout:g} s; the jobs go on: "
              f"itwinai-hpc status {manifest.run_id}", file=sys.stderr)
    print(format_table(manifest), file=out or sys.stdout)
    if rc != 0:
        operations.print_failures(manifest)
    return rc


def load_run(args):
    from itwinai_hpc.run.folders import find_run
    from itwinai_hpc.run.manifest import RunManifest
    return RunManifest.load(find_run(args.run, args.runs_dir))
