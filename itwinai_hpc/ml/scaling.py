"""A scaling study's report, read from MLflow: the finished training runs of one sweep (one run
per world size), their throughput, speed-up and efficiency as JSON, a figure, a terminal table
and an MLflow run of its own. Reads runs; never launches, never asks a scheduler.

Imports mlflow lazily; `itwinai-hpc scaling` (the CLI) calls scaling_report and format_table.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from pathlib import Path

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.sweep import STEADY_FROM_EPOCHS, steady_median

THROUGHPUT = ("samples_per_s", "epoch_time_s")
METRIC_NOTES = (
    f"samples_per_s (training samples of all processes per second of an epoch's training "
    f"loop) and epoch_time_s (training and validation) are each run's median over its epochs, "
    f"leaving out the first epoch when a run has {STEADY_FROM_EPOCHS} or more: it pays "
    f"warm-up. speed_up = samples_per_s / the baseline's (the smallest world size; the median "
    f"of its runs where there are several); efficiency = speed_up / (world_size / the "
    f"baseline's world size): 1.0 is perfect scaling.")
TABLE_COLUMNS = (("nodes", "nnodes", "{}"), ("world size", "world_size", "{}"),
                 ("samples/s", "samples_per_s", "{:.1f}"),
                 ("epoch time s", "epoch_time_s", "{:.2f}"),
                 ("speed-up", "speed_up", "{:.2f}"), ("efficiency", "efficiency", "{:.2f}"))


def epoch_values(client, run_id: str, key: str) -> list[float]:
    """`key`'s value per epoch (step) of a run, by epoch; an epoch logged twice (repeated after
    a resume) counts with its last value."""
    last: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        last[m.step] = m.value
    return [last[step] for step in sorted(last)]


def run_throughput(client, run_id: str) -> tuple[float | None, float | None]:
    """(samples_per_s, epoch_time_s) of a training run: steady_median of each."""
    return tuple(steady_median(epoch_values(client, run_id, key)) for key in THROUGHPUT)


def scaling_report(tracking_uri: str, sweep_id: str, out_dir: str | os.PathLike,
                   log_to_mlflow: bool = True) -> dict:
    """The scaling report of sweep `sweep_id`: a JSON-ready dict {sweep_id, tracking_uri,
    metric_notes, baseline, rows, skipped[, mlflow_run_id]}, written to OUT_DIR/scaling.json
    with the figure OUT_DIR/scaling.png. Rows (one per finished training run tagged
    itwinai_hpc.sweep_id, in any experiment) sorted by world size: run_id, run_name, nnodes,
    world_size, gpus_per_node (None unless the run used GPUs), epochs, samples_per_s,
    epoch_time_s, speed_up, efficiency, matrix. With `log_to_mlflow`, the report is also an
    MLflow run `scaling SWEEP_ID` (tags itwinai_hpc.sweep_id, itwinai_hpc.kind=scaling) in the
    runs' experiment: both files as artifacts, each row's metrics at step = world size.
    No such run is a UserError naming the sweep id and the store."""
    from mlflow import MlflowClient

    from itwinai_hpc.ml.tracking import store_uri

    uri = store_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs, skipped = sweep_runs(client, sweep_id)
    if not runs:
        also = (f"; runs tagged with it that are not finished training runs: "
                f"{', '.join(s['run_id'] + ' (' + s['reason'] + ')' for s in skipped)}"
                if skipped else "")
        raise UserError(f"no finished training run tagged itwinai_hpc.sweep_id={sweep_id!r} in "
                        f"{uri} (all experiments searched){also}")
    rows = sorted((run_row(client, run) for run in runs),
                  key=lambda r: (r["world_size"], r["nnodes"], r["run_id"]))
    smallest = rows[0]["world_size"]
    baseline = {"world_size": smallest, "samples_per_s": statistics.median(
        r["samples_per_s"] for r in rows if r["world_size"] == smallest)}
    for r in rows:
        r["speed_up"] = r["samples_per_s"] / baseline["samples_per_s"]
        r["efficiency"] = r["speed_up"] / (r["world_size"] / smallest)
    report = {"sweep_id": sweep_id, "tracking_uri": uri, "metric_notes": METRIC_NOTES,
              "baseline": baseline, "rows": rows, "skipped": skipped}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_figure(report, out / "scaling.png"), out / "scaling.json"]
    if not log_to_mlflow:
        atomic.write_text(files[1], json.dumps(report, indent=2) + "\n")
        return report
    experiment = Counter(run.info.experiment_id for run in runs).most_common(1)[0][0]
    run_id = report["mlflow_run_id"] = client.create_run(
        experiment, run_name=f"scaling {sweep_id}",
        tags={"itwinai_hpc.sweep_id": sweep_id, "itwinai_hpc.kind": "scaling",
              "mlflow.note.content": f"```\n{format_table(report)}\n```\n\n{METRIC_NOTES}"}
    ).info.run_id
    status = "FAILED"
    try:
        atomic.write_text(files[1], json.dumps(report, indent=2) + "\n")
        log_report(client, run_id, rows, files)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return report


def sweep_runs(client, sweep_id: str) -> tuple[list, list[dict]]:
    """The finished training runs tagged with `sweep_id` in every experiment, and the other
    runs so tagged, each with why it is left out (not finished, no throughput logged). The
    report's own runs (itwinai_hpc.kind=scaling) are neither."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in _pages(client.search_experiments,
                                                    view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return [], []
    quote = '"' if "'" in sweep_id else "'"
    runs = _pages(client.search_runs, experiment_ids=experiments,
                  filter_string=f"tags.`itwinai_hpc.sweep_id` = {quote}{sweep_id}{quote}")
    found, skipped = [], []
    for run in runs:
        tags = run.data.tags
        if tags.get("itwinai_hpc.sweep_id") != sweep_id or \
                tags.get("itwinai_hpc.kind") == "scaling":
            continue
        if run.info.status != "FINISHED":
            skipped.append({"run_id": run.info.run_id, "reason": run.info.status.lower()})
        elif not run.data.metrics.get("samples_per_s"):
            skipped.append({"run_id": run.info.run_id, "reason": "no samples_per_s logged"})
        else:
            found.append(run)
    return found, skipped


