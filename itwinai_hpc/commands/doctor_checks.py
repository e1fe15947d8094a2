"""The doctor's verdicts: the facts the smoke job wrote (ml/doctor.py's doctor.json) against
what the step asked for, one check each: ranks, gpus, allreduce, data, mlflow; status pass,
warn or fail, a one-line summary, advice (the all-reduce's: doctor_network.py). Pure: the
files were read by the caller."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str
    summary: str
    advice: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


@dataclass
class Expected:
    """What the step asked for (its plan), and what the login node knows."""

    nodes: int
    processes_per_node: int
    gpus_per_node: int
    container: str | None = None      # runtime and image, None without
    container_gpu: str = "none"       # nvidia, amd or none: --nv / --rocm
    data: str | None = None
    data_here: bool = False           # the data folder exists at the login node
    alone: bool = False               # launcher none: one process, in the batch shell


def expand_hostlist(text: str) -> list[str]:
    """SLURM's hostlist syntax: 'node[1-3,7],gpu-a[01-02]-ib' -> the names, in order."""
    names: list[str] = []
    for part in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", text or ""):
        names.extend(_expand_one(part))
    return names


def _expand_one(part: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", part)
    if not m:
        return [part]
    head, tail = part[:m.start()], part[m.end():]
    out: list[str] = []
    for item in m.group(1).split(","):
        lo, _, hi = item.partition("-")
        if not hi:
            out.extend(head + lo + rest for rest in _expand_one(tail))
            continue
        width = len(lo) if lo.startswith("0") else 0
        for n in range(int(lo), int(hi) + 1):
            out.extend(head + str(n).zfill(width) + rest for rest in _expand_one(tail))
    return out


def check_ranks(facts: dict, want: Expected) -> Check:
    ranks = facts["ranks"]
    expected = 1 if want.alone else want.nodes * want.processes_per_node
    per_node = Counter(r["node"] for r in ranks)
    where = ", ".join(f"{n} [{', '.join(str(r['rank']) for r in ranks if r['node'] == n)}]"
                      for n in per_node)
    allocated = expand_hostlist(facts["nodelist"]) if facts.get("nodelist") else None
    joined = max(r["joined_s"] for r in ranks)
    details = {"ranks_per_node": dict(per_node), "nodelist": facts.get("nodelist"),
               "hosts": sorted({r["hostname"] for r in ranks}),
               "cpus_per_rank": {r["rank"]: r["cpus"] for r in ranks}, "joined_s": joined}
    problems = []
    if len(ranks) != expected:
        problems.append(f"{len(ranks)} of {expected} ranks started")
    if allocated is not None:
        stray = sorted(set(per_node) - set(allocated))
        idle = [n for n in allocated if n not in per_node]
        if stray:
            problems.append(f"ranks on {', '.join(stray)}, not in SLURM_JOB_NODELIST "
                            f"{facts['nodelist']}")
        if idle and not want.alone:
            problems.append(f"no rank on {', '.join(idle)} (allocated)")
    elif len(per_node) > (1 if want.alone else want.nodes):
        problems.append(f"ranks on {len(per_node)} hosts, {want.nodes} asked")
    uneven = {n: c for n, c in per_node.items() if c != want.processes_per_node}
    if uneven and len(ranks) == expected:
        problems.append("uneven ranks per node: " + ", ".join(f"{n} {c}"
                                                              for n, c in uneven.items()))
    if problems:
        return Check("ranks", FAIL, "; ".join(problems) + f" (ran: {where})", [
            "compare the step's nodes and nproc-per-node with the job's log "
            "(itwinai-hpc logs RUN); a node that never ran a rank may be unreachable from the "
            "first node (rendezvous), or the launch line's srun options may place tasks "
            "differently"], details)
    summary = (f"{len(ranks)} of {expected} ranks started, {want.processes_per_node} per node "
               f"on {where}; all joined within {joined:.1f} s")
    if allocated is not None and facts.get("backend") != "local":
        summary += f" (SLURM_JOB_NODELIST {facts['nodelist']})"
    if want.alone and allocated is not None and len(allocated) > 1:
        return Check("ranks", WARN, summary + "; the step's launcher (none) runs one process, "
                     f"so {len(allocated) - 1} allocated node(s) stay idle", [
                         "launcher: torchrun spreads a training over the nodes; else ask for "
                         "one node"], details)
    few = sorted({r["cpus"] for r in ranks if r["cpus"] < 2})
    if want.gpus_per_node and few:
        return Check("ranks", WARN, summary + f"; a rank may use {few[0]} CPU", [
            "each GPU rank has one CPU: data loading, the torchrun agent and the rank share "
            "it; give the step the node's CPUs (resources.cpus-per-task, or the profile's "
            "share per GPU)"], details)
    return Check("ranks", PASS, summary, [], details)


def check_gpus(facts: dict, want: Expected) -> Check:
    ranks = facts["ranks"]
    seen = {r["node"]: r["gpus"] for r in ranks}
    details = {"per_node": seen}
    builds = sorted({g["build"] for g in seen.values()})
    if not want.gpus_per_node:
        with_gpus = [n for n, g in seen.items() if g["seen"]]
        if with_gpus:
            return Check("gpus", WARN, f"no GPUs asked (gpus-per-node: 0), but "
                         f"{', '.join(with_gpus)} has GPUs: the step runs on CPUs",
                         ["set resources.gpus-per-node (or --gpus-per-node) to train on them"],
                         details)
        return Check("gpus", PASS, "no GPUs asked (gpus-per-node: 0): a CPU step; torch "
                     f"{facts['versions'].get('torch')} ({', '.join(builds)})", [], details)
    blind = [r for r in ranks if not r["gpus"]["own"]]
    if blind:
        r = blind[0]
        others = f" and {len(blind) - 1} more rank(s)" if len(blind) > 1 else ""
        return Check("gpus", FAIL, f"rank {r['rank']} on {r['node']} sees {r['gpus']['seen']} "
                     f"GPU(s){others} (asked {want.gpus_per_node} per node, local rank "
                     f"{r['local_rank']}; torch {facts['versions'].get('torch')}, "
                     f"{r['gpus']['build']})", _blind_advice(r, want), details)
    odd = {n: g["seen"] for n, g in seen.items() if g["seen"] != want.gpus_per_node}
    names = sorted({name for g in seen.values() for name in g["names"]})
    summary = (f"every rank has a GPU: {want.gpus_per_node} asked per node, "
               f"{', '.join(names) or '?'} ({', '.join(builds)})")
    if odd:
        return Check("gpus", WARN, summary + "; but seen per node: " + ", ".join(
            f"{n} {c}" for n, c in odd.items()), [
            "a node shows more GPUs than asked when SLURM does not confine them "
            "(CUDA_VISIBLE_DEVICES unset: gres without device files), so ranks may use "
            "another job's GPU; fewer than asked leaves GPUs idle"], details)
    return Check("gpus", PASS, summary, [], details)


def _blind_advice(rank: dict, want: Expected) -> list[str]:
    g = rank["gpus"]
    advice = []
    if g["build"] == "CPU only":
        advice.append("torch in the job is a CPU-only build: install the CUDA (or ROCm) wheel "
                      "in the image or environment")
    if want.container and want.container_gpu == "none":
        advice.append("the container starts without --nv/--rocm: set container.gpu (auto "
                      "needs gpus-per-node > 0)")
    if g["seen"] and rank["local_rank"] >= g["seen"]:
        advice.append(f"more processes per node than GPUs it sees ({g['seen']}): lower "
                      "nproc-per-node, or check CUDA_VISIBLE_DEVICES")
    advice.append("an image built for another vendor (a CUDA image on AMD nodes), a driver "
                  "older than the wheel, or a partition without GPUs: compare `nvidia-smi` / "
                  "`rocm-smi` on the node with the torch build")
    return advice


def check_data(facts: dict, want: Expected) -> Check:
    reads = facts.get("data") or []
    if not want.data:
        return Check("data", WARN, "no data folder to read: the step has no --data argument",
                     ["pass --data DIR to time a read of your data folder from the job"])
    details = {"path": want.data, "per_node": reads}
    missing = [r for r in reads if not r["exists"]]
    if missing:
        nodes = ", ".join(r["node"] for r in missing)
        if want.data_here:
            return Check("data", FAIL, f"{want.data} is not there inside the job on {nodes}, "
                         "though it exists here", [
                             "bind it into the container (container.binds), or keep it on a "
                             "file system every node mounts (not a login node's /tmp)"],
                         details)
        return Check("data", WARN, f"{want.data} does not exist yet (on {nodes})", [
            "run the steps that write it first (preprocess), then the doctor again"], details)
    broken = [r for r in reads if r.get("error")]
    if broken:
        return Check("data", FAIL, f"reading {want.data} on {broken[0]['node']} failed: "
                     f"{broken[0]['error']}", ["check its permissions from a compute node"],
                     details)
    if not reads or all(r["bytes"] == 0 for r in reads):
        return Check("data", WARN, f"{want.data} holds no data to read", [
            "run the steps that write it first (preprocess)"], details)
    slowest = min(reads, key=lambda r: r["bytes"] / max(r["seconds"], 1e-9))
    rate = slowest["bytes"] / 1e6 / max(slowest["seconds"], 1e-9)
    more = f" (slowest of {len(reads)} nodes)" if len(reads) > 1 else ""
    return Check("data", PASS, f"read {slowest['bytes'] / 2**20:.1f} MiB in {slowest['files']} "
                 f"file(s) of {want.data} at {rate:.0f} MB/s on {slowest['node']}{more}; "
                 "the page cache may serve recently written files", [], details)


def check_mlflow(facts: dict) -> Check:
    m = facts.get("mlflow") or {}
    details = dict(m)
    if m.get("ok"):
        return Check("mlflow", PASS, f"rank 0 wrote run {m['run_id']} (experiment "
                     f"{m.get('experiment')}) to {m.get('store')} and read it back in "
                     f"{m['seconds']:.1f} s", [], details)
    if not m.get("uri"):
        return Check("mlflow", WARN, "the step sets no MLFLOW_TRACKING_URI: training would log "
                     "to ./mlruns of its working directory", [
                         "set MLFLOW_TRACKING_URI in the workflow's env (file:/path or a "
                         "server's URL)"], details)
    return Check("mlflow", FAIL, f"rank 0 could not write and read {m['uri']}: {m.get('error')}",
                 ["the store must be writable from the compute nodes and, in a container, "
                  "bound into it (container.binds); for a file store, MLFLOW_ALLOW_FILE_STORE="
                  "true"], details)
