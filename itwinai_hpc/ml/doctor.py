"""`python3 -m itwinai_hpc.ml.doctor`: what `itwinai-hpc doctor` runs inside its smoke job, in
place of the training step's command (same resources, container, launcher and environment).

Every rank says where it runs and which GPUs it sees; all ranks time an all-reduce (NCCL/RCCL
over a group of their own when every rank has a GPU, else gloo; NCCL's INFO log goes to
$ITWINAI_HPC_RUN_DIR/doctor/); the first rank of each node reads the data folder; rank 0 writes
an MLflow run and reads it back. Rank 0 writes the facts to $ITWINAI_HPC_RUN_DIR/doctor.json.
This module measures and never judges (commands/doctor_checks.py does, at the login node): it
exits 0 once the facts are written, whatever they say.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from itwinai_hpc.core import atomic, job_env

RESULT = "doctor.json"          # in the run folder
LOG_DIR = "doctor"              # in the run folder: NCCL's debug files, one per process
NCCL_LOG = "nccl.%h.%p.log"     # NCCL_DEBUG_FILE: %h host, %p pid
FORMAT = 1
ENV_PREFIXES = ("NCCL_", "FI_", "GLOO_", "CUDA_VISIBLE", "ROCR_VISIBLE", "HIP_VISIBLE",
                "OMP_NUM_THREADS", "MASTER_ADDR")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m itwinai_hpc.ml.doctor",
                                description="The checks inside an `itwinai-hpc doctor` job.")
    p.add_argument("--allreduce-mb", type=float, metavar="MB",
                   help="all-reduce size in MiB (default: 256 on GPUs, 16 with gloo)")
    p.add_argument("--iterations", type=int, default=5, help="timed all-reduces (after 2 "
                                                             "untimed)")
    p.add_argument("--data", metavar="DIR", help="the data folder to read")
    p.add_argument("--data-mb", type=float, default=512.0,
                   help="read at most this many MiB of it (or 10 s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()
    run_dir = Path(os.environ.get(job_env.RUN_DIR) or ".")
    logs = run_dir / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    # NCCL (and RCCL) read these when their first communicator starts: INFO names the network
    # transport it picked (NET/IB, NET/OFI, NET/Socket), a file per process keeps it apart.
    os.environ["NCCL_DEBUG"] = "INFO"
    os.environ["NCCL_DEBUG_SUBSYS"] = "INIT,NET,ENV"
    os.environ["NCCL_DEBUG_FILE"] = str(logs / NCCL_LOG)

    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = "MASTER_ADDR" in os.environ and "RANK" in os.environ
    if distributed:
        # gloo first, for every rank: the facts travel even where a GPU or NCCL is broken.
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    facts = rank_facts(torch, local_rank, started)
    ranks = gather(dist, distributed, facts)
    world = len(ranks)
    on_gpu = all(r["gpus"]["own"] for r in ranks)
    result = {"format": FORMAT, "world_size": world, "ranks": ranks,
              "nodelist": os.environ.get("SLURM_JOB_NODELIST"),
              "backend": os.environ.get(job_env.BACKEND),
              "versions": versions(torch),
              "allreduce": all_reduce(torch, dist, distributed, world, on_gpu, local_rank, args)}
    from itwinai_hpc.ml import doctor_io
    read = doctor_io.read_folder(args.data, args.data_mb) if local_rank == 0 else None
    result["data"] = [r for r in gather(dist, distributed, read) if r is not None]
    if rank == 0:
        result["mlflow"] = doctor_io.mlflow_round_trip(result)
        result["seconds"] = round(time.time() - started, 3)
        atomic.write_text(run_dir / RESULT, json.dumps(result, indent=1) + "\n")
        print(f"[itwinai-hpc doctor] facts of {world} rank(s) written to {run_dir / RESULT}",
              flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def rank_facts(torch, local_rank: int, started: float) -> dict:
    """Where this rank runs, what it may use, which GPUs it sees."""
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = job_env.usable_cpus()
    return {
        "rank": int(os.environ.get("RANK", "0")), "local_rank": local_rank,
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0],
        "hostname": socket.gethostname(), "pid": os.getpid(), "cpus": cpus,
        "joined_s": round(time.time() - started, 3),
        "gpus": {"asked": int(os.environ.get(job_env.GPUS_PER_NODE) or 0), "seen": seen,
                 "own": local_rank < seen,
                 "names": [torch.cuda.get_device_name(i) for i in range(seen)],
                 "build": build(torch)},
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
    }


def build(torch) -> str:
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"


def versions(torch) -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except (AttributeError, RuntimeError):
        pass
    return out


def gather(dist, distributed: bool, obj) -> list:
    """Every rank's `obj`, in rank order (over gloo)."""
    if not distributed:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce(torch, dist, distributed: bool, world: int, on_gpu: bool, local_rank: int,
               args) -> dict:
    """Time `args.iterations` sum all-reduces of a float32 tensor (after 2 untimed ones that
    start the communicator) and check the sum. NCCL over a group of its own where every rank
    has a GPU, else gloo. Seconds: the slowest rank's mean per all-reduce."""
    backend = "nccl" if on_gpu else "gloo"
    mb = args.allreduce_mb or (256.0 if on_gpu else 16.0)
    out: dict = {"backend": backend, "bytes": int(mb * 2**20) // 4 * 4, "iterations":
                 args.iterations, "world_size": world}
    if not distributed:
        return {**out, "seconds": None, "correct": None, "error": None}
    try:
        group = None
        if on_gpu:
            torch.cuda.set_device(local_rank)
            group = dist.new_group(backend="nccl")
        device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
        t = torch.full((out["bytes"] // 4,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(t, group=group)
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        sync()
        correct = float(t[0]) == world * (world + 1) / 2 and float(t[-1]) == float(t[0])
        dist.all_reduce(t, group=group)
        sync()
        began = time.perf_counter()
        for _ in range(args.iterations):
            dist.all_reduce(t, group=group)
        sync()
        mine = (time.perf_counter() - began) / args.iterations
        slowest = max(gather(dist, True, mine))
        return {**out, "seconds": slowest, "correct": correct, "error": None}
    except Exception as exc:          # reported as the check's failure, with NCCL's log
        return {**out, "seconds": None, "correct": False,
                "error": f"{type(exc).__name__}: {exc}"[:2000]}


if __name__ == "__main__":
    sys.exit(main())
