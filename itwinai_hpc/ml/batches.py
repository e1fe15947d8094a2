"""Training batches on the training device. The sharded reader gives raw rows in its order
(rank semantics, exact resume): MNIST's uint8 pixels become normalised floats on the device
(a quarter of the bytes travel); any other arrays (shards of write_shards) pass through as
stored, inputs and targets (None when absent) moved to the device, never cast. The host
work off the critical path: on a GPU the whole split stays resident when it fits a share of the
GPU's memory (indexed there), else each batch is gathered and pinned on a thread ahead of the
step and copied asynchronously. Knows nothing about models, optimizers or MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice


def split_nbytes(manifest, split: str) -> int:
    """Bytes a split takes held whole: uint8 pixels plus an int64 label per row, or the stored
    inputs and targets of a write_shards split."""
    from itwinai_hpc.data.arrays import sample_nbytes

    return manifest.splits[split].num_samples * sample_nbytes(manifest, split)


def data_device(manifest, splits: tuple[str, ...], device, share: float):
    """(where the reader should hold the splits, why) : `device` itself when it is a GPU and
    the splits together fit `share` of its memory, else the CPU."""
    import torch

    need = sum(split_nbytes(manifest, s) for s in splits if s in manifest.splits)
    if device.type != "cuda":
        return torch.device("cpu"), "on the CPU"
    have = torch.cuda.get_device_properties(device).total_memory
    mb = f"{need / 1e6:.0f} MB {'<=' if need <= share * have else '>'} {share:g} x " \
         f"{have / 1e9:.0f} GB"
    if share > 0 and need <= share * have:
        return device, f"resident on {device} ({mb})"
    return torch.device("cpu"), f"host memory, pinned and prefetched to {device} ({mb})"


class DeviceBatches:
    """(images, labels) of one epoch on `device`: images float N x 1 x H x W normalised with
    the manifest's mean and std (bitwise what the reader itself would give), in
    `memory_format`; labels int64. Shards of write_shards: (inputs, targets) as stored (targets
    None when the split has none), 4-D inputs in `memory_format`.
    `loader` is a ShardedLoader with raw=True, holding its rows
    on `device` (resident) or on the CPU. Rows on the host: `prefetch` batches are gathered (and
    pinned, for a GPU) ahead on a thread; 0 gathers inline, which is faster on a CPU-only
    machine, where the thread would compete with the step for the cores."""

    def __init__(self, loader, device, memory_format, prefetch: int = 2):
        import torch

        if not loader.raw:
            raise ValueError("DeviceBatches needs a ShardedLoader with raw=True")
        self.loader, self.device, self.memory_format = loader, torch.device(device), memory_format
        self.prefetch = prefetch
        self.generic = bool(getattr(loader, "generic", False))
        if not self.generic:
            norm = loader.manifest.normalization
            # Exactly the reader's arithmetic: (x/255 - mean)/std as one multiply-add.
            self._scale = 1.0 / (255.0 * norm["std"])
            self._shift = -norm["mean"] / norm["std"]

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def _ready(self, batch: tuple) -> tuple:
        images, labels = batch[0], batch[1]
        if self.generic:  # as stored: the trainer casts to the model's dtype
            return (images.contiguous(memory_format=self.memory_format) if images.dim() == 4
                    else images), labels
        x = images.unsqueeze(1).float().mul_(self._scale).add_(self._shift)
        return x.contiguous(memory_format=self.memory_format), labels

    def _gathered(self, batch: tuple) -> tuple:
        """On the prefetch thread: the batch's rows, pinned when they are going to a GPU."""
        if self.device.type != "cuda":
            return batch[0], batch[1]
        return batch[0].pin_memory(), None if batch[1] is None else batch[1].pin_memory()

    def batches(self, start: int = 0) -> Iterator[tuple]:
        """This epoch's batches from batch number `start` on (a resumed epoch skips the rest)."""
        from itwinai_hpc.data.prefetch import prefetched

        source = islice(iter(self.loader), start, None)
        if self.loader.device.type == "cuda" or (self.device.type == "cpu" and
                                                 self.prefetch == 0):
            # Resident on the GPU (indexing and normalising are kernels queued there), or a
            # CPU step that builds its own batch. (By type: torch.device("cuda") is not equal
            # to torch.device("cuda:0"), and rows on a GPU must never reach pin_memory.)
            yield from map(self._ready, source)
            return
        ahead = prefetched(self._gathered, source, self.prefetch) if self.prefetch \
            else map(self._gathered, source)
        try:
            for images, labels in ahead:
                # From pinned memory the copies are queued and return at once: the host goes
                # on to queue the step while the bytes travel (uint8: a quarter of float32).
                yield self._ready((images.to(self.device, non_blocking=True),
                                   None if labels is None
                                   else labels.to(self.device, non_blocking=True)))
        finally:
            if self.prefetch:
                ahead.close()
