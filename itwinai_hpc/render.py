"""Render a loaded workflow into a run folder: one script per step, submit.sh, workflow.yml, run.json.

`render_run` only builds text in memory (a RenderedRun you can inspect); `RenderedRun.write` puts
it on disk atomically. Nothing here submits anything, and nothing here imports torch or mlflow.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from . import __version__
from .errors import UserError
from .plan import JobSpec, plan
from .runs import RunManifest, new_run_id
from .workflow import LoadedWorkflow

# SLURM_* variables that say which cluster to talk to, not which job we are in: they survive
# when a run is submitted from inside another job (see submit.sh and backends/slurm.py).
KEEP_SLURM_ENV = ("SLURM_CONF", "SLURM_CLUSTERS", "SLURM_TIME_FORMAT")
# Backends that run steps without sbatch get a NN-step.sh per step, rendered from local.sh.j2.
LOCAL_SCRIPT_BACKENDS = ("local", "submitit")
# Paths end up on #SBATCH lines, which sbatch splits itself: no quoting can protect them there.
SBATCH_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%:,=-]+$")


def builtin_templates() -> Path:
    """templates/ inside the installed wheel, or at the repository root in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "sbatch.sh.j2").is_file():
            return candidate
    raise RuntimeError(f"itwinai-hpc's templates are missing (looked in {here}/templates and "
                       f"{here.parent}/templates): the installation is broken")


def shell_quote(value) -> str:
    """The one filter that quotes a value for a shell line: the result is always one word."""
    return shlex.quote(str(value))


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
    return env


@dataclass
class RenderedRun:
    run_id: str
    run_dir: Path
    jobs: list[JobSpec]
    files: dict[str, str] = field(default_factory=dict)      # relative name -> text
    manifest: RunManifest | None = None

    def write(self) -> Path:
        """Write every file into a hidden sibling folder, then rename it into place: a crash
        leaves either the complete run folder or none."""
        target = self.run_dir
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UserError(f"{target} already exists and is not empty; choose another -o folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)    # mkdtemp makes it private; a run folder is not
        try:
            (tmp / "logs").mkdir()
            for name, text in self.files.items():
                path = tmp / name
                path.write_text(text, encoding="utf-8")
                if name.endswith((".sh", ".sbatch")):
                    path.chmod(0o755)
            assert self.manifest is not None
            self.manifest.save(tmp / "run.json")
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def render_run(loaded: LoadedWorkflow, run_dir: str | Path, run_id: str | None = None, *,
               backend: str | None = None, templates_dir: str | Path | None = None,
               command_line: str = "", workdir: str | Path | None = None) -> RenderedRun:
    """Build the run folder's contents for `loaded` (already loaded with the same run_dir/id)."""
    run_dir = Path(run_dir).absolute()
    workdir = Path(workdir or os.getcwd()).absolute()
    run_id = run_id or new_run_id(loaded.workflow.name)
    for label, path in (("run folder", run_dir), ("working directory", workdir)):
        if not SBATCH_SAFE_PATH.fullmatch(str(path)):
            raise UserError(f"the {label} {str(path)!r} contains characters that cannot appear "
                            "on an #SBATCH line (spaces, quotes, shell characters); use a plain "
                            "path")
    wf = loaded.workflow
    jobs = plan(wf)
    env = template_env(templates_dir)
    common = dict(run_id=run_id, run_dir=str(run_dir), workdir=str(workdir),
                  workflow_name=wf.name, workflow_file=str(loaded.path.absolute()),
                  version=__version__, command_line=command_line or "(library call)",
                  n_steps=len(jobs))
    run = RenderedRun(run_id=run_id, run_dir=run_dir, jobs=jobs)
    try:
        for job in jobs:
            run.files[job.script] = env.get_template("sbatch.sh.j2").render(job=job, **common)
        if backend in LOCAL_SCRIPT_BACKENDS:
            for job in jobs:
                run.files[job.local_script] = env.get_template("local.sh.j2").render(job=job,
                                                                                    **common)
        run.files["submit.sh"] = env.get_template("submit.sh.j2").render(
            jobs=jobs, index_of={j.name: j.index for j in jobs}, keep_env=KEEP_SLURM_ENV,
            **common)
    except jinja2.TemplateError as exc:
        where = f"{exc.filename}:{exc.lineno}: " if getattr(exc, "lineno", None) else ""
        raise UserError(f"template error: {where}{exc}") from None
    run.files["workflow.yml"] = resolved_workflow_yaml(loaded)
    run.manifest = RunManifest.new(run_id=run_id, run_dir=run_dir, workflow_name=wf.name,
                                   workflow_file=str(loaded.path.absolute()),
                                   overrides=list(loaded.overrides), backend=backend,
                                   workdir=str(workdir), jobs=jobs)
    return run


def resolved_workflow_yaml(loaded: LoadedWorkflow) -> str:
    """The workflow as it was rendered: overrides applied and ${vars} substituted."""
    header = (f"# Resolved from {loaded.path.absolute()} by itwinai-hpc {__version__}"
              + (f" with --set {' --set '.join(loaded.overrides)}" if loaded.overrides else "")
              + "\n")
    body = loaded.workflow.model_dump(mode="json", by_alias=True, exclude_none=True,
                                      exclude_defaults=True)
    return header + yaml.safe_dump(_escape_vars(body), sort_keys=False,
                                   default_flow_style=False, width=1000)


def _escape_vars(node):
    """Substituted values may hold a literal ${...} (written $${...}): keep it literal when the
    resolved file is loaded again (backends do)."""
    if isinstance(node, dict):
        return {k: _escape_vars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_vars(v) for v in node]
    return node.replace("${", "$${") if isinstance(node, str) else node
