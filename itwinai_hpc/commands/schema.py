"""`itwinai-hpc schema`: JSON Schemas (draft 2020-12) of the workflow format and of the train,
inference and preprocessing configs, generated from the typed models that validate them (the
workflow's records, core/records.py; the configs' pydantic models).

The schema accepts what the loader accepts, no more and no less where JSON Schema can say it:
unknown keys are refused (the models forbid them), kebab-case names as written in YAML, and a
`${var}` (or `${matrix.KEY}`) wherever a number, a boolean, a choice or a patterned string goes,
since the loader substitutes variables before it validates. Descriptions come from the models:
class docstrings, `Field(description=...)`, and the comment lines written above a field.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any, get_args

DRAFT = "https://json-schema.org/draft/2020-12/schema"
CONFIGS = ("train", "inference", "preprocess")
# A value holding a variable reference: substituted (and then checked) by the loader.
REFERENCE = {"type": "string", "pattern": r"\$\{[^}]+\}",
             "description": "a ${var} reference, substituted before the value is checked"}
_FIELD = re.compile(r"^    ([A-Za-z_][A-Za-z0-9_]*)\s*:")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")
_TRAILING = re.compile(r"\S\s{2,}#\s+(.*)$")


def model_for(kind: str) -> Any:
    """The model behind `schema` (kind 'workflow') or `schema --config KIND`."""
    if kind == "workflow":
        from itwinai_hpc.workflow.schema import Workflow
        return Workflow
    if kind == "train":
        from itwinai_hpc.ml.config import TrainConfig
        return TrainConfig
    if kind == "inference":
        from itwinai_hpc.ml.config import InferenceConfig
        return InferenceConfig
    if kind == "preprocess":
        from itwinai_hpc.data.config import PreprocessConfig
        return PreprocessConfig
    raise ValueError(f"no schema for {kind!r}; one of: workflow, {', '.join(CONFIGS)}")


def is_model(tp: Any) -> bool:
    """A model class: a record of the workflow format or a config's pydantic model."""
    return isinstance(tp, type) and isinstance(getattr(tp, "model_fields", None), dict)


def models_in(root: Any) -> dict[str, Any]:
    """Every model reachable from `root`'s fields, by class name (the schema's $defs keys)."""
    found: dict[str, Any] = {}

    def visit(tp: Any) -> None:
        if is_model(tp):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for info in tp.model_fields.values():
                visit(info.annotation)
        for arg in get_args(tp):
            visit(arg)

    visit(root)
    return found


def field_comments(model: Any) -> dict[str, str]:
    """The comment lines written directly above each field (or after it on its line), in the
    class and the classes it inherits fields from; the nearest class wins."""
    notes: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not is_model(cls) or cls.__module__.startswith(("pydantic", "itwinai_hpc.core.")):
            continue
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            comment = _COMMENT.match(line)
            if comment:
                pending.append(comment.group(1).strip())
                continue
            field = _FIELD.match(line)
            if field and field.group(1) in cls.model_fields:
                trailing = _TRAILING.search(line.split('"')[-1].split("'")[-1])
                words = pending + ([trailing.group(1).strip()] if trailing else [])
                words = [w for w in words if not w.startswith(("type:", "noqa"))]
                if words:
                    notes[field.group(1)] = " ".join(words)
            pending = []
    return notes


