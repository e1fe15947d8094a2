"""The doctor's smoke job, planned as the training step would be: the workflow (or a default
one) with its --set overrides and site profile, cut down to the one step, whose command
becomes the in-job checks (`python3 -m itwinai_hpc.ml.doctor`), rendered by the same code and
templates as `render` (resources, container, launcher, setup lines and environment: the
training step's). Nothing here submits or imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.yamlsrc import YamlDoc

CHECK_COMMAND = "python3 -m itwinai_hpc.ml.doctor"
# Without a WORKFLOW, the default one is written into the run folder, in a folder of its own:
# containers get the workflow's folder read-only, and the run folder must stay writable.
DEFAULT_FILE = "workflow/doctor.yml"
# Without a workflow: one torchrun step, the site profile's defaults (image, launch, setup),
# an MLflow file store in the working directory (which Apptainer binds by default).
DEFAULT_WORKFLOW = """\
# The workflow `itwinai-hpc doctor` ran without a WORKFLOW: one torchrun step, the site
# profile's defaults, an MLflow file store in the working directory.
name: doctor
vars:
  mlflow_dir: ${workdir}/mlruns
defaults:
  env:
    MLFLOW_TRACKING_URI: file:${mlflow_dir}
    MLFLOW_ALLOW_FILE_STORE: "true"
steps:
  - name: train
    launcher: torchrun
    command: itwinai-hpc train
    resources:
      nodes: 1
      gpus-per-node: 0
"""
DROPPED = ("needs", "matrix", "max-parallel", "sweep", "array", "requeue", "watchdog")
DATA_FLAGS = ("--data", "--train-dataset")


@dataclass
class DoctorRun:
    run: Any                 # render.folder.RenderedRun
    step: str                # the step the smoke job stands in for
    data: str | None         # the data folder it reads (resolved), if any
    default: str | None      # the default workflow's text, to write to DEFAULT_FILE

    def write(self, group_share: bool) -> None:
        """The run folder, and the default workflow in it (the job's workflow file)."""
        from itwinai_hpc.core import atomic
        self.run.write(group_share=group_share)
        if self.default is not None:
            path = self.run.run_dir / DEFAULT_FILE
            path.parent.mkdir()
            atomic.write_text(path, self.default)


def render_doctor(args, backend: str) -> DoctorRun:
    """Render the smoke job's run folder (in memory; RenderedRun.write puts it on disk)."""
    from itwinai_hpc.commands.common import command_line
    from itwinai_hpc.core.overrides import apply_override
    from itwinai_hpc.core.yamlsrc import parse_yaml
    from itwinai_hpc.render.folder import render_run
    from itwinai_hpc.run.folders import default_runs_dir, new_run_id
    from itwinai_hpc.workflow.load import read_workflow, resolve_workflow, workflow_name

    given = args.workflow or args.workflow_file
    if args.workflow and args.workflow_file:
        raise UserError(f"give the workflow once: either {args.workflow} or -f "
                        f"{args.workflow_file}", field="WORKFLOW")
    picked: dict[str, Any] = {}
    if given:
        path = Path(given)
        if path.is_dir():
            raise UserError("is a folder; the doctor plans its job from a workflow file",
                            file=given)
        doc = read_workflow(path, args.overrides)
    else:
        doc = parse_yaml(DEFAULT_WORKFLOW, DEFAULT_FILE, keep_number_text=True)
        for item in args.overrides:
            apply_override(doc, item)
    stand_in(doc, args, picked, rename=bool(given))
    run_id = new_run_id(workflow_name(doc))
    folder = Path(args.output) if args.output else \
        Path(args.runs_dir or default_runs_dir()) / run_id
    if not given:                 # the default workflow lives in its run folder
        path = folder.absolute() / DEFAULT_FILE
    loaded = resolve_workflow(doc, path, tuple(args.overrides), run_dir=folder.absolute(),
                              run_id=run_id, profile=args.profile)
    run = render_run(loaded, templates_dir=args.templates, command_line=command_line(),
                     local=backend == "local")
    job = run.plan[0]
    data = job.args[job.args.index("--data") + 1] if "--data" in job.args else None
    return DoctorRun(run, picked["step"], data, None if given else DEFAULT_WORKFLOW)


def stand_in(doc: YamlDoc, args, picked: dict, rename: bool = True) -> None:
    """Cut the parsed workflow down to the step the doctor stands in for (--step, else its
    first torchrun step, else its only step), in place, before ${...} substitution: its
    command becomes the checks, its time the doctor's, --nodes/--gpus-per-node its size; what
    makes it part of a chain or a sweep goes."""
    data = doc.data
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not steps:
        raise UserError("the workflow has no steps to stand in for", file=doc.file,
                        field="steps")
    named = [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)]
    if args.step:
        found = [(i, s) for i, s in named if s.get("name") == args.step]
        if not found:
            raise UserError(f"--step {args.step}: the workflow has no such step; it has "
                            f"{', '.join(str(s.get('name')) for _, s in named) or 'none'}",
                            file=doc.file, field="--step")
    else:
        found = [(i, s) for i, s in named if s.get("launcher") == "torchrun"] or \
            (named if len(named) == 1 else [])
        if not found:
            raise UserError("the workflow has no torchrun step, so which step the training "
                            "is cannot be told; name it with --step", file=doc.file,
                            field="--step")
    index, step = found[0]
    name = step.get("name")
    if step.get("launcher") == "srun":
        raise UserError(f"step '{name}' has launcher srun; the doctor's checks run under "
                        "torchrun (one agent a node) or alone (launcher none)", file=doc.file,
                        field=f"steps.{name}.launcher")
    picked["step"] = name
    if rename and isinstance(data.get("name"), str):
        data["name"] = data["name"][:55] + "-doctor"
    data["steps"] = [step]
    doc.lines = _moved(doc.lines, index)
    doc.overridden = _moved(doc.overridden, index)
    for key in DROPPED:
        step.pop(key, None)
    resources = step.get("resources")
    if resources is None:
        resources = step["resources"] = {}
    if not isinstance(resources, dict):
        raise UserError("resources must be a mapping", file=doc.file,
                        field=f"steps.{name}.resources")
    resources["time"] = args.time
    if args.nodes is not None:
        resources["nodes"] = args.nodes
    if args.gpus_per_node is not None:
        resources["gpus-per-node"] = args.gpus_per_node
    data_dir = _literal(args.data) if args.data else _data_arg(step.get("args"))
    step["command"] = CHECK_COMMAND
    step["args"] = [*(["--allreduce-mb", str(args.allreduce_mb)] if args.allreduce_mb else []),
                    *(["--data", data_dir] if data_dir else [])]


def _data_arg(args) -> str | None:
    """The training step's data folder: the value of its --data (or --train-dataset)."""
    if not isinstance(args, list):
        return None
    for i, a in enumerate(args):
        if not isinstance(a, str):
            continue
        for flag in DATA_FLAGS:
            if a == flag and i + 1 < len(args) and isinstance(args[i + 1], str):
                return args[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
    return None


def _literal(text: str) -> str:
    """A path given on the command line, kept as written through ${...} substitution."""
    return str(Path(text).absolute()).replace("${", "$${")


def _moved(by_path: dict, index: int) -> dict:
    """Lines (or --set texts) keyed by path: the kept step's only, now at index 0."""
    out = {}
    for path, value in by_path.items():
        if len(path) >= 2 and path[0] == "steps":
            if path[1] == index:
                out[("steps", 0) + tuple(path[2:])] = value
        else:
            out[path] = value
    return out
