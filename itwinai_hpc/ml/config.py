"""The train and inference configs (YAML) as typed pydantic models, validated with the YAML's
line numbers by itwinai_hpc.core.validation, so a bad key reads `FILE:LINE: field: message` exactly
as a bad workflow does. Reads a file; imports no torch or mlflow.

Every key has a default; an unknown key, a wrong type or a value out of range is an error that
names the file, the line and the key, with the valid keys or choices.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from itwinai_hpc.core.config_file import read_config
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.validation import validate_model
from itwinai_hpc.core.yamlsrc import YamlDoc

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Split = Literal["train", "validation", "test"]


class Section(BaseModel):
    # strict: YAML already types its values, so `epochs: "2"` or `lr: true` is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True)


class TrainerSection(Section):
    name: str = "classifier"
    epochs: Positive = 2
    batch_size: Positive = 128
    eval_batch_size: Positive = 1000
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    lr_schedule: Literal["onecycle", "constant"] = "onecycle"
    max_lr: float = 1e-2
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3   # onecycle: share of steps warming up
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    seed: NonNegative = 42
    channels_last: bool = True
    # fp32, or autocast to bf16 (CPU and GPU) or fp16 (GPU; with a GradScaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile of the training step: false, true (default mode) or a mode name;
    # reduce-overhead uses CUDA graphs on a GPU.
    compile: Literal[False, True, "default", "reduce-overhead", "max-autotune"] = False
    # A GPU keeps the whole train/validation split (uint8) when it fits this share of its
    # memory; otherwise batches come from host memory, pinned and prefetched. 0: never.
    device_data_share: Annotated[float, Field(ge=0, le=1)] = 0.25
    # Batches gathered ahead on a thread from host memory; default: 2 on a GPU, 0 (inline) on
    # a CPU, where a thread would compete with the step for the cores.
    prefetch_batches: NonNegative | None = None
    checkpoint_every_epochs: Positive = 1
    stop_check_every_steps: Positive = 10
    nan_patience: NonNegative = Field(3, description=(
        "Consecutive steps with a non-finite (inf or NaN) training loss on any rank that stop "
        "the run: it fails (exit 1, MLflow run FAILED) and registers nothing. 0 and 1 both "
        "stop at the first such step; nothing turns the check off. Counted on the device and "
        "read where the ranks agree on a stop request (every stop_check_every_steps steps, "
        "on a GPU one such interval late) and at each epoch's end; a run of non-finite "
        "losses still open when training ends stops it whatever its length."))
    watchdog_s: Annotated[float, Field(gt=0)] | None = Field(1800, description=(
        "Seconds without a training step on a rank after which it counts as hung (a "
        "collective one rank never joins, a stuck read): its stacks go to the log, it leaves "
        "a mark and exits 124, and the step shows as HUNG. The step's own `watchdog: "
        "{no-progress: ...}` wins where set; null: no watchdog."))


class TrainTracking(Section):
    experiment: str = "itwinai-hpc"
    log_every_steps: Positive = 50
    system_metrics_every_s: NonNegative = 10   # CPU, memory, GPU; 0 turns them off


class RegistrySection(Section):
    model_name: str = "model"
    alias: str = "champion"
    select_by: str | None = Field(None, description=(
        "The metric that picks the best epoch and decides whether a new version takes the "
        "alias: any metric logged per epoch, `val_loss` or `val_<metric>` for each of "
        "`metrics:` (default: `val_` + the first metric, val_accuracy for a classification, "
        "val_rmse for a regression). An unknown name is an error at config load that lists "
        "the metrics logged."))
    mode: Literal["max", "min"] | None = Field(None, description=(
        "Which way `select_by` is better: max or min (default by its kind: accuracy, r2 max; "
        "rmse, mae, loss min; required for an import path's metric). The champion alias moves "
        "to a new version only when it is strictly better by this rule."))


class TrainConfig(Section):
    """What `itwinai-hpc train` does (use-cases/mnist/mnist-ai-train.yml documents each key)."""

    dataset: str = Field("mnist", description=(
        "The data set the shards must hold (their manifest's `dataset`, as `write_shards(..., "
        "dataset=NAME)` or `preprocess` wrote it)."))
    model: str = Field("mnist-cnn", description=(
        "A registered model name (mnist-cnn, mnist-cnn-wide: built with the shards' class "
        "count) or an import path `package.module:callable` (the use case's folder on "
        "PYTHONPATH), called with `model_args` and returning a torch.nn.Module."))
    model_args: dict[str, Any] = Field(default_factory=dict, description=(
        "Keyword arguments for an import-path `model:` (callable(**model_args)); must be empty "
        "for a registered name."))
    task: Literal["classification", "regression"] = Field("classification", description=(
        "classification: targets are class numbers, the model gives one score per class; "
        "regression: targets are values of the model's output shape (required in the "
        "shards)."))
    loss: str | None = Field(None, description=(
        "cross_entropy, mse, l1, huber, or an import path to fn(pred, target) -> scalar tensor "
        "(batch mean) or to a loss class; default cross_entropy (classification) or mse "
        "(regression)."))
    metrics: list[str] | None = Field(None, description=(
        "Evaluation metrics, logged per epoch as val_<name> and at the end as test_<name>: "
        "accuracy (classification), rmse, mae, r2 (regression), or import paths to "
        "fn(pred, target) -> float (logged under the function's name). Default: [accuracy] "
        "or [rmse, mae, r2]."))
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    tracking: TrainTracking = Field(default_factory=TrainTracking)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    # (file, line) of each key as read, for errors raised after validation (model_path.py).
    _where: dict = PrivateAttr(default_factory=dict)

    def where(self, *path: str) -> tuple[str | None, int | None]:
        """(file, line) of a key, for an error about it found after loading."""
        doc = self._where.get("doc")
        return doc.where(path) if doc is not None else (None, None)

    @property
    def logged_metrics(self) -> list[str]:
        """The per-epoch metrics a run logs beside train_loss: val_loss and val_<metric>."""
        from itwinai_hpc.ml.metrics import metric_name

        return ["val_loss", *(f"val_{metric_name(m)}" for m in self.metrics or [])]

    @property
    def higher_is_better(self) -> bool:
        return self.registry.mode != "min"


def resolve_train(config: TrainConfig, doc: YamlDoc) -> TrainConfig:
    """Fill the defaults that depend on `task` (loss, metrics, registry.select_by and mode)
    and check what one field alone cannot: a metric or loss the task has not, an import path
    that is not one, `select_by` naming a metric that is never logged. Located UserErrors."""
    from itwinai_hpc.ml import losses, metrics
    from itwinai_hpc.ml.model_path import is_import_path

    config._where["doc"] = doc
    task = config.task

    def fail(message: str, *path) -> UserError:
        file, line = doc.where(path)
        return UserError(message, file=file, line=line, field=".".join(map(str, path)))

    if config.model_args and not is_import_path(config.model):
        raise fail(f"model_args are for a model given by import path (package.module:callable);"
                   f" {config.model!r} is a registered name", "model_args")
    if config.loss is None:
        config.loss = losses.DEFAULT_LOSS[task]
    elif config.loss not in losses.BUILTIN and not is_import_path(config.loss):
        raise fail(f"unknown loss {config.loss!r}: use {', '.join(losses.BUILTIN)} or an import "
                   "path package.module:callable", "loss")
    if config.metrics is None:
        config.metrics = list(metrics.DEFAULT_METRICS[task])
    for i, m in enumerate(config.metrics):
        if is_import_path(m):
            continue
        allowed = sorted(metrics.FOR_TASK[task])
        if m not in metrics.BUILTIN or m not in allowed:
            raise fail(f"{m!r} is not a metric of a {task}: use {', '.join(allowed)} or an "
                       "import path package.module:fn (fn(pred, target) -> float)", "metrics", i)
    names = [metrics.metric_name(m) for m in config.metrics]
    if len(set(names)) != len(names) or "loss" in names:
        raise fail(f"metric names must be distinct and not 'loss': {names}", "metrics")
    reg = config.registry
    chosen = reg.select_by is not None
    if reg.select_by is None:
        reg.select_by = f"val_{names[0]}" if names else "val_loss"
    elif reg.select_by not in config.logged_metrics:
        raise fail(f"{reg.select_by!r} is not logged per epoch; the metrics logged are "
                   f"{', '.join(config.logged_metrics)} (and train_loss; test_* only at the "
                   "end, after the best epoch is chosen)", "registry", "select_by")
    custom = {f"val_{names[i]}": i for i, m in enumerate(config.metrics) if is_import_path(m)}
    if reg.mode is None and reg.select_by in custom:      # no kind to say which way is better
        file, line = doc.where(("registry", "select_by") if chosen
                               else ("metrics", custom[reg.select_by]))
        raise UserError(f"which way {reg.select_by!r} is better is unknown for a metric given "
                        "by import path: set registry.mode to min (lower is better, an error) "
                        "or max (higher is better, a score)", file=file, line=line,
                        field="registry.mode")
    if reg.mode is None:
        reg.mode = metrics.default_mode(reg.select_by)   # type: ignore[assignment]
    return config


class OutputSection(Section):
    format: Literal["csv"] = "csv"


class InferenceTracking(Section):
    experiment: str = "itwinai-hpc-inference"
    system_metrics_every_s: NonNegative = 2


class InferenceConfig(Section):
    """What `itwinai-hpc predict` does (use-cases/mnist/mnist-ai-inference.yml documents it)."""

    dataset: str = "mnist"
    model_uri: str = ""
    batch_size: Positive = 1000
    split: Split = "test"
    output: OutputSection = Field(default_factory=OutputSection)
    tracking: InferenceTracking = Field(default_factory=InferenceTracking)


C = TypeVar("C", bound=BaseModel)


def load_config(kind: type[C], path: str | os.PathLike | None,
                overrides: list[str] | tuple[str, ...] = ()) -> C:
    """`kind` from a YAML file (the defaults when `path` is None or the file is empty) with
    `--set KEY=VALUE` overrides applied; every problem is a UserError naming file, line and key
    (or the flag). The loader is core/validation.py's, shared with the preprocessing config."""
    return _checked(kind, read_config(path, overrides))


def make_config(kind: type[C], values: dict[str, Any] | None = None) -> C:
    """`kind` from a mapping (tests, benchmarks, Python callers), validated like a file."""
    return _checked(kind, YamlDoc(file="<config>", data=values or {}))


def _checked(kind: type[C], doc: YamlDoc) -> C:
    config = validate_model(kind, doc)
    if isinstance(config, TrainConfig):
        resolve_train(config, doc)
    return config


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 2}} -> {"trainer.epochs": 2}, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