def run_row(client, run) -> dict:
    """One run's row (speed_up and efficiency are added once the baseline is known)."""
    tags, params = run.data.tags, run.data.params
    samples_per_s, epoch_time_s = run_throughput(client, run.info.run_id)
    nnodes = tags.get("itwinai_hpc.nnodes") or tags.get("slurm.nnodes") or \
        params.get("slurm_nnodes") or "1"
    gpus = tags.get("itwinai_hpc.gpus_per_node")
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "nnodes": int(nnodes),
            "world_size": int(tags.get("itwinai_hpc.world_size")
                              or params.get("world_size") or 1),
            "gpus_per_node": int(gpus) if gpus else None,
            "epochs": len(epoch_values(client, run.info.run_id, "samples_per_s")),
            "samples_per_s": samples_per_s, "epoch_time_s": epoch_time_s,
            "matrix": {k[len("matrix."):]: v for k, v in tags.items()
                       if k.startswith("matrix.")}}


def write_figure(report: dict, path: Path) -> Path:
    from itwinai_hpc.ml.figures import scaling_figure

    fig = scaling_figure(report["rows"], report["baseline"],
                         f"scaling of sweep {report['sweep_id']}")
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def log_report(client, run_id: str, rows: list[dict], files: list[Path]) -> None:
    """Each row's metrics at step = its world size (MLflow's charts then plot them against
    it), and the report's files as artifacts."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric(key, float(row[key]), now, row["world_size"]) for row in rows
        for key in ("samples_per_s", "epoch_time_s", "speed_up", "efficiency")
        if row[key] is not None])
    for path in files:
        client.log_artifact(run_id, str(path))


def format_table(report: dict) -> str:
    """The report as a terminal table: nodes, world size, samples/s, epoch time s, speed-up,
    efficiency, one line per run."""
    header = [name for name, _, _ in TABLE_COLUMNS]
    lines = [[("-" if row[key] is None else fmt.format(row[key]))
              for _, key, fmt in TABLE_COLUMNS] for row in report["rows"]]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths))
                     for line in [header, *lines])


def _pages(search, **kw) -> list:
    """Every result of an MLflow search call, over all its pages."""
    found, token = [], None
    while True:
        page = search(**kw, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found
