"""The process group and the environment a training process runs in: rank, world size, device,
SLURM facts for logging, and the stop request (stop file or signal) that every rank agrees on.

Reads only environment variables (torchrun's and SLURM's); never asks a scheduler anything.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from itwinai_hpc.core import job_env
from itwinai_hpc.core.errors import UserError


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: object            # torch.device
    backend: str | None          # None when running alone without a process group
    slurm: dict[str, str] = field(default_factory=dict)
    control: object = None       # a gloo group beside nccl: host-side agreement, no GPU sync
    local_world_size: int = 1    # processes on this node (torchrun's --nproc-per-node)

    @property
    def nnodes(self) -> int:
        """Nodes taking part: what ran, which a scheduler's SLURM_NNODES may not say (a
        local run, torchrun by hand)."""
        return -(-self.world_size // max(self.local_world_size, 1))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_NAME", "SLURM_NNODES",
              "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME")


def check_gpus_seen(torch, local_rank: int) -> None:
    """A step that asked for GPUs (resources.gpus-per-node; the job script exports it) must get
    one per local rank: training on the CPU instead would be silent and hundreds of times
    slower. A UserError naming what was asked, what torch sees and the likely causes."""
    asked = int(os.environ.get(job_env.GPUS_PER_NODE) or 0)
    if not asked:
        return
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank < seen:
        return
    build = (f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else
             f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    visible = ", ".join(f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES",
                        "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES") if k in os.environ)
    raise UserError(f"this step asked for {asked} GPU(s) per node (resources.gpus-per-node), "
                    f"but local rank {local_rank} sees {seen} (torch {torch.__version__}, "
                    f"{build}{'; ' + visible if visible else ''}). Likely: an image built for "
                    "another GPU vendor (a CUDA image on AMD nodes), a driver older than the "
                    "wheel, a container started without --nv/--rocm, or more processes per "
                    "node than GPUs. Not training on the CPU instead; for a CPU run set "
                    "gpus-per-node: 0", field="resources.gpus-per-node")


def setup() -> Context:
    """Join torchrun's process group when WORLD_SIZE is set (nccl where this process has a GPU,
    else gloo); otherwise run alone as rank 0 of 1."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    has_gpu = torch.cuda.is_available() and local_rank < torch.cuda.device_count()
    check_gpus_seen(torch, local_rank)
    device = torch.device(f"cuda:{local_rank}") if has_gpu else torch.device("cpu")
    if has_gpu:
        torch.cuda.set_device(device)
    backend = None
    if "MASTER_ADDR" in os.environ and world >= 1 and "RANK" in os.environ:
        backend = "nccl" if has_gpu else "gloo"
        dist.init_process_group(backend, device_id=device if has_gpu else None)
        rank, world = dist.get_rank(), dist.get_world_size()
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    slurm = {k: os.environ[k] for k in SLURM_KEYS if k in os.environ}
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if backend else 1
    return Context(rank, world, local_rank, device, backend, slurm, control, local_world)


def teardown(ctx: Context, *, together: bool = False) -> None:
    """Leave the process group. `together` (every rank got here normally): wait for all first;
    a rank tearing down gloo while rank 0 still finishes with MLflow was seen to abort
    ("terminate called without an active exception")."""
    import torch.distributed as dist

    if ctx.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    import torch.distributed as dist

    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: Context, values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (float64, so sample counts stay exact)."""
    import torch
    import torch.distributed as dist

    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(ctx: Context, obj):
    """Rank 0's `obj` on every rank (e.g. the MLflow run id)."""
    import torch.distributed as dist

    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(ctx: Context, *flags: bool) -> list[bool]:
    """For each flag, whether any rank raised it: one all_reduce(MAX) over the few flags, which
    every rank must call at the same point (the stop request, a diverged loss)."""
    import torch
    import torch.distributed as dist

    if not ctx.distributed:
        return [bool(f) for f in flags]
    # Flags on the GPU would make the host wait for every queued kernel; the gloo group
    # agrees on the CPU while the GPU keeps working.
    on_host = ctx.control is not None
    t = torch.tensor([1.0 if f else 0.0 for f in flags],
                     device="cpu" if on_host else ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control)
    return [bool(v) for v in t.tolist()]


class StopRequest:
    """A request to checkpoint and stop early: SIGTERM/SIGUSR2 to this process, or the stop file
    ($ITWINAI_HPC_STOP_FILE) appearing. Each rank sees its own request; `agreed()` makes every
    rank stop at the same step (all_reduce MAX), since only some ranks may see the file or get
    the signal; `any_rank(ctx, stop.local(), other)` agrees on it and another flag at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self, ctx: Context, stop_file: Path | None):
        self.ctx, self.stop_file, self.signalled = ctx, stop_file, None
        self._previous = {}
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Only set a flag: the loop acts between steps, where the state is consistent.
        self.signalled = signal.Signals(signum).name

    def local(self) -> bool:
        return bool(self.signalled) or (self.stop_file is not None and self.stop_file.exists())

    def agreed(self) -> bool:
        return any_rank(self.ctx, self.local())[0]

    def reason(self) -> str:
        if self.signalled:
            return self.signalled
        return f"{self.stop_file} exists" if self.local() else "another rank was asked to stop"

    def consume(self) -> None:
        """Remove the stop file once the checkpoint is written: the job script reads a file
        still there as "the step ended on its own" and then does not requeue it."""
        if self.ctx.is_main and self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def broadcast_buffers(ctx: Context, model) -> None:
    """Rank 0's buffers (BatchNorm running stats) on every rank. DDP broadcasts them before each
    forward, so the last step leaves each rank with its own: without this, ranks would evaluate
    and end with slightly different models."""
    import torch.distributed as dist

    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def all_gather_object(ctx: Context, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    import torch.distributed as dist

    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
