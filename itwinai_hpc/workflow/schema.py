"""The workflow file's schema: typed models whose fields (with their defaults) are the whole format.

Values that reach `#SBATCH` lines are checked in sbatch_fields.py; list fields and the merge of
defaults < step are in schema_base.py. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from itwinai_hpc.core import slurm_syntax
from itwinai_hpc.core.records import Field, StrictBool, StrictInt, check, serializer
from itwinai_hpc.workflow.sbatch_fields import OWNED_SBATCH_FLAGS, Resources  # noqa: F401  (re-exported)
from itwinai_hpc.workflow.schema_base import (  # noqa: F401
    ENV_NAME,
    ListField,
    ListReplace,
    Scalar,
    _Model,
    check_env,
    check_env_name,
    check_options,
    list_items,
    merge,
    merge_lists,
)

SAFE_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
# $NAME and ${NAME} only: what `runtime-env` values may expand when the job runs.
RUNTIME_VALUE = re.compile(
    r"^(?:[^$`\\\"\n]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*\})*$")


class Launch(_Model):
    """How a launcher is invoked: what sites need beyond the tested default recipe."""

    # The command that starts torchrun: 'torchrun', 'python -m torch.distributed.run' (CSCS,
    # with venvs), 'torchrun_jsc' (JSC)...
    torchrun: str | None = None
    torchrun_args: ListField = None
    srun_args: ListField = None
    # The rendezvous host from a node name, e.g. '{node}i' for JSC's InfiniBand names.
    rdzv_host: str | None = None

    @check("torchrun")
    def _torchrun(v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_./+-]+( [A-Za-z0-9_./+-]+)*", v):
            raise ValueError(f"{v!r} is not a plain command (words of letters, digits and "
                             "._/+-, e.g. 'python -m torch.distributed.run')")
        return v

    @check("rdzv_host")
    def _rdzv_host(v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._-]*\{node\}[A-Za-z0-9._-]*", v):
            raise ValueError(f"{v!r} must name the node as {{node}}, with a plain prefix or "
                             "suffix, e.g. '{node}i' (JSC's InfiniBand names)")
        return v

    @check("torchrun_args", "srun_args")
    def _options(opts):
        return check_options(opts)


RUNTIMES = ("apptainer", "singularity", "shifter", "podman-hpc", "container-engine", "pyxis")


class Container(_Model):
    """A container image and how a step enters it.

    runtime: apptainer | singularity (`exec` or `run`, --nv / --rocm), shifter (NERSC: sbatch
    --image, `shifter` per task), podman-hpc, container-engine (CSCS: the image is an EDF .toml,
    `srun --environment=`), pyxis (enroot: `srun --container-image=`)."""

    image: Annotated[str, Field(min_length=1)] | None = None
    runtime: Literal[RUNTIMES] | None = None     # type: ignore[valid-type]
    entry: Literal["exec", "run"] | None = None  # apptainer/singularity subcommand
    binds: ListField = None
    env: dict[str, Scalar] | None = None
    # nvidia (--nv), amd (--rocm), none; auto (default): the profile's GPU vendor when the step
    # asks for GPUs. true/false are auto/none, as written before vendors existed.
    gpu: StrictBool | Literal["nvidia", "amd", "none", "auto"] | None = None
    options: ListField = None

    @check("env")
    def _env(env: dict | None) -> dict | None:
        return check_env(env)

    @check("image")
    def _image(image: str | None) -> str | None:
        # The image reaches `#SBATCH --image=` for Shifter, where a newline would start a
        # directive of its own; no image name or path holds a control character.
        if image is not None and any(ord(c) < 32 or ord(c) == 127 for c in image):
            raise ValueError(f"{image!r} holds a control character (a newline?); an image "
                             "is one path or registry name")
        return image

    @check("options")
    def _options(opts):
        return check_options(opts)


ContainerField = Union[Literal["none"], Container, None]


class _StepSettings(_Model):
    """What defaults and a step may both set; the step's win (lists extend, see ListField)."""

    env: dict[str, Scalar] | None = None
    # Values expanded when the job runs ($NAME / ${NAME} only), in the batch shell and again in
    # each srun task (so $SLURM_NODEID, $USER, $PATH mean that task's).
    runtime_env: dict[str, str] | None = None
    # Shell lines run in the batch shell before the launch (module load, source venv, ...).
    setup: ListField = None
    # Shell lines run once in each srun task (torchrun: once per node) before the command.
    node_setup: ListField = None
    launch: Launch | None = None
    # Variables the job takes from the environment it is submitted from, by name only: their
    # values (tokens, keys) are never written to the run folder or put on a command line.
    env_passthrough: ListField = None

    @check("env")
    def _env(env: dict | None) -> dict | None:
        return check_env(env)

    @check("env_passthrough")
    def _passthrough(names):
        for name in list_items(names):
            check_env_name(name)
        return names

    @check("runtime_env")
    def _runtime_env(env: dict | None) -> dict | None:
        for key, value in (check_env(env) or {}).items():
            if not RUNTIME_VALUE.fullmatch(value):
                raise ValueError(f"runtime-env.{key}: {value!r} may refer to variables only as "
                                 "$NAME or ${NAME} (no quotes, backslashes, backticks or $(...))")
        return env

    @check("setup", "node_setup")
    def _lines(lines):
        for line in list_items(lines):
            if "\n" in line.strip():
                raise ValueError("each setup entry is one shell line")
        return lines


