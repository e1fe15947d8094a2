"""Where a step's MLflow run came from: the workflow (file, git commit, description), the
itwinai-hpc run folder and backend, the data (shard manifest as a dataset input) and the
scripts that ran. Read from the environment the job scripts export (ITWINAI_HPC_*), with the
run folder's run.json as fallback; never asks a scheduler, never imports the backends.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from itwinai_hpc.core import job_env
from itwinai_hpc.core.version import __version__
from itwinai_hpc.ml.sweep import SweepTask

RUN_SCRIPT_PATTERNS = ("*.sbatch", "*.sh", "workflow.yml")
# MLflow previews neither .sh nor .sbatch: these get a .txt twin the UI shows.
UNPREVIEWED = (".sh", ".sbatch")


@dataclass
class Provenance:
    run_dir: Path | None = None
    run_id: str | None = None
    step: str | None = None
    backend: str = "none"              # slurm | local | submitit | none (run by hand)
    workflow_file: str | None = None
    workflow_description: str = ""
    step_description: str = ""
    commit: str | None = None
    branch: str | None = None
    sweep: SweepTask | None = None     # this process is one task of a parameter sweep

    @classmethod
    def from_env(cls, env=os.environ) -> Provenance:
        run_dir = Path(env[job_env.RUN_DIR]) if env.get(job_env.RUN_DIR) else None
        manifest = _read_json(run_dir / "run.json") if run_dir else {}
        p = cls(run_dir=run_dir, run_id=env.get(job_env.RUN_ID) or manifest.get("run_id"),
                step=env.get(job_env.STEP),
                backend=env.get(job_env.BACKEND) or manifest.get("backend") or "none",
                workflow_file=env.get(job_env.WORKFLOW_FILE)
                or manifest.get("workflow_file"), sweep=SweepTask.from_env(env))
        resolved = _read_yaml(run_dir / "workflow.yml") if run_dir else {}
        if not resolved and p.workflow_file:
            resolved = _read_yaml(Path(p.workflow_file))
        p.workflow_description = str(resolved.get("description") or "")
        # A sweep with one job per combination runs step train-1 of the step train as written.
        names = [p.step] + ([p.sweep.sweep] if p.sweep else [])
        for name in reversed(names):
            for step in resolved.get("steps") or []:
                if isinstance(step, dict) and step.get("name") == name:
                    p.step_description = str(step.get("description") or "")
        if p.workflow_file:
            p.commit, p.branch = git_head(Path(p.workflow_file).parent)
        return p

    def tags(self, slurm: dict[str, str] | None = None) -> dict[str, str]:
        """MLflow tags. The git tags name the workflow's repository (MLflow's own come from the
        entry-point script, i.e. the venv). SLURM_* of a local run are the local runner's
        stand-ins, so only a real scheduler's job gets slurm.* tags."""
        tags = {"itwinai_hpc.version": __version__, "itwinai_hpc.backend": self.backend,
                "mlflow.note.content": self.description()}
        optional = {"itwinai_hpc.run_id": self.run_id, "itwinai_hpc.step": self.step,
                    "itwinai_hpc.run_dir": str(self.run_dir) if self.run_dir else None,
                    "itwinai_hpc.workflow_file": self.workflow_file,
                    "mlflow.source.name": self.workflow_file,
                    "mlflow.source.git.commit": self.commit,
                    "mlflow.source.git.branch": self.branch}
        tags.update({k: v for k, v in optional.items() if v})
        if self.sweep:
            tags.update(self.sweep.tags())
        if self.backend != "local":
            for key, value in (slurm or {}).items():
                tags[key.lower().replace("_", ".", 1)] = value   # slurm.job_id, slurm.nnodes
        return tags

    def run_name(self) -> str | None:
        """The MLflow run's name: the itwinai-hpc run id; a sweep's task adds SWEEP[TASK], so
        that the sweep's runs are told apart in the UI's list."""
        if self.sweep:
            return f"{self.run_id or self.sweep.sweep_id} {self.sweep.sweep}[{self.sweep.task}]"
        return self.run_id

    def stale_tags(self) -> list[str]:
        """MLflow's automatic git tags to delete when the workflow is in no git repository
        (they would name the venv's repository instead)."""
        return [] if self.commit else ["mlflow.source.git.commit", "mlflow.source.git.branch",
                                       "mlflow.source.git.repoURL"]

    def description(self) -> str:
        """The run's description (markdown) on its MLflow page."""
        lines = [self.workflow_description] if self.workflow_description else []
        if self.step:
            lines.append(f"Step **{self.step}**" + (f": {self.step_description}"
                                                    if self.step_description else ""))
        if self.sweep:
            values = ", ".join(f"{k}={v}" for k, v in self.sweep.matrix.items())
            lines.append(f"Task {self.sweep.task} of sweep `{self.sweep.sweep_id}`"
                         + (f": {values}" if values else ""))
        if self.run_id:
            lines.append(f"itwinai-hpc run `{self.run_id}` ({self.backend}), run folder "
                         f"`{self.run_dir}`")
        if self.workflow_file:
            at = f" at commit `{self.commit[:12]}`" if self.commit else ""
            lines.append(f"Workflow `{self.workflow_file}`{at}")
        return "\n\n".join(lines) or "run by hand, outside an itwinai-hpc workflow"


