"""`itwinai-hpc render`: the run folder it writes, pinned by golden files, linted, and safe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.errors import UserError
from itwinai_hpc.render import render_run
from itwinai_hpc.workflow import load_workflow

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
MNIST_TRAIN = ROOT / "use-cases/mnist/training-workflow.yml"
MNIST_INFER = ROOT / "use-cases/mnist/inference-workflow.yml"


def render_fixed(workflow: Path, overrides=(), run_dir="/runs/golden-run", **kw):
    """Render with a fixed run id, run folder and working directory, so the text is stable."""
    fixed = {"run_dir": run_dir, "run_id": "golden-run", "workdir": "/work/project"}
    loaded = load_workflow(workflow, list(overrides), builtins=fixed)
    return render_run(loaded, run_dir, "golden-run", workdir="/work/project",
                      command_line=f"itwinai-hpc render {workflow.name}", **kw)


def normalized(text: str) -> str:
    return text.replace(str(ROOT), "<repo>")


CASES = {
    "mnist-training": (MNIST_TRAIN, ()),
    "mnist-training-2-nodes-4-gpus": (MNIST_TRAIN, ("steps.train.resources.nodes=2",
                                                    "steps.train.resources.gpus-per-node=4",
                                                    "defaults.resources.partition=booster",
                                                    "defaults.resources.account=my-project")),
    "mnist-inference": (MNIST_INFER, ()),
}


@pytest.mark.parametrize("case", CASES)
def test_rendered_mnist_scripts_match_the_golden_files(case):
    workflow, overrides = CASES[case]
    run = render_fixed(workflow, overrides)
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in run.files.items():
            (folder / name).write_text(normalized(text))
    expected = sorted(p.name for p in folder.iterdir())
    assert sorted(run.files) == expected
    for name, text in run.files.items():
        assert normalized(text) == (folder / name).read_text(), \
            f"{case}/{name} differs from the golden file (UPDATE_GOLDEN=1 to accept a change)"


def test_render_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run1"
    assert main(["render", str(MNIST_TRAIN), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["01-preprocess.sbatch", "02-train.sbatch", "logs", "run.json",
                     "submit.sh", "workflow.yml"]
    manifest = json.loads((out / "run.json").read_text())
    assert [s["name"] for s in manifest["steps"]] == ["preprocess", "train"]
    assert manifest["steps"][1]["needs"] == ["preprocess"]
    assert all(s["state"] == "UNSUBMITTED" and s["job_id"] is None for s in manifest["steps"])
    assert str(out) in capsys.readouterr().out
    # the resolved workflow renders the same scripts again
    again = load_workflow(out / "workflow.yml")
    assert [s.name for s in again.workflow.steps] == ["preprocess", "train"]


def test_the_resolved_workflow_loads_again_to_the_same_steps(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: lit\nvars: {d: /data}\nsteps:\n"
                  "  - {name: a, command: 'echo $${HOME}', args: ['${d}/x', '$${N:-0}']}\n")
    out = tmp_path / "run"
    loaded = load_workflow(wf, builtins={"run_dir": str(out), "run_id": "r"})
    render_run(loaded, out, "r").write()
    again = load_workflow(out / "workflow.yml", builtins={"run_dir": str(out), "run_id": "r"})
    assert again.workflow.steps == loaded.workflow.steps
    assert again.workflow.steps[0].args == ["/data/x", "${N:-0}"]


def test_render_refuses_an_existing_run_folder_and_leaves_it_alone(tmp_path, capsys):
    out = tmp_path / "run1"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["render", str(MNIST_TRAIN), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_template_error_writes_nothing(tmp_path, capsys):
    mine = tmp_path / "templates"
    mine.mkdir()
    (mine / "header.j2").write_text("# {{ no_such_variable }}\n")
    out = tmp_path / "run1"
    assert main(["render", str(MNIST_TRAIN), "-o", str(out), "--templates", str(mine)]) == 2
    assert "template error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [mine]


def test_user_templates_replace_single_builtin_templates(tmp_path):
    mine = tmp_path / "templates"
    mine.mkdir()
    (mine / "header.j2").write_text("# site header for {{ job.name }}\n")
    run = render_fixed(MNIST_TRAIN, templates_dir=mine)
    script = run.files["02-train.sbatch"]
    assert script.startswith("#!/bin/bash\n# site header for train\n#SBATCH --job-name=")
    assert "torchrun_agent" in script          # the other templates are still the built-in ones


def test_torchrun_launch_follows_the_tested_recipe():
    script = render_fixed(MNIST_TRAIN, ["steps.train.resources.nodes=2",
                                        "steps.train.resources.gpus-per-node=4"]).files["02-train.sbatch"]
    assert 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "PORT=$((20000 + SLURM_JOB_ID % 10000))" in script
    assert '--nnodes="$SLURM_NNODES" --nproc-per-node=4' in script
    assert '--rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$SLURM_JOB_ID"' in script
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1" in script
    assert "#SBATCH --gpus-per-node=4" in script and "apptainer exec --nv" in script
    cpu = render_fixed(MNIST_TRAIN).files["02-train.sbatch"]
    assert "--nproc-per-node=1" in cpu and "--nv" not in cpu and "gpus-per-node" not in cpu


def test_submit_sh_chains_the_steps_with_afterok_and_kill_on_invalid_dep():
    text = render_fixed(MNIST_TRAIN).files["submit.sh"]
    assert "job_1=$(sbatch --parsable 01-preprocess.sbatch)" in text
    assert ('job_2=$(sbatch --parsable --kill-on-invalid-dep=yes '
            '--dependency=afterok:"$job_1" 02-train.sbatch)') in text


# ---- every rendered script is valid, lint-clean shell ---------------------------------------

def lint_cases(tmp_path: Path) -> dict[str, str]:
    scripts = {}
    for case, (workflow, overrides) in CASES.items():
        for name, text in render_fixed(workflow, overrides).files.items():
            if name.endswith((".sbatch", ".sh")):
                scripts[f"{case}/{name}"] = text
    variety = tmp_path / "variety.yml"
    variety.write_text(
        "name: variety\n"
        "defaults:\n  container: none\n"
        "steps:\n"
        "  - {name: shards, command: echo, args: [a], array: '0-3%2'}\n"
        "  - {name: tasks, command: hostname, launcher: srun, needs: [shards],\n"
        "     resources: {nodes: 2, ntasks-per-node: 2, extra-sbatch: [--exclusive]}}\n"
        "  - {name: ddp, command: python -m x, launcher: torchrun, nproc-per-node: 2,\n"
        "     needs: [shards, tasks], container: {image: i.sif, env: {A: 1}, options: [--cleanenv]},\n"
        "     requeue: {before-limit: 600}}\n"
        "  - {name: long, command: ./long.sh, requeue: {}, needs: [ddp]}\n"
        "  - {name: wide, command: ./wide.sh, launcher: srun, requeue: {grace: 60}, needs: [ddp]}\n")
    for name, text in render_fixed(variety).files.items():
        if name.endswith((".sbatch", ".sh")):
            scripts[f"variety/{name}"] = text
    return scripts


def test_every_rendered_script_passes_bash_n_and_shellcheck(tmp_path):
    assert shutil.which("shellcheck"), "shellcheck is required (apt-get install shellcheck)"
    files = []
    for label, text in lint_cases(tmp_path).items():
        path = tmp_path / label.replace("/", "__")
        path.write_text(text)
        files.append(path)
        p = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert p.returncode == 0, f"{label}: {p.stderr}"
    p = subprocess.run(["shellcheck", "--severity=style", *map(str, files)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


# ---- the CLI stays light --------------------------------------------------------------------

HEAVY = ("torch", "mlflow", "h5py")


@pytest.mark.parametrize("argv", [
    ["--help"], ["validate", "--help"], ["render", "--help"],
    ["validate", str(MNIST_TRAIN)], ["render", str(MNIST_TRAIN), "-o", "{tmp}/r"],
])
def test_validate_render_and_help_never_import_torch_or_mlflow(argv, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (
        "import sys\n"
        "from itwinai_hpc.cli import main\n"
        f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy, 'RC', rc)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY [] RC 0" in p.stdout, p.stdout + p.stderr


def test_every_command_has_help():
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "--help"], capture_output=True,
                       text=True)
    commands = [c for c in ("validate", "render", "submit", "status", "logs", "cancel", "resume",
                            "preprocess") if f"    {c}" in p.stdout]
    assert {"validate", "render"} <= set(commands)
    for c in commands:
        h = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", c, "--help"],
                           capture_output=True, text=True)
        assert h.returncode == 0 and "usage: itwinai-hpc " + c in h.stdout, c


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from itwinai_hpc import __version__
    assert capsys.readouterr().out.strip() == f"itwinai-hpc {__version__}"


def test_a_run_folder_path_that_sbatch_cannot_read_is_refused(tmp_path):
    with pytest.raises(UserError, match="cannot appear on an #SBATCH line"):
        render_fixed(MNIST_TRAIN, run_dir=str(tmp_path / "my run"))
