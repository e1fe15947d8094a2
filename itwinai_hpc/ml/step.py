"""One optimisation step as the train config asks for it: autocast precision (bf16 on CPU or
GPU; fp16 with a GradScaler), torch.compile of forward + loss (reduce-overhead: CUDA graphs),
and the step's loss kept on the device, so the host never waits for the GPU inside an epoch.
Step losses for MLflow reach the host through asynchronous copies (`StepLosses`), and so do
the losses `LossWatch` scans for a run of non-finite values (a diverged training).

Knows nothing about data, checkpoints' files or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class NonFiniteRun:
    """The run of consecutive non-finite step losses that stopped a training."""

    first_step: int                  # the run's first step (global, from 1)
    first_loss: float                # its loss: nan, inf or -inf
    count: int                       # the run's length when it stopped training
    last_finite: float | None        # the loss of the last finite step before it, if any
    last_finite_step: int | None
    ended: bool = False              # training ended inside the run (shorter than patience)


class LossWatch:
    """Watches one rank's step losses for `patience` consecutive non-finite (inf, NaN) values
    without a host sync per step: `add` copies the step's loss into a device buffer (one
    4-byte copy); `poll` hands the buffer to the host at the loop's check points (on a GPU
    through an asynchronous copy, scanned at a later poll once it has arrived, or at once with
    `wait`) and returns the run that reached `patience`, once there is one (then always that
    one). 0 and 1 both stop at the first non-finite loss. `poll(end=True)`: training is over, a
    run still open counts whatever its length; a finished training must not have diverged."""

    def __init__(self, patience: int, window: int, device):
        self.patience = max(int(patience), 1)
        self.device = torch.device(device)
        self._buf = torch.zeros(max(int(window), 1), dtype=torch.float32, device=self.device)
        self._first, self._n = 0, 0          # the buffer holds steps _first .. _first+_n-1
        self._pending: list[tuple[int, torch.Tensor, object]] = []
        self.run = 0                         # consecutive non-finite losses so far
        self._run_first: tuple[int, float] = (0, math.nan)
        self._run_before: tuple[float | None, int | None] = (None, None)
        self._last_finite: tuple[float | None, int | None] = (None, None)
        self.report: NonFiniteRun | None = None

    def add(self, step: int, loss: torch.Tensor) -> None:
        if self._n and (self._n == len(self._buf) or step != self._first + self._n):
            self._collect()                  # a full buffer or a gap: hand it over first
        if not self._n:
            self._first = step
        self._buf[self._n].copy_(loss.detach(), non_blocking=True)
        self._n += 1

    def poll(self, *, wait: bool = False, end: bool = False) -> NonFiniteRun | None:
        self._collect()
        while self._pending:
            first, host, done = self._pending[0]
            if done is not None and not (wait or end) and not done.query():
                break
            if done is not None:
                done.synchronize()
            self._scan(first, host.tolist())
            self._pending.pop(0)
        if end and self.report is None and self.run:
            self.report = self._report(ended=True)
        return self.report

    def _collect(self) -> None:
        if not self._n:
            return
        values = self._buf[: self._n]
        if self.device.type == "cuda":
            host = torch.empty(self._n, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending.append((self._first, host, done))
        else:
            self._pending.append((self._first, values.clone(), None))
        self._n = 0

    def _scan(self, first: int, values: list[float]) -> None:
        for step, value in enumerate(values, start=first):
            if math.isfinite(value):
                self.run, self._last_finite = 0, (value, step)
                continue
            self.run += 1
            if self.run == 1:
                self._run_first, self._run_before = (step, value), self._last_finite
            if self.run >= self.patience and self.report is None:
                self.report = self._report()

    def _report(self, ended: bool = False) -> NonFiniteRun:
        return NonFiniteRun(*self._run_first, self.run, *self._run_before, ended=ended)
