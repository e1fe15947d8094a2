"""A use case's own package, written outside the repository (under a test's tmp_path): its own
nn.Module (tinyfield.net:StepNet) and its own preprocessing script (prep.py OUT [--no-targets])
that calls itwinai_hpc.data.write_shards: float32 2x16x16 fields, a next-step regression,
300 samples (train 200, validation 50, test 50). Used by tests/ml/test_own_use_case.py (direct
torchrun) and tests/test_own_package_workflow.py (a workflow on the local and SLURM backends)."""

from __future__ import annotations

import textwrap
from pathlib import Path

NET = """
import torch


class StepNet(torch.nn.Module):
    def __init__(self, channels=2, hidden=8):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, hidden, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class FirstChannel(StepNet):
    def forward(self, x):
        return super().forward(x)[:, :1]
"""

PREP = """
import sys

import numpy as np

from itwinai_hpc.data import write_shards

rng = np.random.default_rng(0)
x = rng.normal(size=(300, 2, 16, 16)).astype("float32")
for _ in range(3):   # smooth fields
    x = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2)) / 3
y = (0.9 * x + 0.1 * np.roll(x, 1, -1)).astype("float32")   # the next step
targets = "--no-targets" not in sys.argv
parts = {"train": slice(0, 200), "validation": slice(200, 250), "test": slice(250, 300)}
write_shards(sys.argv[1], {name: {"inputs": x[s], **({"targets": y[s]} if targets else {})}
                           for name, s in parts.items()}, dataset="tinyfield", shard_size=64)
"""

N_TEST = 50


def write_package(root: Path) -> Path:
    """root/tinyfield/{__init__,net}.py and root/prep.py; returns root (the PYTHONPATH)."""
    pkg = root / "tinyfield"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(textwrap.dedent(NET))
    (root / "prep.py").write_text(textwrap.dedent(PREP))
    return root
