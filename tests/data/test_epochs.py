"""The epoch plan: which samples each rank sees, as a pure function of (seed, epoch, world)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from itwinai_hpc.data.epochs import rank_epoch

SIZES = [334, 333, 334]  # three shards, 1001 samples: no world size divides it


def _all(sizes, world, epoch, remainder="pad", shuffle=True, seed=3):
    return [rank_epoch(sizes, r, world, seed=seed, epoch=epoch, shuffle=shuffle,
                       remainder=remainder) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("remainder", ["pad", "drop", "keep"])
def test_every_sample_once_per_epoch_and_equal_lengths(world, remainder):
    total = sum(SIZES)
    for epoch in range(3):
        plans = _all(SIZES, world, epoch, remainder)
        counts = Counter(np.concatenate([p.order for p in plans]).tolist())
        lengths = {len(p.order) for p in plans}
        if remainder == "keep":
            assert sorted(counts) == list(range(total)) and set(counts.values()) == {1}
        elif remainder == "pad":  # the shorter ranks repeat one sample each
            assert sorted(counts) == list(range(total)) and lengths == {-(-total // world)}
            assert sum(counts.values()) - total == -total % world
        else:
            assert set(counts.values()) == {1} and lengths == {total // world}
            assert len(counts) == total - total % world


def test_samples_move_between_ranks_from_epoch_to_epoch():
    owners = []
    for epoch in range(4):
        plans = _all(SIZES, 2, epoch)
        owners.append({int(i): r for r, p in enumerate(plans) for i in p.order})
    moved = [sum(a[i] != b[i] for i in a) for a, b in zip(owners, owners[1:])]
    assert all(m > 100 for m in moved), moved


def test_samples_move_between_ranks_even_with_a_single_shard():
    first = set(rank_epoch([1000], 0, 2, seed=0, epoch=0, shuffle=True, remainder="pad").order)
    second = set(rank_epoch([1000], 0, 2, seed=0, epoch=1, shuffle=True, remainder="pad").order)
    assert first != second


def test_the_order_is_a_pure_function_of_seed_epoch_and_world_size():
    a, b = _all(SIZES, 3, epoch=5), _all(SIZES, 3, epoch=5)
    assert all(np.array_equal(x.order, y.order) for x, y in zip(a, b))
    assert not np.array_equal(a[0].order, _all(SIZES, 3, epoch=6)[0].order)
    assert not np.array_equal(a[0].order, _all(SIZES, 3, epoch=5, seed=4)[0].order)


def test_each_rank_reads_whole_shards_and_at_most_two_partial_ones():
    sizes = [100] * 12
    for epoch in range(5):
        for plan in _all(sizes, 4, epoch):
            partial = [p for p in plan.pieces if p.size < 100]
            assert len(partial) <= 2
            assert sum(p.size for p in plan.pieces) == plan.bounds[-1]
            assert len({p.shard for p in plan.pieces}) == len(plan.pieces)  # each read once


def test_local_positions_point_at_the_same_samples_as_the_order():
    offsets = np.cumsum([0, *SIZES])
    for plan in _all(SIZES, 2, epoch=1):
        for k, piece in enumerate(plan.pieces):
            rows = np.concatenate([np.arange(a, b) + offsets[piece.shard] for a, b in piece.ranges])
            span = slice(plan.bounds[k], plan.bounds[k + 1])
            assert np.array_equal(rows[plan.local[span]], plan.order[span])


def test_without_shuffle_rank_r_gets_rows_r_n_over_w_in_split_order():
    plan = rank_epoch(SIZES, 1, 3, seed=0, epoch=4, shuffle=False, remainder="keep")
    assert plan.order.tolist() == list(range(333, 667))
