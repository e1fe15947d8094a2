"""Checks that need the whole validated workflow (the step graph and fields that depend on each
other), and the run order. Pure: no I/O.
"""

from __future__ import annotations

import heapq

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.validation import did_you_mean, dotted
from itwinai_hpc.core.yamlsrc import YamlDoc
from itwinai_hpc.workflow.sbatch_fields import Resources
from itwinai_hpc.workflow.schema import Workflow, list_items, merge


def check_graph(wf: Workflow, doc: YamlDoc) -> list[UserError]:
    """Duplicate names, unknown or self needs, cycles, and launcher/field mismatches."""
    errors: list[UserError] = []

    def err(path: tuple, message: str) -> None:
        file, line = doc.where(path)
        errors.append(UserError(message, file=file, line=line, field=dotted(path, doc.data)))

    seen: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.name in seen:
            err(("steps", i, "name"), f"duplicate step name '{step.name}' (also step "
                f"[{seen[step.name]}]); step names must be unique")
        seen.setdefault(step.name, i)
    names = list(seen)
    for i, step in enumerate(wf.steps):
        written = _written_needs(doc, i)
        for need in step.needs:
            at = ("steps", i, "needs", written.index(need) if need in written else need)
            if need == step.name:
                err(at, f"step '{step.name}' cannot need itself")
            elif need not in seen:
                err(at, f"unknown step '{need}'"
                    f"{did_you_mean(need, names)}; steps: {', '.join(names)}")
        if step.nproc_per_node is not None and step.launcher != "torchrun":
            err(("steps", i, "nproc-per-node"), "nproc-per-node applies only to launcher "
                f"'torchrun' (this step's launcher is '{step.launcher}')")
        container = merge(None if wf.defaults.container == "none" else wf.defaults.container,
                          None if step.container == "none" else step.container)
        if step.container != "none" and container is not None and not container.image:
            where = ("steps", i, "container") if step.container else ("defaults", "container")
            err(where + ("image",), "the container has no image: set image (a .sif file or "
                "a docker:// reference), or write 'container: none'")
        if step.requeue and step.requeue.grace and \
                step.requeue.grace >= step.requeue.before_limit:
            err(("steps", i, "requeue", "grace"), "grace must be shorter than before-limit, or "
                "the time limit ends the job before it is requeued")
        if step.max_parallel and not (step.matrix or step.sweep):
            err(("steps", i, "max-parallel"), "max-parallel applies to a step with a matrix "
                "(for array: write the limit as %N, e.g. array: 0-9%2)")
        if step.requeue and (step.array or step.matrix):
            err(("steps", i, "requeue"), "requeue is not supported for job arrays (a matrix "
                "that changes only args/env is one)")
        resources = merge(wf.defaults.resources, step.resources)
        gpu_flags = [f for f in list_items(resources.extra_sbatch)
                     if f.split("=", 1)[0] in ("--gres", "--gpus", "--gpus-per-task")
                     and (f.startswith("--gpus") or "gpu" in f)]
        if gpu_flags and resources.gpus_per_node:
            err(("steps", i, "resources", "extra-sbatch"), f"{gpu_flags[0]} asks for GPUs "
                "again, beside resources.gpus-per-node (two requests SLURM may add up or "
                "refuse); use gpus-per-node, with gpu-flag: gres for the --gres=gpu:N form")
        if step.launcher == "torchrun" and (step.resources.ntasks_per_node or 1) != 1:
            err(("steps", i, "resources", "ntasks-per-node"), "with launcher 'torchrun' there is "
                "one torchrun agent per node; set nproc-per-node for the processes per node")
    if not errors:
        cycle = find_cycle(wf)
        if cycle:
            i = names.index(cycle[0])
            err(("steps", i, "needs"), "the steps' needs form a cycle: " + " -> ".join(cycle))
    return errors


