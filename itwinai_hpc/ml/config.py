"""The train and inference configs (YAML) as typed pydantic models, validated with the YAML's
line numbers by itwinai_hpc.core.validation, so a bad key reads `FILE:LINE: field: message` exactly
as a bad workflow does. Reads a file; imports no torch or mlflow.

Every key has a default; an unknown key, a wrong type or a value out of range is an error that
names the file, the line and the key, with the valid keys or choices.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from itwinai_hpc.core.config_file import read_config
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
    select_by: Literal["val_accuracy"] = "val_accuracy"


class TrainConfig(Section):
    """What `itwinai-hpc train` does (use-cases/mnist/mnist-ai-train.yml documents each key)."""

    dataset: str = "mnist"
    model: str = "mnist-cnn"
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    tracking: TrainTracking = Field(default_factory=TrainTracking)
    registry: RegistrySection = Field(default_factory=RegistrySection)


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
    return validate_model(kind, read_config(path, overrides))


def make_config(kind: type[C], values: dict[str, Any] | None = None) -> C:
    """`kind` from a mapping (tests, benchmarks, Python callers), validated like a file."""
    return validate_model(kind, YamlDoc(file="<config>", data=values or {}))


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 2}} -> {"trainer.epochs": 2}, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
