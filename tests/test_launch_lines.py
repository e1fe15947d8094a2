"""Launch lines that hold on real clusters, run for real on this machine (local backend):
bind sources, setup lines, run-time env, srun as a DDP launcher, a site's torchrun command,
OpenMP threads, list merging. What needs SLURM itself is in test_launch_on_slurm.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.ops import operations
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.render.plan import plan
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.workflow.load import load_workflow

# Apptainer cannot be installed here. This stand-in does what matters to these tests, as
# apptainer does: refuses a bind source that does not exist, hands APPTAINERENV_* on, runs the
# command after the image. It records its arguments.
APPTAINER = """#!/bin/bash
echo "$*" >> "$APPTAINER_LOG"
while read -r var; do export "${var#APPTAINERENV_}=${!var}"
done < <(compgen -e | grep '^APPTAINERENV_' || true)
[[ $1 == exec ]] || { echo "stub apptainer: only exec" >&2; exit 2; }
shift
while [[ $1 == -* ]]; do
  case $1 in
    --bind) src=${2%%:*}
      [[ -e $src ]] || { echo "FATAL: bind source $src doesn't exist" >&2; exit 255; }
      shift 2 ;;
    --env) export "${2?}"; shift 2 ;;
    *) shift ;;
  esac
done
shift   # the image
exec "$@"
"""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = tmp_path, a stub apptainer first on PATH, runs under tmp_path/runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "apptainer"
    stub.write_text(APPTAINER)
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("APPTAINER_LOG", str(tmp_path / "apptainer.log"))
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_local(workflow: Path, *overrides: str, timeout: float = 120) -> RunManifest:
    out = workflow.parent / "run"
    args = ["submit", str(workflow), "--backend", "local", "-o", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    manifest = RunManifest.load(out)
    operations.wait(manifest, interval=0.2, timeout=timeout)
    return manifest


def log_of(manifest: RunManifest, step: str) -> str:
    files = operations.backend_for(manifest).log_files(manifest, manifest.step(step))
    return "".join(f.read_text() for f in files)


def test_a_file_bind_and_folders_the_workflow_owns_start_the_container(here):
    (here / "site-lib.so.1").write_text("a site library, a file")
    wf = here / "wf.yml"
    wf.write_text(f"""
name: binds
defaults:
  container:
    image: img.sif
    binds: ["{here}/site-lib.so.1:/usr/lib64/libcxi.so.1", "${{workdir}}/data/out"]
steps:
  - {{name: a, command: 'test -f "{here}/site-lib.so.1" && touch "{here}/data/out/ran"'}}
""")
    manifest = run_local(wf)
    assert manifest.step("a").state == "COMPLETED", log_of(manifest, "a")
    assert (here / "data" / "out" / "ran").exists()           # created: the workflow's own
    assert (here / "site-lib.so.1").is_file()                  # a file bind stays a file


def test_a_missing_bind_source_is_named_before_the_container_starts(here):
    wf = here / "wf.yml"
    wf.write_text("""
name: binds
defaults:
  container: {image: img.sif, binds: [/opt/no-such-site-stack, /etc/hostname]}
steps:
  - {name: a, command: touch ran}
""")
    manifest = run_local(wf)
    assert manifest.step("a").state == "FAILED"
    log = log_of(manifest, "a")
    assert "bind source(s) missing" in log and "/opt/no-such-site-stack" in log
    assert "/etc/hostname" not in log.split("missing on")[1]
    assert not (here / "ran").exists()
    assert not Path("/opt/no-such-site-stack").exists()        # never created
    assert not (here / "apptainer.log").exists()               # the container never started


def test_setup_lines_run_in_order_before_the_command_and_runtime_env_expands_then(here):
    wf = here / "wf.yml"
    wf.write_text("""
name: setup
defaults:
  container: none
  setup: ["export STACK=site", "ulimit -c 0"]
  runtime-env: {CACHE: "$HOME/cache-$SLURM_JOB_ID"}
steps:
  - name: a
    setup: ["export STACK=$STACK+venv"]
    command: echo "stack=$STACK cache=$CACHE cores=$(ulimit -c)"
