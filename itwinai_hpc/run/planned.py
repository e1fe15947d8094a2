"""A step as planned: everything a template or a backend needs about one step, resolved.

render/plan.py makes PlannedSteps from a workflow; render/folder.py renders scripts from them;
run.json stores them (`to_dict`/`from_dict`), so backends, `status`, `resume` and the ML steps
read the plan from the run folder and never load the workflow again. Pure data: no I/O, no
workflow schema.

Environment values (`env`, `runtime-env`, `container.env`) are rendered into the scripts but not
stored in run.json: status and the backends never need them, and run.json is read by more tools.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from itwinai_hpc.core.markers import display
from itwinai_hpc.run import layout


@dataclass(frozen=True)
class PlannedResources:
    """SLURM resources after defaults < defaults.resources < step.resources."""

    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    gpu_flag: str = "gpus-per-node"     # or "gres": --gres=gpu:N


# Runtimes that wrap the step on the srun line itself (a SPANK plugin), with the batch shell
# outside; the others wrap the command as a prefix inside each srun task (or the batch shell).
SRUN_RUNTIMES = ("container-engine", "pyxis")


@dataclass(frozen=True)
class PlannedContainer:
    runtime: str
    image: str
    binds: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    gpu: str = "none"                   # nvidia | amd | none (resolved)
    options: tuple[str, ...] = ()
    entry: str = "exec"                 # apptainer/singularity: exec | run

    @property
    def wraps_srun(self) -> bool:
        """True for runtimes that are srun options (CSCS container engine, pyxis)."""
        return self.runtime in SRUN_RUNTIMES


@dataclass(frozen=True)
class PlannedRequeue:
    """--signal=B:USR2@before_limit; the step gets `grace` seconds to checkpoint."""

    before_limit: int
    grace: int
    max_requeues: int


@dataclass(frozen=True)
class PlannedLaunch:
    """How the launcher is invoked (site needs beyond the default recipe)."""

    torchrun: str = "torchrun"
    torchrun_args: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    rdzv_prefix: str = ""               # the rendezvous host is prefix + node name + suffix
    rdzv_suffix: str = ""


@dataclass(frozen=True)
class PlannedStep:
    index: int                       # 1-based position in dependency order
    name: str                        # the step name
    job_name: str                    # <workflow>.<step>
    script: str                      # the sbatch script in the run folder: 01-preprocess.sbatch
    needs: tuple[str, ...]
    launcher: str                    # none | srun | torchrun
    command: str                     # shell, written by the user on purpose: never quoted
    args: tuple[str, ...] = ()       # always quoted
    resources: PlannedResources = field(default_factory=PlannedResources)
    container: PlannedContainer | None = None
    env: tuple[tuple[str, str], ...] = ()
    array: str | None = None
    nproc_per_node: int = 1
    requeue: PlannedRequeue | None = None
    no_progress_s: int | None = None    # the watchdog: a rank silent this long has hung
    description: str | None = None
    launch: PlannedLaunch = field(default_factory=PlannedLaunch)
    setup: tuple[str, ...] = ()         # batch shell, before the launch
    node_setup: tuple[str, ...] = ()    # each srun task (torchrun: each node), before the command
    runtime_env: tuple[tuple[str, str], ...] = ()   # expanded at run time ($NAME only)
    omp_num_threads: int | None = None  # derived from cpus-per-task unless env sets it
    env_passthrough: tuple[str, ...] = ()   # names only: values come from the submitting env
    # needs: {step: any}: the subset of `needs` this step waits for whatever their outcome (SLURM
    # afterany); it then checks that at least one task of each of them succeeded (ok markers).
    needs_any: tuple[str, ...] = ()
    # Steps this one only runs after (afterany, no check): a throttled sweep's earlier tasks.
    after: tuple[str, ...] = ()
    # The groups whose ok markers the script checks: (group, is_sweep) per any-need.
    any_groups: tuple[tuple[str, bool], ...] = ()
    ok_marker: bool = False             # leaves layout.ok_marker on success (an any-need's target)
    # A sweep (`matrix:`): its name (the step as written), this step's task (a step per
    # combination: its index; a job array: None, the task is $SLURM_ARRAY_TASK_ID) and size.
    sweep: str | None = None
    sweep_task: int | None = None
    sweep_size: int = 0
    # The matrix: its keys, and per task (array index) the values, as strings.
    matrix_keys: tuple[str, ...] = ()
    matrix_values: tuple[tuple[str, ...], ...] = ()

    @property
    def local_script(self) -> str:
        """The script of this step for backends that run without sbatch (local, submitit)."""
        return layout.local_script(self.script)

    @property
    def log_pattern(self) -> str:
        return layout.log_pattern(bool(self.array))

    @property
    def needs_ok(self) -> tuple[str, ...]:
        """The needs that must succeed (SLURM afterok)."""
        return tuple(n for n in self.needs if n not in self.needs_any)

    @property
    def waits_for(self) -> tuple[str, ...]:
        """The steps that must only have ended, in any state (SLURM afterany)."""
        return self.needs_any + tuple(n for n in self.after if n not in self.needs_any)

    @property
    def matrix(self) -> list[dict[str, str]]:
        """Per task, its values: {key: value}."""
        return [dict(zip(self.matrix_keys, values)) for values in self.matrix_values]

    @property
    def extra_sbatch(self) -> tuple[str, ...]:
        return self.resources.extra_sbatch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without environment values."""
        d = asdict(self)
        d.pop("env")
        d.pop("runtime_env")
        if d["container"]:
            d["container"].pop("env")
        d["args"] = [display(a) for a in self.args]     # ${matrix.KEY}, as written
        d["log_pattern"] = self.log_pattern
        d["local_script"] = self.local_script
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlannedStep:
        """Inverse of to_dict (env values empty). Unknown keys (from a newer minor version) are
        ignored; derived keys are recomputed."""
        d = {k: v for k, v in d.items() if k in _FIELDS}
        d["needs"] = tuple(d.get("needs", ()))
        d["args"] = tuple(d.get("args", ()))
        d["resources"] = _build(PlannedResources, d.get("resources") or {})
        if d.get("container"):
            d["container"] = _build(PlannedContainer, d["container"])
        if d.get("requeue"):
            d["requeue"] = _build(PlannedRequeue, d["requeue"])
        d["launch"] = _build(PlannedLaunch, d.get("launch") or {})
        for key in ("setup", "node_setup", "env_passthrough", "needs_any", "after",
                    "matrix_keys"):
            d[key] = tuple(d.get(key, ()))
        for key in ("any_groups", "matrix_values"):
            d[key] = tuple(tuple(x) for x in d.get(key, ()))
        return cls(**d)


_FIELDS = {f.name for f in fields(PlannedStep)}


def _build(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v)
                  if isinstance(v, list) else v)
              for k, v in d.items() if k in known}
    return cls(**values)
