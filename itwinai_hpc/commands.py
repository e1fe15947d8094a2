"""What the orchestration commands do (validate, render, submit, status, logs, cancel, resume),
as functions of the parsed arguments that tests can call too; cli.py only parses.

Imports nothing heavy at module level: each command imports what it needs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .errors import UserError


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["itwinai-hpc", *sys.argv[1:]])


def _workflow_path(args) -> str:
    """WORKFLOW as a positional argument or as -f/--file (one of them, not both)."""
    if args.workflow and args.workflow_file:
        raise UserError(f"give the workflow once: either {args.workflow} or -f "
                        f"{args.workflow_file}", field="WORKFLOW")
    path = args.workflow or args.workflow_file
    if not path:
        raise UserError("no workflow file given (itwinai-hpc COMMAND WORKFLOW, or -f WORKFLOW)",
                        field="WORKFLOW")
    return path


def cmd_validate(args) -> int:
    from .graph import implausible_values
    from .plan import plan
    from .workflow import load_workflow
    args.workflow = _workflow_path(args)
    loaded = load_workflow(args.workflow, args.overrides, profile=args.profile)
    for warning in implausible_values(loaded.workflow, loaded.doc, loaded.site.profile):
        print(f"warning: {warning.format()}", file=sys.stderr)
    jobs = plan(loaded.workflow, loaded.site.profile)
    print(f"{args.workflow}: OK: workflow '{loaded.workflow.name}', {len(jobs)} step(s), "
          f"site profile '{loaded.site.name}'")
    for job in jobs:
        after = f"  (after {', '.join(n + (' ended' if n in job.needs_any else '') for n in job.needs)})" \
            if job.needs else ""
        r = job.resources
        print(f"  {job.index:>2}. {job.name:<16} {job.launcher:<9} nodes={r.nodes}"
              f" gpus-per-node={r.gpus_per_node}{after}")
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


def prepare_run(args):
    """Load and render the workflow into a RenderedRun (not yet written)."""
    from .render import render_workflow
    return render_workflow(_workflow_path(args), args.overrides, run_dir=args.output,
                           runs_dir=args.runs_dir, templates_dir=args.templates,
                           command_line=command_line(), profile=args.profile)


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


def _rendered_folder(args):
    """The manifest of a run folder named instead of a workflow file (None for a file)."""
    from .layout import MANIFEST
    from .runs import RunManifest
    path = Path(_workflow_path(args))
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


def _sbatch_preflight(manifest, files: dict[str, str] | None,
                      steps: list[str] | None = None) -> None:
    """Ask the controller about every step (or `steps`) before anything is written or
    queued."""
    from .backends.sbatch import preflight
    from .backends.slurm_env import submit_environment
    scripts = {}
    for step in manifest.steps:
        if steps is not None and step.name not in steps:
            continue
        text = files[step.script] if files is not None else \
            (Path(manifest.run_dir) / step.script).read_text()
        scripts[step.name] = (step.script, text)
    for check in preflight(scripts, submit_environment()):
        print(f"preflight {check.step}: {check.estimate}", file=sys.stderr)


def _check_passthrough(manifest) -> None:
    """env-passthrough variables must be set where the run is submitted (they travel by name
    in the job's environment): say so before anything is written or queued."""
    import os
    for step in manifest.steps:
        missing = [n for n in step.plan.env_passthrough if n not in os.environ]
        if missing:
            raise UserError(f"step '{step.name}' takes {', '.join(missing)} from your "
                            "environment (env-passthrough), but it is not set here; export it "
                            "and submit again", field="env-passthrough")


def _before_queueing(manifest, backend, files: dict[str, str] | None, no_preflight: bool,
                     steps: list[str] | None = None):
    """What must hold before anything is written or queued: passed-through variables set, the
    backend usable here, and (SLURM) the controller accepting every step (or `steps`) as
    written."""
    _check_passthrough(manifest)
    backend.preflight(manifest)
    if backend.name == "slurm" and not no_preflight:
        _sbatch_preflight(manifest, files, steps)


def cmd_submit(args) -> int:
    from .backends import get_backend, resolve_backend_name
    from . import operations
    name = resolve_backend_name(args.backend)
    backend = get_backend(name)
    manifest = _rendered_folder(args)
    if manifest is None:
        run = prepare_run(args)
        _before_queueing(run.manifest, backend, run.files, args.no_preflight)
        run.write(group_share=args.group_share)
        manifest = run.manifest
    else:
        _before_queueing(manifest, backend, None, args.no_preflight)
    print(f"run {manifest.run_id}")
    print(f"run folder {manifest.run_dir}")
    if args.dry_run:
        print(f"dry run: nothing submitted; with --backend {name} it would run:")
        for step in manifest.steps:
            script = step.script if name == "slurm" else step.local_script
            print(f"  {script}" + (f"  (after {', '.join(step.needs)})" if step.needs else ""))
        if name == "slurm":
            print(f"  i.e. bash {Path(manifest.run_dir) / 'submit.sh'}")
        return 0
    operations.submit(manifest, backend)
    for step in manifest.steps:
        print(f"  {step.name:<16} {step.job_id}")
    if not args.wait:
        print(f"follow it with: itwinai-hpc status {manifest.run_id}")
        return 0
    return _wait_and_report(manifest, args.timeout)


def cmd_scaling(args) -> int:
    """Render the study (scaling.study), submit it, wait, and report from MLflow."""
    import json
    import os
    from . import layout, operations, scaling
    from .backends import get_backend, resolve_backend_name
    from .render import render_workflow
    sizes = {"nodes": scaling.parse_sizes(args.nodes, "--nodes")}
    if args.gpus_per_node:
        sizes["gpus-per-node"] = scaling.parse_sizes(args.gpus_per_node, "--gpus-per-node")
    run = render_workflow(_workflow_path(args), args.overrides, run_dir=args.output,
                          runs_dir=args.runs_dir, templates_dir=args.templates,
                          command_line=command_line(), profile=args.profile,
                          edit=lambda doc: scaling.study(doc, args.step, sizes))
    job = next(j for j in run.plan if j.sweep == args.step)
    if job.launcher != "torchrun":
        raise UserError(f"step '{args.step}' has launcher '{job.launcher}', which does not spread "
                        "one training over the nodes, so its size cannot change its speed; a "
                        "scaling study measures a torchrun step (launcher: torchrun)",
                        file=str(_workflow_path(args)), field=f"steps.{args.step}.launcher")
    env = dict(job.env)
    tracking = args.tracking_uri or env.get("MLFLOW_TRACKING_URI")
    if not tracking:
        raise UserError(f"step '{args.step}' sets no MLFLOW_TRACKING_URI in its env, so the "
                        "study cannot find its runs; set it there or pass --tracking-uri",
                        field="--tracking-uri")
    backend = get_backend(resolve_backend_name(args.backend))
    _before_queueing(run.manifest, backend, run.files, args.no_preflight)
    run.write(group_share=args.group_share)
    print(f"scaling study of '{args.step}': run {run.run_id} in {run.run_dir}", file=sys.stderr)
    operations.submit(run.manifest, backend)
    rc = _wait_and_report(run.manifest, args.timeout, out=sys.stderr)
    if rc == operations.EXIT_ACTIVE:
        return rc
    # The store as the jobs used it (MLflow 3's file store, for one, is behind a switch).
    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_")})
    from .ml.scaling import format_table, scaling_report
    report = scaling_report(tracking, layout.sweep_id(run.run_id, args.step), run.run_dir)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    for skipped in report.get("skipped") or []:     # a size that failed or logged no epoch
        print(f"not in the report: {skipped}", file=sys.stderr)
    print(f"scaling.png and scaling.json are in {run.run_dir}", file=sys.stderr)
    return rc


def _wait_and_report(manifest, timeout: float | None = None, out=None) -> int:
    from . import operations
    from .status_view import format_table
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


def _load_run(args):
    from .runs import RunManifest, find_run
    return RunManifest.load(find_run(args.run, args.runs_dir))


def cmd_status(args) -> int:
    import time
    from . import operations
    from .status_view import format_table, to_json
    manifest = _load_run(args)
    while True:
        try:
            operations.refresh(manifest)
        except OSError as exc:          # full disk, quota, read-only folder: still show it
            print(f"warning: cannot update {manifest.run_dir} ({exc.strerror or exc}); "
                  "showing the last recorded state", file=sys.stderr)
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
    if cancelled:
        print(f"cancelled: {', '.join(cancelled)}")
    elif not manifest.backend:
        print(f"nothing to cancel: run {manifest.run_id} was never submitted")
    else:
        print(f"nothing to cancel: no step of run {manifest.run_id} is pending or running")
    return 0


def cmd_resume(args) -> int:
    from . import operations
    manifest = _load_run(args)

    # As for submit, on the steps resume is about to queue (a script edited since, a partition
    # gone): refused there, nothing is queued and run.json stays as it is.
    todo = operations.resume(manifest, lambda steps: _before_queueing(
        manifest, operations.backend_for(manifest), None, args.no_preflight, steps))
    if not todo:
        print(f"nothing to resume: every step of run {manifest.run_id} completed")
        return 0
    for name in todo:
        print(f"  {name:<16} {manifest.step(name).job_id}")
    return _wait_and_report(manifest, args.timeout) if args.wait else 0




def cmd_profiles(args) -> int:
    from . import profiles
    if args.show:
        print(profiles.describe(profiles.load_profile(args.show)), end="")
        return 0
    if args.action == "init":
        from .profiles.detect import detect
        try:
            print(detect(), end="")
        except RuntimeError as exc:
            print(f"error: {exc} (is this a SLURM login node?)", file=sys.stderr)
            return 1
        return 0
    by_file: dict = {}
    for name, path in profiles.available().items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        print(names[0])
    return 0


def cmd_report(args) -> int:
    """Usage against requests per job, from sacct where slurmdbd runs."""
    import subprocess
    from . import operations, report
    manifest = _load_run(args)
    operations.refresh(manifest)
    accounting = manifest.extra.get("accounting")
    slurm = manifest.backend == "slurm" or manifest.extra.get("submitit", {}).get(
        "cluster") == "slurm"
    sacct, note = None, None
    ids = [s.job_id for s in manifest.steps if s.job_id]
    if slurm and accounting == "dbd" and ids:
        from .backends.slurm_env import submit_environment
        start = manifest.extra.get("submitted_since") or manifest.created
        p = subprocess.run(report.build_sacct_command(ids, start), capture_output=True,
                           text=True, timeout=60, env=submit_environment())
        if p.returncode != 0:
            print(f"error: sacct failed: {p.stderr.strip()}", file=sys.stderr)
            return 1
        sacct = report.parse_usage(p.stdout)
    elif slurm:
        note = (f"CPU efficiency, memory use and energy need slurmdbd accounting (this cluster: "
                f"{accounting or 'unknown'}); shown: states and elapsed time")
    else:
        note = (f"a {manifest.backend or 'not submitted'} run has no scheduler accounting; "
                "shown: states and elapsed time")
    rows = report.usage_rows(manifest, sacct)
    print(report.to_json(manifest, rows, note) if args.json
          else report.format_report(manifest, rows, note))
    return 0
