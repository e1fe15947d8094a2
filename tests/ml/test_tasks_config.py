"""Issue 22's train config for any task: models by import path, losses, metrics summed over ranks,
registry.select_by / mode, and the champion alias moving by the mode (a lower val_mse wins)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.config import TrainConfig, load_config, make_config


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_follow_the_task_and_mnist_keeps_its_own():
    c = make_config(TrainConfig)
    assert (c.task, c.loss, c.metrics, c.registry.select_by, c.registry.mode) == (
        "classification", "cross_entropy", ["accuracy"], "val_accuracy", "max")
    r = make_config(TrainConfig, {"task": "regression"})
    assert (r.loss, r.metrics, r.registry.select_by, r.registry.mode) == (
        "mse", ["rmse", "mae", "r2"], "val_rmse", "min")
    assert make_config(TrainConfig, {"task": "regression", "metrics": ["r2"]}).registry.mode \
        == "max"
    assert make_config(TrainConfig, {"task": "regression", "registry": {
        "select_by": "val_loss"}}).registry.mode == "min"


@pytest.mark.parametrize("yaml_text, line, field, words", [
    ("task: regression\nregistry:\n  select_by: val_accuracy\n", 3, "registry.select_by",
     ["val_loss, val_rmse, val_mae, val_r2"]),
    ("metrics: [rmse]\n", 1, "metrics.0", ["accuracy"]),
    ("loss: hinge\n", 1, "loss", ["cross_entropy, mse, l1, huber"]),
    ("model: mnist-cnn\nmodel_args: {width: 3}\n", 2, "model_args", ["registered name"]),
    # an import path's metric has no kind: which way is better must be said, never guessed
    ("task: regression\nmetrics: [rmse, 'mypkg.m:my_error']\nregistry:\n"
     "  select_by: val_my_error\n", 4, "registry.mode",
     ["'val_my_error' is better is unknown", "registry.mode to min", "or max"]),
    ("task: regression\nmetrics:\n  - mypkg.m:my_error\n", 3, "registry.mode",
     ["'val_my_error' is better is unknown"]),
])
def test_bad_task_keys_are_located(tmp_path, yaml_text, line, field, words):
    f = write(tmp_path / "train.yml", yaml_text)
    with pytest.raises(UserError) as e:
        load_config(TrainConfig, f)
    assert e.value.format().startswith(f"{f}:{line}: {field}: ")
    assert all(w in e.value.format() for w in words)


def test_an_import_path_metric_selects_by_the_mode_given(tmp_path):
    f = write(tmp_path / "train.yml", """\
        task: regression
        metrics: ['mypkg.m:my_error']
        registry: {select_by: val_my_error, mode: min}
        """)
    assert load_config(TrainConfig, f).registry.mode == "min"
    f = write(tmp_path / "train.yml", "metrics: [accuracy, 'mypkg.m:my_error']\n")
    assert load_config(TrainConfig, f).registry.mode == "max"       # val_accuracy: known


def test_metrics_are_sums_over_ranks_not_means_of_means():
    """Two ranks with different sample counts: all-reducing the sums gives the whole split's
    RMSE/MAE/R2 exactly; averaging per-rank values would not."""
    from itwinai_hpc.ml.metrics import make_sums

    torch.manual_seed(0)
    pred, target = torch.randn(10, 2, 3), torch.randn(10, 2, 3)
    parts = [make_sums(["rmse", "mae", "r2"], {}) for _ in range(2)]
    parts[0].add(pred[:2], target[:2])
    parts[1].add(pred[2:], target[2:])
    total = make_sums(["rmse", "mae", "r2"], {})
    total.load([a + b for a, b in zip(parts[0].vector(), parts[1].vector())])
    got = total.values()
    err = (pred - target).double()
    y = target.double()
    assert got["rmse"] == pytest.approx(float(err.pow(2).mean().sqrt()))
    assert got["mae"] == pytest.approx(float(err.abs().mean()))
    assert got["r2"] == pytest.approx(float(1 - err.pow(2).sum() / (y - y.mean()).pow(2).sum()))
    mean_of_means = (parts[0].values()["rmse"] + parts[1].values()["rmse"]) / 2
    assert abs(mean_of_means - got["rmse"]) > 1e-3


def test_accuracy_and_an_import_path_metric(tmp_path, monkeypatch):
    from itwinai_hpc.ml.metrics import make_sums, metric_name

    write(tmp_path / "mymetrics.py", """
        def bias(pred, target):
            return float((pred - target).mean())
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    from itwinai_hpc.ml.model_path import resolve_callable

    assert metric_name("mymetrics:bias") == "bias"
    s = make_sums(["accuracy"], {})
    s.add(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, 1]))
    assert s.values() == {"accuracy": pytest.approx(2 / 3)}
    c = make_sums(["mymetrics:bias"], {"bias": resolve_callable("mymetrics:bias")})
    c.add(torch.ones(3, 4), torch.zeros(3, 4))
    c.add(torch.zeros(1, 4), torch.zeros(1, 4))
    assert c.values() == {"bias": pytest.approx(0.75)}   # weighted by samples: (3*1 + 0) / 4


