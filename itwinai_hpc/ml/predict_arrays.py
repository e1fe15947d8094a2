"""`predict` for a model trained on shards of write_shards (served_arrays.ArrayModel): every
sample of the split through the registered model, the outputs written as `predictions` in
`DIR/predictions.h5` in the split's sample order (row i = sample i), and, where the split has
targets, the regression metrics (rmse, mae, r2) and figures in the inference run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError

DEFAULT_FILE = "predictions.h5"
EXAMPLES_SHOWN = 4


class PredictionsNotWritten(RuntimeError):
    """The predictions could not be written (a full disk, a quota, a read-only folder): a
    runtime failure, one `error:` line and exit 1; the file there before, if any, is unchanged
    and no part of the new one is left. (predict.py's, for CSV and HDF5 alike.)"""


def output_file(location: str | os.PathLike) -> Path:
    """A folder (existing, or ending in '/') gets predictions.h5; a file must end in .h5."""
    text, path = str(location), Path(location)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / DEFAULT_FILE
    if path.suffix not in (".h5", ".hdf5"):
        raise UserError(f"this model's predictions are arrays, written as HDF5: give a folder "
                        f"(it gets {DEFAULT_FILE}) or a file ending in .h5, not {text!r}",
                        field="--output")
    return path


def check_model_fits(model_uri: str, manifest, input_shape, input_dtype=None) -> None:
    """The model's signature input (-1, *sample shape) and dtype against the shards' inputs:
    another dtype is refused, never cast (the model casts floats to its weights' dtype
    inside, but its signature names the dtype it was trained on)."""
    from itwinai_hpc.data.arrays import array_dtype, array_shape
    from itwinai_hpc.data.manifest_checks import dims

    if not manifest.arrays:
        raise UserError(f"model {model_uri!r} takes arrays (its task metadata), these shards "
                        "hold images; predict with shards written by write_shards like its "
                        "training data", file=str(manifest.path), field="arrays")
    want = array_shape(manifest, "inputs")
    if input_shape is not None and (len(input_shape) != len(want) + 1 or any(
            t not in (-1, i) for t, i in zip(input_shape[1:], want))):
        raise UserError(f"the shards' inputs are {dims(want)} per sample, model {model_uri!r} "
                        f"takes {dims(input_shape[1:])} (its signature)",
                        file=str(manifest.path), field="inputs")
    stored = array_dtype(manifest, "inputs")
    if input_dtype is not None and np.dtype(input_dtype) != stored:
        raise UserError(f"the shards' inputs are {stored}, model {model_uri!r} takes "
                        f"{np.dtype(input_dtype)} (its signature); write the shards in "
                        f"{np.dtype(input_dtype)}, as its training data", file=str(manifest.path),
                        field="arrays.inputs.dtype")


def served_input_dtype(uri: str):
    """The dtype of a (resolved) model's single tensor input (its signature); None without."""
    import mlflow.models

    signature = mlflow.models.get_model_info(uri).signature
    inputs = signature.inputs if signature is not None else None
    if inputs is None or not inputs.is_tensor_spec() or len(inputs.inputs) != 1:
        return None
    return inputs.inputs[0].type


def predict_rows(model, manifest, config, device=None):
    """(predictions in sample order, tasks.RegressionEvaluation or None when the split has no
    targets)."""
    import torch

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.ml.metrics import make_sums
    from itwinai_hpc.ml.tasks import SCATTER_POINTS, FieldExample, RegressionEvaluation

    loader = ShardedLoader(manifest, config.split, config.batch_size, shuffle=False, rank=0,
                           world_size=1, rank_remainder="keep", raw=True, return_index=True)
    total = manifest.splits[config.split].num_samples
    out_all: np.ndarray | None = None
    sums, loss_sum, examples, pairs = make_sums(["rmse", "mae", "r2"], {}), 0.0, [], []
    with torch.inference_mode():
        for inputs, targets, index in loader:
            out = model(inputs.to(device) if device is not None else inputs).cpu()
            p = out.numpy()
            if out_all is None:
                out_all = np.empty((total, *p.shape[1:]), p.dtype)
            out_all[index.numpy()] = p
            if targets is not None:
                y = targets.to(out.dtype)
                sums.add(out, y)
                loss_sum += float(torch.nn.functional.mse_loss(out, y, reduction="sum")) \
                    / max(1, out[0].numel())
                yn = y.numpy()
                for i in range(min(len(p), EXAMPLES_SHOWN - len(examples))):
                    examples.append(FieldExample(int(index[i]), p[i], yn[i]))
                if sum(len(a) for a in pairs) < SCATTER_POINTS:
                    pairs.append(np.stack([yn.ravel(), p.ravel()], axis=1)[:SCATTER_POINTS])
    predictions = out_all if out_all is not None else np.empty((0,), np.float32)
    if not sums.totals["n"]:
        return predictions, None
    scatter = np.concatenate(pairs)[:SCATTER_POINTS] if pairs else None
    return predictions, RegressionEvaluation(loss_sum, int(sums.totals["n"]), sums.values(),
                                             examples, scatter)


def write_h5(output: Path, predictions: np.ndarray, about: dict[str, str]) -> None:
    """`predictions` (and the sample index) into `output` through a temporary file renamed into
    place: the file there before, if any, stays whole until the new one is complete."""
    import h5py

    existed = output.is_file()
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            f.create_dataset("predictions", data=predictions)
            f.create_dataset("index", data=np.arange(len(predictions), dtype=np.int64))
            for k, v in about.items():
                f.attrs[k] = str(v)
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the predictions file there is unchanged" if existed else "nothing was written"
        raise PredictionsNotWritten(
            f"cannot write the predictions to {output} ({e.strerror or e}); {kept}. Free space "
            "(or quota) there, or choose another --output, and rerun") from None
