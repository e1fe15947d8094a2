"""Data for the ML steps: raw sources -> HDF5 shards + manifest (preprocess), a use case's own
arrays -> the same shards (write_shards), the rank-aware reader over them (dataset), and
node-local staging of shards (staging). Importing this package imports nothing heavy (numpy
and h5py load on the first call of write_shards)."""

from __future__ import annotations

from typing import Any

__all__ = ["write_shards"]


def write_shards(output_dir, splits, *, dataset: str, shard_size: int | str | None = None,
                 **options: Any):
    """See itwinai_hpc.data.write.write_shards (imported on first call)."""
    from itwinai_hpc.data.write import write_shards as write

    return write(output_dir, splits, dataset=dataset, shard_size=shard_size, **options)
