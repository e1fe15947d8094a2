"""`itwinai-hpc init NAME`: a use-case folder that validates, lints and runs at once (each
template, end to end on the local backend), and refusals that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.commands import init as init_cmd
from itwinai_hpc.commands.schema import schema_text
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ["classification", "regression", "script"]


def _init(capsys, *args: str) -> tuple[int, str]:
    rc = main(["init", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_writes_a_use_case_that_validates_and_lints(tmp_path, capsys, template):
    folder = tmp_path / "cases" / "demo"
    rc, out = _init(capsys, "demo", "--dir", str(folder), "--template", template)
    assert rc == 0, out
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    own = {"train.py", "predict.py"} if template == "script" else {"train.yml", "inference.yml"}
    assert {"workflow.yml", "preprocess.py", "demo/__init__.py",
            "demo/model.py", "README.md", "apptainer.def", "requirements.txt"} | own <= files
    assert main(["validate", str(folder / "workflow.yml")]) == 0, capsys.readouterr().err
    lint = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "--no-cache",
                           "--config", str(ROOT / "pyproject.toml"), str(folder)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    assert "write_shards(" in (folder / "preprocess.py").read_text()
    if template == "script":
        assert "from itwinai_hpc import job" in (folder / "train.py").read_text()
    else:
        train = (folder / "train.yml").read_text()
        assert "model: demo.model:Net" in train and f"task: {template}" in train
    recipe = (folder / "apptainer.def").read_text()
    assert "Bootstrap: localimage" in recipe and "From: container/itwinai-hpc.sif" in recipe
    assert f"{folder}/requirements.txt /opt/use-case/requirements.txt" in recipe
    assert "xarray" in (folder / "requirements.txt").read_text()
    assert f"apptainer build container/demo.sif {folder}/apptainer.def" in \
        (folder / "README.md").read_text()


def test_outside_a_checkout_the_schemas_are_written_beside_the_use_case(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert _init(capsys, "demo", "--dir", str(folder))[0] == 0
    first = (folder / "workflow.yml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema/workflow.schema.json"
    assert (folder / "train.yml").read_text().startswith(
        "# yaml-language-server: $schema=schema/train.schema.json\n")
    written = json.loads((folder / "schema" / "workflow.schema.json").read_text())
    assert written == json.loads(schema_text("workflow"))


def test_inside_a_checkout_the_yaml_files_point_at_its_docs_schema(capsys):
    folder = ROOT / "use-cases" / f"tmp_init_{os.getpid()}"
    try:
        assert _init(capsys, folder.name, "--dir", str(folder))[0] == 0
        first = (folder / "workflow.yml").read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../docs/schema/workflow.schema.json"
        assert (folder / first.split("=", 1)[1]).resolve() == \
            ROOT / "docs/schema/workflow.schema.json"
        assert not (folder / "schema").exists()
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    rc, out = _init(capsys, "mine", "--dir", str(folder))
    assert rc == 2
    assert f"error: {folder}: the folder exists and is not empty" in out
    assert "Traceback" not in out
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_an_empty_folder_is_filled(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert _init(capsys, "empty", "--dir", str(folder))[0] == 0
    assert (folder / "workflow.yml").is_file()


@pytest.mark.parametrize("name, why", [
    ("../escape", "is not a use-case name"),
    ("Upper", "is not a use-case name"),
    ("1st", "is not a use-case name"),
    ("a b", "is not a use-case name"),
    ("x" * 33, "is not a use-case name"),
    ("import", "is a Python keyword"),
    ("json", "is the name of a Python module that exists already"),
    ("torch", "is the name of a Python module that exists already"),
])
def test_a_name_that_is_not_a_safe_identifier_is_refused_with_nothing_written(
        tmp_path, capsys, monkeypatch, name, why):
    monkeypatch.chdir(tmp_path)
    rc, out = _init(capsys, name)
    assert rc == 2, out
    assert why in out and "NAME" in out and "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


def test_a_dir_a_recipe_cannot_name_is_refused(tmp_path, capsys):
    rc, out = _init(capsys, "demo", "--dir", str(tmp_path / "my case"))
    assert rc == 2 and "--dir" in out
    assert list(tmp_path.iterdir()) == []


def test_a_link_planted_at_the_temporary_folders_name_is_not_followed(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / f".demo.init-{os.getpid()}"      # the name init once used
    planted.symlink_to(elsewhere)
    folder = tmp_path / "demo"
    assert _init(capsys, "demo", "--dir", str(folder))[0] == 0
    assert list(elsewhere.iterdir()) == []
    assert not folder.is_symlink() and (folder / "workflow.yml").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask   # not the temporary folder's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name, "demo", "elsewhere"]


@pytest.mark.parametrize("kind", ["link to an empty folder", "dangling link", "parent a file"])
def test_a_dir_that_is_a_link_or_under_a_file_is_refused(tmp_path, capsys, kind):
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = tmp_path / "demo"
    if kind == "link to an empty folder":
        folder.symlink_to(empty)
    elif kind == "dangling link":
        folder.symlink_to(tmp_path / "gone")
    else:
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "sub" / "demo"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out = _init(capsys, "demo", "--dir", str(folder))
    assert rc == 2, out
    assert f"error: {folder}:" in out and "--dir" in out and "Traceback" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(empty.iterdir()) == []


def test_a_failure_while_writing_leaves_no_half_written_folder(tmp_path, capsys, monkeypatch):
    written = []
    real = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        if len(written) == 3:
            raise OSError(28, "No space left on device", str(self))
        written.append(self)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert _init(capsys, "demo", "--dir", str(tmp_path / "demo"))[0] == 1
    assert len(written) == 3 and all(str(tmp_path) in str(p) for p in written)
    assert list(tmp_path.iterdir()) == []                  # no target, no temporary folder


def test_the_scaffold_templates_ship_in_the_package():
    shipped = {p.name for p in init_cmd.SCAFFOLD.iterdir()}
    for template in TEMPLATES:
        assert set(init_cmd.files_for(template, "pkg").values()) <= shipped


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_runs_end_to_end_on_the_local_backend(run_folder, capsys, monkeypatch,
                                                             template):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # a registry the user's shell still points at (another project's): the workflow's own
    # store must win in every step, the plain-mlflow predict.py of `script` included
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"file:{run_folder / 'elsewhere'}")
    assert _init(capsys, "demo", "--template", template)[0] == 0
    rc = main(["submit", "use-cases/demo/workflow.yml", "--backend", "local", "--wait",
               "--set", "defaults.container=none", "--set", "vars.epochs=1"])
    run = RunManifest.load(find_run(None))
    logs = {s: Path(run.step(s).log).read_text() for s in ("preprocess", "train", "predict")
            if Path(run.step(s).log).is_file()}
    assert rc == 0, capsys.readouterr().err + "\n".join(v[-2000:] for v in logs.values())
    assert "registered demo version 1" in logs["train"]
    predictions = "predictions.csv" if template == "classification" else "predictions.h5"
    assert (Path(run.run_dir) / predictions).is_file()


@pytest.mark.slow
def test_the_script_templates_train_py_stops_on_the_stop_file_and_resumes_where_it_stopped(
        tmp_path, capsys):
    folder = tmp_path / "demo"
    assert _init(capsys, "demo", "--dir", str(folder), "--template", "script")[0] == 0
    env = {**os.environ, "PYTHONPATH": str(folder), "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
           "ITWINAI_HPC_STOP_FILE": str(tmp_path / "train.STOP")}
    for var in ("ITWINAI_HPC_RUN_DIR", "ITWINAI_HPC_STEP", "RANK", "WORLD_SIZE"):
        env.pop(var, None)

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(folder / script), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=240)

    assert run("preprocess.py", "--output", "shards", "--samples", "200").returncode == 0
    (tmp_path / "train.STOP").touch()
    stopped = run("train.py", "--data", "shards", "--epochs", "2", "--stop-check-every", "1")
    assert stopped.returncode == 75, stopped.stderr[-2000:]     # "stopped early, resume me"
    assert (tmp_path / "checkpoints").is_dir()
    assert "registered" not in stopped.stdout
    assert not (tmp_path / "train.STOP").exists()           # job.exit_stopped served it
    resumed = run("train.py", "--data", "shards", "--epochs", "2", "--stop-check-every", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch 1, batch 1" in resumed.stdout
    assert "epoch 1/2" in resumed.stdout and "epoch 2/2" in resumed.stdout
    assert "registered demo version 1 as @champion" in resumed.stdout