def _written_needs(doc: YamlDoc, i: int) -> list:
    """The step's needs as a list in the file (a path into it by position; one name is a list
    of one), or [] where they are written as a mapping (a path by name)."""
    steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
    step = steps[i] if isinstance(steps, list) and i < len(steps) else None
    needs = step.get("needs") if isinstance(step, dict) else None
    return [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []


def find_cycle(wf: Workflow) -> list[str] | None:
    """A cycle of needs as [a, b, ..., a], or None. Iterative: a chain of thousands of steps
    must not exhaust Python's recursion limit."""
    needs = {s.name: list(s.needs) for s in wf.steps}
    state: dict[str, int] = {}   # 1 on the current path, 2 done
    for root in needs:
        if root in state:
            continue
        path: list[str] = [root]
        todo: list[list[str]] = [list(needs[root])]
        state[root] = 1
        while path:
            if not todo[-1]:
                state[path.pop()] = 2
                todo.pop()
                continue
            parent = todo[-1].pop()
            if parent not in needs:
                continue
            if state.get(parent) == 1:
                return path[path.index(parent):] + [parent]
            if parent not in state:
                state[parent] = 1
                path.append(parent)
                todo.append(list(needs[parent]))
    return None


def topological_order(wf: Workflow) -> list[str]:
    """Kahn's algorithm, always taking the earliest ready step in file order (stable)."""
    order = [s.name for s in wf.steps]
    position = {name: i for i, name in enumerate(order)}
    missing = {s.name: len(set(s.needs)) for s in wf.steps}
    children: dict[str, list[str]] = {name: [] for name in order}
    for s in wf.steps:
        for need in set(s.needs):
            children[need].append(s.name)
    ready = [position[n] for n in order if missing[n] == 0]
    heapq.heapify(ready)
    done: list[str] = []
    while ready:
        name = order[heapq.heappop(ready)]
        done.append(name)
        for child in children[name]:
            missing[child] -= 1
            if missing[child] == 0:
                heapq.heappush(ready, position[child])
    return done


# Beyond any cluster of 2026 (Frontier: 9,408 nodes; 8 GPUs and ~200 cores per node at most;
# a few TB of memory): legal for sbatch, but almost surely a typo.
_PLAUSIBLE = {"nodes": 10_000, "gpus_per_node": 16, "cpus_per_task": 1024,
              "ntasks_per_node": 1024}


def implausible_values(wf: Workflow, doc: YamlDoc, site=None) -> list[UserError]:
    """Values SLURM accepts but no cluster has, or this site's nodes do not have (a Profile's
    node and partitions); validate prints them as warnings."""
    from itwinai_hpc.core import slurm_syntax
    found: list[UserError] = []
    sections: list[tuple[tuple[str | int, ...], Resources]] = [
        (("defaults", "resources"), wf.defaults.resources)]
    sections += [(("steps", i, "resources"), s.resources) for i, s in enumerate(wf.steps)]
    for where, r in sections:
        def warn(key: str, message: str) -> None:
            path = where + (key,)
            file, line = doc.where(path)
            found.append(UserError(message, file=file, line=line, field=dotted(path, doc.data)))
        for name, limit in _PLAUSIBLE.items():
            value = getattr(r, name)
            if value and value > limit:
                warn(name.replace("_", "-"), f"{value} is more than any cluster has "
                     f"(> {limit}); sbatch may accept it and the job never start")
        if r.time and slurm_syntax.time_seconds(r.time) > 31 * 86400:
            warn("time", f"'{r.time}' is more than a month; sites allow days at most "
                 "(sbatch --test-only tells you this cluster's limit)")
        node = site.node if site else None
        if node and node.gpus is not None and (r.gpus_per_node or 0) > node.gpus:
            warn("gpus-per-node", f"{r.gpus_per_node} GPUs per node, but this site's nodes have "
                 f"{node.gpus} (profile '{wf.profile}')")
        if node and node.cores and (r.cpus_per_task or 0) * (r.ntasks_per_node or 1) > node.cores:
            warn("cpus-per-task", f"{r.cpus_per_task} x {r.ntasks_per_node or 1} task(s) is more "
                 f"CPUs than this site's nodes have ({node.cores}, profile '{wf.profile}')")
        if site and site.partitions and r.partition and \
                not set(r.partition.split(",")) & set(site.partitions):
            warn("partition", f"'{r.partition}' is none of this site's usual partitions "
                 f"({', '.join(site.partitions)}, profile '{wf.profile}')")
        if r.mem and r.mem[-1] in slurm_syntax.MEM_UNITS and \
                (slurm_syntax.mem_bytes(r.mem) or 0) > 16 * 2**40:
            warn("mem", f"{r.mem} per node is more memory than any node has")
    for i, step in enumerate(wf.steps):
        time_limit = merge(wf.defaults.resources, step.resources).time  # parsed above
        if step.requeue and time_limit and \
                slurm_syntax.time_seconds(time_limit) <= step.requeue.before_limit:
            path = ("steps", i, "requeue")
            file, line = doc.where(path)
            found.append(UserError(
                f"before-limit ({step.requeue.before_limit} s) is not shorter than the time "
                f"limit ({time_limit}): SLURM asks the step to checkpoint and stop as soon as "
                "it starts; set requeue.before-limit well below the time limit",
                file=file, line=line, field=dotted(path, doc.data)))
    return found
