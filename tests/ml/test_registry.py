"""The champion alias: it moves to a new version only when that version's metric is higher."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from itwinai_hpc.ml import tracking

    tracking.configure(f"file:{tmp_path / 'mlruns'}")
    return tracking


def register(tracking, accuracy: float) -> tuple[str, bool]:
    from itwinai_hpc.ml.registry import Registration, log_and_register

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    tracking.start_run("registry-test")
    try:
        return log_and_register(Registration(model, torch.zeros(2, 1, 2, 2).numpy(), name="m",
                                             alias="champion", metric="val_accuracy",
                                             value=accuracy))
    finally:
        tracking.end_run()


def test_champion_moves_only_to_a_better_version(store):
    from mlflow import MlflowClient

    assert register(store, 0.5) == ("1", True)
    assert register(store, 0.9) == ("2", True)
    assert register(store, 0.7) == ("3", False)
    assert register(store, 0.9) == ("4", False)   # a tie keeps the current champion
    champion = MlflowClient().get_model_version_by_alias("m", "champion")
    assert str(champion.version) == "2" and float(champion.tags["val_accuracy"]) == 0.9


def test_registration_does_not_scan_every_installed_package(store, monkeypatch):
    """MLflow's check of the model's pip requirements mapped every module of every installed
    distribution first (~3 s of CPU, more than the rest of the registration); the check
    still runs on our requirements, the scan does not, and MLflow's map is not left behind."""
    import importlib_metadata
    from mlflow.utils import requirements_utils

    from itwinai_hpc.ml.model_requirements import PIP_REQUIREMENTS

    scans: list[int] = []
    monkeypatch.setattr(importlib_metadata, "packages_distributions",
                        lambda: scans.append(1) or {})
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    checked: list[str] = []
    check = requirements_utils._check_requirement_satisfied
    monkeypatch.setattr(requirements_utils, "_check_requirement_satisfied",
                        lambda r: checked.append(r) or check(r))
    assert register(store, 0.5) == ("1", True)
    assert scans == []
    assert {r.split("==")[0] for r in checked} >= {*PIP_REQUIREMENTS, "mlflow"}
    assert requirements_utils._MODULES_TO_PACKAGES is None