""")
    manifest = run_local(wf)
    assert manifest.step("a").state == "COMPLETED", log_of(manifest, "a")
    job_id = manifest.step("a").job_id
    assert f"stack=site+venv cache={os.environ['HOME']}/cache-{job_id} cores=0" in \
        log_of(manifest, "a")


def test_runtime_env_values_never_run_commands(here, capsys):
    wf = here / "wf.yml"
    wf.write_text("name: x\nsteps:\n  - {name: a, command: echo, "
                  "runtime-env: {A: '`touch pwned`'}}\n")
    assert main(["validate", str(wf)]) == 2
    assert "may refer to variables only as $NAME" in capsys.readouterr().err
    assert not (here / "pwned").exists()


def test_srun_launcher_is_a_ddp_launcher(here):
    """Under `launcher: srun` every task gets RANK/WORLD_SIZE/LOCAL_RANK and a MASTER_ADDR:
    one DDP job, not N independent trainings of world size 1."""
    script = here / "ddp.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([float(dist.get_rank())])\n"
        "dist.all_reduce(t)\n"
        "line = (f\"rank {os.environ['RANK']} local {os.environ['LOCAL_RANK']} world \"\n"
        "        f\"{dist.get_world_size()} sum {int(t.item())}\\n\")\n"
        "os.write(1, line.encode())   # one write: the tasks share the log\n"
        "dist.destroy_process_group()\n")
    wf = here / "wf.yml"
    wf.write_text(f"""
name: srunddp
defaults: {{container: none}}
steps:
  - name: ddp
    launcher: srun
    resources: {{ntasks-per-node: 3}}
    command: {sys.executable} {script}
""")
    manifest = run_local(wf, timeout=180)
    log = log_of(manifest, "ddp")
    assert manifest.step("ddp").state == "COMPLETED", log
    lines = sorted(line for line in log.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {r} local {r} world 3 sum 3" for r in range(3)]


def test_a_sites_torchrun_command_and_arguments_are_used(here):
    script = here / "rank.py"       # one write() per line: the ranks share the log
    script.write_text("import os\nos.write(1, f\"rank {os.environ['RANK']} of "
                      "{os.environ['WORLD_SIZE']}\\n\".encode())\n")
    wf = here / "wf.yml"
    wf.write_text(f"""
name: tr
defaults: {{container: none}}
steps:
  - name: t
    launcher: torchrun
    nproc-per-node: 2
    launch:
      torchrun: {sys.executable} -m torch.distributed.run
      torchrun-args: ["--log-dir={here}/torchrun-logs"]
    command: {sys.executable} {script}
""")
    manifest = run_local(wf, timeout=180)
    log = log_of(manifest, "t")
    assert manifest.step("t").state == "COMPLETED", log
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    assert (here / "torchrun-logs").is_dir()                   # the argument reached torchrun


def test_openmp_threads_follow_cpus_per_task_unless_the_workflow_sets_them(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: omp
defaults: {container: none, resources: {cpus-per-task: 8}}
steps:
  - {name: single, command: echo}
  - {name: ddp, command: echo, launcher: torchrun, nproc-per-node: 4}
  - {name: mine, command: echo, env: {OMP_NUM_THREADS: 1}}
""")
    steps = {s.name: s for s in plan(load_workflow(wf).workflow)}
    assert (steps["single"].omp_num_threads, steps["ddp"].omp_num_threads,
            steps["mine"].omp_num_threads) == (8, 2, None)
    files = render_workflow(wf, run_dir=tmp_path / "r").files
    assert "export OMP_NUM_THREADS=2\n" in files["02-ddp.sbatch"]
    assert "export SRUN_CPUS_PER_TASK=8\n" in files["02-ddp.sbatch"]
    assert files["03-mine.sbatch"].count("OMP_NUM_THREADS") == 1    # only the workflow's own


def test_a_steps_lists_extend_the_defaults_and_replace_only_when_asked(tmp_path, capsys):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: lists
defaults:
  container: {image: i.sif, binds: [/data, /mlruns], options: [--cleanenv]}
  resources: {extra-sbatch: [--exclusive]}
  setup: ["module load A"]
