"""The rendered run folders pinned by tests/golden/: which workflows, rendered how.

Used by test_render.py (compares) and update_golden.py (rewrites, by hand, never in a test run).
"""

from __future__ import annotations

from pathlib import Path

from itwinai_hpc.render.folder import RenderedRun, render_workflow

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
MNIST_TRAIN = ROOT / "use-cases/mnist/training-workflow.yml"
MNIST_INFER = ROOT / "use-cases/mnist/inference-workflow.yml"

CASES = {
    "mnist-training": (MNIST_TRAIN, ()),
    "mnist-training-2-nodes-4-gpus": (MNIST_TRAIN, ("steps.train.resources.nodes=2",
                                                    "steps.train.resources.gpus-per-node=4",
                                                    "defaults.resources.partition=booster",
                                                    "defaults.resources.account=my-project")),
    "mnist-inference": (MNIST_INFER, ()),
    # a matrix as one throttled job array, its tasks' values, needs {train: any}
    "mnist-sweep": (ROOT / "use-cases/mnist/sweep-workflow.yml", ()),
    # a matrix over nodes: one job per size, chained by max-parallel 1
    "mnist-sweep-nodes": (ROOT / "use-cases/mnist/sweep-workflow.yml",
                          ("steps.train.matrix={nodes: [1, 2]}", "steps.train.max-parallel=1",
                           "steps.train.resources.nodes=${matrix.nodes}",
                           "steps.train.args=[--data, x, --epochs, 1]")),
    # setup, node-setup, runtime-env, launch (torchrun command and args, srun args, rendezvous
    # host), --gres GPUs, file binds, srun DDP
    "site-launch": (Path(__file__).parent / "golden_inputs" / "site-launch.yml", ()),
}
# The MNIST training workflow as each shipped site profile renders it (2 nodes x their GPUs).
PROFILES = {"jsc": 4, "lumi": 8, "vega": 4, "cscs": 4, "nersc": 4}
# Images the site's runtime takes: a registry image for Shifter, an EDF for the container
# engine, the ROCm build on LUMI (the workflow's default is the NVIDIA .sif).
IMAGES = {"nersc": "docker:itwinai/itwinai-hpc:latest", "cscs": "edf/itwinai-hpc.toml",
          "lumi": "container/itwinai-hpc-rocm.sif"}
for _name, _gpus in PROFILES.items():
    CASES[f"profile-{_name}"] = (MNIST_TRAIN, ("steps.train.resources.nodes=2",
                                               f"steps.train.resources.gpus-per-node={_gpus}",
                                               *([f"vars.image={IMAGES[_name]}"]
                                                 if _name in IMAGES else [])),
                                 _name)


def render_fixed(workflow: Path, overrides=(), profile=None, run_dir="/runs/golden-run",
                 **kw) -> RenderedRun:
    """Render with a fixed run id, run folder and working directory, so the text is stable."""
    return render_workflow(workflow, list(overrides), run_dir=run_dir, run_id="golden-run",
                           workdir="/work/project", profile=profile,
                           command_line=f"itwinai-hpc render {workflow.name}", **kw)


def normalized(text: str) -> str:
    """The repository's own path as <repo>, so the files match in every checkout."""
    return text.replace(str(ROOT), "<repo>")
