"""Render a workflow into a run folder: per step an sbatch script and a local script, submit.sh,
the resolved workflow.yml and run.json with the plan. The folder is the whole request: any
backend can submit it (TorchX's dry run, then schedule).

`render_workflow` picks the run id and folder, loads the workflow with them and renders, in
memory (a RenderedRun you can inspect); `RenderedRun.write` puts it on disk atomically. Nothing
here submits anything, and nothing here imports torch or mlflow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from itwinai_hpc.core import markers
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.version import __version__
from itwinai_hpc.core.yamlsrc import YamlDoc
from itwinai_hpc.render.binds import bind_sources_for, check_binds, workflow_bind_for
from itwinai_hpc.render.plan import plan
from itwinai_hpc.render.templating import submit_dependency, template_env
from itwinai_hpc.run import guard, layout
from itwinai_hpc.run.folders import default_runs_dir, new_run_id
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.paths import (
    BINDING_RUNTIMES,
    check_run_folder,
    check_sbatch_paths,
)
from itwinai_hpc.run.planned import PlannedStep
from itwinai_hpc.run.submit_env import KEEP_SLURM_ENV
from itwinai_hpc.workflow.load import LoadedWorkflow, read_workflow, resolve_workflow, workflow_name
from itwinai_hpc.workflow.schema import _StepSettings


@dataclass
class RenderedRun:
    """A run folder's contents in memory: what `render` writes and every backend submits."""

    run_id: str
    run_dir: Path
    plan: list[PlannedStep]
    manifest: RunManifest
    files: dict[str, str] = field(default_factory=dict)      # relative name -> text

    def write(self, group_share: bool = False) -> Path:
        """Write every file into a hidden sibling folder, then rename it into place: a crash
        leaves either the complete run folder or none. The folder is private (0700): its
        scripts run as you and its logs may hold what your jobs print; `group_share` opens it
        to your group (read and write, as the umask allows), never to others."""
        target = self.run_dir
        try:
            if target.is_symlink():
                raise UserError("is a symbolic link; name a plain folder for the run (-o)",
                                file=str(target))
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise UserError(f"{target} already exists and is not empty; choose another -o "
                                "folder")
            return self._write(target, group_share)
        except OSError as exc:          # too long a name, no space, no permission, ...
            raise UserError(f"cannot write the run folder: {exc.strerror or exc}",
                            file=str(exc.filename or target)) from None

    def _write(self, target: Path, group_share: bool) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:64]}.", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        try:
            (tmp / layout.LOGS).mkdir()
            if group_share:
                # The group reads everything and writes where jobs write (logs/), never the
                # folder itself: a member could swap a script the owner's next resume runs.
                tmp.chmod(0o750 & ~umask)
                (tmp / layout.LOGS).chmod(0o770 & ~umask)
            scripts = []
            for name, text in self.files.items():
                path = tmp / name
                path.write_text(text, encoding="utf-8")
                script = name.endswith((".sh", ".sbatch"))
                path.chmod((0o755 if script else 0o644) & ~umask & ~0o022)
                if script:
                    scripts.append(name)
            self.manifest.extra[guard.SCRIPTS] = guard.script_records(tmp, scripts)
            self.manifest.save(tmp / layout.MANIFEST)
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def render_workflow(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                    run_dir: str | Path | None = None, runs_dir: str | Path | None = None,
                    templates_dir: str | Path | None = None, command_line: str = "",
                    run_id: str | None = None, workdir: str | Path | None = None,
                    profile: str | None = None, local: bool = False,
                    edit: Callable[[YamlDoc], None] | None = None) -> RenderedRun:
    """The one way from a workflow file to a run: parse it once, pick the run id (a new one
    unless given) and folder (`run_dir`, else RUNS/<run id>), resolve ${run_dir}/${run_id}
    with exactly those, render. `workdir` (default: here) is where the jobs run; `edit`
    changes the parsed document after the overrides (a scaling study: scaling.study)."""
    doc = read_workflow(path, overrides)
    if edit is not None:
        edit(doc)
    run_id = run_id or new_run_id(workflow_name(doc))
    folder = Path(run_dir) if run_dir else Path(runs_dir or default_runs_dir()) / run_id
    loaded = resolve_workflow(doc, path, tuple(overrides), run_dir=folder.absolute(),
                              run_id=run_id, workdir=None if workdir is None else Path(workdir),
                              profile=profile)
    return render_run(loaded, templates_dir=templates_dir, command_line=command_line,
                      local=local)


