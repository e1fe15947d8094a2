"""Turn a validated Workflow into PlannedSteps in dependency order: defaults merged, launcher,
container and requeue resolved. Pure: no I/O.
"""

from __future__ import annotations

from itwinai_hpc.core.slurm_syntax import time_seconds
from itwinai_hpc.run import layout
from itwinai_hpc.run.planned import (
    PlannedContainer,
    PlannedLaunch,
    PlannedRequeue,
    PlannedResources,
    PlannedStep,
)
from itwinai_hpc.workflow.graph import topological_order
from itwinai_hpc.workflow.matrix import combinations, task_name, value_text
from itwinai_hpc.workflow.profiles import node_share
from itwinai_hpc.workflow.schema import (
    Container,
    Launch,
    Resources,
    Step,
    Workflow,
    list_items,
    merge,
    merge_lists,
)


def plan(wf: Workflow, site=None) -> list[PlannedStep]:
    """The steps in dependency order (stable: file order among independent steps). `site` (a
    profiles.Profile) goes under the workflow's defaults: the workflow's values win, lists
    extend; its GPU vendor resolves `container.gpu: auto`. A profile's container settings say
    how containers are entered there; a step without an image still runs without one.
    Sizes: the step's own cpus-per-task/mem > the profile's GPU share of a node (GPU steps)
    > the workflow's defaults > the profile's defaults (profiles.node_share)."""
    d = merge(site.defaults, wf.defaults) if site else wf.defaults
    gpu_vendor = site.node.gpu_vendor if site else "nvidia"
    order = topological_order(wf)
    by_name = {s.name: s for s in wf.steps}
    width = max(2, len(str(len(order))))
    needed_any = {n for s in wf.steps for n, cond in s.needs.items() if cond == "any"}
    planned = []
    for i, name in enumerate(order, start=1):
        step = by_name[name]
        res = _resources(node_share(merge(d.resources, step.resources), step.resources,
                                     site.node if site else None))
        container = _resolve_container(d.container, step.container, gpus=res.gpus_per_node,
                                       vendor=gpu_vendor)
        env = {**_strs(d.env), **_strs(step.env)}
        nproc = step.nproc_per_node or (res.gpus_per_node or 1)
        requeue = None
        if step.requeue:
            r = step.requeue
            requeue = PlannedRequeue(before_limit=r.before_limit,
                                     grace=r.grace or r.before_limit - 30,
                                     max_requeues=r.max_requeues)
        planned.append(PlannedStep(
            index=i, name=name, job_name=layout.job_name(wf.name, name),
            script=layout.sbatch_script(i, name, width), needs=tuple(step.needs),
            launcher=step.launcher, command=step.command,
            args=tuple(value_text(a) for a in step.args), resources=res, container=container,
            env=tuple(env.items()), array=_array(step),
            nproc_per_node=nproc, requeue=requeue, description=step.description,
            no_progress_s=time_seconds(step.watchdog.no_progress) if step.watchdog else None,
            launch=_launch(merge(d.launch, step.launch)),
            setup=tuple(merge_lists(d.setup, step.setup) or ()),
            node_setup=tuple(merge_lists(d.node_setup, step.node_setup) or ()),
            runtime_env=tuple({**(d.runtime_env or {}), **(step.runtime_env or {})}.items()),
            omp_num_threads=_omp_threads(res, step.launcher, nproc, env),
            env_passthrough=tuple(merge_lists(d.env_passthrough, step.env_passthrough) or ()),
            needs_any=tuple(n for n, cond in step.needs.items() if cond == "any"),
            after=_throttled_after(step, by_name), ok_marker=name in needed_any,
            any_groups=_any_groups([by_name[n] for n, c in step.needs.items() if c == "any"]),
            **_sweep(step)))
    return planned


def _array(step: Step) -> str | None:
    """A matrix that varies only args/env: one task per combination, max-parallel at once."""
    if step.matrix:
        n = len(_combinations(step.matrix))
        return f"0-{n - 1}" + (f"%{step.max_parallel}" if step.max_parallel else "")
    return None if step.array is None else str(step.array)


def _combinations(matrix: dict[str, list]) -> list[tuple[str, ...]]:
    return [tuple(value_text(v) for v in combo.values()) for combo in combinations(matrix)]


