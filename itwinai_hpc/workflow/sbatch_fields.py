"""Resources: the step fields that end up on `#SBATCH` lines, and the sbatch flags itwinai-hpc
owns. Every value is checked against a strict pattern here, because sbatch reads those lines
itself and shell quoting does not apply there. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from itwinai_hpc.core import slurm_syntax
from itwinai_hpc.core.records import Field, StrictInt, check
from itwinai_hpc.workflow.schema_base import ListField, _Model, list_items

SLURM_WORD = r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$"         # partition, account, qos lists
CONSTRAINT = r"^[A-Za-z0-9_.,&|\[\]*:()!-]+$"
MEM = r"^\d+[KMGT]?$"
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
    "--gres": None,     # refused only together with gpus-per-node (see graph.py)
    "--signal": "use the step's requeue.before-limit; the requeue trap owns the warning signal",
    "--requeue": "use the step's 'requeue' (it adds --requeue with the checkpoint trap)",
    "--no-requeue": "the step's 'requeue' decides whether a job is requeued",
    "--ntasks": "use resources.nodes and resources.ntasks-per-node (the launchers count on them)",
    "--test-only": "it is an option of the sbatch command line; `itwinai-hpc submit --dry-run` "
                   "or `sbatch --test-only SCRIPT` checks a script",
    "--export": None,   # refused unless it keeps the environment (see _extra below)
}

# sbatch takes any unique prefix of a long option (`--outp=x` and even `--ou=x` are --output):
# every prefix of an owned flag is refused too (one sbatch finds ambiguous it refuses itself),
# unless it is a whole sbatch option of its own (an exact name wins over prefixes).
SBATCH_OPTIONS_THAT_BEGIN_AN_OWNED_ONE = {"--gpus"}


def abbreviated_owned(name: str) -> list[str]:
    """The owned flags `name` (`--outp`) is a shorter form of; [] for a whole option."""
    if name in OWNED_SBATCH_FLAGS or name in SBATCH_OPTIONS_THAT_BEGIN_AN_OWNED_ONE or \
            not re.fullmatch(r"--[a-z][a-z0-9-]*", name):
        return []
    return sorted(flag for flag in OWNED_SBATCH_FLAGS if flag.startswith(name))


def _abbreviation_problem(name: str) -> str | None:
    owned = abbreviated_owned(name)
    if not owned:
        return None
    said = " or ".join(f"'{flag}'" for flag in owned)
    reason = OWNED_SBATCH_FLAGS[owned[0]]
    if len(owned) == 1 and reason:
        why = f"which is set by itwinai-hpc: {reason}"
    elif len(owned) == 1:
        why = f"which itwinai-hpc checks: write it out in full as '{owned[0]}'"
    else:
        why = "which itwinai-hpc sets or checks: write the option out in full"
    return (f"'{name}' can stand for {said} (sbatch takes any unique beginning of an option "
            f"name), {why}")


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
    extra_sbatch: ListField = None
    # How GPUs are asked for: --gpus-per-node=N (default) or --gres=gpu:N (sites that want it)
    gpu_flag: Literal["gpus-per-node", "gres"] | None = None

    @check("mem", before=True)
    def _mem(v):
        """YAML reads `mem: 1024` as a number; SLURM reads it as megabytes, as if written."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v

    @check("time")
    def _time(v: str | int | None) -> str | None:
        if v is None:
            return None
        slurm_syntax.time_seconds(v)        # raises ValueError with the reason
        return str(v)

    @check("extra_sbatch")
    def _extra(flags):
        for flag in list_items(flags):
            name, _, value = flag.partition("=")
            if name == "--export" and not (value == "ALL" or value.startswith("ALL,")):
                raise ValueError(f"'{flag}': the job scripts need the environment sbatch passes "
                                 "on (ITWINAI_HPC_RUN_DIR, and srun inside the job inherits it); "
                                 "use --export=ALL,NAME=value to add variables")
            if OWNED_SBATCH_FLAGS.get(name):
                raise ValueError(f"'{name}' is set by itwinai-hpc: {OWNED_SBATCH_FLAGS[name]}")
            problem = _abbreviation_problem(name)
            if problem:
                raise ValueError(problem)
            if not SBATCH_FLAG.fullmatch(flag):
                raise ValueError(f"'{flag}' is not a long sbatch option like '--exclusive' or "
                                 "'--reservation=NAME' (no spaces, quotes or shell characters)")
        return flags
