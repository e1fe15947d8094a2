"""The test figures drawn by a process of their own (ml/figure_process.py) while the trainer
exports the model: the same PNGs as drawn in-process, and when that process cannot draw (it
fails, it hangs, the registration fails first) the trainer is told and draws itself, and no
process is left behind."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
from test_figures import evaluation

from itwinai_hpc.ml import figure_process
from itwinai_hpc.ml.tasks import FieldExample, RegressionEvaluation

PNG = b"\x89PNG\r\n\x1a\n"


def pixels_of(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def in_process_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_the_process_draws_what_the_trainer_would_have_drawn(tmp_path):
    ev = evaluation(11)
    drawing = figure_process.start(ev, "test", "classification", tmp_path / "fig")
    assert drawing is not None
    files = drawing.files()
    assert files is not None and set(files) == {"confusion_matrix.png", "misclassified.png"}
    here = figure_process.figures_of(ev, "test", "classification")
    for name, path in files.items():
        data = path.read_bytes()
        assert data.startswith(PNG), name
        # Pixel for pixel the picture this process draws from the same evaluation.
        assert np.array_equal(pixels_of(data), pixels_of(in_process_png(here[name]))), name
    assert drawing.proc.returncode == 0


def test_a_regressions_fields_and_scatter_are_drawn_too(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.normal(size=(2, 8, 8)).astype(np.float32)
    examples = [FieldExample(i, true + 0.1 * i, true) for i in range(3)]
    scatter = rng.normal(size=(50, 2)).astype(np.float32)
    ev = RegressionEvaluation(1.0, 50, {"rmse": 0.1, "mae": 0.08, "r2": 0.9}, examples, scatter)
    files = figure_process.start(ev, "test", "regression", tmp_path / "fig").files()
    assert files is not None and set(files) == {"fields.png", "scatter.png"}
    here = figure_process.figures_of(ev, "test", "regression")
    for name, path in files.items():
        assert np.array_equal(pixels_of(path.read_bytes()),
                              pixels_of(in_process_png(here[name]))), name


class OnlyHere:
    """A class the drawing process cannot import (it lives in this test module only)."""


def test_a_failed_drawing_process_is_reported_and_the_caller_draws(tmp_path, capfd):
    ev = evaluation(3)
    ev.extra = {"unpicklable-there": OnlyHere()}   # pickles here, cannot load in the child
    drawing = figure_process.start(ev, "test", "classification", tmp_path / "fig")
    assert drawing is not None
    assert drawing.files() is None
    err = capfd.readouterr().err
    assert "test figures: the drawing process exited 1" in err
    assert "drawing them here instead" in err
    assert "OnlyHere" in err or "AttributeError" in err or "ModuleNotFoundError" in err


def test_a_drawing_that_takes_too_long_is_stopped(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(figure_process, "TIMEOUT_S", 0.01)
    drawing = figure_process.start(evaluation(3), "test", "classification", tmp_path / "fig")
    assert drawing.files() is None
    assert drawing.proc.returncode is not None     # killed and reaped, not left running
    assert "still drawing after" in capfd.readouterr().err


def test_stop_leaves_no_process_behind_when_the_registration_failed_first(tmp_path):
    drawing = figure_process.start(evaluation(3), "test", "classification", tmp_path / "fig")
    drawing.stop()
    assert drawing.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(drawing.proc.pid, 0)


def test_no_process_can_be_started_the_caller_draws(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(figure_process.sys, "executable", str(tmp_path / "no-python"))
    assert figure_process.start(evaluation(3), "test", "classification", tmp_path / "fig") \
        is None
    assert "cannot start the drawing process" in capfd.readouterr().err


def test_an_evaluation_that_cannot_be_handed_over_is_drawn_here(tmp_path, capfd):
    ev = evaluation(3)
    ev.extra = {"a lambda": lambda: 0}     # pickle refuses it
    assert figure_process.start(ev, "test", "classification", tmp_path / "fig") is None
    assert "cannot hand the evaluation to a drawing process" in capfd.readouterr().err


def test_the_child_imports_nothing_from_the_jobs_working_directory(tmp_path, monkeypatch):
    """`python -m` puts the working directory first on sys.path; under SLURM that is the
    workflow's workdir, a project folder others may write to. A planted pickle.py ran there."""
    planted = tmp_path / "workdir"
    planted.mkdir()
    marker = tmp_path / "planted-code-ran"
    for name in ("pickle", "numpy", "matplotlib"):
        (planted / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted)
    files = figure_process.start(evaluation(3), "test", "classification",
                                 tmp_path / "fig").files()
    assert files is not None and not marker.exists()


def test_the_package_goes_on_pythonpath_only_for_a_source_checkout(monkeypatch):
    root = os.path.realpath(figure_process.Path(figure_process.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    assert figure_process.child_env()["PYTHONPATH"] == os.pathsep.join([root, "/somewhere"])
    monkeypatch.setattr(figure_process.site, "getsitepackages", lambda: [root])
    assert figure_process.child_env()["PYTHONPATH"] == "/somewhere"   # installed: untouched


def test_with_one_cpu_nothing_is_started_and_the_caller_draws(tmp_path, monkeypatch):
    monkeypatch.setattr(figure_process.os, "sched_getaffinity", lambda pid: {0})
    assert figure_process.start(evaluation(3), "test", "classification", tmp_path / "fig") \
        is None
    assert not (tmp_path / "fig").exists()


def test_a_child_killed_by_a_signal_is_named_so(tmp_path, capfd):
    drawing = figure_process.start(evaluation(3), "test", "classification", tmp_path / "fig")
    drawing.proc.send_signal(signal.SIGTERM)   # long before it can have drawn anything
    assert drawing.files() is None
    assert "the drawing process was killed by SIGTERM" in capfd.readouterr().err


def test_figures_of_draws_exactly_the_files_the_trainer_expects():
    assert tuple(figure_process.figures_of(evaluation(3), "t", "classification")) == \
        figure_process.FIGURES["classification"]
