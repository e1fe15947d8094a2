"""Where a run came from, as its MLflow tags say it: the workflow repository's commit (read from
.git, loose or packed refs, worktrees), the backend (environment first, then run.json), slurm.*
tags only from a real scheduler, and a description a user can read."""

from __future__ import annotations

from pathlib import Path

from ml_helpers import WORKFLOW_DESCRIPTION, git, make_run_dir, workflow_repo

from itwinai_hpc.ml.provenance import Provenance, git_head

SLURM = {"SLURM_JOB_ID": "2", "SLURM_NNODES": "1"}


def test_commit_is_the_head_of_the_repository_holding_the_workflow(tmp_path):
    workflow, commit = workflow_repo(tmp_path / "repo")
    (tmp_path / "repo" / "sub").mkdir()
    assert git_head(tmp_path / "repo" / "sub") == (commit, "main")
    git(tmp_path / "repo", "pack-refs", "--all")          # refs/heads/main only in packed-refs
    assert not (tmp_path / "repo" / ".git" / "refs" / "heads" / "main").exists()
    assert git_head(workflow.parent) == (commit, "main")
    git(tmp_path / "repo", "checkout", "-q", "--detach")
    assert git_head(workflow.parent) == (commit, None)


def test_commit_of_a_worktree_is_its_own_head(tmp_path):
    _, first = workflow_repo(tmp_path / "repo")
    git(tmp_path / "repo", "worktree", "add", "-q", "-b", "other", str(tmp_path / "wt"))
    (tmp_path / "wt" / "more.yml").write_text("x: 1\n")
    git(tmp_path / "wt", "add", "more.yml")
    git(tmp_path / "wt", "commit", "-q", "-m", "more")
    second = git(tmp_path / "wt", "rev-parse", "HEAD")
    assert second != first
    assert git_head(tmp_path / "wt") == (second, "other")


def test_outside_any_repository_there_is_no_commit_and_mlflows_guess_is_dropped(tmp_path):
    assert git_head(Path("/")) == (None, None)
    p = Provenance(workflow_file="/nowhere/wf.yml")
    assert "mlflow.source.git.commit" not in p.tags()
    assert "mlflow.source.git.commit" in p.stale_tags()


def test_local_run_is_tagged_local_without_slurm_tags(tmp_path):
    workflow, commit = workflow_repo(tmp_path / "repo")
    run_dir = make_run_dir(tmp_path / "run", backend="local", workflow_file=workflow)
    p = Provenance.from_env({"ITWINAI_HPC_RUN_DIR": str(run_dir), "ITWINAI_HPC_STEP": "train"})
    tags = p.tags(SLURM)
    assert tags["itwinai_hpc.backend"] == "local"
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["itwinai_hpc.workflow_file"] == str(workflow)
    assert not [k for k in tags if k.startswith("slurm.")]


def test_backend_and_workflow_from_the_environment_win_over_run_json(tmp_path):
    workflow, commit = workflow_repo(tmp_path / "repo")
    run_dir = make_run_dir(tmp_path / "run", backend="local")
    p = Provenance.from_env({"ITWINAI_HPC_RUN_DIR": str(run_dir), "ITWINAI_HPC_BACKEND": "slurm",
                             "ITWINAI_HPC_WORKFLOW_FILE": str(workflow)})
    tags = p.tags(SLURM)
    assert tags["itwinai_hpc.backend"] == "slurm" and tags["slurm.job_id"] == "2"
    assert tags["mlflow.source.git.commit"] == commit


def test_description_names_workflow_step_run_folder_and_commit(tmp_path):
    workflow, commit = workflow_repo(tmp_path / "repo")
    run_dir = make_run_dir(tmp_path / "run", backend="slurm", workflow_file=workflow)
    text = Provenance.from_env({"ITWINAI_HPC_RUN_DIR": str(run_dir), "ITWINAI_HPC_STEP": "train",
                                "ITWINAI_HPC_RUN_ID": "r1"}).description()
    assert WORKFLOW_DESCRIPTION in text and "the train step of the test" in text
    assert str(run_dir) in text and "`r1` (slurm)" in text and commit[:12] in text


def test_by_hand_outside_a_workflow_the_backend_is_none():
    tags = Provenance.from_env({}).tags(SLURM)
    assert tags["itwinai_hpc.backend"] == "none"
    assert tags["slurm.job_id"] == "2"    # inside salloc by hand: a real job
