"""The end of a training run: best weights -> test evaluation -> the served model (raw pixels
in, probabilities out) registered with its contract and the test figures -> the final
checkpoint, which marks the run finished so that a requeued job does not register twice.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.tasks import EXAMPLES_KEPT, metrics_of
from itwinai_hpc.ml.training_state import Training, TrainingFailed, TrainResult

MISCLASSIFIED_SHOWN = 32


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def finish(t: Training) -> TrainResult:
    ctx, log = t.ctx, t.log
    if t.best.state is None:   # the same on every rank: the validation is summed over ranks
        raise TrainingFailed(
            f"no epoch of {t.epochs} had a finite {t.session.metric} and val_loss (non-finite "
            "outputs: the weights diverged); nothing is registered. Usual cause: a learning "
            "rate too high (trainer.lr, trainer.max_lr)")
    # DDP must leave every rank with the same weights: gather each rank's hash to check.
    hashes = D.all_gather_object(ctx, weights_sha256(t.model))
    if t.best.state is not None:
        t.model.load_state_dict(t.best.state)
    classes = t.config.task == "classification"
    test = t.evaluate(t.loader("test"), keep_examples=MISCLASSIFIED_SHOWN if classes
                      else EXAMPLES_KEPT)
    result = TrainResult("finished", t.epochs, t.run_id,
                         val_accuracy=t.best.metric if classes else None,
                         test_accuracy=test.accuracy, weights_sha256=hashes[ctx.rank])
    if ctx.is_main:
        with tempfile.TemporaryDirectory() as tmp:
            if t.manifest.arrays:   # shards of write_shards: stored dtype and shape in
                from itwinai_hpc.ml.served_arrays import registration as arrays_registration

                registration = arrays_registration(t, test, Path(tmp))
            else:
                registration = served_registration(t, test, Path(tmp))
            result.model_version, result.champion = t.session.register(
                registration, test=test, best_metric=t.best.metric, epochs=t.epochs)
        alias, metric = t.session.alias, t.session.metric
        scores = ", ".join(f"test_{k} {v:.4f}" for k, v in metrics_of(test).items())
        log(f"best {metric} {t.best.metric:.4f} (epoch {t.best.epoch}), {scores}; "
            f"registered {t.session.model_name} version "
            f"{result.model_version}" + (f" as @{alias}" if result.champion else
                                         f" (the current @{alias} is better or equal)"),
            flush=True)
        written = t.session.write_sweep_result(t.best.metric, result.model_version,
                                               result.champion)
        if written:
            log(f"sweep result -> {written}", flush=True)
    result.model_version = D.broadcast_object(ctx, result.model_version)
    t.checkpoint(t.epochs, 0, (0.0, 0.0), finished=True, model_version=result.model_version)
    if ctx.is_main:
        for rank, sha in enumerate(hashes):
            log(f"[rank {rank}] final weights sha256 {sha}", flush=True)
        t.session.finished(hashes)
    return result


def served_registration(t: Training, test, tmp: Path):
    """The Registration of the served model: the trained net behind raw-pixel input, its
    contract as metadata and description, its weights as a plain state dict beside it."""
    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.ml import served
    from itwinai_hpc.ml.registry import Registration
    from itwinai_hpc.ml.tasks import build

    m = t.manifest
    net = build(t.config, m)   # a fresh CPU copy: registered name or import path
    net.load_state_dict({k: v.cpu() for k, v in t.model.state_dict().items()})
    classifier = served.PixelClassifier(net, m.normalization["mean"], m.normalization["std"])
    classifier.eval()
    # Raw pixels, as users have them; batch of 2 so the exported batch size stays free.
    example = next(iter(ShardedLoader(m, "validation", 2, shuffle=False, rank=0, world_size=1,
                                      raw=True, verify=False)))[0].numpy()
    contract = served.contract(t.config.model, m.image_shape, m.num_classes, m.normalization)
    spec = {"architecture": t.config.model, "num_classes": m.num_classes,
            "image_shape": m.image_shape, "normalization": m.normalization, "output": "logits"}
    best = t.best
    return Registration(
        model=served.Probabilities(classifier).eval(), input_example=example,
        name=t.session.model_name, alias=t.session.alias, metric=t.session.metric,
        value=best.metric, mode=t.config.registry.mode or "max",
        tags={"test_accuracy": repr(test.accuracy), "best_epoch": str(best.epoch),
              "dataset": f"{m.dataset} {m.plan_id[:12]}"},
        metadata=contract,
        description=served.describe(contract, f"Best of {t.epochs} epochs: val_accuracy "
                                              f"{best.metric:.4f} (epoch {best.epoch}), "
                                              f"test_accuracy {test.accuracy:.4f}."),
        extra_files=served.trainable_files(classifier, tmp, spec))
