"""Evaluation metrics by name (`accuracy`, `rmse`, `mae`, `r2`) or by import path
(`pkg.mod:fn`, `fn(pred, target) -> float`), computed over a split that DDP spreads over ranks.

Every metric is kept as sums (`Sums`): each rank adds its batches, the sums are all-reduced, and
only then divided. So `val_rmse` over 2 ranks is the RMSE of the whole split, never the mean of
the two ranks' RMSEs. A metric given by import path is called once per batch; its value counts
weighted by the batch's sample count (the sample-weighted mean of per-batch values: exact for a
metric that is a mean over samples, an approximation for one that is not, such as a median).

Names and defaults are plain data here (config.py reads them without torch); the arithmetic
imports torch lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

BUILTIN = ("accuracy", "rmse", "mae", "r2")
# Which way is better, by the metric's kind (registry.mode's default).
HIGHER_IS_BETTER = {"accuracy": True, "r2": True, "rmse": False, "mae": False, "loss": False,
                    "mse": False}
DEFAULT_METRICS = {"classification": ["accuracy"], "regression": ["rmse", "mae", "r2"]}
FOR_TASK = {"classification": {"accuracy"}, "regression": {"rmse", "mae", "r2"}}


def metric_name(spec: str) -> str:
    """The name a metric is logged under (after `val_` / `test_`): a built-in's own name, an
    import path's callable name (`pkg.mod:skill_score` -> `skill_score`)."""
    return spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if ":" in spec else spec


def default_mode(logged: str) -> str:
    """`max` or `min` for a logged metric such as `val_rmse`: by its kind; an unknown kind
    defaults to `max`, as accuracy-like scores do (a train config refuses to guess for an
    import path's metric: config.resolve_train asks for registry.mode)."""
    base = logged.split("_", 1)[1] if logged.startswith(("val_", "test_")) else logged
    return "max" if HIGHER_IS_BETTER.get(base, True) else "min"


@dataclass
class Sums:
    """What one rank has seen of a split, as sums; `values()` after all-reducing them."""

    names: list[str]
    custom: dict[str, Callable] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    KEYS = ("n", "elements", "correct", "sq_err", "abs_err", "t_sum", "t_sq")

    def __post_init__(self) -> None:
        self.totals = dict.fromkeys([*self.KEYS, *(f"custom:{k}" for k in self.custom)], 0.0)

    def add(self, pred, target) -> None:
        """One batch: `pred` the model's outputs, `target` class numbers (classification) or
        values of the outputs' shape (regression); torch tensors."""
        import torch

        t = self.totals
        n = int(target.shape[0])
        t["n"] += n
        if "accuracy" in self.names:
            t["correct"] += float((pred.argmax(dim=1) == target).sum())
        if {"rmse", "mae", "r2"} & set(self.names):
            p, y = pred.double(), target.double()
            err = p - y
            t["elements"] += float(y.numel())
            t["sq_err"] += float(torch.sum(err * err))
            t["abs_err"] += float(torch.sum(err.abs()))
            t["t_sum"] += float(y.sum())
            t["t_sq"] += float(torch.sum(y * y))
        for name, fn in self.custom.items():
            t[f"custom:{name}"] += float(fn(pred, target)) * n

    def vector(self) -> list[float]:
        return [self.totals[k] for k in sorted(self.totals)]

    def load(self, vector: list[float]) -> None:
        self.totals = dict(zip(sorted(self.totals), vector))

    def values(self) -> dict[str, float]:
        """{metric name: value} from the (all-reduced) sums, in the configured order."""
        t, nan = self.totals, float("nan")
        n, m = t["n"], t["elements"]
        out: dict[str, float] = {}
        for name in self.names:
            if name == "accuracy":
                out[name] = t["correct"] / n if n else nan
            elif name == "rmse":
                out[name] = (t["sq_err"] / m) ** 0.5 if m else nan
            elif name == "mae":
                out[name] = t["abs_err"] / m if m else nan
            elif name == "r2":
                ss_tot = t["t_sq"] - t["t_sum"] ** 2 / m if m else 0.0
                out[name] = 1.0 - t["sq_err"] / ss_tot if ss_tot > 0 else nan
            else:
                out[name] = t[f"custom:{name}"] / n if n else nan
        return out


def make_sums(specs: list[str], custom: dict[str, Callable]) -> Sums:
    """Sums for the configured metrics; `custom` maps the import paths' names to callables
    (model_path.resolve_callables)."""
    return Sums([metric_name(s) for s in specs], custom)
