"""`predict` for a classifier on shards of write_shards (a model trained by the built-in trainer
with `task: classification`, served_arrays.ArrayModel, or one registered by
`job.register(..., task="classification")`): every sample of the split, read in its stored
dtype and shape, through the model in batches -> a CSV with MNIST's columns, one row per
sample in the split's sample order:

    index,predicted,probability,label      row i = sample i of the split
    0,2,0.912345,2                         predicted: argmax class; probability: its probability

`label` (the split's target) only where the split has targets; then accuracy, loss (mean
cross-entropy), the confusion matrix and the per-class table go into the inference run, as for
MNIST. The model's outputs are used as probabilities when the first batch's rows are
distributions (>= 0, summing to 1: ArrayModel's softmax), otherwise as scores (logits) turned
into probabilities with a softmax.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError

COLUMNS = ("index", "predicted", "probability", "label")
DEFAULT_FILE = "predictions.csv"


def output_file(location: str | os.PathLike) -> Path:
    """A folder (existing, or ending in '/') gets predictions.csv; a file is the CSV itself,
    but not one named .h5 (predictions.h5 holds a regression's arrays)."""
    text, path = str(location), Path(location)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / DEFAULT_FILE
    if path.suffix in (".h5", ".hdf5"):
        raise UserError(f"a classifier's predictions (class and probability per sample) are "
                        f"written as CSV: give a folder (it gets {DEFAULT_FILE}) or a .csv "
                        f"file, not {text!r}", field="--output")
    return path


def check_model_fits(model_uri: str, manifest, split: str, input_shape, output_shape,
                     input_dtype=None) -> None:
    """Inputs (dtype and sample shape) as predict_arrays checks them; the model's class count
    (its signature's output (-1, classes)) against the manifest's num_classes; a split with
    targets needs shards whose targets are class numbers (num_classes > 0)."""
    from itwinai_hpc.ml.predict_arrays import check_model_fits as check_inputs

    check_inputs(model_uri, manifest, input_shape, input_dtype)
    where, n = str(manifest.path), manifest.num_classes
    classes = output_shape[1] if output_shape is not None and len(output_shape) == 2 else -1
    if n and classes not in (-1, n):
        raise UserError(f"the shards have {n} classes, model {model_uri!r} predicts {classes} "
                        "(its signature); predict with shards of the data set it was trained "
                        f"on, or with a model trained on {n} classes", file=where,
                        field="num_classes")
    if "targets" in manifest.splits[split].arrays and not n:
        raise UserError(f"split {split!r} has targets, but the manifest does not say they are "
                        "class numbers (num_classes is 0), so accuracy cannot be counted: write "
                        "the shards with write_shards(..., num_classes=N), or the split without "
                        "targets", file=where, field="num_classes")


def _distributions(out) -> bool:
    """True when every row of `out` is a probability distribution."""
    import torch

    sums = out.sum(dim=1)
    return bool((out >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums),
                                                          atol=1e-3))


def loader(manifest, config):
    """The split as stored, every row once, with indices; in memory mode read and checked
    (checksums, class numbers) here."""
    from itwinai_hpc.data.dataset import ShardedLoader

    return ShardedLoader(manifest, config.split, config.batch_size, shuffle=False, rank=0,
                         world_size=1, rank_remainder="keep", raw=True, return_index=True)


def predict_rows(model, manifest, config, device=None, batches=None):
    """(rows, Evaluation or None where the split has no targets, CSV text in sample order).
    `batches`: loader(manifest, config) made beforehand, or None to make it here."""
    import torch

    from itwinai_hpc.data.arrays import served
    from itwinai_hpc.ml.evaluation import Tally

    batches = batches if batches is not None else loader(manifest, config)
    total = manifest.splits[config.split].num_samples
    predicted = np.zeros(total, np.int64)
    probability = np.zeros(total, np.float32)
    labels = np.zeros(total, np.int64) if "targets" in served(manifest, config.split) \
        else None
    tally, scores = Tally(max(manifest.num_classes, 1)), None
    with torch.inference_mode():
        for inputs, targets, index in batches:
            out = model(inputs.to(device) if device is not None else inputs).float().cpu()
            if scores is None:
                scores = not _distributions(out)
            probs = torch.softmax(out, dim=1) if scores else out
            p, pred = probs.max(dim=1)
            at = index.numpy()
            predicted[at], probability[at] = pred.numpy(), p.numpy()
            if targets is not None and labels is not None:
                y = targets.long()   # class numbers (checked against num_classes on reading)
                labels[at] = y.numpy()
                of_label = probs.gather(1, y[:, None])[:, 0].clamp_min(1e-12)
                tally.add(y.numpy(), pred.numpy(), float(-torch.log(of_label).sum()))
    columns = COLUMNS if labels is not None else COLUMNS[:3]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    cells = [range(total), predicted.tolist(), (f"{x:.6f}" for x in probability.tolist())]
    writer.writerows(zip(*cells, *([labels.tolist()] if labels is not None else [])))
    return total, tally.result() if labels is not None else None, buf.getvalue()
