"""A regression's figures in MLflow: predicted vs true fields for a few samples with the error
map, and a predicted-vs-true scatter. Pure drawing (matplotlib's object API, no pyplot state),
like figures.py; knows nothing about MLflow, ranks or files.

A sample's outputs of shape (C, H, W) are drawn one row per sample and channel; (H, W) as one
channel; anything else (a vector per sample) as a line of predicted and true values.
"""

from __future__ import annotations

import numpy as np


def _as_maps(a: np.ndarray) -> np.ndarray | None:
    """(channels, H, W) for a field, None for outputs that are not 2-D fields."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    return None


def fields_figure(examples, title: str, max_rows: int = 8):
    """For each sample (and channel): true field, predicted field (same colour scale) and the
    error map (predicted - true, symmetric diverging scale)."""
    from matplotlib.figure import Figure

    rows = []
    for e in examples:
        p, y = _as_maps(np.asarray(e.predicted)), _as_maps(np.asarray(e.true))
        if p is None or y is None:
            rows.append((e.index, None, np.ravel(e.true), np.ravel(e.predicted)))
            continue
        rows.extend((e.index, c, y[c], p[c]) for c in range(y.shape[0]))
    rows = rows[:max_rows] or [(0, None, np.zeros(1), np.zeros(1))]
    fig = Figure(figsize=(9, 2.4 * len(rows) + 0.4), dpi=80)
    fig.suptitle(f"{title}: predicted vs true, first {len(examples)} samples by index",
                 fontsize=9)
    for r, (index, channel, y, p) in enumerate(rows):
        label = f"#{index}" + (f" ch {channel}" if channel is not None else "")
        if y.ndim != 2:
            ax = fig.add_subplot(len(rows), 1, r + 1)
            ax.plot(y, label="true")
            ax.plot(p, label="predicted")
            ax.set_title(label, fontsize=8)
            ax.legend(fontsize=7)
            continue
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        err = p - y
        bound = float(np.abs(err).max()) or 1.0
        for c, (img, name, kw) in enumerate([
                (y, "true", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
                (p, "predicted", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
                (err, "error (pred - true)", {"vmin": -bound, "vmax": bound, "cmap": "RdBu_r"})]):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            shown = ax.imshow(img, **kw)
            ax.set_title(f"{label}: {name}", fontsize=8)
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def scatter_figure(pairs: np.ndarray | None, metrics: dict[str, float], title: str):
    """Predicted against true values (a sample of points) with the identity line; the
    metrics in the title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 4.8), dpi=90)
    ax = fig.add_subplot()
    if pairs is not None and len(pairs):
        ax.scatter(pairs[:, 0], pairs[:, 1], s=2, alpha=0.3)
        lo, hi = float(pairs.min()), float(pairs.max())
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    ax.set_title(f"{title}: {shown}" + (f" ({len(pairs)} points)" if pairs is not None else ""),
                 fontsize=8)
    fig.tight_layout()
    return fig