def test_losses_by_name_and_by_path(tmp_path, monkeypatch):
    from itwinai_hpc.ml.losses import build_loss
    from itwinai_hpc.ml.model_path import resolve_callable

    assert isinstance(build_loss("huber"), torch.nn.HuberLoss)
    assert isinstance(build_loss("torch.nn:SmoothL1Loss", resolve=resolve_callable),
                      torch.nn.SmoothL1Loss)
    write(tmp_path / "myloss.py", """
        def double_mse(pred, target):
            return 2 * ((pred - target) ** 2).mean()
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = build_loss("myloss:double_mse", resolve=resolve_callable)
    assert float(fn(torch.ones(2), torch.zeros(2))) == 2.0


def test_model_by_import_path_and_its_errors(tmp_path, monkeypatch):
    from itwinai_hpc.ml.model_path import build_from_path

    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    write(pkg / "__init__.py", "")
    write(pkg / "nets.py", """
        import torch

        class Net(torch.nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.lin = torch.nn.Linear(width, width)

            def forward(self, x):
                return self.lin(x)

        def not_a_model(width=4):
            return [width]

        BROKEN = 3
    """)
    write(pkg / "boom.py", "raise RuntimeError('no GPU driver here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    where = ("train.yml", 7)
    assert isinstance(build_from_path("mypkg.nets:Net", {"width": 3}, where=where),
                      torch.nn.Module)
    cases = [
        ("elsewhere.nets:Net", {}, "model", ["no module named 'elsewhere'", "sys.path searched",
                                             "PYTHONPATH"]),
        ("mypkg.nets:Nett", {}, "model", ["has no attribute 'Nett'", "Net"]),
        ("mypkg.nets:not_a_model", {}, "model", ["returned a list, not a torch.nn.Module"]),
        ("mypkg.nets:BROKEN", {}, "model", ["not a callable"]),
        ("mypkg.nets:Net", {"depth": 2}, "model_args", ["unexpected keyword", "depth"]),
        ("mypkg.boom:Net", {}, "model", ["RuntimeError: no GPU driver here", "boom.py:1"]),
    ]
    for spec, args, field, words in cases:
        with pytest.raises(UserError) as e:
            build_from_path(spec, args, where=where)
        text = e.value.format()
        assert text.startswith(f"train.yml:7: {field}: "), text
        assert all(w in text for w in words), text
    sys.modules.pop("mypkg.nets", None)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from itwinai_hpc.ml import tracking

    tracking.configure(f"file:{tmp_path / 'mlruns'}")
    return tracking


def test_champion_by_min_moves_to_a_lower_val_mse_only(store):
    from mlflow import MlflowClient

    from itwinai_hpc.ml.registry import Registration, log_and_register

    def register(value: float):
        model = torch.nn.Linear(3, 3).eval()
        store.start_run("registry-min")
        try:
            return log_and_register(Registration(
                model, torch.zeros(2, 3).numpy(), name="reg", alias="champion",
                metric="val_mse", value=value, mode="min"))
        finally:
            store.end_run()

    assert register(0.5) == ("1", True)
    assert register(0.2) == ("2", True)     # lower is better: takes the alias
    assert register(0.3) == ("3", False)    # higher: does not
    assert register(0.2) == ("4", False)    # a tie keeps the holder
    assert MlflowClient().get_model_version_by_alias("reg", "champion").version in ("2", 2)
