"""`validate --profile X` catches what a site would refuse or run slowly (issue 23): refusals
stop validate, render and submit with exit 2 naming the file, line and field; warnings are
printed by validate. And resources compose: a GPU step gets the profile's share of a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.render.plan import plan
from itwinai_hpc.workflow.load import load_workflow

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "use-cases/mnist/training-workflow.yml"
TWO_NODES = ["--set", "steps.train.resources.nodes=2"]


def gpus(n: int) -> list[str]:
    return ["--set", f"steps.train.resources.gpus-per-node={n}"]


def validate(capsys, *args: str, workflow: Path = MNIST) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["validate", str(workflow), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def resources(profile: str, *overrides: str):
    loaded = load_workflow(MNIST, list(overrides), profile=profile)
    return {j.name: j.resources for j in plan(loaded.workflow, loaded.site.profile)}


# --- resources compose --------------------------------------------------------------------

def test_a_gpu_step_gets_the_profiles_share_of_a_node_over_the_workflows_defaults():
    pinned = ("defaults.resources.cpus-per-task=2", "defaults.resources.mem=4G")
    r = resources("lumi", "steps.train.resources.gpus-per-node=8", *pinned)
    assert (r["train"].cpus_per_task, r["train"].mem) == (56, "480G")    # LUMI's example
    assert (r["preprocess"].cpus_per_task, r["preprocess"].mem) == (2, "4G")  # no GPUs: defaults
    r = resources("lumi", "steps.train.resources.gpus-per-node=1", *pinned)
    assert (r["train"].cpus_per_task, r["train"].mem) == (7, "60G")       # one GCD's share
    # what the step itself says wins
    r = resources("lumi", "steps.train.resources.gpus-per-node=8",
                  "steps.train.resources.cpus-per-task=16", "steps.train.resources.mem=100G")
    assert (r["train"].cpus_per_task, r["train"].mem) == (16, "100G")
    # the share is split over the step's tasks (the srun launcher: one per GPU)
    r = resources("jsc", "steps.train.resources.gpus-per-node=4", "steps.train.launcher=srun",
                  "steps.train.resources.ntasks-per-node=4")
    assert r["train"].cpus_per_task == 12
    # a profile without a share (the test cluster's) keeps the workflow's defaults
    assert resources("generic", "steps.train.resources.gpus-per-node=4",
                     *pinned)["train"].cpus_per_task == 2


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("use-cases/*/*workflow.yml"))


def _scaffolded(tmp_path: Path, template: str) -> Path:
    from itwinai_hpc.commands.init import write_use_case

    write_use_case("demo", template, tmp_path / "demo")
    return tmp_path / "demo" / "workflow.yml"


def test_every_use_case_workflow_is_checked_for_laptop_sizes():
    assert {"use-cases/mnist/training-workflow.yml", "use-cases/heat-diffusion/"
            "training-workflow.yml", "use-cases/heat-diffusion/inference-workflow.yml"} \
        <= set(SHIPPED)


@pytest.mark.parametrize("workflow", [*SHIPPED, "init classification", "init regression",
                                      "init script"])
def test_the_shipped_workflows_pin_no_laptop_sizes(workflow, tmp_path):
    path = (_scaffolded(tmp_path, workflow.split()[1]) if workflow.startswith("init ")
            else ROOT / workflow)
    loaded = load_workflow(path, profile="jsc")
    d = loaded.workflow.defaults
    assert d.resources.cpus_per_task is None and d.resources.mem is None
    assert "OMP_NUM_THREADS" not in (d.env or {})
    jobs = plan(loaded.workflow, loaded.site.profile)
    assert all(j.resources.cpus_per_task == 48 for j in jobs)    # the profile's node size


def test_validate_warns_when_torchrun_has_fewer_cpus_than_processes_or_little_memory(capsys):
    code, out, err = validate(capsys, *gpus(4), "--set", "steps.train.resources.cpus-per-task=2")
    assert code == 0 and "cpus-per-task=2" in out
    assert "steps[1](train).resources.cpus-per-task: torchrun starts 4 processes per node " \
           "in one task of 2 CPU(s)" in err
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8),
                              "--set", "steps.train.resources.mem=16G")
    assert "16G per node for 8 GPU(s) is less than this site's examples ask for (60G per GPU" \
        in err
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8))
    assert "torchrun starts" not in err and "less than" not in err and "cpus-per-task=56" in out


def test_validate_says_when_the_profiles_share_replaces_a_workflow_default(capsys):
    code, out, err = validate(capsys, "--profile", "jsc", *gpus(4),
                              "--set", "defaults.resources.cpus-per-task=2")
    assert code == 0
    assert "defaults.resources.cpus-per-task: 2 is not used for GPU step 'train': profile " \
           "'jsc' gives it a GPU's share of a node (48 for 4 GPUs)" in err


# --- NERSC ----------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime,image,word", [
    ("shifter", "container/itwinai-hpc.sif", "shifterimg pull docker:REPO/NAME:TAG"),
    ("shifter", "/global/cfs/x/image.sqsh", "shifterimg pull"),
    ("podman-hpc", "container/itwinai-hpc.sif", "podman-hpc pull REPO/NAME:TAG"),
])
def test_a_file_image_for_a_registry_runtime_is_refused_with_file_line_and_field(
        capsys, tmp_path, runtime, image, word):
    wf = tmp_path / "wf.yml"
    wf.write_text(f"name: w\ndefaults:\n  container:\n    runtime: {runtime}\n"
                  f"    image: {image}\nsteps:\n  - {{name: a, command: echo}}\n")
    code, out, err = validate(capsys, workflow=wf)
    assert code == 2 and "Traceback" not in err
    assert f"{wf}:5: defaults.container.image: '{image}' is a file" in err and word in err
    assert main(["render", str(wf), "-o", str(tmp_path / "run")]) == 2    # render refuses too
    assert not (tmp_path / "run").exists()


def test_nersc_takes_a_registry_image_and_warns_without_a_qos(capsys, monkeypatch):
    monkeypatch.delenv("SBATCH_QOS", raising=False)
    code, out, err = validate(capsys, "--profile", "nersc", "--set",
                              "vars.image=docker:alice/itwinai-hpc:1.0", *gpus(4))
    assert code == 0 and "cpus-per-task=128" in out
    assert "defaults.resources.qos: not set (profile 'nersc'): without --qos" in err
    code, out, err = validate(capsys, "--profile", "nersc", "--set",
                              "vars.image=docker:alice/itwinai-hpc:1.0",
                              "--set", "defaults.resources.qos=regular")
    assert "qos" not in err
    monkeypatch.setenv("SBATCH_QOS", "regular")
    code, out, err = validate(capsys, "--profile", "nersc", "--set",
                              "vars.image=docker:alice/itwinai-hpc:1.0")
    assert "qos" not in err


@pytest.mark.parametrize("profile,image,says", [
    # a newline would end `#SBATCH --image=` and start a directive of the attacker's choosing
    ("nersc", "docker:alice/x:1\n#SBATCH --account=evil", "holds a control character"),
    ("generic", "img.sif\n#SBATCH --account=evil", "holds a control character"),
    ("nersc", "docker:alice/x:1 --account=evil", "holds a space"),
])
def test_an_image_name_cannot_add_an_sbatch_directive(capsys, tmp_path, profile, image, says):
    out_dir = tmp_path / "run"
    code = main(["render", str(MNIST), "--profile", profile, "-o", str(out_dir),
                 "--set", f"vars.image={image}"])
    err = capsys.readouterr().err
    assert code == 2 and "container.image" in err and says in err, err
    assert "Traceback" not in err and not out_dir.exists()


# --- CSCS -----------------------------------------------------------------------------------

def test_cscs_refuses_a_sif_where_an_edf_belongs(capsys):
    code, out, err = validate(capsys, "--profile", "cscs")
    assert code == 2
    assert "training-workflow.yml:" in err and "defaults.container.image: " \
        "'container/itwinai-hpc.sif' is not an EDF" in err


EDF = """image = "/capstor/scratch/cscs/alice/itwinai-hpc.sqsh"
mounts = ["/capstor"]
"""


@pytest.mark.parametrize("annotations,warned", [
    ("", True),
    ('[annotations]\ncom.hooks.aws_ofi_nccl.enabled = "false"\n', True),
    ('[annotations]\ncom.hooks.aws_ofi_nccl.enabled = "true"\n', False),
    ('[annotations.com.hooks.aws_ofi_nccl]\nenabled = "true"\nvariant = "cuda12"\n', False),
])
def test_cscs_warns_when_the_edf_leaves_out_the_aws_ofi_nccl_hook(capsys, tmp_path,
                                                                    monkeypatch, annotations,
                                                                    warned):
    (tmp_path / "edf").mkdir()
    (tmp_path / "edf" / "torch.toml").write_text(EDF + annotations)
    monkeypatch.chdir(tmp_path)                     # a relative EDF: under the working dir
    code, out, err = validate(capsys, "--profile", "cscs", "--set", "vars.image=edf/torch.toml",
                              *TWO_NODES, *gpus(4))
    assert code == 0
    assert ("does not enable the aws_ofi_nccl hook" in err) is warned, err
    assert "1.6 instead of 19.8 GB/s" in err or not warned


def test_cscs_looks_for_an_edf_name_under_home_edf(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = validate(capsys, "--profile", "cscs", "--set", "vars.image=torch",
                              *gpus(4))
    assert code == 0 and f"cannot read the EDF {tmp_path}/.edf/torch.toml" in err
    (tmp_path / ".edf").mkdir()
    (tmp_path / ".edf" / "torch.toml").write_text(
        EDF + '[annotations]\ncom.hooks.aws_ofi_nccl.enabled = "true"\n')
    code, out, err = validate(capsys, "--profile", "cscs", "--set", "vars.image=torch", *gpus(4))
    assert "EDF" not in err


# --- LUMI -----------------------------------------------------------------------------------

def test_lumi_warns_without_an_account_unless_sbatch_account_is_set(capsys, monkeypatch):
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    rocm = ["--set", "vars.image=container/itwinai-hpc-rocm.sif"]
    code, out, err = validate(capsys, "--profile", "lumi", *rocm, *gpus(8))
    assert code == 0 and "defaults.resources.account: not set (profile 'lumi'): LUMI refuses" \
        in err
    assert "rocm" not in err                                    # the ROCm image: no warning
    code, out, err = validate(capsys, "--profile", "lumi", *rocm,
                              "--set", "defaults.resources.account=project_465000001")
    assert "account" not in err
    monkeypatch.setenv("SBATCH_ACCOUNT", "project_465000001")
    code, out, err = validate(capsys, "--profile", "lumi", *rocm)
    assert "account" not in err


def test_lumi_warns_about_a_cuda_image_on_its_amd_gpus(capsys):
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8))
    assert "defaults.container.image: 'container/itwinai-hpc.sif' does not look like a rocm " \
           "build" in err and "its default image is container/itwinai-hpc-rocm.sif" in err


MASKS = "--cpu-bind=mask_cpu:0xfe000000000000,0xfe00000000000000,0xfe0000,0xfe000000"


def test_a_cpu_mask_list_a_single_torchrun_task_would_get_whole_is_refused(capsys):
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8),
                              "--set", f"steps.train.launch.srun-args=['{MASKS}']")
    assert code == 2 and "steps[1](train).launch.srun-args:" in err
    assert "gets the first entry of this list only, and all 8 workers share it" in err
    # one mask (a task's whole node), or the srun launcher with a task per GPU: fine
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8),
                              "--set", "steps.train.launch.srun-args=[--cpu-bind=mask_cpu:0xff]")
    assert code == 0
    code, out, err = validate(capsys, "--profile", "lumi", *gpus(8),
                              "--set", "steps.train.launcher=srun",
                              "--set", "steps.train.resources.ntasks-per-node=8",
                              "--set", f"steps.train.launch.srun-args=['{MASKS}']")
    assert code == 0


# --- profiles: their new fields, and bad ones -----------------------------------------------

def test_every_site_profile_names_its_sources_and_what_is_unverified():
    from itwinai_hpc.workflow.profiles import load_profile
    for name in ("jsc", "lumi", "vega", "cscs", "nersc"):
        p = load_profile(name).profile
        assert p.sources and p.unverified and p.node.cpus_per_gpu, name


def test_a_bad_node_share_in_a_profile_names_file_line_and_field(capsys, tmp_path):
    bad = tmp_path / "site.yml"
    bad.write_text("description: mine\nnode:\n  cpus-per-gpu: 8\n  mem-per-gpu: lots\n")
    code, out, err = validate(capsys, "--profile", str(bad))
    assert code == 2 and "Traceback" not in err
    assert f"{bad}:4" in err and "node.mem-per-gpu" in err
