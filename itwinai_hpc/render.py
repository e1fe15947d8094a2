"""Render a workflow into a run folder: per step an sbatch script and a local script, submit.sh,
the resolved workflow.yml and run.json with the plan. The folder is the whole request: any
backend can submit it (TorchX's dry run, then schedule).

`render_workflow` picks the run id and folder, loads the workflow with them and renders, in
memory (a RenderedRun you can inspect); `RenderedRun.write` puts it on disk atomically. Nothing
here submits anything, and nothing here imports torch or mlflow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from . import __version__
from .errors import UserError
from . import layout, matrix
from .backends.sbatch import (BINDING_RUNTIMES, bind_problem, check_run_folder,
                              dependency_option, sbatch_folder)
from .backends.slurm_env import KEEP_SLURM_ENV
from .plan import plan
from .planned import PlannedStep
from .runs import RunManifest, default_runs_dir, new_run_id
from .schema import _StepSettings
from .workflow import LoadedWorkflow, read_workflow, resolve_workflow, workflow_name
from .yamlsrc import YamlDoc
# Paths end up on #SBATCH lines, which sbatch splits itself: no quoting can protect them there.
SBATCH_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%:,=-]+$")


def check_binds(steps, workflow_dir: str, workflow_bind, workflow_file: str) -> None:
    """Every bind that a container runtime reads as SRC[:DST[:OPTS]] must split back into the
    paths meant: the workflow's own folder (bound as a path) may hold no ':' or ',', and a
    bind (after ${...} substitution) no ',', at most two ':', and a DST that is absolute, so
    that a ':' in a substituted path is not taken for SRC:DST. UserError, located."""
    for job in steps:
        c = job.container
        if c is None or c.runtime not in BINDING_RUNTIMES:
            continue
        folder = workflow_dir if workflow_bind(c.binds) else None
        if folder and bind_problem(folder):
            raise UserError(f"the workflow's folder {folder!r} {bind_problem(folder)} (step "
                            f"'{job.name}' runs in a container ({c.runtime}), which binds it)",
                            file=workflow_file)
        for bind in c.binds:
            parts = bind.split(":")
            if "," in bind or len(parts) > 3 or (len(parts) > 1 and not parts[1].startswith("/")):
                raise UserError(f"bind {bind!r} does not read as SRC[:DST[:OPTIONS]] with an "
                                "absolute DST: a path with ':' or ',' cannot be bound into a "
                                f"container ({c.runtime}): they separate SRC:DST and binds; use "
                                "a path without them", file=workflow_file,
                                field=f"steps.{job.name}.container.binds")


def builtin_templates() -> Path:
    """templates/ inside the installed wheel, or at the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "sbatch.sh.j2").is_file():
            return candidate
    raise RuntimeError(f"itwinai-hpc's templates are missing (looked in {here}/templates and "
                       f"{here.parent}/templates): the installation is broken")


def shell_quote(value) -> str:
    """The one filter that quotes a value for a shell line: the result is always one word. A
    sweep's ${matrix.KEY} (a marker, matrix.py) becomes "$MATRIX_KEY", set per task."""
    text = str(value)
    if "\x00" not in text:
        return shlex.quote(text)
    parts = []
    for literal, key in zip(*[iter(matrix.MARKER.split(text) + [None])] * 2):
        if literal:
            parts.append(shlex.quote(literal))
        if key is not None:
            parts.append(f'"${matrix.variable(key)}"')
    return "".join(parts)


def comment_safe(value) -> str:
    """Text for a `# ...` line: a newline would end the comment and start a command."""
    return " ".join(str(value).split())


def template_env(templates_dir: str | Path | None = None) -> jinja2.Environment:
    """Jinja environment: the user's --templates folder first, then the built-in templates."""
    search = [str(builtin_templates())]
    if templates_dir is not None:
        if not Path(templates_dir).is_dir():
            raise UserError(f"--templates {templates_dir}: not a folder")
        search.insert(0, str(templates_dir))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(search), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["shq"] = shell_quote
    env.filters["comment"] = comment_safe
    env.filters["matrix_variable"] = matrix.variable
    env.filters["sbatch_folder"] = sbatch_folder
    env.globals.update(layout=layout, runtime_exports=runtime_exports, task_setup=task_setup,
                       bind_pair=bind_pair, matrix_json=matrix_json)
    return env


def matrix_json(keys, values) -> str:
    """A sweep task's values as the JSON object $ITWINAI_HPC_MATRIX holds."""
    return json.dumps(dict(zip(keys, values)))


