"""Turn a validated Workflow into ordered JobSpecs: defaults merged, launcher and container resolved.

A JobSpec holds everything a template or a backend needs about one step, and nothing else. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import Container, Requeue, Resources, Workflow

BUILTIN_RESOURCES = Resources.model_validate({"nodes": 1, "ntasks-per-node": 1, "gpus-per-node": 0})


@dataclass(frozen=True)
class ContainerSpec:
    runtime: str
    image: str
    binds: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    gpu: bool
    options: tuple[str, ...]


@dataclass(frozen=True)
class JobSpec:
    index: int                       # 1-based position in dependency order
    name: str                        # the step name
    job_name: str                    # <workflow>.<step>
    script: str                      # file name in the run folder: 01-preprocess.sbatch
    needs: tuple[str, ...]
    launcher: str
    command: str                     # shell, written by the user on purpose: never quoted
    args: tuple[str, ...]            # always quoted
    resources: Resources
    container: ContainerSpec | None
    env: tuple[tuple[str, str], ...]
    array: str | None = None
    nproc_per_node: int = 1
    requeue: Requeue | None = None
    description: str | None = None
    extra_sbatch: tuple[str, ...] = field(default=())

    @property
    def local_script(self) -> str:
        """The script of this step for backends that run without SLURM (local, submitit)."""
        return local_script_name(self.script)

    @property
    def log_pattern(self) -> str:
        return "%x-%A_%a.out" if self.array else "%x-%j.out"


def local_script_name(sbatch_script: str) -> str:
    return sbatch_script.removesuffix(".sbatch") + ".sh"


def merge(base, override):
    """Field-wise merge of two models of the same type: fields set in `override` win."""
    if base is None:
        return override
    if override is None:
        return base
    values = base.model_dump(exclude_none=True, by_alias=True)
    values.update(override.model_dump(exclude_none=True, by_alias=True))
    return type(base).model_validate(values)


def plan(wf: Workflow, suffix: str = "sbatch") -> list[JobSpec]:
    """The steps in dependency order (stable: file order among independent steps)."""
    order = topological_order(wf)
    by_name = {s.name: s for s in wf.steps}
    width = max(2, len(str(len(order))))
    specs = []
    for i, name in enumerate(order, start=1):
        step = by_name[name]
        res = merge(merge(BUILTIN_RESOURCES, wf.defaults.resources), step.resources)
        container = _resolve_container(wf.defaults.container, step.container,
                                       gpus=res.gpus_per_node or 0)
        env = {**_strs(wf.defaults.env), **_strs(step.env)}
        nproc = step.nproc_per_node or (res.gpus_per_node or 1)
        specs.append(JobSpec(
            index=i, name=name, job_name=f"{wf.name}.{name}",
            script=f"{i:0{width}d}-{name}.{suffix}", needs=tuple(step.needs),
            launcher=step.launcher, command=step.command,
            args=tuple(_str(a) for a in step.args), resources=res, container=container,
            env=tuple(env.items()), array=None if step.array is None else str(step.array),
            nproc_per_node=nproc, description=step.description, requeue=step.requeue,
            extra_sbatch=tuple(res.extra_sbatch or ())))
    return specs


def topological_order(wf: Workflow) -> list[str]:
    """Kahn's algorithm, always taking the earliest ready step in file order."""
    remaining = [s.name for s in wf.steps]
    needs = {s.name: set(s.needs) for s in wf.steps}
    done: list[str] = []
    while remaining:
        ready = next(n for n in remaining if needs[n] <= set(done))   # acyclic: validated
        done.append(ready)
        remaining.remove(ready)
    return done


def _resolve_container(default, step, gpus: int) -> ContainerSpec | None:
    if step == "none" or (step is None and default in ("none", None)):
        return None
    c: Container = merge(None if default == "none" else default, step)
    if c is None or not c.image:
        return None
    return ContainerSpec(runtime=c.runtime or "apptainer", image=c.image,
                         binds=tuple(c.binds or ()), env=tuple(_strs(c.env).items()),
                         gpu=c.gpu if c.gpu is not None else gpus > 0,
                         options=tuple(c.options or ()))


def _str(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _strs(d: dict | None) -> dict[str, str]:
    return {k: _str(v) for k, v in (d or {}).items()}
