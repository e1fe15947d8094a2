"""The workflow file's schema: typed models whose fields (with their defaults) are the whole format.

Every value that ends up on an `#SBATCH` line is checked here against a strict pattern, because
sbatch reads those lines itself and shell quoting does not apply there. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from . import slurm_syntax

SAFE_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
SLURM_WORD = r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$"         # partition, account, qos lists
CONSTRAINT = r"^[A-Za-z0-9_.,&|\[\]*:()!-]+$"
MEM = r"^\d+[KMGT]?$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SBATCH_FLAG = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:/@%+=&|\[\]*()!-]*)?$")

# Flags that itwinai-hpc sets itself: passing them through would fight the generated script.
OWNED_SBATCH_FLAGS = {
    "--job-name": "the job name is <workflow>.<step>",
    "--output": "logs go to the run folder as %x-%j.out",
    "--error": "stderr goes with stdout into the run folder's log",
    "--dependency": "dependencies come from the step's 'needs'",
    "--kill-on-invalid-dep": "itwinai-hpc always sets it, so a failed step cancels its dependents",
    "--chdir": "the working directory is the one itwinai-hpc was run from",
    "--parsable": "it is an option of the sbatch command line, not of the job",
    "--array": "use the step's 'array' field",
    "--comment": "itwinai-hpc tags the run's jobs with it",
    "--nodes": "use resources.nodes",
    "--ntasks-per-node": "use resources.ntasks-per-node",
    "--cpus-per-task": "use resources.cpus-per-task",
    "--gpus-per-node": "use resources.gpus-per-node",
    "--partition": "use resources.partition",
    "--account": "use resources.account",
    "--time": "use resources.time",
    "--mem": "use resources.mem",
    "--constraint": "use resources.constraint",
    "--qos": "use resources.qos",
}

Scalar = Union[StrictBool, StrictInt, float, str]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=_kebab, populate_by_name=False,
                              frozen=True)


class Resources(_Model):
    """SLURM resources. Every field is optional here; defaults < defaults.resources < step."""

    partition: Annotated[str, Field(pattern=SLURM_WORD)] | None = None
    account: Annotated[str, Field(pattern=SLURM_WORD)] | None = None
    qos: Annotated[str, Field(pattern=SLURM_WORD)] | None = None
    time: str | StrictInt | None = None
    nodes: Annotated[StrictInt, Field(ge=1)] | None = None
    ntasks_per_node: Annotated[StrictInt, Field(ge=1)] | None = None
    gpus_per_node: Annotated[StrictInt, Field(ge=0)] | None = None
    cpus_per_task: Annotated[StrictInt, Field(ge=1)] | None = None
    mem: Annotated[str, Field(pattern=MEM)] | None = None
    constraint: Annotated[str, Field(pattern=CONSTRAINT)] | None = None
    extra_sbatch: list[str] | None = None

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | int | None) -> str | None:
        if v is None:
            return None
        slurm_syntax.time_seconds(v)        # raises ValueError with the reason
        return str(v)

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, flags: list[str] | None) -> list[str] | None:
        for flag in flags or []:
            name = flag.split("=", 1)[0]
            if name in OWNED_SBATCH_FLAGS:
                raise ValueError(f"'{name}' is set by itwinai-hpc: {OWNED_SBATCH_FLAGS[name]}")
            if not SBATCH_FLAG.fullmatch(flag):
                raise ValueError(f"'{flag}' is not a long sbatch option like '--exclusive' or "
                                 "'--reservation=NAME' (no spaces, quotes or shell characters)")
        return flags


class Container(_Model):
    """An Apptainer image and how to enter it."""

    image: Annotated[str, Field(min_length=1)] | None = None
    runtime: Literal["apptainer", "singularity"] | None = None
    binds: list[str] | None = None
    env: dict[str, Scalar] | None = None
    gpu: StrictBool | None = None   # None: --nv exactly when the step asks for GPUs
    options: list[str] | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict | None) -> dict | None:
        return _check_env(env)

    @field_validator("options")
    @classmethod
    def _options(cls, opts: list[str] | None) -> list[str] | None:
        for opt in opts or []:
            if not opt.startswith("-"):
                raise ValueError(f"'{opt}' is not an option (it must start with '-')")
        return opts


def _check_env(env: dict | None) -> dict | None:
    for key in env or {}:
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"'{key}' is not a valid environment variable name")
    return env


ContainerField = Union[Literal["none"], Container, None]


class Defaults(_Model):
    resources: Resources = Resources()
    container: ContainerField = None
    env: dict[str, Scalar] | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict | None) -> dict | None:
        return _check_env(env)


class Requeue(_Model):
    """Checkpoint and requeue before the time limit, instead of losing the work to it.

    SLURM warns the batch shell `before-limit` seconds ahead (--signal=B:USR2@N); the script
    creates $ITWINAI_HPC_STOP_FILE, which the step's code turns into a checkpoint and a clean
    exit, waits up to `grace` seconds for that, and requeues the job; the next run resumes."""

    before_limit: Annotated[StrictInt, Field(ge=30)] = 300
    grace: Annotated[StrictInt, Field(ge=1)] | None = None   # default: before-limit - 30
    max_requeues: Annotated[StrictInt, Field(ge=1)] = 10


class Step(_Model):
    """A step as written in the workflow file (plan.py turns it into a PlannedStep)."""

    name: Annotated[str, Field(pattern=SAFE_NAME)]
    description: str | None = None
    needs: list[str] = []
    launcher: Literal["none", "srun", "torchrun"] = "none"
    command: Annotated[str, Field(min_length=1)]
    args: list[Scalar] = []
    array: str | None = None
    nproc_per_node: Annotated[StrictInt, Field(ge=1)] | None = None
    requeue: Requeue | None = None
    resources: Resources = Resources()
    container: ContainerField = None
    env: dict[str, Scalar] | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict | None) -> dict | None:
        return _check_env(env)

    @field_validator("array", mode="before")
    @classmethod
    def _array(cls, v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{v!r} is not {slurm_syntax.ARRAY_HELP}")
        return slurm_syntax.parse_array(v).text

    @field_validator("needs", mode="before")
    @classmethod
    def _needs(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if "\n" in v.strip():
            raise ValueError("command must be one line (put longer shell code in a script file)")
        return v.strip()


class Workflow(_Model):
    name: Annotated[str, Field(pattern=SAFE_NAME)]
    description: str | None = None
    vars: dict[str, Scalar] = {}
    defaults: Defaults = Defaults()
    steps: Annotated[list[Step], Field(min_length=1)]

    @field_validator("vars")
    @classmethod
    def _vars(cls, v: dict) -> dict:
        for key in v:
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"'{key}' is not a valid variable name (letters, digits, _)")
        return v



def merge(base, override):
    """Field-wise merge of two models of the same type: fields set in `override` win."""
    if base is None:
        return override
    if override is None:
        return base
    values = base.model_dump(exclude_none=True, by_alias=True)
    values.update(override.model_dump(exclude_none=True, by_alias=True))
    return type(base).model_validate(values)