def render_run(loaded: LoadedWorkflow, *, templates_dir: str | Path | None = None,
               local: bool = False,
               command_line: str = "") -> RenderedRun:
    """Build the run folder's contents for a workflow resolved for one run (its run_dir and
    run_id are the ones ${run_dir}/${run_id} were substituted with)."""
    if loaded.run_dir is None or loaded.run_id is None:
        raise ValueError("this workflow was loaded for checking only (${run_dir} holds a "
                         "placeholder); render it with render_workflow()")
    run_dir, run_id, workdir = Path(loaded.run_dir).absolute(), loaded.run_id, loaded.workdir
    if not local:
        check_sbatch_paths(str(run_dir), str(workdir))
    wf = loaded.workflow
    steps = plan(wf, loaded.site.profile if loaded.site else None)
    where = str(loaded.run_dir)
    check_run_folder(str(run_dir), steps, file=where)
    workflow_dir = str(loaded.path.resolve().parent)
    check_binds(steps, workflow_dir, workflow_bind_for(workflow_dir, str(run_dir), str(workdir)),
                str(loaded.path))
    env = template_env(templates_dir)
    env.globals["bind_sources"] = bind_sources_for(str(run_dir), str(workdir))
    env.globals["workflow_bind"] = workflow_bind_for(str(loaded.path.resolve().parent),
                                                     str(run_dir), str(workdir))
    common = dict(run_id=run_id, run_dir=str(run_dir), workdir=str(workdir),
                  workflow_name=wf.name, workflow_file=str(loaded.path.absolute()),
                  version=__version__, command_line=command_line or "(library call)",
                  n_steps=len(steps))
    files: dict[str, str] = {}
    try:
        for job in steps:
            files[job.script] = env.get_template("sbatch.sh.j2").render(
                job=job, default_backend="slurm", **common)
            files[job.local_script] = env.get_template("local.sh.j2").render(
                job=job, default_backend="local", **common)
        files[layout.SUBMIT_SCRIPT] = env.get_template("submit.sh.j2").render(
            jobs=steps, keep_env=KEEP_SLURM_ENV, dependency=submit_dependency(steps),
            binds_run_dir=any(j.container is not None and j.container.runtime in
                              BINDING_RUNTIMES for j in steps),
            **common)
    except jinja2.TemplateError as exc:
        where = (f"{exc.filename}:{exc.lineno}: "
                 if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno else "")
        raise UserError(f"template error: {where}{exc}") from None
    files[layout.RESOLVED_WORKFLOW] = resolved_workflow_yaml(loaded)
    manifest = RunManifest.new(run_id=run_id, run_dir=run_dir, workflow_name=wf.name,
                               workflow_file=str(loaded.path.absolute()),
                               overrides=list(loaded.overrides), workdir=str(workdir),
                               plan=steps)
    return RenderedRun(run_id=run_id, run_dir=run_dir, plan=steps, manifest=manifest,
                       files=files)


def resolved_workflow_yaml(loaded: LoadedWorkflow) -> str:
    """The workflow as it was rendered: overrides applied and ${vars} substituted."""
    sets = " --set ".join(o.encode("unicode_escape").decode("ascii") for o in loaded.overrides)
    header = (f"# Resolved from {loaded.path.absolute()} by itwinai-hpc {__version__}"
              + (f" with --set {sets}" if loaded.overrides else "") + "\n")
    body = loaded.workflow.model_dump(mode="json", by_alias=True, exclude_none=True,
                                      exclude_defaults=True)
    # The settings shared by defaults and steps come last in each, as people write them.
    if "defaults" in body:
        body["defaults"] = _settings_last(body["defaults"])
    body["steps"] = [_settings_last({k: v for k, v in step.items() if k != "needs" or v})
                     for step in body["steps"]]
    return header + yaml.safe_dump(_escape_vars(body), sort_keys=False,
                                   default_flow_style=False, width=1000)


def _settings_last(section: dict) -> dict:
    shared = [f.alias or n for n, f in _StepSettings.model_fields.items()]
    return {**{k: v for k, v in section.items() if k not in shared},
            **{k: v for k, v in section.items() if k in shared}}


def _escape_vars(node):
    """Substituted values may hold a literal ${...} (written $${...}): keep it literal when the
    resolved file is loaded again; a sweep's ${matrix.KEY} reads as written."""
    if isinstance(node, dict):
        return {k: _escape_vars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_vars(v) for v in node]
    return markers.display(node.replace("${", "$${")) if isinstance(node, str) else node
