"""What depends on the train config's `task` (classification, regression) and on where its
model comes from (a registered name or an import path): building the model, checking it fits
the shards before any step, the loss, batches cast to the model's dtype, and the evaluation of
a split (summed over ranks). The MNIST path (registered model, uint8 images) is exactly what it
was: check_model_takes, the confusion-matrix Evaluation.

Shards of write_shards hold arrays as stored; a floating `inputs` array (and a regression's
floating targets) is cast on the device to the model's parameter dtype: the model's input dtype,
not a silent conversion of the data (the shards are unchanged; the registered model takes the
stored dtype).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.metrics import make_sums, metric_name
from itwinai_hpc.ml.model_path import is_import_path, resolve_callable

EXAMPLES_KEPT = 4   # regression: samples drawn as fields (predicted, true, error)
SCATTER_POINTS = 4000   # regression: (true, predicted) pairs kept for the scatter


def generic(manifest) -> bool:
    return bool(getattr(manifest, "arrays", None))


def build(config: TrainConfig, manifest):
    """The model `config.model` names: a registered name (built for the shards' classes) or
    an import path called with `model_args`."""
    if is_import_path(config.model):
        from itwinai_hpc.ml.model_path import build_from_path

        return build_from_path(config.model, dict(config.model_args), where=config.where("model"))
    from itwinai_hpc.ml.models import build_model

    file, _ = config.where("model")
    return build_model(config.model, manifest.num_classes, file=file)


def preflight(config: TrainConfig) -> None:
    """Before any process group, device or data: every import path of the config resolves
    (model, loss, metrics) and the model's factory returns an nn.Module (built once on the
    CPU and dropped). Located UserErrors, exit 2."""
    if is_import_path(config.model):
        from itwinai_hpc.ml.model_path import build_from_path

        build_from_path(config.model, dict(config.model_args), where=config.where("model"))
    if config.loss and is_import_path(config.loss):
        resolve_callable(config.loss, where=config.where("loss"), field="loss")
    custom_metrics(config)


def custom_metrics(config: TrainConfig) -> dict:
    """{logged name: callable} for the metrics given by import path."""
    return {metric_name(m): resolve_callable(m, where=config.where("metrics", i),
                                             field=f"metrics.{i}")
            for i, m in enumerate(config.metrics or []) if is_import_path(m)}


def loss_function(config: TrainConfig):
    from itwinai_hpc.ml.losses import build_loss

    return build_loss(config.loss or "cross_entropy",
                      label_smoothing=config.trainer.label_smoothing,
                      resolve=partial(resolve_callable, where=config.where("loss"), field="loss"))


def check_fits(config: TrainConfig, model, manifest) -> None:
    """Before any step: MNIST's images through check_model_takes; shards of write_shards:
    targets present where a regression needs them, and two real validation samples through
    the model (CPU, eval mode, no gradient), whose outputs must have the targets' sample
    shape (regression) or one score per class (classification)."""
    if not generic(manifest):
        from itwinai_hpc.ml.fit_checks import check_model_takes

        return check_model_takes(model, config.model, manifest)
    import torch

    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.data.manifest_checks import dims

    shards = str(manifest.path)
    if config.task == "regression":
        lacking = [s for s in ("train", "validation", "test")
                   if s in manifest.splits and "targets" not in manifest.splits[s].arrays]
        if lacking or "targets" not in manifest.arrays:
            file, line = config.where("task")
            raise UserError(f"a regression needs targets, and the {', '.join(lacking) or 'all'} "
                            f"split(s) of the shards in {shards} have none; write them with "
                            "write_shards(..., {split: {'inputs': X, 'targets': Y}})",
                            file=file, line=line, field="task")
    elif not manifest.num_classes:
        file, line = config.where("task")
        raise UserError(f"a classification needs class numbers as targets (the shards in "
                        f"{shards} have num_classes 0); for values, set task: regression",
                        file=file, line=line, field="task")
    file, line = config.where("model")
    split = "validation" if "validation" in manifest.splits else "train"
    inputs, targets = read_rows(manifest, split, 0, min(2, manifest.splits[split].num_samples),
                                verify=False)[:2]
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(dtype) if x.is_floating_point() else x)
    except Exception as e:
        first = next((s for s in str(e).splitlines() if s.strip()), type(e).__name__)
        raise UserError(f"model {config.model!r} cannot take the inputs of the shards in "
                        f"{shards} ({x.dtype}, {dims(x.shape[1:])} per sample): "
                        f"{type(e).__name__}: {first}", file=file, line=line,
                        field="model") from None
    finally:
        model.train(training)
    want = tuple(targets.shape[1:]) if config.task == "regression" else (manifest.num_classes,)
    got = tuple(getattr(out, "shape", ())[1:])
    if not isinstance(out, torch.Tensor) or got != want:
        what = "the targets' sample shape" if config.task == "regression" else "one score per class"
        raise UserError(f"model {config.model!r} gives outputs of {dims(got) or type(out).__name__}"
                        f" per sample, {what} is {dims(want)} (shards in {shards}); the loss "
                        "needs them equal", file=file, line=line, field="model")


def cast(inputs, targets, dtype, task: str):
    """A batch in the model's dtype: floating inputs (and a regression's floating targets);
    a classification's class numbers as int64, what cross_entropy takes (int32, uint8 ... widen
    losslessly)."""
    import torch

    if inputs.is_floating_point() and inputs.dtype != dtype:
        inputs = inputs.to(dtype)
    if targets is None:
        return inputs, targets
    if task == "regression" and targets.is_floating_point() and targets.dtype != dtype:
        targets = targets.to(dtype)
    elif task == "classification" and not targets.is_floating_point() \
            and targets.dtype != torch.int64:
        targets = targets.to(torch.int64)
    return inputs, targets


@dataclass
class FieldExample:
    index: int
    predicted: np.ndarray     # one sample's outputs
    true: np.ndarray


@dataclass
class RegressionEvaluation:
    """A regression's loss and metrics over a split (summed over ranks), a few samples' fields
    and (true, predicted) pairs for the figures."""

    loss_sum: float
    num_samples: int
    metrics: dict[str, float]
    examples: list[FieldExample] = field(default_factory=list)
    scatter: np.ndarray | None = None     # N x 2: true, predicted

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.num_samples, 1)

    @property
    def accuracy(self) -> float | None:
        return None


def evaluate_regression(ctx: D.Context, model, loader, memory_format, config: TrainConfig,
                        custom: dict, *, keep_examples: int = 0) -> RegressionEvaluation:
    """`model` over `loader` (this rank's rows with indices) on every rank; loss and metric
    sums all-reduced; examples and scatter points gathered (first by index)."""
    import torch

    loss_fn, sums = loss_function(config), make_sums(config.metrics or [], custom)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    loss_sum, examples, pairs = 0.0, [], []
    model.eval()
    with torch.inference_mode():
        for inputs, targets, index in loader:
            inputs = inputs.to(ctx.device, non_blocking=True)
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=memory_format)
            inputs, targets = cast(inputs, targets.to(ctx.device), dtype, "regression")
            out = model(inputs)
            loss_sum += float(loss_fn(out, targets)) * targets.shape[0]
            sums.add(out, targets)
            if keep_examples:
                p, y = out.float().cpu().numpy(), targets.float().cpu().numpy()
                for i in range(min(len(p), keep_examples - len(examples))):
                    examples.append(FieldExample(int(index[i]), p[i], y[i]))
                if sum(len(a) for a in pairs) < SCATTER_POINTS:
                    pairs.append(np.stack([y.ravel(), p.ravel()], axis=1)[:SCATTER_POINTS])
    model.train()
    totals = D.all_reduce_sum(ctx, [loss_sum, float(sums.totals["n"]), *sums.vector()])
    sums.load(totals[2:])
    scatter = np.concatenate(pairs)[:SCATTER_POINTS] if pairs else None
    if keep_examples and ctx.distributed:
        gathered = D.all_gather_object(ctx, examples)
        examples = sorted((e for part in gathered for e in part), key=lambda e: e.index)
    return RegressionEvaluation(totals[0], int(totals[1]), sums.values(),
                                examples[:keep_examples], scatter)


def selected(evaluation, select_by: str) -> float:
    """The value of `registry.select_by` (val_loss or val_<metric>) in an evaluation."""
    name = select_by[len("val_"):]
    if name == "loss":
        return float(evaluation.loss)
    return float(metrics_of(evaluation)[name])


def metrics_of(evaluation) -> dict[str, float]:
    """{metric name: value} of a classification Evaluation or a RegressionEvaluation."""
    found = getattr(evaluation, "metrics", None)
    if isinstance(found, dict):
        return found
    return {"accuracy": evaluation.accuracy, **getattr(evaluation, "extra", {})}
