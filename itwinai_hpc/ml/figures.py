"""The figures a user looks at in MLflow: the confusion matrix, a grid of misclassified images,
and a scaling study's throughput and efficiency. Pure drawing (matplotlib's object API, no
pyplot state, no display); knows nothing about MLflow, ranks or files.
"""

from __future__ import annotations

import numpy as np

from itwinai_hpc.ml.evaluation import Evaluation


def confusion_figure(evaluation: Evaluation, title: str):
    """Counts per (true, predicted) class, darker = more; the diagonal is what was right."""
    from matplotlib.figure import Figure

    cm = evaluation.confusion
    n = cm.shape[0]
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=100)
    ax = fig.add_subplot()
    # Log scale on the colour only: the diagonal would otherwise wash out every mistake.
    ax.imshow(np.log1p(cm), cmap="Blues")
    top = np.log1p(cm).max() or 1.0
    for t in range(n):
        for p in range(n):
            if cm[t, p]:
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if np.log1p(cm[t, p]) > 0.6 * top else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: accuracy {evaluation.accuracy:.4f} "
                 f"({evaluation.num_samples} images)", fontsize=9)
    fig.tight_layout()
    return fig


def misclassified_figure(evaluation: Evaluation, title: str, columns: int = 8):
    """The first misclassified images: "true -> predicted (probability)" over each.

    One image of all of them (a mosaic with white gutters) on one axes, captions as text:
    a subplot per digit drew the same picture 5-10x slower (about 1 s per train and predict)."""
    from matplotlib.figure import Figure

    examples = evaluation.examples
    rows = max(1, -(-len(examples) // columns))
    h, w = examples[0].pixels.shape if examples else (28, 28)
    gap_x, gap_y = max(2, w // 4), max(4, h // 2)          # room between digits, for captions
    mosaic = np.zeros((rows * (h + gap_y), columns * (w + gap_x)), dtype=np.uint8)
    fig = Figure(figsize=(columns * 1.1, rows * 1.3 + 0.4), dpi=100)
    fig.suptitle(f"{title}: {evaluation.num_samples - int(np.trace(evaluation.confusion))} "
                 f"misclassified, first {len(examples)} by index", fontsize=9)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98 - 0.4 / (rows * 1.3 + 0.4)))
    ax.axis("off")
    for i, e in enumerate(examples):
        top, left = (i // columns) * (h + gap_y) + gap_y, (i % columns) * (w + gap_x)
        mosaic[top:top + h, left:left + w] = e.pixels
        ax.text(left + w / 2, top - 1, f"#{e.index}: {e.label}\u2192{e.predicted} "
                f"({e.probability:.2f})", ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    return fig


def scaling_figure(rows: list[dict], baseline: dict, title: str):
    """Left: samples/s against world size, with the ideal line (the baseline's throughput
    times the size ratio). Right: efficiency (speed-up / size ratio), 1.0 is ideal. `rows` and
    `baseline` as scaling.scaling_report returns them, rows sorted by world size."""
    from matplotlib.figure import Figure

    sizes = [r["world_size"] for r in rows]
    nodes = {r["world_size"]: r["nnodes"] for r in rows}
    ticks = sorted(nodes)
    labels = [f"{w}\n({nodes[w]} node{'s' if nodes[w] > 1 else ''})" for w in ticks]
    ideal = [baseline["samples_per_s"] * w / baseline["world_size"] for w in ticks]
    fig = Figure(figsize=(10, 4), dpi=100)
    fig.suptitle(title, fontsize=9)
    left, right = fig.subplots(1, 2)
    left.plot(ticks, ideal, "--", color="grey", label="ideal")
    left.plot(sizes, [r["samples_per_s"] for r in rows], "o-", label="measured")
    left.set_ylabel("samples/s (median epoch)")
    left.set_ylim(bottom=0)
    right.axhline(1.0, linestyle="--", color="grey", label="ideal")
    right.plot(sizes, [r["efficiency"] for r in rows], "o-", label="measured")
    right.set_ylabel("efficiency (speed-up / size ratio)")
    right.set_ylim(0, max(1.1, max(r["efficiency"] for r in rows) * 1.1))
    for ax in (left, right):
        if len(ticks) > 1 and ticks[-1] / ticks[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.set_xlabel("world size (processes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
