"""The evaluation figures a user looks at in MLflow: the confusion matrix and a grid of
misclassified images. Pure drawing (matplotlib's object API, no pyplot state, no display);
knows nothing about MLflow, ranks or files.
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
    """The first misclassified images: "true -> predicted (probability)" over each."""
    from matplotlib.figure import Figure

    examples = evaluation.examples
    rows = max(1, -(-len(examples) // columns))
    fig = Figure(figsize=(columns * 1.1, rows * 1.3 + 0.4), dpi=100)
    fig.suptitle(f"{title}: {evaluation.num_samples - int(np.trace(evaluation.confusion))} "
                 f"misclassified, first {len(examples)} by index", fontsize=9)
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < len(examples):
            e = examples[i]
            ax.imshow(e.pixels, cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(f"#{e.index}: {e.label}\u2192{e.predicted} ({e.probability:.2f})",
                         fontsize=7)
    fig.tight_layout()
    return fig
