"""Training losses by name (`cross_entropy`, `mse`, `l1`, `huber`) or by import path
(`pkg.mod:callable`): the callable is a loss function `fn(pred, target) -> scalar tensor`, or a
class / factory that returns one when called without arguments (an `nn.Module` such as
`torch.nn.SmoothL1Loss`). The loss must be the batch mean: the trainer weights it by the batch
size to report the epoch's train_loss and val_loss.
"""

from __future__ import annotations

from collections.abc import Callable

BUILTIN = ("cross_entropy", "mse", "l1", "huber")
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}


def build_loss(spec: str, *, label_smoothing: float = 0.0, resolve: Callable | None = None):
    """The loss module/function `spec` names. `resolve(spec)` turns an import path into its
    callable (model_path.resolve_callable, with the config's location for errors)."""
    import torch

    if spec == "cross_entropy":
        return torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if spec == "mse":
        return torch.nn.MSELoss()
    if spec == "l1":
        return torch.nn.L1Loss()
    if spec == "huber":
        return torch.nn.HuberLoss()
    assert resolve is not None, "an import path needs a resolver"
    found = resolve(spec)
    if isinstance(found, type):
        return found()    # a loss class, e.g. an nn.Module subclass
    return found
