"""What a classifier got right and wrong on a split: confusion matrix, mean cross-entropy,
per-class accuracy and a few misclassified images. Counting is pure numpy (`Tally`); `evaluate`
runs a model over a sharded split on every rank and sums the counts over ranks.

Nothing here talks to MLflow or draws (figures.py draws, tracking.py logs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from itwinai_hpc.ml import distributed as D


@dataclass
class Example:
    """One misclassified image, for the grid a user looks at."""

    index: int            # row within the split
    pixels: np.ndarray    # uint8 H x W
    label: int
    predicted: int
    probability: float    # the model's probability for `predicted`


@dataclass
class Evaluation:
    confusion: np.ndarray                  # [true class, predicted class] -> count
    loss_sum: float                        # summed cross-entropy
    examples: list[Example] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)   # metrics given by import path

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / max(self.num_samples, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.num_samples, 1)

    def per_class(self) -> dict[str, list]:
        """Columns of the per-class table: class, samples, correct, accuracy (recall),
        predicted (how often the model said this class), precision."""
        samples = self.confusion.sum(axis=1)
        predicted = self.confusion.sum(axis=0)
        correct = np.diag(self.confusion)
        return {"class": list(range(len(samples))), "samples": samples.tolist(),
                "correct": correct.tolist(), "accuracy": rate(correct, samples),
                "predicted": predicted.tolist(), "precision": rate(correct, predicted)}


def rate(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """num/den per class, rounded for the table; None where den is 0."""
    return [round(float(n) / d, 6) if d else None for n, d in zip(num, den)]


class Tally:
    """Accumulates batches of (label, prediction) into an Evaluation."""

    def __init__(self, num_classes: int, keep_examples: int = 0):
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.loss_sum = 0.0
        self.keep = keep_examples
        self.examples: list[Example] = []

    def add(self, labels: np.ndarray, predicted: np.ndarray, loss_sum: float, *,
            probability: np.ndarray | None = None, pixels: np.ndarray | None = None,
            index: np.ndarray | None = None) -> None:
        n = self.confusion.shape[0]
        self.confusion += np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
        self.loss_sum += float(loss_sum)
        if len(self.examples) < self.keep and pixels is not None:
            for i in np.flatnonzero(labels != predicted)[: self.keep - len(self.examples)]:
                self.examples.append(Example(
                    int(index[i]) if index is not None else -1, pixels[i], int(labels[i]),
                    int(predicted[i]), float(probability[i]) if probability is not None else 0.0))

    def result(self) -> Evaluation:
        return Evaluation(self.confusion.copy(), self.loss_sum, list(self.examples))


def to_pixels(images, normalization: dict[str, float]) -> np.ndarray:
    """Normalised float images (N x 1 x H x W) back to the uint8 pixels they came from."""
    x = images.detach().float().cpu().numpy()[:, 0]
    return np.clip(np.rint((x * normalization["std"] + normalization["mean"]) * 255), 0,
                   255).astype(np.uint8)


def evaluate(ctx: D.Context, model, loader, memory_format, num_classes: int, *,
             normalization: dict[str, float] | None = None, keep_examples: int = 0,
             custom: dict | None = None) -> Evaluation:
    """Run `model` (logits out) over `loader` (this rank's rows, normalised images, indices)
    on every rank; the counts are summed over ranks, examples gathered from all of them.
    `custom`: metrics by import path (name -> fn(logits, labels)), as metrics.Sums."""
    import torch

    from itwinai_hpc.ml.metrics import Sums
    from itwinai_hpc.ml.tasks import cast

    dtype = next(iter(model.parameters())).dtype
    model.eval()
    tally = Tally(num_classes, keep_examples)
    sums = Sums(list(custom), custom) if custom else None
    with torch.inference_mode():
        for images, labels, index in loader:   # on the device when the reader holds it there
            images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(ctx.device, non_blocking=True)
            images, labels = cast(images, labels, dtype, "classification")   # as in training
            logits = model(images).float()
            if sums is not None:
                sums.add(logits, labels)
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            prob, pred = torch.softmax(logits, dim=1).max(dim=1)
            labels, pred, prob = labels.cpu(), pred.cpu(), prob.cpu()
            # Misclassified images only where they are pixels (MNIST); {} for write_shards.
            wrong = keep_examples and bool(normalization) and bool((pred != labels).any())
            tally.add(labels.numpy(), pred.numpy(), loss.item(), probability=prob.numpy(),
                      pixels=to_pixels(images, normalization) if wrong else None,
                      index=index.numpy())
    model.train()
    mine = tally.result()
    extra = sums.vector() if sums is not None else []
    totals = D.all_reduce_sum(ctx, [*mine.confusion.ravel().astype(float), mine.loss_sum,
                                    *extra])
    if sums is not None:
        sums.load(totals[len(totals) - len(extra):])
        totals = totals[:len(totals) - len(extra)]
    confusion = np.rint(totals[:-1]).astype(np.int64).reshape(mine.confusion.shape)
    examples = mine.examples
    if keep_examples and ctx.distributed:
        gathered = D.all_gather_object(ctx, examples)
        examples = sorted((e for part in gathered for e in part), key=lambda e: e.index)
    return Evaluation(confusion, totals[-1], examples[:keep_examples],
                      sums.values() if sums is not None else {})
