"""Whether a test cluster's nodes are up, as the pytest fixtures (conftest.py) and
tests/slurm/test_cluster_setup.py ask it. A module of its own: a test cannot import conftest.py
by name (under `tests/ml` that name is another conftest)."""

from __future__ import annotations

import os
import subprocess

# As start-slurm.sh's USABLE: a node whose job is ending ("completing") or that backfill holds
# for a pending job ("planned") is up; a worker that first asks for the cluster then must not
# call it broken.
USABLE_NODE_STATES = ("idle", "mixed", "allocated", "completing", "planned")


def usable_nodes(conf: str) -> list[str] | None:
    """The node names of the cluster of `conf`, or None when sinfo fails or a node is not
    usable (down, drained, not yet registered)."""
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                           env={**os.environ, "SLURM_CONF": conf}, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    rows = [line.split() for line in p.stdout.splitlines() if line.strip()]
    if p.returncode or not rows or any(r[1] not in USABLE_NODE_STATES for r in rows):
        return None
    return [r[0] for r in rows]
