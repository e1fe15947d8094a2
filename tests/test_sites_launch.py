"""What each site's first 2-node MNIST training job launches (issue 23), run with the stand-ins
of site_stubs.py (srun, scontrol, the runtimes, torchrun, module): each records what it was
called with, the environment and the working directory it saw."""

from __future__ import annotations

from pathlib import Path

from site_stubs import run_sbatch_script

from itwinai_hpc.render.folder import render_workflow

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "use-cases/mnist/training-workflow.yml"
NODES = ["nid001", "nid002"]
LUMI_SITE_FILES = ["/var/spool/slurmd", "/opt/cray", "/usr/lib64/libcxi.so.1",
                   "/usr/lib64/libjansson.so.4"]


def render(tmp_path: Path, profile: str, gpus: int, *extra: str, workdir: Path | None = None):
    """The training workflow for 2 nodes x `gpus` under `profile`; the working directory is
    tmp_path/project (not where the stand-in batch shell starts, tmp_path)."""
    workdir = workdir or tmp_path / "project"
    workdir.mkdir(exist_ok=True)
    run = render_workflow(MNIST, ["steps.train.resources.nodes=2",
                                  f"steps.train.resources.gpus-per-node={gpus}", *extra],
                          run_dir=tmp_path / "run", workdir=workdir, profile=profile)
    run.write()
    return tmp_path / "run" / "02-train.sbatch"


def launched(tmp_path: Path, script: Path, **kw) -> list[dict]:
    p, calls = run_sbatch_script(script, tmp_path, NODES, **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return calls


def of(calls: list[dict], tool: str) -> list[dict]:
    return [c for c in calls if c["tool"] == tool]


def sbatch_lines(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def test_every_site_gives_a_gpu_step_its_share_of_the_node(tmp_path):
    expected = {"jsc": (4, 48), "lumi": (8, 56), "vega": (4, 128), "nersc": (4, 128),
                "cscs": (4, 288)}
    image = {"nersc": "docker:x/y:1", "cscs": "/x/y.toml", "lumi": "/x/rocm.sif"}
    for profile, (gpus, cpus) in expected.items():
        folder = tmp_path / profile
        folder.mkdir()
        script = render(folder, profile, gpus, f"vars.image={image.get(profile, '/x/y.sif')}")
        lines = sbatch_lines(script)
        assert f"#SBATCH --cpus-per-task={cpus}" in lines, (profile, lines)
        assert f"export OMP_NUM_THREADS={cpus // gpus}" in script.read_text(), profile
    assert "#SBATCH --mem=480G" in sbatch_lines(tmp_path / "lumi" / "run" / "02-train.sbatch")


def test_nersc_gpu_steps_load_the_gpu_and_nccl_plugin_shifter_modules(tmp_path):
    script = render(tmp_path, "nersc", 4, "vars.image=docker:alice/itwinai-hpc:1.0")
    lines = sbatch_lines(script)
    assert "#SBATCH --module=gpu,nccl-plugin" in lines
    assert "#SBATCH --image=docker:alice/itwinai-hpc:1.0" in lines
    calls = launched(tmp_path, script)
    assert len(of(calls, "shifter")) == 2 and len(of(calls, "torchrun")) == 2


def test_cscs_gets_a_relative_edf_as_an_absolute_path_and_starts_tasks_in_the_workdir(tmp_path):
    workdir = tmp_path / "project"
    script = render(tmp_path, "cscs", 4, "vars.image=edf/torch.toml", workdir=workdir)
    calls = launched(tmp_path, script)
    srun = of(calls, "srun")
    assert f"--environment={workdir}/edf/torch.toml" in srun[0]["args"]
    launcher = of(calls, "python")
    assert len(launcher) == 2 and all(c["cwd"] == str(workdir) for c in launcher)
    # an EDF name (in ~/.edf) and an absolute path pass as they are
    (tmp_path / "b").mkdir()
    assert " --environment=torch " in render(tmp_path / "b", "cscs", 4, "vars.image=torch"
                                            ).read_text()


def test_cscs_runs_a_plain_step_in_the_workdir_too(tmp_path):
    workdir = tmp_path / "project"
    render(tmp_path, "cscs", 4, "vars.image=/x/torch.toml", workdir=workdir)
    p, calls = run_sbatch_script(tmp_path / "run" / "01-preprocess.sbatch", tmp_path, NODES)
    assert p.returncode == 0, p.stdout + p.stderr
    srun = of(calls, "srun")[0]["args"]
    i = srun.index("bash")
    assert srun[i:i + 4] == ["bash", "-c", 'cd -- "$0" && exec "$@"', str(workdir)]
    assert srun[i + 4:i + 6] == ["itwinai-hpc", "preprocess"]
    assert {c["cwd"] for c in of(calls, "itwinai-hpc")} == {str(workdir)}


def test_lumi_loads_the_ai_guides_bindings_module_and_keeps_the_binds(tmp_path):
    script = render(tmp_path, "lumi", 8, "vars.image=/x/rocm.sif")
    calls = launched(tmp_path, script, fake_paths=LUMI_SITE_FILES)
    assert [c["args"] for c in of(calls, "module")] == \
        [["use", "/appl/local/laifs/modules"], ["load", "lumi-aif-singularity-bindings"]]
    runtime = of(calls, "singularity")
    assert runtime and all("/opt/cray" in c["args"] for c in runtime)


def test_vega_puts_nccl_and_gloo_on_infiniband(tmp_path):
    calls = launched(tmp_path, render(tmp_path, "vega", 4, "vars.image=/x/y.sif"))
    torchrun = of(calls, "torchrun")
    assert len(torchrun) == 2
    assert all(c["env"]["NCCL_SOCKET_IFNAME"] == "ib0" == c["env"]["GLOO_SOCKET_IFNAME"]
               and c["env"]["NCCL_IB_DISABLE"] == "0" for c in torchrun)


def test_where_apptainer_is_missing_singularity_runs_the_same_container(tmp_path):
    script = render(tmp_path, "vega", 4, "vars.image=/x/y.sif", "defaults.container.env.FOO=1")
    p, calls = run_sbatch_script(script, tmp_path, NODES, without=("apptainer",))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no apptainer on" in p.stderr and "running the container with singularity" in p.stderr
    runtime = of(calls, "singularity")
    assert len(runtime) == 2                            # one torchrun agent per node
    assert all(c["args"][:2] == ["exec", "--nv"] and "/x/y.sif" in c["args"] for c in runtime)
    assert all(c["env"]["SINGULARITYENV_FOO"] == "1" for c in runtime)
    assert len(of(calls, "torchrun")) == 2
    # neither: the step stops with the message saying how to fix it
    p, calls = run_sbatch_script(script, tmp_path, NODES, without=("apptainer", "singularity"))
    assert p.returncode == 127 and "'apptainer' not found" in p.stderr


def test_the_images_check_for_the_fast_network_libraries_they_carry():
    """The recipes build on bases that carry them; their %test fails a build that lost them."""
    nvidia = (ROOT / "apptainer.def").read_text()
    assert "From: nvcr.io/nvidia/pytorch:" in nvidia
    assert "ldconfig -p | grep -q 'libibverbs.so.1'" in nvidia.split("%test", 1)[1]
    rocm = (ROOT / "apptainer.rocm.def").read_text()
    assert "From: /appl/local/laifs/containers/lumi-multitorch" in rocm
    assert "librccl-net" in rocm.split("%test", 1)[1]
