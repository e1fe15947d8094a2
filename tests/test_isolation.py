"""What one test sets process-wide does not reach the next (tests/conftest.py puts it back):
MLflow's tracking and registry URIs (tracking.configure) and its active experiment
(set_experiment), which it sets together with the environment variables every later
subprocess inherits. Checked in a pytest session of its own (pytester)
with this folder's conftest: a test that sets them, then one that must not see them."""

from __future__ import annotations

import re
from pathlib import Path

pytest_plugins = ["pytester"]

TWO_TESTS = '''
import os

from itwinai_hpc.ml import tracking


def test_a_points_mlflow_at_its_own_store(tmp_path):
    uri = tracking.configure(f"file:{tmp_path / 'mine'}")
    import mlflow
    assert mlflow.get_tracking_uri() == uri == os.environ["MLFLOW_TRACKING_URI"]
    assert mlflow.get_registry_uri() == uri == os.environ["MLFLOW_REGISTRY_URI"]
    mlflow.set_experiment("mine")      # sets MLFLOW_EXPERIMENT_ID for every later subprocess
    assert os.environ["MLFLOW_EXPERIMENT_ID"]


def test_b_does_not_see_that_store():
    import mlflow
    for value in (mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
                  os.environ.get("MLFLOW_TRACKING_URI", ""),
                  os.environ.get("MLFLOW_REGISTRY_URI", "")):
        assert "mine" not in value, value
    from mlflow.tracking import fluent
    assert fluent._active_experiment_id is None and "MLFLOW_EXPERIMENT_ID" not in os.environ
'''


def this_folders_conftest(pytester) -> None:
    """tests/conftest.py in the pytester session, with the modules of tests/ it imports beside
    it (found in its import lines, so that a new one needs no change here)."""
    here = Path(__file__).parent
    text = (here / "conftest.py").read_text()
    pytester.makeconftest(text)
    for module in re.findall(r"^(?:from|import) (\w+)", text, re.M):
        if (here / f"{module}.py").is_file():
            pytester.makepyfile(**{module: (here / f"{module}.py").read_text()})


def test_mlflow_uris_set_by_one_test_are_put_back_before_the_next(pytester):
    this_folders_conftest(pytester)
    pytester.makepyfile(test_two=TWO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-q",
                                "test_two.py")
    result.assert_outcomes(passed=2)


MODULE_FIXTURE = '''
import pytest

from itwinai_hpc.ml import tracking


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory):
    return tracking.configure(f"file:{tmp_path_factory.mktemp('mine')}")


def test_uses_the_module_store(champion_store):
    import mlflow
    assert mlflow.get_registry_uri() == champion_store


def test_still_sees_it(champion_store):
    import os
    assert os.environ["MLFLOW_REGISTRY_URI"] == champion_store
'''


def test_mlflow_uris_set_by_a_module_fixture_stay_in_that_module(pytester):
    this_folders_conftest(pytester)
    pytester.makepyfile(test_1_module=MODULE_FIXTURE,
                        test_2_next=TWO_TESTS.split("def test_a_")[0]
                        + "def test_b_" + TWO_TESTS.split("def test_b_")[1])
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)
