"""The registered model of a training on shards of write_shards (any dtype and shape, a model
given by import path, a regression): the training inputs' dtype and sample shape in, the
model's outputs out (a classification's: probabilities). Its MLflow signature says both; it
loads through plain `mlflow.pyfunc.load_model(URI).predict(array)` and `mlflow.pytorch`.

A floating input is cast to the model's parameter dtype inside (the same cast the trainer made:
tasks.cast), so the signature's dtype is the stored one (float32 fields, float64, int16 ...).
The weights also travel as a plain state dict with the model's import path and arguments
(extra_files/), for a use case that rebuilds its own nn.Module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from itwinai_hpc.ml.served import TRAINABLE_SPEC, TRAINABLE_WEIGHTS


class ArrayModel(torch.nn.Module):
    """`net` behind the stored inputs: cast to the net's dtype when floating; outputs as the
    net gives them (regression), or softmax probabilities (classification)."""

    def __init__(self, net: torch.nn.Module, probabilities: bool = False):
        super().__init__()
        self.net = net
        self.probabilities = probabilities
        self.dtype = next((p.dtype for p in net.parameters()), torch.float32)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.to(self.dtype) if inputs.is_floating_point() else inputs
        out = self.net(x)
        return torch.softmax(out.float(), dim=1) if self.probabilities else out


def contract(config, manifest) -> dict[str, str]:
    """The model's input/output contract for the MLmodel metadata and the version page."""
    from itwinai_hpc.data.arrays import array_dtype, array_shape

    def shape(name: str) -> str:
        return ", ".join(["N", *(str(s) for s in array_shape(manifest, name))])

    out = (f"{array_dtype(manifest, 'targets')} values, shape ({shape('targets')}), as the "
           "training targets" if config.task == "regression" and "targets" in manifest.arrays
           else f"float32 probabilities, shape (N, {manifest.num_classes}); argmax is the class")
    return {
        "task": config.task,
        "input": f"{array_dtype(manifest, 'inputs')} array, shape ({shape('inputs')}), as the "
                 "training shards' inputs (no normalisation added)",
        "output": out,
        "architecture": config.model,
        "trainable": f"extra_files/{TRAINABLE_WEIGHTS} (state dict) + extra_files/"
                     f"{TRAINABLE_SPEC} (the model's import path and model_args)",
    }


def registration(t, test, tmp: Path):
    """The Registration of a training on write_shards' shards (finish.py)."""
    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.ml import tasks
    from itwinai_hpc.ml.registry import Registration

    config, m = t.config, t.manifest
    net = tasks.build(config, m)
    net.load_state_dict({k: v.cpu() for k, v in t.model.state_dict().items()})
    model = ArrayModel(net.eval(), probabilities=config.task == "classification").eval()
    # Two stored samples, batch dimension free in the export and the signature.
    example = read_rows(m, "validation", 0, 2, verify=False)[0]
    meta = contract(config, m)
    spec = {"architecture": config.model, "model_args": dict(config.model_args),
            "task": config.task, "num_classes": m.num_classes, "arrays": m.arrays}
    folder = tmp / "trainable"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()},
               folder / TRAINABLE_WEIGHTS)
    (folder / TRAINABLE_SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    scores = tasks.metrics_of(test)
    best, reg = t.best, config.registry
    summary = (f"Best of {t.epochs} epochs: {reg.select_by} {best.metric:.4g} (epoch "
               f"{best.epoch}); " + ", ".join(f"test_{k} {v:.4g}" for k, v in scores.items()))
    return Registration(
        model=model, input_example=example, name=t.session.model_name, alias=t.session.alias,
        metric=t.session.metric, value=best.metric, mode=reg.mode or "max",
        tags={**{f"test_{k}": repr(v) for k, v in scores.items()},
              "best_epoch": str(best.epoch), "dataset": f"{m.dataset} {m.plan_id[:12]}",
              "task": config.task},
        metadata=meta, description="\n".join(
            [*(f"- **{k}**: {v}" for k, v in meta.items()), "",
             "`mlflow.pyfunc.load_model(URI).predict(array)` returns the outputs.", summary]),
        extra_files=[str(folder / TRAINABLE_WEIGHTS), str(folder / TRAINABLE_SPEC)])
