"""`itwinai-hpc doctor` for real: in the Apptainer stand-in (tests/apptainer_sandbox, a bubblewrap
sandbox that shows only the image, the default binds and the --binds) on the local backend, and
on the 2-node SLURM test cluster (gloo, no container). Each job lasts seconds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import test_containers

from itwinai_hpc.cli import main

# test_containers' fixtures: the stand-in first on PATH, a folder outside the default binds
# (place) and the stand-in's image of this venv (image)
image, place = test_containers.image, test_containers.place
pytestmark = pytest.mark.slow          # a torchrun job each: 20-60 s


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def data_folder(folder: Path) -> int:
    """Two files (one in a subfolder) of random bytes; their total size."""
    (folder / "part").mkdir(parents=True)
    (folder / "a.h5").write_bytes(os.urandom(3 * 2**20))
    (folder / "part" / "b.h5").write_bytes(os.urandom(2**20 + 17))
    return 4 * 2**20 + 17


def container_workflow(place: Path, image: Path, binds: str, runtime: str = "apptainer") -> Path:
    """The training step of a workflow whose data and MLflow store lie outside the working
    directory (and outside every default bind): only container.binds shows them."""
    wf = place / "workflow" / "wf.yml"
    wf.write_text(f"""
name: boxed
vars: {{data: {place}/data, store: {place}/store}}
defaults:
  container: {{runtime: {runtime}, image: {image}, binds: {binds}}}
  env:
    MLFLOW_TRACKING_URI: file:${{store}}/mlruns
    MLFLOW_ALLOW_FILE_STORE: "true"
steps:
  - {{name: prep, command: "false"}}
  - name: train
    needs: [prep]
    launcher: torchrun
    nproc-per-node: 2
    command: itwinai-hpc train
    args: [--data, "${{data}}", --epochs, 1]
""")
    return wf


def doctor_json(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["doctor", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_doctor_passes_inside_the_container_and_leaves_an_mlflow_run(place, image, capsys,
                                                                     monkeypatch):
    size = data_folder(place / "data")
    (place / "store").mkdir()
    wf = container_workflow(place, image, '["${data}", "${store}"]')
    rc, report = doctor_json(capsys, str(wf), "--backend", "local", "--allreduce-mb", "2")
    checks = by_name(report)
    assert rc == 0, report
    assert {n: c["status"] for n, c in checks.items()} == {
        "ranks": "pass", "gpus": "pass", "allreduce": "pass", "data": "pass", "mlflow": "pass"}
    # the training step alone (not the failing step it needs), in its container, 2 processes
    assert report["step"] == "train" and report["processes_per_node"] == 2
    assert report["container"] == f"apptainer {image}"
    script = (Path(report["run_dir"]) / "01-train.sh").read_text()
    assert f"apptainer exec --bind {place / 'workflow'}:{place / 'workflow'}:ro" in script
    assert "python3 -m itwinai_hpc.ml.doctor --allreduce-mb 2.0 --data" in script
    (node, count), = checks["ranks"]["details"]["ranks_per_node"].items()
    assert count == 2
    ar = checks["allreduce"]["details"]
    assert ar["backend"] == "gloo" and ar["world_size"] == 2 and ar["bytes"] == 2 * 2**20
    assert ar["busbw_gb_s"] == pytest.approx(ar["bytes"] / ar["seconds"] / 1e9)  # 2(n-1)/n = 1
    (read,) = checks["data"]["details"]["per_node"]
    assert (read["bytes"], read["files"]) == (size, 2)     # every byte of both files, once
    # the MLflow run is really in the store, with what the job measured
    from mlflow import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file:{place}/store/mlruns")
    run = client.get_run(checks["mlflow"]["details"]["run_id"])
    assert run.data.metrics["world_size"] == 2
    assert run.data.tags["itwinai_hpc.run_id"] == report["run_id"]
    assert Path(report["facts"]).is_file()


def test_a_data_folder_the_container_does_not_bind_fails_with_the_bind_to_add(place, image,
                                                                              capsys):
    # (with the stand-in's other name: the lines singularity gets are apptainer's)
    data_folder(place / "data")
    (place / "store").mkdir()
    wf = container_workflow(place, image, '["${store}"]', runtime="singularity")
    rc, report = doctor_json(capsys, str(wf), "--backend", "local", "--allreduce-mb", "1")
    checks = by_name(report)
    assert rc == 1 and report["failed"] == 1
    assert report["container"] == f"singularity {image}"
    assert checks["data"]["status"] == "fail"
    assert checks["data"]["summary"] == (f"{place}/data is not there inside the job on "
                                         f"{checks['data']['details']['per_node'][0]['node']}, "
                                         "though it exists here")
    assert any("container.binds" in a for a in checks["data"]["advice"])
    assert checks["mlflow"]["status"] == "pass"


@pytest.mark.slurm
def test_doctor_passes_on_two_slurm_nodes(slurm_cluster, run_folder, capsys, monkeypatch):
    # The default smoke job (no WORKFLOW): one torchrun step, here on both nodes, no container.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    data_folder(run_folder / "data")
    capsys.readouterr()
    rc = main(["doctor", "--backend", "slurm", "--nodes", "2", "--allreduce-mb", "16",
               "--data", str(run_folder / "data"), "--set", "defaults.container=none",
               "--timeout", "240"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  PASS")}
    assert set(lines) == {"ranks", "gpus", "allreduce", "data", "mlflow"}, out
    assert "2 of 2 ranks started, 1 per node on node" in lines["ranks"]
    assert "node1 [" in lines["ranks"] and "node2 [" in lines["ranks"]
    assert "(SLURM_JOB_NODELIST node[1-2])" in lines["ranks"]
    assert "16 MiB over 2 rank(s) on 2 node(s): bus bandwidth" in lines["allreduce"]
    assert "on gloo over TCP" in lines["allreduce"]
    assert f"file(s) of {run_folder}/data at" in lines["data"]
    assert f"to file:{run_folder}/mlruns and read it back" in lines["mlflow"]
    assert out.rstrip().splitlines()[-1].startswith("5 passed, 0 warned, 0 failed")
    assert "(backend slurm, job " in out and "COMPLETED): 2 node(s) x 1 process(es)" in out
