"""The rank-aware reader over a shard manifest: each rank loads its own contiguous block once
(whole-shard or contiguous-slice reads, checksums verified on open) and yields shuffled
batches as torch tensors. It must not know which scheduler or launcher started it.

Semantics follow torch's DistributedSampler: every rank yields the same number of batches, and
each epoch every sample is seen exactly once across ranks, except that with rank_remainder="pad"
(the default) the W - N mod W ranks holding one sample fewer repeat one of their own samples,
chosen anew each epoch; "drop" instead leaves one sample out on the larger ranks (a different one
each epoch); "keep" neither pads nor drops, so ranks may differ by one sample (for inference).

Unlike DistributedSampler, samples do not move between ranks from epoch to epoch: rank r
always owns rows [r*N//W, (r+1)*N//W) of the split. Preprocessing already shuffled the train
split with its seed, so each block is a uniform random subset, and the gradient average across
ranks sees the whole split every epoch. This is what keeps reads contiguous.
"""

from __future__ import annotations

import io
import os
from typing import Iterator

import numpy as np

from itwinai_hpc.data.shards import Manifest, read_manifest, sha256_bytes
from itwinai_hpc.errors import UserError

REMAINDERS = ("pad", "drop", "keep")


def default_rank_and_world() -> tuple[int, int]:
    """torch.distributed if initialised, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def read_rows(manifest: Manifest, split: str, start: int, end: int, *,
              verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, end) of `split`, reading only the shards they overlap, one contiguous slice
    per shard, each shard's bytes checked against the manifest's sha256 first."""
    import h5py

    info = manifest.splits[split]
    images, labels, offset = [], [], 0
    for shard in info.shards:
        lo, hi = max(start, offset), min(end, offset + shard.num_samples)
        offset += shard.num_samples
        if lo >= hi:
            continue
        path = manifest.shard_path(shard)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"shard listed in {manifest.path} is missing; rerun preprocess to "
                            "repair it", file=str(path)) from None
        if verify and sha256_bytes(data) != shard.sha256:
            raise UserError(f"shard was modified or corrupted: its sha256 does not match "
                            f"{manifest.path}; rerun preprocess to repair it", file=str(path))
        try:
            with h5py.File(io.BytesIO(data), "r") as f:
                n = f["images"].shape[0]
                if n != shard.num_samples or f["labels"].shape != (n,):
                    raise UserError(f"shard holds {n} images, the manifest says "
                                    f"{shard.num_samples}", file=str(path))
                base = offset - shard.num_samples
                images.append(f["images"][lo - base:hi - base])
                labels.append(f["labels"][lo - base:hi - base])
        except (OSError, KeyError) as e:
            raise UserError(f"not a readable shard ({e}); rerun preprocess", file=str(path)) from None
    if offset != info.num_samples:
        raise UserError(f"the {split} shards hold {offset} samples, the manifest says "
                        f"{info.num_samples}", file=str(manifest.path))
    shape = tuple(manifest.image_shape)
    if not images:
        return np.empty((0, *shape), np.uint8), np.empty((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64, copy=False)


class ShardedLoader:
    """Batches of one split for one rank: (images, labels) or, with return_index, (images,
    labels, indices) where indices are row numbers within the split.

    images are float32 B×1×H×W normalised with the manifest's mean/std, or uint8 B×H×W with
    raw=True; labels are int64. `batch_size` is per rank; drop_last drops an incomplete last
    batch (DataLoader's meaning). Call set_epoch(e) before each epoch to reshuffle.
    """

    def __init__(self, manifest: str | os.PathLike | Manifest, split: str, batch_size: int, *,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank_remainder: str = "pad",
                 raw: bool = False, return_index: bool = False, verify: bool = True):
        import torch

        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        where = str(self.manifest.path)
        if split not in self.manifest.splits:
            raise UserError(f"no split {split!r} in this manifest; it has "
                            f"{', '.join(self.manifest.splits)}", file=where)
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
        total = self.manifest.splits[split].num_samples
        if total < world_size:
            raise UserError(f"the {split} split has {total} samples, fewer than the "
                            f"{world_size} ranks reading it; an empty split or rank is not "
                            "allowed", file=where)
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last, self.raw = shuffle, seed, drop_last, raw
        self.return_index, self.rank_remainder, self.epoch = return_index, rank_remainder, 0
        self.start, self.end = rank * total // world_size, (rank + 1) * total // world_size
        images, labels = read_rows(self.manifest, split, self.start, self.end, verify=verify)
        self._images, self._labels = torch.from_numpy(images), torch.from_numpy(labels)
        if rank_remainder == "pad":
            self.num_samples = -(-total // world_size)
        elif rank_remainder == "drop":
            self.num_samples = total // world_size
        else:
            self.num_samples = self.end - self.start
        norm = self.manifest.normalization
        # (x/255 - mean)/std as one multiply-add on the uint8 batch.
        self._scale = 1.0 / (255.0 * norm["std"])
        self._shift = -norm["mean"] / norm["std"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_indices(self) -> np.ndarray:
        """This rank's sample order for the current epoch, as row numbers within the split."""
        n = self.end - self.start
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, self.rank]).permutation(n)
        else:
            order = np.arange(n)
        if self.num_samples > n:  # pad by wrapping around, as DistributedSampler does
            order = np.concatenate([order, order[: self.num_samples - n]])
        return order[: self.num_samples] + self.start

    def __iter__(self) -> Iterator[tuple]:
        import torch

        local = torch.from_numpy(self.epoch_indices() - self.start)
        for b in range(len(self)):
            idx = local[b * self.batch_size:(b + 1) * self.batch_size]
            images = self._images.index_select(0, idx)
            if not self.raw:
                images = images.unsqueeze(1).float().mul_(self._scale).add_(self._shift)
            labels = self._labels.index_select(0, idx)
            if self.return_index:
                yield images, labels, idx + self.start
            else:
                yield images, labels
