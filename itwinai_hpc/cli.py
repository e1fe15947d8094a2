"""The `itwinai-hpc` command: parses arguments and calls functions that tests can call too.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (file and field named, no traceback),
3 (status) work still pending or running. Heavy modules (torch, mlflow, h5py) are imported only
by the commands that need them, never by validate, render, status or --help.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from itwinai_hpc import __version__
from itwinai_hpc.commands.process import run_as_program, terminated, usable_streams
from itwinai_hpc.core.errors import RunStateError, UserError

# Commands the job scripts run (inside a job, on a compute node); every other command is typed
# at the login node. `--help` lists the two groups apart.
IN_JOB_COMMANDS = ("preprocess", "export-idx", "stage-shards", "train", "predict")

EPILOG = """examples:
  itwinai-hpc validate use-cases/mnist/training-workflow.yml
  itwinai-hpc render   use-cases/mnist/training-workflow.yml -o runs/try1
  itwinai-hpc submit   use-cases/mnist/training-workflow.yml --set steps.train.resources.nodes=2
  itwinai-hpc status

exit codes: 0 ok; 1 a job or step failed; 2 bad input; 3 (status) still pending or running
"""


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _command(module: str, function: str):
    """The function of commands/<module>.py that runs a command, imported only when that command
    runs: `validate` never loads what `submit` needs."""
    def run(args):
        import importlib
        return getattr(importlib.import_module(f"itwinai_hpc.commands.{module}"), function)(args)
    run.__name__ = function
    return run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, one whose only real command is that one (the full parser
    where no command has that name): see commands/one_command.py."""
    parser = argparse.ArgumentParser(
        prog="itwinai-hpc", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One workflow YAML becomes dependent SLURM jobs (or a local run).",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"itwinai-hpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="one of the commands listed below")
    if only is not None:
        from itwinai_hpc.commands.one_command import OneCommand
        sub = OneCommand(sub, only)  # type: ignore[assignment]

    def workflow_args(p: argparse.ArgumentParser, what: str = "the workflow YAML file") -> None:
        p.add_argument("workflow", nargs="?", metavar="WORKFLOW", help=what)
        p.add_argument("-f", "--file", dest="workflow_file", metavar="WORKFLOW",
                       help="the same, as a flag (itwinai's `run-workflow.py -f FILE`)")
        p.add_argument("--profile", metavar="NAME|PATH",
                       help="the site profile merged under the workflow's defaults (default: "
                            "the workflow's `profile:`, else generic); `itwinai-hpc profiles` "
                            "lists them")
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
        p.add_argument("--group-share", action="store_true",
                       help="let your group read and write the run folder (default: only you)")

    def timeout_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="with --wait: stop waiting after SECONDS, exit 3 (the jobs go on)")

    p = sub.add_parser("validate", help="check a workflow file; writes nothing",
                       description="Check a workflow file: schema, types, needs, cycles. "
                                   "Prints every problem with file, line and field; exit 2 "
                                   "if there is any. Writes nothing.")
    workflow_args(p)
    p.set_defaults(func=_command("validate", "cmd_validate"))

    p = sub.add_parser("render", help="write the run folder (scripts, submit.sh) without "
                                      "submitting",
                       description="Write a run folder: one sbatch script per step, submit.sh "
                                   "(works by hand with only sbatch), the resolved workflow "
                                   "and run.json. Submits nothing.")
    workflow_args(p)
    run_folder_args(p)
    p.set_defaults(func=_command("render", "cmd_render"))

    p = sub.add_parser("submit", help="render a run folder and submit it",
                       description="Render the workflow into a run folder (as `render` does) "
                                   "and submit it: one job per step, each after the steps it "
                                   "needs. Or submit a run folder that `render` wrote, with any "
                                   "backend. Prints the run id and folder.")
    workflow_args(p, "the workflow YAML file, or a run folder written by `render`")
    p.add_argument("--backend", default="auto", choices=["auto", "slurm", "local", "submitit"],
                   help="auto (default): slurm where sbatch works, else local")
    run_folder_args(p)
    p.add_argument("--wait", action="store_true",
                   help="wait with live progress; exit like `status` (non-zero if a step fails)")
    timeout_arg(p)
    p.add_argument("--no-preflight", action="store_true",
                   help="skip `sbatch --test-only` of every step before anything is queued")
    p.add_argument("--dry-run", action="store_true",
                   help="render the run folder and print what would be submitted; submit nothing")
    p.set_defaults(func=_command("submit", "cmd_submit"))

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
    p.add_argument("--interval", type=_positive_seconds, default=2.0,
                   help="seconds between refreshes")
    p.set_defaults(func=_command("status", "cmd_status"))

    p = sub.add_parser("logs", help="print or follow a step's output",
                       description="Print a step's log (default: the first step that failed, "
                                   "else the last one that ran).")
    run_arg(p, required=True)
    p.add_argument("step", nargs="?", help="the step name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows, "
                                                               "until the step ends")
    p.set_defaults(func=_command("status", "cmd_logs"))

    p = sub.add_parser("cancel", help="cancel every unfinished job of a run")
    run_arg(p, required=True)
    p.set_defaults(func=_command("lifecycle", "cmd_cancel"))

    p = sub.add_parser("resume", help="re-submit the steps that did not complete",
                       description="Re-submit the steps of a run that did not complete, and "
                                   "the steps that need them; completed steps are kept.")
    run_arg(p, required=True)
    p.add_argument("--wait", action="store_true", help="wait with live progress")
    timeout_arg(p)
    p.add_argument("--no-preflight", action="store_true",
                   help="skip `sbatch --test-only` of the steps to re-submit")
    p.add_argument("--exclude", metavar="NODES", default="",
                   help="keep these nodes (comma-separated, as sbatch --exclude) out of the "
                        "re-submitted jobs, and of later resumes: e.g. the node a step hung on")
    p.set_defaults(func=_command("lifecycle", "cmd_resume"))

    p = sub.add_parser("report", help="usage vs requests per job, with advice",
                       description="Per step (and array task): state, elapsed vs requested "
                                   "time, CPU efficiency, MaxRSS vs requested memory, GPUs, "
                                   "energy, from sacct where slurmdbd runs; advice where a "
                                   "request is far off what was used.")
    run_arg(p, required=True)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_command("report", "cmd_report"))

    p = sub.add_parser("scaling", help="run one step at several sizes; speed-up, efficiency",
                       description="A scaling study: run --step (and once, the steps it needs) "
                                   "at each size, one after the other, wait, and report per "
                                   "size samples/s, epoch time, speed-up and parallel "
                                   "efficiency from the step's MLflow runs: a table, --json, "
                                   "and scaling.png + scaling.json in the run folder and in "
                                   "MLflow.")
    workflow_args(p)
    p.add_argument("--step", required=True, help="the step to scale (e.g. train)")
    p.add_argument("--nodes", required=True, metavar="N,N,...", help="node counts, e.g. 1,2,4")
    p.add_argument("--gpus-per-node", metavar="N,N,...",
                   help="GPUs per node to try too (every combination with --nodes)")
    p.add_argument("--backend", default="auto", choices=["auto", "slurm", "local", "submitit"],
                   help="auto (default): slurm where sbatch works, else local")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="where the step's MLflow runs are (default: its MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip `sbatch --test-only` of every step before anything is queued")
    run_folder_args(p)
    timeout_arg(p)
    p.set_defaults(func=_command("scaling", "cmd_scaling"))

    p = sub.add_parser("profiles", help="list site profiles; --show one; init one for here",
                       description="List the site profiles (shipped and yours, one name per "
                                   "line), show one with its sources, or write a starting "
                                   "profile for the cluster you are on (init).")
    p.add_argument("action", nargs="?", choices=["list", "init"], default="list")
    p.add_argument("--show", metavar="NAME", help="print one profile with its comments")
    p.set_defaults(func=_command("profiles", "cmd_profiles"))

    from itwinai_hpc.commands import extra_args  # doctor, init, schema: modules of their own
    extra_args.register((sub, workflow_args, run_folder_args, _command))
    if only is None or not sub.found:  # type: ignore[attr-defined]
        _add_optional_commands(sub)
    if only is not None:
        return parser if sub.found else build_parser()  # type: ignore[attr-defined]
    _group_command_help(parser, sub)
    return parser


