"""Training checkpoints on disk: atomic writes (tmp + fsync + rename) and loading for resume.
Knows nothing about MLflow or the training loop; only rank 0 calls save_checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / CHECKPOINT_NAME


def save_checkpoint(state: dict, folder: str | os.PathLike) -> Path:
    """Write `state` so that readers see the old checkpoint or the new one, never half of one."""
    import torch

    path = checkpoint_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: str | os.PathLike | None) -> dict | None:
    """The checkpoint in `folder`, or None when there is none yet."""
    import torch

    if folder is None:
        return None
    path = checkpoint_path(folder)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged file
        raise UserError(f"cannot read the checkpoint ({type(e).__name__}: {e}); delete it to "
                        "start over, or point --checkpoint-dir elsewhere", file=str(path)) from None
