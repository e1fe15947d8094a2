"""`itwinai-hpc render`: the run folder it writes, pinned by golden files, linted, and safe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from golden_cases import CASES, GOLDEN, MNIST_TRAIN, normalized, render_fixed

from itwinai_hpc.cli import main
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.workflow.load import load_workflow


@pytest.mark.parametrize("case", CASES)
def test_rendered_mnist_scripts_match_the_golden_files(case):
    workflow, overrides, *profile = CASES[case]
    run = render_fixed(workflow, overrides, *profile)
    folder = GOLDEN / case
    expected = sorted(p.name for p in folder.iterdir())
    assert sorted(run.files) == expected
    for name, text in run.files.items():
        assert normalized(text) == (folder / name).read_text(), \
            f"{case}/{name} differs from the golden file; to accept the change, run " \
            "`.venv/bin/python tests/update_golden.py` and review the diff"


def test_render_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run1"
    assert main(["render", str(MNIST_TRAIN), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    # one render serves every backend: sbatch scripts and local scripts side by side
    assert names == ["01-preprocess.sbatch", "01-preprocess.sh", "02-train.sbatch", "02-train.sh",
                     "logs", "run.json", "submit.sh", "workflow.yml"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["format"] == 1
    assert [s["name"] for s in manifest["steps"]] == ["preprocess", "train"]
    train = manifest["steps"][1]["plan"]
    assert train["needs"] == ["preprocess"] and train["launcher"] == "torchrun"
    assert train["job_name"] == "mnist-training.train" and train["log_pattern"] == "%x-%j.out"
    assert train["resources"]["nodes"] == 1 and train["requeue"]["before_limit"] == 300
    assert train["container"]["image"].endswith("itwinai-hpc.sif")
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
    run = render_workflow(wf, run_dir=out, run_id="r")
    run.write()
    assert render_workflow(out / "workflow.yml", run_dir=out, run_id="r").plan == run.plan
    assert load_workflow(out / "workflow.yml").workflow.steps[0].args == ["/data/x", "${N:-0}"]


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
    (mine / "_header.j2").write_text("# {{ no_such_variable }}\n")
    out = tmp_path / "run1"
    assert main(["render", str(MNIST_TRAIN), "-o", str(out), "--templates", str(mine)]) == 2
    assert "template error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [mine]


def test_user_templates_replace_single_builtin_templates(tmp_path):
    mine = tmp_path / "templates"
    mine.mkdir()
    (mine / "_header.j2").write_text("# site header for {{ job.name }}\n")
    run = render_fixed(MNIST_TRAIN, templates_dir=mine)
    script = run.files["02-train.sbatch"]
    assert script.startswith("#!/bin/bash\n# site header for train\n#SBATCH --job-name=")
    assert "torchrun_agent" in script          # the other templates are still the built-in ones


def test_torchrun_launch_follows_the_tested_recipe():
    script = render_fixed(MNIST_TRAIN, ["steps.train.resources.nodes=2",
                                        "steps.train.resources.gpus-per-node=4"]).files["02-train.sbatch"]
    assert 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in script
    assert "PORT=$((20000 + SLURM_JOB_ID % 10000))" in script
    assert '--nnodes="$SLURM_NNODES" --nproc-per-node=4' in script
    assert '--rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT" --rdzv-id="$SLURM_JOB_ID"' in script
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1" in script
    assert "#SBATCH --gpus-per-node=4" in script and "apptainer exec --nv" in script
    cpu = render_fixed(MNIST_TRAIN).files["02-train.sbatch"]
    assert "--nproc-per-node=1" in cpu and "--nv" not in cpu and "gpus-per-node" not in cpu


def test_submit_sh_chains_the_steps_with_afterok_and_kill_on_invalid_dep():
    text = render_fixed(MNIST_TRAIN).files["submit.sh"]
    log = '--output="$log_dir/logs/%x-%j.out"'
    assert f"job_1=$(sbatch --parsable {log} 01-preprocess.sbatch)" in text
    assert (f'job_2=$(sbatch --parsable {log} --kill-on-invalid-dep=yes '
            '--dependency=afterok:"$job_1" 02-train.sbatch)') in text


# ---- every rendered script is valid, lint-clean shell ---------------------------------------

def lint_cases(tmp_path: Path) -> dict[str, str]:
    scripts = {}
    for case, (workflow, overrides, *profile) in CASES.items():
        for name, text in render_fixed(workflow, overrides, *profile).files.items():
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
        "     needs: [shards, tasks], container: {image: i.sif, env: {A: 1},"
        " options: [--cleanenv]},\n"
        "     requeue: {before-limit: 600}}\n"
        "  - {name: long, command: ./long.sh, requeue: {}, needs: [ddp]}\n"
        "  - {name: wide, command: ./wide.sh, launcher: srun, requeue: {grace: 60}, needs: [ddp]}\n"
        "  - name: site\n"
        "    needs: [ddp]\n"
        "    launcher: torchrun\n"
        "    command: python -m train\n"
        "    container: {image: i.sif, binds: [/usr/lib64/libcxi.so.1, /scratch/data]}\n"
        "    setup: ['module load Stages/2025', 'source /opt/venv/bin/activate']\n"
        "    node-setup: ['ulimit -c 0']\n"
        "    runtime-env: {MIOPEN_USER_DB_PATH: '/tmp/$USER-$SLURM_NODEID', PATH: '/x:$PATH'}\n"
        "    launch: {torchrun: python -m torch.distributed.run, rdzv-host: '{node}i',\n"
        "             torchrun-args: [--numa-binding=exclusive], srun-args: [--cpu-bind=none]}\n"
        "    resources: {nodes: 2, cpus-per-task: 16, gpus-per-node: 4, gpu-flag: gres}\n"
        "  - name: tasks2\n"
        "    needs: [site]\n"
        "    launcher: srun\n"
        "    command: ./t.sh\n"
        "    node-setup: ['export X=1']\n"
        "    runtime-env: {Y: '$${HOME}/y'}\n"
        "    launch: {srun-args: ['--mpi=pmix_v3'], rdzv-host: 'ib-{node}'}\n")
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


DOCUMENTED = {"validate", "render", "submit", "status", "logs", "cancel", "resume", "mlflow-ui",
              "preprocess", "export-idx", "train", "predict"}


def help_text(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0, argv
    return capsys.readouterr().out


def test_help_lists_every_command_in_its_group_and_each_has_its_own_help(capsys):
    import argparse

    from itwinai_hpc.cli import IN_JOB_COMMANDS, build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)                 # what the parser accepts, not a list to go stale
    assert DOCUMENTED <= commands
    text = help_text(capsys, ["--help"])
    login, _, in_job = text.partition("commands the job scripts run")
    listed = lambda part: {line.split()[0] for line in part.splitlines()  # noqa: E731
                           if line.startswith("  ") and line.split()}
    login, in_job = listed(login.partition("commands you type")[2]), \
        listed(in_job.partition("examples:")[0])
    assert login | in_job == commands and not login & in_job       # each listed, in one group
    assert in_job == commands & set(IN_JOB_COMMANDS)
    for c in sorted(commands):
        assert f"usage: itwinai-hpc {c}" in help_text(capsys, [c, "--help"]), c


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from itwinai_hpc import __version__
    assert capsys.readouterr().out.strip() == f"itwinai-hpc {__version__}"


def test_a_run_folder_path_that_sbatch_cannot_read_is_refused(tmp_path):
    with pytest.raises(UserError, match="cannot appear on an #SBATCH line"):
        render_fixed(MNIST_TRAIN, run_dir=str(tmp_path / "my run"))


@pytest.mark.parametrize("where", ["yaml", "--set"])
def test_memory_written_as_a_plain_number_means_megabytes_as_sbatch_reads_it(tmp_path, where):
    """`mem: 1024` (YAML reads a number) was refused as "not a string" while `time: 30` was
    taken; sbatch reads --mem=1024 as 1024 MB."""
    wf = tmp_path / "wf.yml"
    mem = "1024" if where == "yaml" else "2G"
    wf.write_text(f"name: m\nsteps:\n  - name: a\n    command: echo\n"
                  f"    resources: {{mem: {mem}}}\n")
    overrides = [] if where == "yaml" else ["steps.a.resources.mem=1024"]
    run = render_workflow(wf, overrides, run_dir=tmp_path / "run")
    script = run.files[run.plan[0].script]
    assert "#SBATCH --mem=1024\n" in script
    with pytest.raises(UserError, match="mem"):
        render_workflow(wf, ["steps.a.resources.mem=-5"], run_dir=tmp_path / "run2")
