"""The run folder is the whole request: `render` writes it once, any backend submits it from
wherever it lies, reading only the folder (run.json's plan and the rendered scripts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.ops import operations
from itwinai_hpc.render.folder import render_run
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.workflow.load import load_workflow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "itwinai_hpc"

# Each step writes where it ran (its run folder, as the job saw it) and under which backend.
WORKFLOW = """\
name: handover
defaults: {container: none, resources: {time: "00:05:00"}}
steps:
  - name: a
    command: echo "$ITWINAI_HPC_RUN_DIR $ITWINAI_HPC_BACKEND" > "$ITWINAI_HPC_RUN_DIR/a.where"
  - name: b
    needs: [a]
    command: cp "$ITWINAI_HPC_RUN_DIR/a.where" "$ITWINAI_HPC_RUN_DIR/b.where"
"""


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("backend", ["local", "submitit-local", "slurm", "submitit-slurm"])
def test_a_rendered_folder_copied_elsewhere_is_submitted_by_each_backend(backend, tmp_path,
                                                                           monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    name, _, cluster = backend.partition("-")
    if backend.endswith("slurm"):
        env["SLURM_CONF"] = request.getfixturevalue("slurm_cluster").conf
    if name == "submitit":
        env["ITWINAI_HPC_SUBMITIT_CLUSTER"] = cluster
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    original = tmp_path / "rendered-here"
    p = cli("render", str(workflow), "-o", str(original), env=env)
    assert p.returncode == 0, p.stderr
    copy = tmp_path / "elsewhere" / "the-copy"
    shutil.copytree(original, copy.parent / copy.name)
    # Neither the workflow file nor the folder it was rendered into is needed any more.
    shutil.rmtree(original)
    workflow.unlink()

    p = cli("submit", str(copy), "--backend", name, "--wait", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (copy / "a.where").read_text().split() == [str(copy), name]
    assert (copy / "b.where").read_text() == (copy / "a.where").read_text()
    manifest = RunManifest.load(copy)
    assert manifest.backend == name and manifest.run_dir == str(copy)
    assert [s.state for s in manifest.steps] == ["COMPLETED", "COMPLETED"]
    for step in manifest.steps:
        logs = operations.backend_for(manifest).log_files(manifest, step)
        assert logs and all(f.is_relative_to(copy) and f.exists() for f in logs), logs
    assert not original.exists()


def test_a_run_folder_is_submitted_once_then_resumed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    out = tmp_path / "run"
    assert main(["render", str(workflow), "-o", str(out)]) == 0
    assert main(["submit", str(out), "--backend", "local", "--wait"]) == 0
    capsys.readouterr()
    assert main(["submit", str(out), "--backend", "local"]) == 2
    err = capsys.readouterr().err
    assert "was submitted already (backend local)" in err and "itwinai-hpc resume" in err
    assert "Traceback" not in err


def test_submit_of_a_folder_refuses_options_that_would_change_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    out = tmp_path / "run"
    assert main(["render", str(workflow), "-o", str(out)]) == 0
    before = (out / "run.json").read_text()
    assert main(["submit", str(out), "--backend", "local", "--set", "steps.a.command=x"]) == 2
    assert "--set cannot change a run folder that is already rendered" in capsys.readouterr().err
    assert (out / "run.json").read_text() == before
    assert main(["submit", str(tmp_path), "--backend", "local"]) == 2
    assert "not a run folder (no run.json)" in capsys.readouterr().err


def test_submit_accepts_the_workflow_as_dash_f_like_itwinais_run_workflow(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    assert main(["submit", "-f", str(workflow), "--backend", "local", "-o", "r", "--wait"]) == 0
    assert (tmp_path / "r" / "b.where").exists()
    assert main(["validate", "-f", str(workflow)]) == 0
    assert main(["validate", str(workflow), "-f", str(workflow)]) == 2
    assert "give the workflow once" in capsys.readouterr().err


def test_submit_local_parses_the_workflow_once_and_plans_it_once(tmp_path, monkeypatch):
    """Before the plan travelled in run.json: three YAML parses and two plans per submit."""
    import itwinai_hpc.core.yamlsrc
    import itwinai_hpc.render.plan
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    calls = {"parse_yaml": 0, "plan": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            # the workflow file's parses (site profiles are YAML files too)
            if name != "parse_yaml" or args[1] == str(workflow):
                calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for name, original in (("parse_yaml", itwinai_hpc.core.yamlsrc.parse_yaml),
                           ("plan", itwinai_hpc.render.plan.plan)):
        for module in [m for k, m in sys.modules.items() if k.startswith("itwinai_hpc")]:
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, counting(name, original))
    assert main(["submit", str(workflow), "--backend", "local", "-o", "r"]) == 0
    assert calls == {"parse_yaml": 1, "plan": 1}
    assert operations.wait(RunManifest.load(tmp_path / "r"), interval=0.2, timeout=60) == 0


def test_a_workflow_loaded_only_for_checking_cannot_be_rendered(tmp_path):
    workflow = tmp_path / "wf.yml"
    workflow.write_text("name: w\nsteps:\n  - {name: a, command: 'echo ${run_dir}'}\n")
    with pytest.raises(ValueError, match="loaded for checking only"):
        render_run(load_workflow(workflow))


# ---- who may import whom ---------------------------------------------------------------------

# Which folder may import which is tests/test_layers.py's; here: what really gets loaded.
ORCHESTRATION_ONLY = ("itwinai_hpc.workflow", "itwinai_hpc.render")


def test_status_and_the_backends_run_without_loading_workflow_modules():
    code = ("import sys\n"
            "import itwinai_hpc.ops.operations, itwinai_hpc.backends.slurm.backend,"
            " itwinai_hpc.backends.local.backend,"
            " itwinai_hpc.backends.local.runner, itwinai_hpc.backends.submitit.backend,"
            " itwinai_hpc.ops.status_view, itwinai_hpc.ops.logs\n"
            f"print(sorted(m for m in sys.modules if m.startswith({ORCHESTRATION_ONLY!r})))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


# ---- run.json across versions ----------------------------------------------------------------

def rendered(tmp_path: Path) -> Path:
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    out = tmp_path / "run"
    assert main(["render", str(workflow), "-o", str(out)]) == 0
    return out


def test_a_manifest_with_fields_of_a_newer_minor_version_still_loads(tmp_path):
    out = rendered(tmp_path)
    data = json.loads((out / "run.json").read_text())
    data["from_the_future"] = {"x": 1}
    data["steps"][0]["plan"]["gpu_vendor"] = "amd"
    data["steps"][0]["new_field"] = 3
    (out / "run.json").write_text(json.dumps(data))
    manifest = RunManifest.load(out)
    assert [s.name for s in manifest.steps] == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    ('{"format": 2, "itwinai_hpc": "9.0", "steps": []}', "written by itwinai-hpc 9.0"),
    ("{not json", "unreadable run manifest"),
    ('["a list"]', "not a run manifest of itwinai-hpc"),
    ('{"format": 1, "steps": [{"name": "a"}]}', "not a run manifest of itwinai-hpc"),
])
def test_a_manifest_from_another_version_or_corrupt_is_a_clean_error(tmp_path, capsys, text,
                                                                      message):
    out = rendered(tmp_path)
    (out / "run.json").write_text(text)
    assert main(["status", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(out / "run.json") in err and "Traceback" not in err


@pytest.mark.parametrize("field, value, message", [
    ("job_id", 5, "step 'a': job_id is 5, expected str or null"),
    ("exit_code", "3", "step 'a': exit_code is '3', expected int or null"),
    ("exit_code", True, "step 'a': exit_code is True, expected int or null"),
    ("history", [12], "step 'a': history must list job ids as text"),
])
def test_a_hand_edited_step_record_of_the_wrong_type_is_named_not_a_traceback(
        tmp_path, capsys, field, value, message):
    out = rendered(tmp_path)
    data = json.loads((out / "run.json").read_text())
    data["steps"][0][field] = value
    (out / "run.json").write_text(json.dumps(data))
    for command in (["status", str(out)], ["status", "--json", str(out)], ["logs", str(out)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and str(out / "run.json") in err and "Traceback" not in err


REFUSABLE = """
name: refusable
defaults: {container: none}
steps:
  - name: a
    command: echo a
  - name: b
    needs: [a]
    command: bash -c 'test -e ok || exit 3'
