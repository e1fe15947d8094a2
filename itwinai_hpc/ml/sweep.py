"""One task of a parameter sweep as the ML steps see it: which sweep and task this process is
(from the ITWINAI_HPC_SWEEP* variables the job script exports), its MLflow tags, and the result
file it leaves for `status` (which reads it without mlflow or torch). Pure standard library;
nothing here asks a scheduler.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import itwinai_hpc.run.layout as layout
from itwinai_hpc.core import atomic, job_env
from itwinai_hpc.core.errors import UserError

SWEEP, SWEEP_ID, SWEEP_TASK, MATRIX = job_env.SWEEP, job_env.SWEEP_ID, job_env.SWEEP_TASK, \
    job_env.MATRIX
# MLflow's rule for tag keys; a matrix key becomes the tag matrix.KEY.
TAG_KEY = re.compile(r"^[\w\-. /]+$")
# Epoch throughput: the first epoch pays warm-up (allocations, caches, compilation), so with
# this many epochs or more it is left out of the median.
STEADY_FROM_EPOCHS = 3


@dataclass(frozen=True)
class SweepTask:
    """This process's place in a sweep: the sweep's name (the step as written), its id
    (layout.sweep_id: RUN_ID.SWEEP), the task's index and the task's matrix values."""

    sweep: str
    sweep_id: str
    task: int
    matrix: dict[str, str]

    @classmethod
    def from_env(cls, env=os.environ) -> SweepTask | None:
        """The sweep task the environment describes; None when ITWINAI_HPC_SWEEP is unset (not
        a sweep). A malformed variable is a UserError naming it."""
        sweep = env.get(SWEEP)
        if not sweep:
            return None
        task = env.get(SWEEP_TASK, "")
        if not task.isdigit():
            raise UserError(f"expected the task's index (0, 1, ...), got {task!r}",
                            field=SWEEP_TASK)
        sweep_id = env.get(SWEEP_ID) or (layout.sweep_id(env[job_env.RUN_ID], sweep)
                                         if env.get(job_env.RUN_ID) else sweep)
        return cls(sweep, sweep_id, int(task), parse_matrix(env.get(MATRIX) or "{}"))

    def tags(self) -> dict[str, str]:
        """MLflow tags: itwinai_hpc.sweep_id, .sweep, .sweep_task and matrix.KEY per value."""
        return {"itwinai_hpc.sweep_id": self.sweep_id, "itwinai_hpc.sweep": self.sweep,
                "itwinai_hpc.sweep_task": str(self.task),
                **{f"matrix.{k}": v for k, v in self.matrix.items()}}

    def result_file(self, run_dir: str | os.PathLike) -> Path:
        return Path(layout.sweep_result(str(run_dir), self.sweep, str(self.task)))


def parse_matrix(text: str) -> dict[str, str]:
    """ITWINAI_HPC_MATRIX: a JSON object of scalars ({"lr": "0.01", "batch-size": "64"}), as
    key -> string (numbers as JSON writes them, booleans true/false)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"not JSON ({e}): {text!r}; expected an object such as "
                        '{"lr": "0.01"}', field=MATRIX) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object of the task's values, got {text!r}",
                        field=MATRIX)
    matrix = {}
    for key, value in data.items():
        if not TAG_KEY.match(key):
            raise UserError(f"key {key!r}: use letters, digits, _ - . / and spaces (it becomes "
                            f"the MLflow tag matrix.{key})", field=MATRIX)
        if value is None or isinstance(value, (dict, list)):
            raise UserError(f"{key}: expected a string, number or boolean, got "
                            f"{json.dumps(value)}", field=MATRIX)
        matrix[key] = value if isinstance(value, str) else json.dumps(value)
    return matrix


def steady_median(per_epoch: list[float]) -> float | None:
    """The median of a per-epoch value (throughput, epoch time), leaving out the first epoch
    when there are STEADY_FROM_EPOCHS or more; None without epochs."""
    values = per_epoch[1:] if len(per_epoch) >= STEADY_FROM_EPOCHS else per_epoch
    return statistics.median(values) if values else None


@dataclass
class SweepResult:
    """What one task of a sweep achieved: `sweeps/SWEEP/TASK.json` in the run folder
    (layout.sweep_result), written atomically by rank 0 once training registered its model.

    JSON keys, all always present:
      task (int), step (ITWINAI_HPC_STEP, e.g. train or train-1), matrix ({key: string}),
      metric (what the registry compares, e.g. val_accuracy), value (float: this task's best),
      higher_is_better (true), mlflow_run_id, experiment, tracking_uri, model_name,
      model_version (string or null), champion (bool: the task's version took the alias when
      it registered; a later task may have taken it since), samples_per_s and epoch_time_s
      (floats or null: steady_median of the epochs), nnodes, world_size (ints),
      finished_at (ISO 8601, UTC).
    """

    task: int
    step: str | None
    matrix: dict[str, str]
    metric: str
    value: float
    higher_is_better: bool
    mlflow_run_id: str
    experiment: str
    tracking_uri: str
    model_name: str
    model_version: str | None
    champion: bool
    samples_per_s: float | None
    epoch_time_s: float | None
    nnodes: int
    world_size: int
    finished_at: str = ""

    def write(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (status never reads half a file); sets finished_at."""
        self.finished_at = self.finished_at or datetime.now(timezone.utc).isoformat(
            timespec="seconds")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_text(path, json.dumps(asdict(self), indent=2) + "\n")
