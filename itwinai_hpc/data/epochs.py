"""Which samples a rank sees in an epoch, and in what order: a pure function of (shard sizes,
seed, epoch, rank, world size), so every rank computes its share alone and a resumed run
replays exactly the batches it would have seen. No I/O, no torch.

The rule. Each epoch the split's shards are put in a seeded order and the resulting sequence of
samples is rotated by a seeded offset; rank r takes the contiguous block [r*N//W, (r+1)*N//W)
of it. So a rank reads whole shards plus at most two partial ones (contiguous slices, never one
access per sample), different shards every epoch, and samples move between ranks from epoch to
epoch. Within what it read from one shard a rank shuffles again. Preprocessing has already
shuffled the train split, so every shard is a uniform random subset of it.

Semantics otherwise follow torch's DistributedSampler: every rank yields num_samples samples;
with "pad" the ranks holding one sample fewer repeat their first one, with "drop" the larger
ranks leave their last one out (both change every epoch when shuffling); "keep" neither pads nor
drops (for inference). shuffle=False gives rank r the rows [r*N//W, (r+1)*N//W) in split order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REMAINDERS = ("pad", "drop", "keep")


@dataclass(frozen=True)
class Piece:
    """What a rank reads from one shard: row ranges within the shard, in reading order."""

    shard: int  # index in the split's list of shards
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)


@dataclass(frozen=True)
class EpochPlan:
    """A rank's epoch: pieces[k] supplies order[bounds[k]:bounds[k + 1]], sample i being row
    local[i] of what was read for the piece; positions from bounds[-1] on are padding, repeats
    of the first len(order) - bounds[-1] samples."""

    pieces: tuple[Piece, ...]
    order: np.ndarray  # row numbers within the split, one per sample the rank yields
    local: np.ndarray  # the same samples as positions within their piece's rows
    bounds: np.ndarray  # len(pieces) + 1 offsets into order


def samples_per_rank(total: int, world_size: int, remainder: str) -> int | None:
    """Samples every rank yields per epoch; None for "keep", where ranks may differ by one."""
    if remainder == "pad":
        return -(-total // world_size)
    if remainder == "drop":
        return total // world_size
    return None


def _pieces(sizes: list[int], shard_order: np.ndarray, segments: list[tuple[int, int]]
            ) -> list[Piece]:
    """Cut [a, b) ranges of the sequence (shards in shard_order) into per-shard pieces, merging
    neighbours from the same shard (one read instead of two)."""
    ends = np.cumsum([sizes[s] for s in shard_order])
    pieces: list[Piece] = []
    for a, b in segments:
        k = int(np.searchsorted(ends, a, side="right"))
        while a < b:
            shard, start = int(shard_order[k]), int(ends[k]) - sizes[shard_order[k]]
            hi = min(b, int(ends[k]))
            rows = (a - start, hi - start)
            if pieces and pieces[-1].shard == shard:
                pieces[-1] = Piece(shard, pieces[-1].ranges + (rows,))
            else:
                pieces.append(Piece(shard, (rows,)))
            a, k = hi, k + 1
    return pieces


def rank_epoch(sizes: list[int], rank: int, world_size: int, *, seed: int, epoch: int,
               shuffle: bool, remainder: str) -> EpochPlan:
    """Rank `rank`'s samples of one epoch over shards of `sizes` samples (in split order)."""
    total = sum(sizes)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        shard_order = rng.permutation(len(sizes))
        # The rotation moves samples between ranks even with one shard; one rank has them all.
        shift = int(rng.integers(total)) if world_size > 1 else 0
    else:
        shard_order, shift = np.arange(len(sizes)), 0
    lo = rank * total // world_size + shift
    hi = (rank + 1) * total // world_size + shift
    if lo >= total:
        segments = [(lo - total, hi - total)]
    elif hi > total:
        segments = [(lo, total), (0, hi - total)]
    else:
        segments = [(lo, hi)]
    pieces = _pieces(sizes, shard_order, segments)
    offsets = np.cumsum([0, *sizes])
    orders, locals_ = [], []
    for k, piece in enumerate(pieces):
        rows = np.concatenate([np.arange(a, b) + offsets[piece.shard] for a, b in piece.ranges])
        local = np.arange(len(rows))
        if shuffle:
            local = np.random.default_rng([seed, epoch, rank, k]).permutation(len(rows))
        orders.append(rows[local])
        locals_.append(local)
    order = np.concatenate(orders) if orders else np.empty(0, np.int64)
    local = np.concatenate(locals_) if locals_ else np.empty(0, np.int64)
    bounds = np.cumsum([0, *(p.size for p in pieces)])
    wanted = samples_per_rank(total, world_size, remainder)
    if wanted is not None and wanted > len(order):  # pad by wrapping, as DistributedSampler
        order = np.concatenate([order, order[:wanted - len(order)]])
        local = np.concatenate([local, local[:wanted - len(local)]])
    elif wanted is not None:  # drop: a piece left without rows is not read at all
        order, local = order[:wanted], local[:wanted]
        used = int(np.searchsorted(bounds, wanted, side="left"))
        pieces, bounds = pieces[:used], np.minimum(bounds[:used + 1], wanted)
    return EpochPlan(tuple(pieces), order, local, bounds)