# What a field means where its model says nothing (no Field description, no comment above it):
# "Model.field" or "*.field" (any model). A comment in the model wins over these.
FIELD_HELP = {
    "Workflow.name": "The workflow's name: jobs are named <name>.<step>, run ids start with it.",
    "*.description": "Free text, for the people who read the file.",
    "Workflow.vars": "Variables for ${name} anywhere below (scalars; they may refer to each "
                     "other, to ${env:NAME[:-default]} and to the built-ins workflow_dir, "
                     "workdir, run_dir, run_id).",
    "Workflow.defaults": "Settings every step starts from; a step's own win field by field, "
                         "its lists extend these.",
    "Workflow.steps": "The steps, each a job; `needs` orders them (a DAG).",
    "*.env": "Variables exported into the job, single-quoted: taken literally.",
    "*.launch": "How the launcher is started where a site needs more than the default.",
    "*.resources": "SLURM resources (the #SBATCH lines).",
    "*.container": "The image the step runs in and how; `none` runs it on the node as it is.",
    "ListReplace.replace": "The items that replace the defaults' list.",
    "Launch.torchrun-args": "Extra torchrun options, e.g. [--numa-binding=exclusive].",
    "Launch.srun-args": "Extra srun options for the launch, e.g. [--cpu-bind=none].",
    "Resources.partition": "sbatch --partition (a comma-separated list is allowed).",
    "Resources.account": "sbatch --account.",
    "Resources.qos": "sbatch --qos.",
    "Resources.time": "sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.",
    "Resources.nodes": "sbatch --nodes.",
    "Resources.ntasks-per-node": "sbatch --ntasks-per-node (launcher srun: one rank per task).",
    "Resources.gpus-per-node": "GPUs per node: --gpus-per-node=N, or --gres=gpu:N with "
                               "gpu-flag: gres.",
    "Resources.cpus-per-task": "sbatch --cpus-per-task; also OMP_NUM_THREADS (split between "
                               "torchrun's processes) unless env sets it.",
    "Resources.mem": "sbatch --mem per node: 4G, 500M, or a plain number of megabytes.",
    "Resources.constraint": "sbatch --constraint (node features).",
    "Resources.extra-sbatch": "Further long sbatch options, e.g. [--exclusive, "
                              "--reservation=NAME]; flags itwinai-hpc sets itself are refused "
                              "with the reason.",
    "Container.image": "The image: a .sif file, docker://..., or what the runtime takes (an EDF "
                       ".toml for container-engine).",
    "Container.runtime": "The container runtime (the profile's; apptainer where none is set).",
    "Container.binds": "Paths bound into the container: PATH or SRC:DEST[:ro].",
    "Container.options": "Extra options of the runtime's exec/run command.",
    "Step.name": "The step's name (letters, digits, _ and -): job name <workflow>.<name>.",
    "Step.max-parallel": "With matrix: how many tasks run at once.",
    "Step.sweep": "Written by itwinai-hpc on the steps a resource-changing matrix expands into; "
                  "not for workflow files.",
    "Step.launcher": "none: the command runs once; srun: once per task (a DDP launcher too); "
                     "torchrun: one agent per node starting nproc-per-node processes.",
    "Step.command": "One shell line, as you would type it; what ${...} brings into it is "
                    "quoted.",
    "Step.args": "Arguments after the command, each quoted as one word.",
    "Step.array": "A SLURM job array, e.g. 0-9%2 (the task in $SLURM_ARRAY_TASK_ID).",
    "Step.nproc-per-node": "torchrun: processes per node (default: gpus-per-node, else 1).",
    "Step.requeue": "Checkpoint and requeue before the time limit.",
    "Step.watchdog": "Stop ranks that make no progress.",
    "SweepTask.task": "This combination's index.",
    "SweepTask.tasks": "How many combinations the sweep has.",
    "SweepTask.values": "This combination's matrix values.",
    "Requeue.before-limit": "Seconds before the time limit at which SLURM warns the job.",
    "Requeue.max-requeues": "How often the job may be requeued.",
    "Watchdog.no-progress": "How long a rank may report no progress, in SLURM's time grammar.",
}


def descriptions(model: Any) -> dict[str, str]:
    """Field name -> its description: Field(description=...) else its comment, else
    FIELD_HELP."""
    notes = field_comments(model)
    for name in model.model_fields:
        alias = _alias(model, name)
        text = FIELD_HELP.get(f"{model.__name__}.{alias}") or FIELD_HELP.get(f"*.{alias}")
        if text and name not in notes:
            notes[name] = text
    for name, info in model.model_fields.items():
        if info.description:
            notes[name] = info.description
    return notes