def git_head(folder: Path) -> tuple[str | None, str | None]:
    """(commit, branch) of the git repository holding `folder`, read from .git directly (no
    git binary needed inside a container); (None, None) outside a repository."""
    folder = folder.resolve()
    for parent in (folder, *folder.parents):
        dotgit = parent / ".git"
        if dotgit.exists():
            break
    else:
        return None, None
    gitdir = dotgit
    if dotgit.is_file():   # a worktree or submodule: "gitdir: PATH"
        text = dotgit.read_text().strip()
        gitdir = (parent / text.split(":", 1)[1].strip()).resolve()
    common = gitdir
    if (gitdir / "commondir").is_file():
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    try:
        head = (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None, None
    if not head.startswith("ref:"):
        return head or None, None   # detached HEAD
    ref = head.split(":", 1)[1].strip()
    branch = ref.removeprefix("refs/heads/")
    for base in (gitdir, common):
        if (base / ref).is_file():
            return (base / ref).read_text().strip(), branch
    try:
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0], branch
    except OSError:
        pass
    return None, branch   # a branch without commits yet


def log_run_scripts(run_dir: str | os.PathLike) -> list[str]:
    """The rendered run folder's scripts (what actually ran) under run_scripts/, each .sh and
    .sbatch also as NAME.txt so that the UI shows it."""
    import mlflow

    names = []
    for pattern in RUN_SCRIPT_PATTERNS:
        for path in sorted(Path(run_dir).glob(pattern)):
            mlflow.log_artifact(str(path), artifact_path="run_scripts")
            names.append(path.name)
            if path.suffix in UNPREVIEWED:
                mlflow.log_text(path.read_text(errors="replace"), f"run_scripts/{path.name}.txt")
                names.append(path.name + ".txt")
    return names


def log_shards(manifest, contexts: dict[str, str]) -> None:
    """The shards as MLflow dataset inputs, one per split (name DATASET-SPLIT, digest: the
    manifest's plan id, which changes whenever the content does; source: the shard folder),
    and the manifest itself under dataset/."""
    import mlflow
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    folder = str(Path(manifest.path).parent.resolve())
    with warnings.catch_warnings():   # "can be interpreted in multiple ways": it is a folder
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(folder)
    schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, *manifest.image_shape), "images"),
                     TensorSpec(np.dtype(np.int64), (-1,), "labels")])
    # The tasks of a sweep start together and log the same datasets: MLflow's file store
    # creates each dataset's record once per experiment and fails the second process that
    # finds it half made ("Yaml file ... exists"), so one at a time, under the store's lock.
    from itwinai_hpc.ml.registry_lock import registry_lock

    with registry_lock(mlflow.get_tracking_uri()):
        for split, context in contexts.items():
            dataset = MetaDataset(source, name=f"{manifest.dataset}-{split}",
                                  digest=manifest.plan_id[:32], schema=schema)
            mlflow.log_input(dataset, context=context,
                             tags={"num_samples": str(manifest.splits[split].num_samples)})
    mlflow.log_artifact(str(manifest.path), artifact_path="dataset")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
