"""One optimisation step as the train config asks for it: autocast precision (bf16 on CPU or
GPU; fp16 with a GradScaler), torch.compile of forward + loss (reduce-overhead: CUDA graphs),
and the step's loss kept on the device, so the host never waits for the GPU inside an epoch.
Step losses for MLflow reach the host through asynchronous copies (`StepLosses`).

Knows nothing about data, checkpoints' files or MLflow.
"""

from __future__ import annotations

from typing import Callable

import torch

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class _LossOf(torch.nn.Module):
    """forward + loss as one module, so torch.compile sees (and fuses) both."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, images, labels):
        return self.loss_fn(self.model(images), labels)


def compile_mode(setting) -> str | None:
    """The torch.compile mode for trainer.compile (True and "default" are torch's default)."""
    return None if setting in (True, "default") else setting


class TrainStep:
    """`step(images, labels)` -> the batch's mean loss (a detached tensor on the device).

    `model` is what runs forward (the DDP wrapper when distributed); optimizer and scheduler
    step once per call. fp16 scales the loss (GradScaler) and skips steps whose gradients
    overflowed; its scale is part of the training state (`state_dict`)."""

    def __init__(self, model, loss_fn, optimizer, scheduler, device, *, precision: str = "fp32",
                 compile=False):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device = torch.device(device)
        self.dtype = AUTOCAST.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        forward: Callable = _LossOf(model, loss_fn)
        self.graphs = False
        if compile:
            mode = compile_mode(compile)
            forward = torch.compile(forward, mode=mode)
            # both modes record CUDA graphs (inductor's triton.cudagraphs)
            self.graphs = mode in CUDA_GRAPH_MODES and self.device.type == "cuda"
        self.forward = forward

    def __call__(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        if self.graphs:   # a new iteration: outputs of the last replay may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.forward(images, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class StepLosses:
    """Per-step losses for the log without a host sync: each is copied to pinned host memory
    asynchronously and handed to `sink(entries)` once its copy has finished (checked without
    waiting) or at `flush()`; entries are (step, loss, lr). On the CPU there is nothing to wait
    for and each goes out at once."""

    def __init__(self, sink: Callable[[list[tuple[int, float, float]]], None]):
        self.sink = sink
        self._pending: list[tuple[int, torch.Tensor, float, object]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if loss.device.type == "cuda":
            host = torch.empty((), dtype=loss.dtype, pin_memory=True)
            host.copy_(loss, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = loss, None
        self._pending.append((step, host, lr, done))
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        ready = []
        while self._pending:
            step, host, lr, done = self._pending[0]
            if done is not None and not wait and not done.query():
                break
            if done is not None and wait:
                done.synchronize()
            ready.append((step, float(host), lr))
            self._pending.pop(0)
        if ready:
            self.sink(ready)