def _alias(model: Any, name: str) -> str:
    return model.model_fields[name].alias or name


def _accept_references(node: Any) -> Any:
    """Wherever a value must be a number, a boolean, one of a few choices or a string of a
    pattern, a string with a ${var} in it is accepted too (the loader substitutes first)."""
    if isinstance(node, list):
        return [_accept_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _accept_references(value) for key, value in node.items()}
    kind = node.get("type")
    checked = kind in ("integer", "number", "boolean") or "enum" in node or "const" in node \
        or (kind == "string" and "pattern" in node)
    if checked:
        keep = {k: node.pop(k) for k in ("description", "default", "title") if k in node}
        return {**keep, "anyOf": [node, dict(REFERENCE)]}
    if "anyOf" in node:
        node["anyOf"] = _flat(node["anyOf"])
    return node


def _flat(options: list) -> list:
    """anyOf members with nested plain anyOfs lifted, one ${var} form at most, none beside a
    plain string (which holds a reference anyway)."""
    flat: list = []
    for option in options:
        nested = option.get("anyOf") if isinstance(option, dict) and len(option) == 1 else None
        for item in nested or [option]:
            if item not in flat:
                flat.append(item)
    if {"type": "string"} in flat:
        flat = [item for item in flat if item != REFERENCE]
    return flat


def _loader_forms(schema: dict) -> None:
    """Forms the models' before-validators turn into the typed value (schema.py,
    sbatch_fields.py): what JSON Schema cannot learn from the annotations."""
    defs = schema.get("$defs", {})
    step = defs.get("Step", {}).get("properties", {})
    if "needs" in step:          # a name, a list of names, or {name: ok|any}
        needs = step["needs"]
        needs["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                          {k: needs.pop(k) for k in ("type", "additionalProperties")}]
    if "array" in step:          # `array: 5` is the string '5'
        step["array"]["anyOf"].insert(0, {"type": "integer", "minimum": 0})
    resources = defs.get("Resources", {}).get("properties", {})
    if "mem" in resources:       # `mem: 1024` is megabytes
        resources["mem"]["anyOf"].insert(0, {"type": "integer", "minimum": 0})


def _tidy(node: Any, top: bool = True) -> Any:
    """Drop pydantic's generated titles and defaults that are all-null mappings (noise in an
    editor's hover text)."""
    if isinstance(node, list):
        return [_tidy(item, False) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _tidy(prop, False) for name, prop in value.items()}
            continue
        if key == "title" and not top:
            continue
        if key == "default" and isinstance(value, dict) and \
                all(v is None for v in value.values()) and value:
            continue
        out[key] = _tidy(value, False) if key != "$defs" else \
            {name: _tidy(sub, False) for name, sub in value.items()}
    return out


def build_schema(kind: str = "workflow") -> dict:
    """The JSON Schema of a workflow file (kind 'workflow') or of a config file."""
    root = model_for(kind)
    schema = root.model_json_schema(by_alias=True, mode="validation")
    schema = _tidy(schema)
    defs = schema.setdefault("$defs", {})
    for name, model in models_in(root).items():
        target = schema if model is root else defs.get(name)
        if target is None:
            continue
        for field, text in descriptions(model).items():
            prop = target.get("properties", {}).get(_alias(model, field))
            if prop is not None:
                prop["description"] = text
    if kind == "workflow":
        _loader_forms(schema)
        schema = _accept_references(schema)
    title = "itwinai-hpc workflow" if kind == "workflow" else f"itwinai-hpc {kind} config"
    return {"$schema": DRAFT, "title": title,
            **{k: v for k, v in schema.items() if k != "title"}}


def schema_text(kind: str = "workflow") -> str:
    return json.dumps(build_schema(kind), indent=2, ensure_ascii=False) + "\n"


def cmd_schema(args) -> int:
    sys.stdout.write(schema_text(args.config or "workflow"))
    return 0