class Defaults(_StepSettings):
    resources: Resources = Resources()
    container: ContainerField = None


class Requeue(_Model):
    """Checkpoint and requeue before the time limit, instead of losing the work to it.

    SLURM warns the batch shell `before-limit` seconds ahead (--signal=B:USR2@N); the script
    creates $ITWINAI_HPC_STOP_FILE, which the step's code turns into a checkpoint and a clean
    exit, waits up to `grace` seconds for that, and requeues the job; the next run resumes."""

    before_limit: Annotated[StrictInt, Field(ge=30)] = 300
    grace: Annotated[StrictInt, Field(ge=1)] | None = None   # default: before-limit - 30
    max_requeues: Annotated[StrictInt, Field(ge=1)] = 10


class Watchdog(_Model):
    """Stop a step whose ranks stopped making progress (a collective one rank never joins, a
    stuck read, a dead peer) instead of letting it burn the allocation until the time limit.

    Every rank reports progress (the built-in trainer each step; your own script with
    `itwinai_hpc.job.progress()`); a rank that reports none for `no-progress` (SLURM's time
    grammar: "10:00" is ten minutes, "0:30" thirty seconds) dumps its Python stacks to the log,
    leaves a mark naming itself and its node, and exits 124; the step then shows as HUNG."""

    no_progress: str | StrictInt

    @check("no_progress")
    def _duration(v):
        seconds = slurm_syntax.time_seconds(v)
        if seconds < 1:
            raise ValueError(f"{v!r}: at least one second (e.g. '0:30' or '10:00')")
        return v


MATRIX_KEY = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"


class SweepTask(_Model):
    """One combination of a matrix whose values change the step's resources: matrix.py writes
    it on each step it expands the matrix step into (`train` -> `train-0`, `train-1`, ...)."""

    name: Annotated[str, Field(pattern=SAFE_NAME)]      # the sweep: the step as written
    task: Annotated[StrictInt, Field(ge=0)]
    tasks: Annotated[StrictInt, Field(ge=1)]
    values: dict[str, Scalar]


class Step(_StepSettings):
    """A step as written in the workflow file (plan.py turns it into a PlannedStep)."""

    name: Annotated[str, Field(pattern=SAFE_NAME)]
    description: str | None = None
    # The steps this one runs after: a list (each must succeed), or a mapping to `ok` (succeed)
    # or `any` (end in any state; this step then checks that one of its tasks succeeded).
    needs: dict[str, Literal["ok", "any"]] = {}
    # A sweep: the step runs once per combination of these values, `${matrix.KEY}` in its args,
    # env and resources (matrix.py); `max-parallel` tasks at a time (an array's %N).
    matrix: dict[Annotated[str, Field(pattern=MATRIX_KEY)],
                 Annotated[list[Scalar], Field(min_length=1)]] | None = None
    max_parallel: Annotated[StrictInt, Field(ge=1)] | None = None
    sweep: SweepTask | None = None
    launcher: Literal["none", "srun", "torchrun"] = "none"
    command: Annotated[str, Field(min_length=1)]
    args: list[Scalar] = []
    array: str | None = None
    nproc_per_node: Annotated[StrictInt, Field(ge=1)] | None = None
    requeue: Requeue | None = None
    watchdog: Watchdog | None = None
    resources: Resources = Resources()
    container: ContainerField = None

    @check("array", before=True)
    def _array(v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{v!r} is not {slurm_syntax.ARRAY_HELP}")
        return slurm_syntax.parse_array(v).text

    @check("needs", before=True)
    def _needs(v):
        if isinstance(v, str):
            return {v: "ok"}
        if isinstance(v, list) and all(isinstance(n, str) for n in v):
            return {n: "ok" for n in v}
        return v

    @serializer("needs")
    def _needs_out(needs: dict[str, str]):
        """As a list where every need is `ok` (as most people write it)."""
        return list(needs) if set(needs.values()) <= {"ok"} else needs

    @check("command")
    def _command(v: str) -> str:
        if not v.strip():
            raise ValueError("command is empty (only spaces); give the program to run, e.g. "
                             "'python train.py' or 'itwinai-hpc train'")
        if "\n" in v.strip():
            raise ValueError("command must be one line (put longer shell code in a script file)")
        return v.strip()


class Workflow(_Model):
    name: Annotated[str, Field(pattern=SAFE_NAME)]
    description: str | None = None
    # The site profile merged under `defaults` (profiles.py); --profile overrides it.
    profile: str | None = None
    vars: dict[str, Scalar] = {}
    defaults: Defaults = Defaults()
    steps: Annotated[list[Step], Field(min_length=1)]

    @check("vars")
    def _vars(v: dict) -> dict:
        for key in v:
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"'{key}' is not a valid variable name (letters, digits, _)")
        return v