steps:
  - name: more
    command: echo
    container: {binds: [/extra, /data]}
    resources: {extra-sbatch: ["--reservation=r1"]}
    setup: ["module load B"]
  - name: only
    command: echo
    container: {binds: {replace: [/only]}}
""")
    steps = {s.name: s for s in plan(load_workflow(wf).workflow)}
    assert steps["more"].container.binds == ("/data", "/mlruns", "/extra")
    assert steps["more"].container.options == ("--cleanenv",)
    assert steps["more"].resources.extra_sbatch == ("--exclusive", "--reservation=r1")
    assert steps["more"].setup == ("module load A", "module load B")
    assert steps["only"].container.binds == ("/only",)
    assert main(["validate", str(wf)]) == 0
    out = capsys.readouterr().out
    assert "container.binds: /data /mlruns /extra" in out
    assert "extra-sbatch: --exclusive --reservation=r1" in out


def test_jscs_rendezvous_host_rewrites_the_endpoint_and_workers_address_only(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: jsc
defaults: {container: none}
steps:
  - {name: t, launcher: torchrun, command: train, launch: {rdzv-host: "{node}i"},
     resources: {nodes: 2}}
""")
    script = render_workflow(wf, run_dir=tmp_path / "r").files["01-t.sbatch"]
    assert '--rdzv-endpoint="${HEAD}i:$PORT"' in script
    assert '--local-addr="${SLURMD_NODENAME}i"' in script
    assert 'if [[ $SLURMD_NODENAME == "$HEAD" ]]; then is_host=1; fi' in script
    p = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert p.returncode == 0, p.stderr


def test_gpus_can_be_asked_for_in_the_gres_form(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: g\ndefaults: {container: none}\nsteps:\n"
                  "  - {name: t, command: x, resources: {gpus-per-node: 4, gpu-flag: gres}}\n"
                  "  - {name: u, command: x, resources: {gpus-per-node: 4}}\n")
    files = render_workflow(wf, run_dir=tmp_path / "r").files
    assert "#SBATCH --gres=gpu:4\n" in files["01-t.sbatch"]
    assert "--gpus-per-node" not in files["01-t.sbatch"]
    assert "#SBATCH --gpus-per-node=4\n" in files["02-u.sbatch"]


def test_secrets_pass_by_name_and_never_reach_the_run_folder_or_a_command_line(here,
                                                                               monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3t_value")
    wf = here / "wf.yml"
    wf.write_text("""
name: secret
defaults:
  container: {image: img.sif, env: {VISIBLE: plain}}
  env-passthrough: [HF_TOKEN]
steps:
  - {name: a, command: sh -c, args: ['echo "token=$HF_TOKEN visible=$VISIBLE"']}
""")
    manifest = run_local(wf)
    assert manifest.step("a").state == "COMPLETED", log_of(manifest, "a")
    assert "token=hf_s3cr3t_value visible=plain" in log_of(manifest, "a")
    for path in (here / "run").rglob("*"):
        if path.is_file() and "logs" not in path.parts:
            assert "hf_s3cr3t_value" not in path.read_text(errors="replace"), path
    calls = (here / "apptainer.log").read_text()       # what `ps` would have shown
    assert "hf_s3cr3t_value" not in calls and "plain" not in calls


def test_a_secret_looking_env_reference_is_refused_and_a_missing_passthrough_named(here, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k")
    wf = here / "wf.yml"
    wf.write_text("name: s\nsteps:\n  - {name: a, command: x, env: {K: '${env:WANDB_API_KEY}'}}\n")
    assert main(["validate", str(wf)]) == 2
    assert "env-passthrough: [WANDB_API_KEY]" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    wf.write_text("name: s\ndefaults: {container: none}\nsteps:\n"
                  "  - {name: a, command: x, env-passthrough: [HF_TOKEN]}\n")
    assert main(["submit", str(wf), "--backend", "local", "-o", "r"]) == 2
    assert "takes HF_TOKEN from your environment" in capsys.readouterr().err
    assert not (here / "r").exists()
