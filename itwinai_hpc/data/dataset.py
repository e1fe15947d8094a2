"""The rank-aware reader over a shard manifest: batches of one split for one rank, in the order
epochs.py decides, read in one of two modes chosen by the split's size:

- memory: the split is read once (every shard's sha256 checked on open) and kept in memory, or
  on the GPU with device=cuda; for data far below the memory budget, like MNIST;
- stream: shard by shard, a background thread reading (and checking) the next shards while the
  current one is batched, so memory holds a few shards and the first batch comes after one
  shard, whatever the split's size.

Both modes yield identical batches. It must not know which scheduler or launcher started it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.arrays import is_generic, read_shard_arrays, sample_nbytes, served
from itwinai_hpc.data.epochs import REMAINDERS, EpochPlan, rank_epoch, samples_per_rank
from itwinai_hpc.data.loader_settings import DEFAULT_PREFETCH_SHARDS, choose_mode, describe_bytes
from itwinai_hpc.data.manifest_checks import check_class_counts
from itwinai_hpc.data.prefetch import prefetched
from itwinai_hpc.data.rows import _check_split, check_first_shard, read_rows
from itwinai_hpc.data.shards import Manifest, read_manifest, read_shard

__all__ = ["ShardedLoader", "default_rank_and_world", "read_rows"]


def default_rank_and_world() -> tuple[int, int]:
    """torch.distributed if initialised, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardedLoader:
    """Batches of one split for one rank: (images, labels) or, with return_index, (images,
    labels, indices) where indices are row numbers within the split.

    images are float32 B×1×H×W normalised with the manifest's mean/std, or uint8 B×H×W with
    raw=True; labels are int64; all on `device` (default CPU). `batch_size` is per rank;
    drop_last drops an incomplete last batch (DataLoader's meaning). Call set_epoch(e) before
    each epoch. mode "auto" (default; $ITWINAI_HPC_DATA_MODE) keeps a split of at most
    memory_budget bytes ($ITWINAI_HPC_DATA_MEMORY_BUDGET, default 256 MiB) in memory and streams
    a larger one, prefetch_shards ahead; `describe()` says which, for the training log.

    Shards of write_shards (`generic`): (inputs, targets) in the stored dtype, B x sample
    shape, never cast or normalised (raw has no effect); targets None when the split has none.
    """

    def __init__(self, manifest: str | os.PathLike | Manifest, split: str, batch_size: int, *,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank_remainder: str = "pad",
                 raw: bool = False, return_index: bool = False, verify: bool = True,
                 mode: str | None = None, memory_budget: int | str | None = None,
                 prefetch_shards: int = DEFAULT_PREFETCH_SHARDS, device=None):
        import torch

        from itwinai_hpc.data.staging import stage_from_environment

        manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        where = str(manifest.path)
        if split not in manifest.splits:
            raise UserError(f"no split {split!r} in this manifest; it has "
                            f"{', '.join(manifest.splits)}", file=where)
        if rank_remainder not in REMAINDERS:
            raise ValueError(f"rank_remainder must be one of {REMAINDERS}, got {rank_remainder!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if rank is None or world_size is None:
            env_rank, env_world = default_rank_and_world()
            rank = env_rank if rank is None else rank
            world_size = env_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        _check_split(manifest, split)
        self.total = manifest.splits[split].num_samples
        if self.total < world_size:
            raise UserError(f"the {split} split has {self.total} samples, fewer than the "
                            f"{world_size} ranks reading it; an empty split or rank is not "
                            "allowed", file=where)
        self.manifest, self.staged = stage_from_environment(manifest)
        self._shards = self.manifest.splits[split].shards
        for shard in self._shards:  # fail at open, not mid-epoch, when a file is gone
            path = self.manifest.shard_path(shard)
            if not path.is_file():
                raise UserError(f"shard listed in {self.manifest.path} is missing; rerun "
                                "preprocess to repair it", file=str(path))
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last, self.raw = shuffle, seed, drop_last, raw
        self.return_index, self.rank_remainder, self.epoch = return_index, rank_remainder, 0
        self.verify, self.prefetch_shards = verify, prefetch_shards
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        wanted = samples_per_rank(self.total, world_size, rank_remainder)
        self.num_samples = wanted if wanted is not None else \
            (rank + 1) * self.total // world_size - rank * self.total // world_size
        self.split_bytes = self.total * sample_nbytes(self.manifest, split)
        self.mode, self.memory_budget, self._by_size = choose_mode(mode, memory_budget,
                                                                   self.split_bytes)
        # Shards of write_shards: the stored arrays as they are (no cast, no normalisation);
        # targets None when the split has none. MNIST: normalised float32 images.
        self.generic = is_generic(self.manifest)
        self._names = served(self.manifest, split) if self.generic else ["images", "labels"]
        if not self.generic:
            norm = self.manifest.normalization
            # (x/255 - mean)/std as one multiply-add on the uint8 batch.
            self._scale = 1.0 / (255.0 * norm["std"])
            self._shift = -norm["mean"] / norm["std"]
        if self.mode == "memory":
            held = read_rows(self.manifest, split, 0, self.total, verify=verify)
            if held[1] is not None and self.manifest.num_classes:
                check_class_counts(self.manifest, split, held[1])
            self._held = tuple(torch.from_numpy(a).to(self.device) for a in held
                               if a is not None)
        else:
            check_first_shard(self.manifest, split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def plan(self) -> EpochPlan:
        """This rank's pieces and sample order for the current epoch (see epochs.py)."""
        return rank_epoch([s.num_samples for s in self._shards], self.rank, self.world_size,
                          seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                          remainder=self.rank_remainder)

    def epoch_indices(self) -> np.ndarray:
        """This rank's sample order for the current epoch, as row numbers within the split."""
        return self.plan().order

    def describe(self) -> str:
        """One line for the training log: the mode and why, and any staging."""
        relation = "<=" if self.split_bytes <= self.memory_budget else ">"
        why = "" if self._by_size else ", set explicitly"
        line = (f"data {self.split}: {self.mode} mode ({self.total:,} samples, "
                f"{describe_bytes(self.split_bytes)} {relation} memory budget "
                f"{describe_bytes(self.memory_budget)}{why}; {len(self._shards)} shard(s)"
                + (f", {self.prefetch_shards} prefetched" if self.mode == "stream" else "")
                + f"), rank {self.rank} of {self.world_size}, {len(self)} batches of "
                f"{self.batch_size}")
        if self.staged is not None:
            line += f"; {self.staged.describe()}"
        return line

    def _batch(self, tensors: list, order: np.ndarray) -> tuple:
        import torch

        images, labels = tensors[0], tensors[1] if len(tensors) > 1 else None
        if not self.raw and not self.generic:
            images = images.unsqueeze(1).float().mul_(self._scale).add_(self._shift)
        if self.return_index:
            return images, labels, torch.from_numpy(order)
        return images, labels

    def _rows(self, t, idx):
        """t[idx] along the first axis. On the CPU, shards of write_shards gather with numpy:
        for rows of kilobytes (fields) torch's index_select was 4x slower (55 vs 13 ms for
        256 rows of 2x64x64 float32); the MNIST path keeps index_select."""
        if self.generic and t.device.type == "cpu":
            import torch

            return torch.from_numpy(np.take(t.numpy(), idx.numpy(), axis=0))
        return t.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple]:
        """The current epoch's batches from `start_batch` on, as iterating and skipping that
        many would give, without reading the shards that only the skipped batches need (a run
        resumed mid-epoch)."""
        plan = self.plan()
        if self.mode == "stream":
            yield from self._stream(plan, start_batch)
            return
        import torch

        rows = torch.from_numpy(plan.order).to(self.device)
        for b in range(start_batch, len(self)):
            idx = rows[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._batch([self._rows(t, idx) for t in self._held],
                              plan.order[b * self.batch_size:(b + 1) * self.batch_size])

    def _load_piece(self, piece) -> tuple:
        """Runs on the prefetch thread: one shard's rows, checked, as tensors on the device."""
        import torch

        shard = self._shards[piece.shard]
        path, ranges = self.manifest.shard_path(shard), list(piece.ranges)
        if self.generic:
            got = read_shard_arrays(path, shard, ranges, self._names, self.manifest,
                                    verify=self.verify)
            arrays = [got[n] for n in self._names]
        else:
            arrays = list(read_shard(path, shard, ranges, verify=self.verify,
                                     manifest=self.manifest))
        tensors = tuple(torch.from_numpy(a) for a in arrays)
        if self.device.type == "cuda":  # pinned, so the copy does not stage through pageable memory
            tensors = tuple(t.pin_memory().to(self.device) for t in tensors)
        return tensors

    def _stream(self, plan: EpochPlan, start_batch: int) -> Iterator[tuple]:
        import torch

        local = torch.from_numpy(plan.local).to(self.device)
        end = int(plan.bounds[-1])
        pad = len(plan.order) - end  # at most one sample, from the first piece
        # Pieces that end before the first batch wanted are never read.
        arrived = int(np.searchsorted(plan.bounds, start_batch * self.batch_size, side="right"))
        arrived = min(max(arrived - 1, 0), len(plan.pieces))
        pieces = prefetched(self._load_piece, plan.pieces[arrived:], self.prefetch_shards)
        loaded: dict[int, tuple] = {}
        padding = None
        if pad and arrived > 0 and len(self) * self.batch_size > end:
            first = self._load_piece(plan.pieces[0])
            padding = tuple(t.index_select(0, local[:pad]) for t in first)
        try:
            for b in range(start_batch, len(self)):
                p0, p1 = b * self.batch_size, min((b + 1) * self.batch_size, len(plan.order))
                parts: list[list] = [[] for _ in self._names]
                q = p0
                while q < min(p1, end):
                    k = int(np.searchsorted(plan.bounds, q, side="right")) - 1
                    while arrived <= k:  # pieces arrive in order
                        loaded[arrived] = next(pieces)
                        if arrived == 0 and pad:
                            padding = tuple(t.index_select(0, local[:pad]) for t in loaded[0])
                        arrived += 1
                    for done in [j for j in loaded if j < k]:
                        del loaded[done]  # positions only grow: never needed again
                    stop = min(p1, end, int(plan.bounds[k + 1]))
                    for got, t in zip(parts, loaded[k]):
                        got.append(self._rows(t, local[q:stop]))
                    q = stop
                if p1 > end:
                    for got, t in zip(parts, padding):
                        got.append(t[max(p0, end) - end:p1 - end])
                yield self._batch([torch.cat(p) if len(p) > 1 else p[0] for p in parts],
                                  plan.order[p0:p1])
        finally:
            pieces.close()
