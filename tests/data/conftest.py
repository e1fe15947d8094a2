"""Fixtures for the data tests: small, real-format IDX folders and shard folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import SMALL, make_idx_folder

from itwinai_hpc.data.config import make_config


@pytest.fixture
def idx_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "raw"
    return folder, make_idx_folder(folder)


@pytest.fixture
def small_config():
    return make_config(dict(SMALL))


@pytest.fixture
def shards(idx_folder, small_config, tmp_path):
    """A complete shard folder made from `idx_folder` with the small config."""
    from itwinai_hpc.data.preprocess import preprocess

    out = tmp_path / "shards"
    preprocess(str(idx_folder[0]), out, small_config, progress=False)
    return out
