"""Site profiles: data merged under a workflow's defaults. Each shipped profile's MNIST training
script, run with stand-in srun/scontrol/runtimes/torchrun, launches what that site documents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from site_stubs import run_sbatch_script

from itwinai_hpc.cli import main
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.render.plan import plan
from itwinai_hpc.workflow.load import load_workflow

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "use-cases/mnist/training-workflow.yml"
SHIPPED = ["generic", "jsc", "lumi", "vega", "cscs", "nersc"]
LUMI_SITE_FILES = ["/var/spool/slurmd", "/opt/cray", "/usr/lib64/libcxi.so.1",
                   "/usr/lib64/libjansson.so.4"]


def render_training(tmp_path: Path, profile: str, gpus: int, *extra: str) -> Path:
    """The MNIST training workflow with --profile and 2 nodes x `gpus` GPUs, nothing else
    site-specific (the CSCS container engine names its image as an EDF file)."""
    overrides = ["steps.train.resources.nodes=2", f"steps.train.resources.gpus-per-node={gpus}",
                 *extra]
    run = render_workflow(MNIST, overrides, run_dir=tmp_path / "run", workdir=tmp_path,
                          profile=profile)
    run.write()
    return tmp_path / "run" / "02-train.sbatch"


def calls_of(calls: list[dict], tool: str) -> list[dict]:
    return [c for c in calls if c["tool"] == tool]


def sbatch_lines(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def test_profiles_lists_each_shipped_profile_once(capsys):
    assert main(["profiles"]) == 0
    assert capsys.readouterr().out.split() == sorted(SHIPPED)


def test_show_prints_a_profile_with_its_sources_and_what_is_unverified(capsys):
    assert main(["profiles", "--show", "perlmutter"]) == 0      # by its machine name
    out = capsys.readouterr().out
    assert "nersc.yml" in out and "sources:" in out and "unverified:" in out


def test_a_user_profile_extends_the_list_and_its_errors_name_file_and_line(tmp_path, capsys,
                                                                           monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "mysite.yml").write_text("description: mine\naliases: [mine]\n"
                                       "defaults:\n  resources: {partition: gpu, qos: high}\n")
    monkeypatch.setenv("ITWINAI_HPC_PROFILES", str(folder))
    wf = tmp_path / "wf.yml"
    wf.write_text("name: w\nprofile: mine\ndefaults: {container: none}\n"
                  "steps:\n  - {name: a, command: x, resources: {qos: low}}\n")
    step = plan(load_workflow(wf).workflow,
                load_workflow(wf).site.profile)[0]
    assert (step.resources.partition, step.resources.qos) == ("gpu", "low")   # workflow wins
    (folder / "mysite.yml").write_text("description: mine\ndefaults:\n  resources:\n"
                                       "    partiton: gpu\n")
    assert main(["validate", str(wf), "--profile", str(folder / "mysite.yml")]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'mysite.yml'}:4: defaults.resources.partiton: unknown key" in err


def test_the_profile_flag_wins_over_the_workflows_profile_key(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: w\nprofile: jsc\nsteps:\n  - {name: a, command: x}\n")
    assert load_workflow(wf).site.name == "jsc"
    assert load_workflow(wf, profile="lumi").site.name == "lumi"
    assert "profile: lumi" in render_workflow(wf, run_dir=tmp_path / "r",
                                              profile="lumi").files["workflow.yml"]


def test_an_unknown_profile_is_a_clean_error_with_the_choices(tmp_path, capsys):
    assert main(["validate", str(MNIST), "--profile", "jucels"]) == 2
    err = capsys.readouterr().err
    assert "no site profile 'jucels'" in err and "jsc" in err and "Traceback" not in err


# ---- what each site's training script launches -------------------------------------------------

def launch(tmp_path: Path, profile: str, gpus: int, *extra: str, fake_paths=()) -> list[dict]:
    script = tmp_path / "run" / "02-train.sbatch"
    if not script.exists():
        script = render_training(tmp_path, profile, gpus, *extra)
    p, calls = run_sbatch_script(script, tmp_path, ["nid001", "nid002"], fake_paths=fake_paths)
    assert p.returncode == 0, p.stdout + p.stderr
    return calls


def test_generic_asks_for_gpus_per_node_and_enters_apptainer_with_nv(tmp_path):
    calls = launch(tmp_path, "generic", 4)
    script = tmp_path / "run" / "02-train.sbatch"
    assert "#SBATCH --gpus-per-node=4" in sbatch_lines(script)
    runtime = calls_of(calls, "apptainer")
    assert len(runtime) == 2 and all(c["args"][:2] == ["exec", "--nv"] for c in runtime)
    torchrun = calls_of(calls, "torchrun")
    assert [c["env"]["SLURMD_NODENAME"] for c in torchrun] == ["nid001", "nid002"]
    assert all("--rdzv-endpoint=nid001:21234" in c["args"] for c in torchrun)
    assert ["--rdzv-conf=is_host=1", "--rdzv-conf=is_host=0"] == \
        [a for c in torchrun for a in c["args"] if a.startswith("--rdzv-conf")]


def test_jsc_rendezvous_over_infiniband_names_with_modules_gres_and_no_cpu_binding(tmp_path):
    calls = launch(tmp_path, "jsc", 4)
    lines = sbatch_lines(tmp_path / "run" / "02-train.sbatch")
    assert "#SBATCH --gres=gpu:4" in lines and "#SBATCH --partition=booster" in lines
    assert calls_of(calls, "module")[0]["args"][:2] == ["load", "Stages/2025"]
    srun = calls_of(calls, "srun")
    assert "--cpu-bind=none" in srun[0]["args"]
    torchrun = calls_of(calls, "torchrun")
    assert all("--rdzv-endpoint=nid001i:21234" in c["args"] for c in torchrun)
    assert [a for c in torchrun for a in c["args"] if a.startswith("--local-addr")] == \
        ["--local-addr=nid001i", "--local-addr=nid002i"]
    assert ["--rdzv-conf=is_host=1", "--rdzv-conf=is_host=0"] == \
        [a for c in torchrun for a in c["args"] if a.startswith("--rdzv-conf")]
    assert all(c["env"]["NCCL_SOCKET_IFNAME"] == "ib0" == c["env"]["GLOO_SOCKET_IFNAME"]
               for c in torchrun)
    assert all(c["args"][:2] == ["exec", "--nv"] for c in calls_of(calls, "apptainer"))


def test_lumi_enters_singularity_with_rocm_site_binds_and_a_miopen_cache_per_node(tmp_path):
    script = render_training(tmp_path, "lumi", 8)
    p, _ = run_sbatch_script(script, tmp_path, ["nid001", "nid002"])
    assert p.returncode == 1 and "bind source(s) missing" in p.stderr + p.stdout
    assert "/opt/cray" in p.stderr + p.stdout                 # named, before any launch
    calls = launch(tmp_path, "lumi", 8, fake_paths=LUMI_SITE_FILES)
    assert "#SBATCH --gpus-per-node=8" in sbatch_lines(script)
    runtime = calls_of(calls, "singularity")
    assert runtime and all(c["args"][:2] == ["exec", "--rocm"] and "--nv" not in c["args"]
                           for c in runtime)
    assert "/usr/lib64/libcxi.so.1" in runtime[0]["args"]      # a file bind, not mkdir'ed
    assert [["use", "/appl/local/laifs/modules"], ["load", "lumi-aif-singularity-bindings"]] \
        == [c["args"] for c in calls_of(calls, "module")]
    torchrun = calls_of(calls, "torchrun")
    assert [c["env"]["MIOPEN_USER_DB_PATH"] for c in torchrun] == \
        ["/tmp/alice-miopen-1234-0", "/tmp/alice-miopen-1234-1"]   # expanded in each task
    assert torchrun[0]["env"]["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3"


def test_vega_asks_for_gres_gpus_and_enters_apptainer_with_nv(tmp_path):
    calls = launch(tmp_path, "vega", 4)
    assert "#SBATCH --gres=gpu:4" in sbatch_lines(tmp_path / "run" / "02-train.sbatch")
    assert all(c["args"][:2] == ["exec", "--nv"] for c in calls_of(calls, "apptainer"))
    assert len(calls_of(calls, "torchrun")) == 2


def test_cscs_runs_each_task_in_the_container_engine_and_torch_distributed_run(tmp_path):
    calls = launch(tmp_path, "cscs", 4, "vars.image=/users/alice/pytorch.toml")
    srun = calls_of(calls, "srun")
    assert "--environment=/users/alice/pytorch.toml" in srun[0]["args"]
    assert not calls_of(calls, "apptainer")                   # the batch shell stays outside
    launcher = calls_of(calls, "python")
    assert len(launcher) == 2 and all(c["args"][:2] == ["-m", "torch.distributed.run"]
                                      for c in launcher)
    assert not calls_of(calls, "torchrun")


def test_nersc_asks_for_the_shifter_image_and_enters_it_in_each_task(tmp_path):
    calls = launch(tmp_path, "nersc", 4, "vars.image=docker:alice/itwinai-hpc:1.0")
    lines = sbatch_lines(tmp_path / "run" / "02-train.sbatch")
    assert "#SBATCH --image=docker:alice/itwinai-hpc:1.0" in lines
    assert "#SBATCH --module=gpu,nccl-plugin" in lines and "#SBATCH --constraint=gpu" in lines
    shifter = calls_of(calls, "shifter")
    assert len(shifter) == 2 and shifter[0]["args"][0].startswith("--volume=")
    assert len(calls_of(calls, "torchrun")) == 2


@pytest.mark.parametrize("profile", SHIPPED)
def test_every_profiles_scripts_pass_shellcheck(tmp_path, profile):
    image = {"nersc": "docker:x/image:1", "cscs": "/x/image.toml"}.get(profile, "/x/image.sif")
    render_training(tmp_path, profile, 4, f"vars.image={image}")
    files = [str(p) for p in (tmp_path / "run").iterdir() if p.suffix in (".sh", ".sbatch")]
    p = subprocess.run(["shellcheck", "--severity=style", *files], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout


def test_profiles_init_describes_the_cluster_it_runs_on(slurm_cluster, capsys, tmp_path,
                                                       monkeypatch):
    assert main(["profiles", "init"]) == 0
    text = capsys.readouterr().out
    assert "SLURM 22.05" in text and "restates it (SRUN_CPUS_PER_TASK)" in text
    assert "partitions: [debug]" in text and "gpus: 4" in text
    # and it is a valid profile, usable as it is
    path = tmp_path / "here.yml"
    path.write_text(text)
    assert main(["validate", str(MNIST), "--profile", str(path)]) == 0