def bind_pair(bind: str) -> str:
    """A bind as SRC:DST (`/data` -> `/data:/data`), for runtimes that want both sides."""
    return bind if ":" in bind else f"{bind}:{bind}"


def runtime_exports(job: PlannedStep, indent: int = 0) -> str:
    """runtime-env as `export NAME="value"` lines: values hold only $NAME / ${NAME} (schema.py
    refuses quotes, backslashes, backticks and $(...)), so double quotes expand exactly those."""
    return "\n".join(f'{" " * indent}export {name}="{value}"' for name, value in job.runtime_env)


def task_setup(job: PlannedStep, indent: int = 2) -> str:
    """What runs in each srun task (torchrun: each node) before the command: the node-setup
    lines, then runtime-env again, so $SLURM_NODEID and friends are that task's."""
    lines = [" " * indent + line for line in job.node_setup]
    exports = runtime_exports(job, indent)
    return "\n".join(lines + ([exports] if exports else []))


def bind_sources_for(run_dir: str, workdir: str):
    """A template function: a container's bind sources split into (create, require). Folders
    in the run folder or under the working directory are the workflow's own, and may not exist
    yet (data, MLflow store): they are created. Anything else (a site library file, read-only
    data) must exist; creating it would fail on a file, or hide a typo."""
    owned = (run_dir.rstrip("/") + "/", workdir.rstrip("/") + "/")

    def split(binds) -> tuple[list[str], list[str]]:
        create, require = [], []
        for bind in binds:
            source = bind.split(":", 1)[0]
            (create if (source.rstrip("/") + "/").startswith(owned) else require).append(source)
        return create, require
    return split


def workflow_bind_for(workflow_dir: str, run_dir: str, workdir: str):
    """A template function: the bind that shows a container the workflow's own folder (its
    config files: `--config ${workflow_dir}/x.yml`), or None where one of the container's binds
    covers it already. Read-only, unless the working directory, the run folder or a bind lies
    inside it: the step writes there, and a read-only mount would take that away."""
    def under(path: str, folder: str) -> bool:
        return (path.rstrip("/") + "/").startswith(folder.rstrip("/") + "/")

    def bind(binds) -> str | None:
        sources = [b.split(":", 1)[0] for b in binds]
        if any(under(workflow_dir, source) for source in sources):
            return None
        if any(under(path, workflow_dir) for path in (workdir, run_dir, *sources)):
            return workflow_dir
        return f"{workflow_dir}:{workflow_dir}:ro"
    return bind


def submit_dependency(steps: list[PlannedStep]):
    """A template function: a step's --dependency options in submit.sh, whose job ids are the
    shell variables job_N that the lines before it set."""
    var = {j.name: f'"$job_{j.index}"' for j in steps}

    def options(job: PlannedStep) -> list[str]:
        return dependency_option([var[n] for n in job.needs_ok], [var[n] for n in job.waits_for])
    return options


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
        if group_share:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o770 & ~umask)
        try:
            (tmp / layout.LOGS).mkdir()
            for name, text in self.files.items():
                path = tmp / name
                path.write_text(text, encoding="utf-8")
                if name.endswith((".sh", ".sbatch")):
                    path.chmod(0o755)
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
                    profile: str | None = None,
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
    return render_run(loaded, templates_dir=templates_dir, command_line=command_line)


def render_run(loaded: LoadedWorkflow, *, templates_dir: str | Path | None = None,
               command_line: str = "") -> RenderedRun:
    """Build the run folder's contents for a workflow resolved for one run (its run_dir and
    run_id are the ones ${run_dir}/${run_id} were substituted with)."""
    if loaded.run_dir is None or loaded.run_id is None:
        raise ValueError("this workflow was loaded for checking only (${run_dir} holds a "
                         "placeholder); render it with render_workflow()")
    run_dir, run_id, workdir = Path(loaded.run_dir).absolute(), loaded.run_id, loaded.workdir
    for label, p in (("run folder", run_dir), ("working directory", workdir)):
        if not SBATCH_SAFE_PATH.fullmatch(str(p)):
            raise UserError(f"the {label} {str(p)!r} contains characters that cannot appear "
                            "on an #SBATCH line (spaces, quotes, shell characters); use a plain "
                            "path")
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
        where = f"{exc.filename}:{exc.lineno}: " if getattr(exc, "lineno", None) else ""
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
    header = (f"# Resolved from {loaded.path.absolute()} by itwinai-hpc {__version__}"
              + (f" with --set {' --set '.join(loaded.overrides)}" if loaded.overrides else "")
              + "\n")
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
    return matrix.display(node.replace("${", "$${")) if isinstance(node, str) else node