"""


def test_a_refused_submit_or_resume_changes_nothing_and_can_be_run_again(tmp_path, monkeypatch,
                                                                        capsys):
    """A submit or resume refused before any job was queued (here: a step's script deleted;
    elsewhere sbatch missing) left run.json saying `backend: local` (so the folder could never
    be submitted again) or every step UNSUBMITTED (the failures and their job ids gone)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yml").write_text(REFUSABLE)
    run = tmp_path / "run"
    assert main(["render", "wf.yml", "-o", str(run)]) == 0
    script = next(run.glob("02-b.sh"))
    saved = script.read_bytes()
    manifest_file = run / "run.json"

    script.unlink()
    before = manifest_file.read_bytes()
    assert main(["submit", str(run), "--backend", "local"]) == 2
    assert "no local script" in capsys.readouterr().err
    assert manifest_file.read_bytes() == before
    script.write_bytes(saved)
    assert main(["submit", str(run), "--backend", "local"]) == 0
    assert operations.wait(RunManifest.load(run), interval=0.2, timeout=60) == 1
    assert RunManifest.load(run).step("b").state == "FAILED"

    script.unlink()
    before = manifest_file.read_bytes()
    assert main(["resume", str(run)]) == 2
    assert manifest_file.read_bytes() == before       # b still FAILED, with its job and exit
    script.write_bytes(saved)
    (tmp_path / "ok").touch()
    assert main(["resume", str(run)]) == 0
    assert operations.wait(RunManifest.load(run), interval=0.2, timeout=60) == 0
    assert [s.state for s in RunManifest.load(run).steps] == ["COMPLETED", "COMPLETED"]


def test_cancel_says_what_it_found_instead_of_claiming_every_step_finished(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yml").write_text(REFUSABLE)
    assert main(["render", "wf.yml", "-o", "run"]) == 0
    capsys.readouterr()
    assert main(["cancel", "run"]) == 0
    out = capsys.readouterr().out
    assert "nothing to cancel: run refusable-" in out and "was never submitted" in out
    assert main(["submit", "run", "--backend", "local", "--wait"]) == 1
    capsys.readouterr()
    assert main(["cancel", "run"]) == 0
    assert "no step of run refusable-" in capsys.readouterr().out


def test_an_empty_runs_variable_means_the_default_runs_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", "")
    (tmp_path / "wf.yml").write_text(REFUSABLE)
    assert main(["render", "wf.yml"]) == 0
    assert [p.parent.name for p in tmp_path.glob("*/run.json")] == []
    assert len(list((tmp_path / "runs").glob("refusable-*/run.json"))) == 1