def _sweep(step: Step) -> dict:
    """The PlannedStep fields of a sweep: its name, size, keys and values per task."""
    if step.matrix:
        combos = _combinations(step.matrix)
        return dict(sweep=step.name, sweep_size=len(combos), matrix_keys=tuple(step.matrix),
                    matrix_values=tuple(combos))
    if step.sweep:
        t = step.sweep
        return dict(sweep=t.name, sweep_task=t.task, sweep_size=t.tasks,
                    matrix_keys=tuple(t.values),
                    matrix_values=(tuple(value_text(v) for v in t.values.values()),))
    return {}


def _any_groups(needed: list[Step]) -> tuple[tuple[str, bool], ...]:
    """Whose ok markers a step that needs `needed` with `any` looks for, one of each group
    (layout.ok_marker: NAME, or NAME.* where True): a sweep when it needs all its tasks
    (`needs: {train: any}`), else each task it names by itself (NAME.TASK)."""
    groups: dict[tuple[str, bool], None] = {}
    for step in needed:
        t = step.sweep
        if t is None:
            groups[step.name, bool(step.matrix or step.array)] = None
        elif sum(1 for s in needed if s.sweep and s.sweep.name == t.name) == t.tasks:
            groups[t.name, True] = None
        else:
            groups[f"{t.name}.{t.task}", False] = None
    return tuple(groups)


def _throttled_after(step: Step, by_name: dict[str, Step]) -> tuple[str, ...]:
    """A sweep expanded into one job per task, with max-parallel P: task i starts once task
    i - P has ended (SLURM cannot throttle separate jobs as it does an array's tasks)."""
    t = step.sweep
    if t is None or not step.max_parallel or t.task < step.max_parallel:
        return ()
    earlier = task_name(t.name, t.task - step.max_parallel)
    return (earlier,) if earlier in by_name else ()


def _omp_threads(res: PlannedResources, launcher: str, nproc: int,
                 env: dict[str, str]) -> int | None:
    """OpenMP threads per process: the task's CPUs shared by the processes torchrun starts in
    it (PyTorch's own default would use every core of the node in every process)."""
    if "OMP_NUM_THREADS" in env or not res.cpus_per_task:
        return None
    return max(1, res.cpus_per_task // (nproc if launcher == "torchrun" else 1))


def _launch(launch: Launch | None) -> PlannedLaunch:
    if launch is None:
        return PlannedLaunch()
    prefix, _, suffix = (launch.rdzv_host or "{node}").partition("{node}")
    return PlannedLaunch(torchrun=launch.torchrun or "torchrun",
                         torchrun_args=tuple(list_items(launch.torchrun_args)),
                         srun_args=tuple(list_items(launch.srun_args)),
                         rdzv_prefix=prefix, rdzv_suffix=suffix)


def _resources(r: Resources) -> PlannedResources:
    return PlannedResources(
        nodes=r.nodes or 1, ntasks_per_node=r.ntasks_per_node or 1,
        gpus_per_node=r.gpus_per_node or 0, cpus_per_task=r.cpus_per_task, mem=r.mem,
        time=None if r.time is None else str(r.time), partition=r.partition,
        account=r.account, qos=r.qos,
        constraint=r.constraint, extra_sbatch=tuple(list_items(r.extra_sbatch)),
        gpu_flag=r.gpu_flag or "gpus-per-node")


def _resolve_container(default, step, gpus: int, vendor: str) -> PlannedContainer | None:
    if step == "none" or (step is None and default in ("none", None)):
        return None
    c: Container = merge(None if default == "none" else default, step)
    if c is None or not c.image:
        return None
    gpu: str = c.gpu if isinstance(c.gpu, str) else "none" if c.gpu is False else "auto"
    if gpu == "auto":
        gpu = vendor if gpus > 0 else "none"
    return PlannedContainer(runtime=c.runtime or "apptainer", image=c.image,
                            binds=tuple(list_items(c.binds)), env=tuple(_strs(c.env).items()),
                            gpu=gpu, options=tuple(list_items(c.options)),
                            entry=c.entry or "exec")


def _strs(d: dict | None) -> dict[str, str]:
    return {k: value_text(v) for k, v in (d or {}).items()}
