"""benchmarks/bench_scale.py keeps working (small sizes here; 50x is for a person to run), and
at 10x its memory numbers show what the issue asked for: memory that does not follow the data.
Memory is asserted, never time: time goes in the benchmark's report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


def _bench(tmp_path, *args) -> list[dict]:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(BENCH), "--json", str(out), "--workdir",
                    str(tmp_path / "work"), *args], check=True, timeout=600,
                   capture_output=True, text=True)
    return json.loads(out.read_text())


def _reader(row: dict, mode: str, world: int) -> dict:
    return next(r for r in row["readers"] if r["mode"] == mode and r["world"] == world)


@pytest.mark.slow  # 12-30 s: five processes that import torch
def test_bench_scale_reports_preprocess_readers_and_training_at_a_small_size(tmp_path):
    (row,) = _bench(tmp_path, "--factors", "1", "--base", "6000", "--ranks", "2",
                    "--train-samples", "1000")
    assert row["train_images"] == 6000 and row["preprocess"]["peak_rss_mb"] > 0
    assert "stream mode" in _reader(row, "stream", 2)["describe"]
    assert "memory mode" in _reader(row, "memory", 2)["describe"]
    assert _reader(row, "training", 2)["ratio"] > 0
    assert not (tmp_path / "work").exists()  # cleans up after itself


@pytest.mark.slow
def test_5x_more_data_leaves_preprocess_and_stream_reader_memory_where_it_was(tmp_path):
    # 94 MB and 470 MB of pixels in 8 MB shards: only the shard size may show in memory.
    small, big = _bench(tmp_path, "--factors", "2", "10", "--ranks", "1", "--shard-images",
                        "10000", "--train-samples", "0")
    assert big["source_gb"] - small["source_gb"] > 0.35
    assert big["preprocess"]["peak_rss_mb"] - small["preprocess"]["peak_rss_mb"] < 30
    stream = [_reader(row, "stream", 1) for row in (small, big)]
    assert stream[1]["peak_rss_mb"] - stream[0]["peak_rss_mb"] < 30
    memory = [_reader(row, "memory", 1) for row in (small, big)]
    assert memory[1]["peak_rss_mb"] - memory[0]["peak_rss_mb"] > 250  # the in-memory path grows