def _group_command_help(parser: argparse.ArgumentParser, sub) -> None:
    """List the commands in two groups (login node / inside jobs) instead of argparse's one."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    sub._choices_actions.clear()
    width = max(map(len, helps)) + 2

    def block(title: str, names) -> str:
        return title + "\n" + "\n".join(f"  {n:<{width}}{helps[n]}" for n in names) + "\n"

    in_job = [n for n in helps if n in IN_JOB_COMMANDS]
    login = [n for n in helps if n not in IN_JOB_COMMANDS]
    parser.epilog = (block("commands you type (at the login node):", login) + "\n" +
                     block("commands the job scripts run (inside a job; also by hand):", in_job)
                     + "\n" + EPILOG)


def _add_optional_commands(sub) -> None:
    """Commands that live in other modules; each registers its own parser."""
    from itwinai_hpc.data import cli as data_cli
    from itwinai_hpc.ml import cli as ml_cli
    data_cli.add_parser(sub)
    ml_cli.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    usable_streams()
    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:                  # not the main thread (a library caller's worker)
        return _main(argv)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=words[0] if words and not words[0].startswith("-") else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()             # here, where a closed pipe is caught below
        return rc
    except UserError as exc:
        print(f"error: {exc.format()}".replace("\n", "\nerror: "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:            # `itwinai-hpc status | head`: the reader has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141                     # 128 + SIGPIPE, as a shell tool killed by it
    except OSError as exc:             # a full disk, a quota, a read-only or foreign folder
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Imported only here: train and predict (inside jobs) never load the orchestration
        # modules; a SubmitError comes from a command that has imported them already.
        from itwinai_hpc.backends import SubmitError
        from itwinai_hpc.backends.slurm.query import SlurmQueryError
        if isinstance(exc, SlurmQueryError):   # scontrol/sacct missing, or the controller down
            print(f"error: cannot ask SLURM about the run's jobs: {exc}", file=sys.stderr)
            return 1
        if not isinstance(exc, (SubmitError, RunStateError)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    run_as_program(main)
