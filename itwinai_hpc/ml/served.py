"""The model as a user gets it from the registry, and its contract: raw pixels in (uint8, 0-255,
N x H x W, the form MNIST ships in), normalisation inside, class probabilities out.

A network is trained on normalised floats; fed `x/255` instead it silently loses a third of its
accuracy. So the registered model takes the pixels users have and normalises them itself with
the training data's mean and std, and its signature refuses any other dtype. The same weights
also travel as a plain state dict (extra_files/), which `load_trainable` turns back into an
`nn.Module` that can be `.eval()`ed and fine-tuned: `mlflow.pytorch.load_model` returns a
torch.export graph, whose `.eval()`/`.train()` raise. No MLflow calls here except in
`load_trainable`; nothing here knows about ranks or schedulers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TRAINABLE_WEIGHTS = "trainable_state_dict.pt"
TRAINABLE_SPEC = "trainable.json"


class PixelClassifier(torch.nn.Module):
    """`net` (trained on normalised N x 1 x H x W floats) behind raw pixels: takes uint8 (or
    float on the same 0-255 scale) N x H x W or N x 1 x H x W. `forward` returns logits (train
    it with CrossEntropyLoss); `predict_proba` returns probabilities."""

    def __init__(self, net: torch.nn.Module, mean: float, std: float):
        super().__init__()
        self.net = net
        # (x/255 - mean)/std as one multiply-add; buffers, so they travel with the state dict.
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std), dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(-mean / std, dtype=torch.float32))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return x * self.scale + self.shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(pixels))

    def predict_proba(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(pixels).float(), dim=1)


class Probabilities(torch.nn.Module):
    """What is exported and registered: pixels -> probabilities (rows sum to 1)."""

    def __init__(self, classifier: PixelClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.predict_proba(pixels)


def graph_on(graph, device):
    """A torch.export graph as `mlflow.pytorch.load_model` returns it (CPU weights), moved to
    `device`: its weights and buffers, and the device its recorded input checks expect (the
    export's, otherwise: a GPU tensor would fail them)."""
    device = torch.device(device)
    for node in graph.graph.nodes:
        if isinstance(node.kwargs.get("device"), torch.device):
            node.kwargs = {**node.kwargs, "device": device}
    graph.recompile()
    return graph.to(device)


def contract(architecture: str, image_shape: list[int], num_classes: int,
             normalization: dict[str, float]) -> dict[str, str]:
    """The model's input/output contract, for the MLmodel metadata and the version page."""
    shape = ", ".join(str(s) for s in image_shape)
    return {
        "input": f"uint8 pixels 0-255, shape (N, {shape}); no "
                 "normalisation needed (any other dtype is refused by the signature)",
        "output": f"float32 probabilities, shape (N, {num_classes}); rows sum to 1; "
                  "argmax is the class",
        "normalisation": f"inside the model: (x/255 - {normalization['mean']:.4f}) / "
                         f"{normalization['std']:.4f}",
        "architecture": architecture,
        "trainable": f"extra_files/{TRAINABLE_WEIGHTS} (state dict) + extra_files/"
                     f"{TRAINABLE_SPEC}; itwinai_hpc.ml.served.load_trainable(URI) gives an "
                     "nn.Module returning logits",
    }


def describe(meta: dict[str, str], extra: str = "") -> str:
    """The model version's description (markdown) from its contract."""
    lines = [f"- **{k}**: {v}" for k, v in meta.items()]
    note = ("`mlflow.pyfunc.load_model(URI).predict(uint8_images)` and `mlflow models serve` "
            "return the probabilities; `mlflow.pytorch.load_model(URI)` returns a torch.export "
            "graph to call (already in eval mode; `.eval()`/`.train()` raise on it).")
    return "\n".join([*lines, "", note] + ([extra] if extra else []))


def trainable_files(classifier: PixelClassifier, folder: Path, spec: dict) -> list[str]:
    """Write the state dict and the spec `load_trainable` needs into `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    weights, meta = folder / TRAINABLE_WEIGHTS, folder / TRAINABLE_SPEC
    torch.save({k: v.detach().cpu() for k, v in classifier.state_dict().items()}, weights)
    meta.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return [str(weights), str(meta)]


def load_trainable(model_uri: str, *, tracking_uri: str | None = None) -> torch.nn.Module:
    """A registered model as an `nn.Module` (eval mode) that can be fine-tuned:
    `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/model`. MNIST's: a
    PixelClassifier (logits out); a model given by import path: that module itself, rebuilt
    with its model_args (its package importable). Reads only tensors (torch.load
    weights_only=True), never a pickle."""
    import mlflow

    from itwinai_hpc.ml.models import build_model

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    extra = root / "extra_files"
    spec = json.loads((extra / TRAINABLE_SPEC).read_text())
    if "model_args" in spec:   # served_arrays: the use case's own nn.Module, by import path
        from itwinai_hpc.ml.model_path import build_from_path

        net = build_from_path(spec["architecture"], spec["model_args"])
        net.load_state_dict(torch.load(extra / TRAINABLE_WEIGHTS, map_location="cpu",
                                       weights_only=True))
        return net.eval()
    net = build_model(spec["architecture"], spec["num_classes"])
    model = PixelClassifier(net, spec["normalization"]["mean"], spec["normalization"]["std"])
    state = torch.load(extra / TRAINABLE_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
