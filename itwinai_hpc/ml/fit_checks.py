"""Whether a training's parts fit together before its first step: the checkpoint it would
resume (written by as many processes, for the same schedule and the same model with the same
shapes) and the model and the shards (it takes their images, it gives one score per class).
Each misfit is one UserError saying what the checkpoint or the model is for, instead of a
torch traceback from load_state_dict or the first forward pass.
"""

from __future__ import annotations

from itwinai_hpc.core.errors import UserError


def check_resumable(ck: dict, world: int, epochs: int, where: str) -> None:
    if ck["world_size"] != world:
        raise UserError(f"this checkpoint was written by {ck['world_size']} processes, this run "
                        f"has {world}; the data split and LR schedule depend on it. Resume with "
                        f"{ck['world_size']} processes, or use a new --checkpoint-dir", file=where)
    if ck["epochs"] != epochs:
        raise UserError(f"this checkpoint is for a {ck['epochs']}-epoch schedule, this run asks "
                        f"for {epochs}; resume with --epochs {ck['epochs']}, or use a new "
                        "--checkpoint-dir", file=where)


def _data(num_classes, image_shape) -> str:
    from itwinai_hpc.data.manifest_checks import dims

    return f"{num_classes} classes of {dims(image_shape)} images"


def check_same_model(ck: dict, name: str, model, manifest, where: str) -> None:
    """Refuse a checkpoint written for another model (another `model:`, or the same one with
    other shapes: the shards' class count changed) before load_state_dict fails with a torch
    traceback; the message says what the checkpoint is for."""
    fix = ("use a new --checkpoint-dir for this training (or delete this checkpoint to start "
           "over)")
    config = ck.get("config") if isinstance(ck.get("config"), dict) else {}
    theirs = config.get("model")
    if theirs and theirs != name:
        raise UserError(f"this checkpoint is for model {theirs!r}, this run trains {name!r}; "
                        f"{fix}", file=where, field="model")
    state, mine = ck.get("model"), model.state_dict()
    if not isinstance(state, dict):
        return
    differ = next(((k, tuple(state[k].shape), tuple(v.shape)) for k, v in mine.items()
                   if k in state and hasattr(state[k], "shape")
                   and tuple(state[k].shape) != tuple(v.shape)), None)
    missing = sorted(set(mine) ^ set(state))
    if differ is None and not missing:
        return
    data = ck.get("data") if isinstance(ck.get("data"), dict) else {}
    written_for = (f" on {_data(data.get('num_classes'), data.get('image_shape'))}"
                   if data.get("num_classes") and data.get("image_shape") else "")
    if differ is not None:
        from itwinai_hpc.data.manifest_checks import dims

        key, a, b = differ
        what = f"{key} is {dims(a)} in it, {dims(b)} in this run"
    else:
        what = f"{missing[0]} is in only one of them"
    raise UserError(f"this checkpoint is for model {theirs or 'another model'!r}{written_for}, "
                    f"whose weights do not fit this run's {name!r} on "
                    f"{_data(manifest.num_classes, manifest.image_shape)} ({what}); {fix}",
                    file=where, field="model")


def check_model_takes(model, name: str, manifest) -> None:
    """One forward pass of two blank images (eval mode, no gradient, on the CPU, before any
    step): the model must take the shards' images and give a score per class. Otherwise a
    UserError naming the manifest, not a shape error inside torch at the first step. Changes
    no weight, statistic or random state."""
    import torch

    from itwinai_hpc.data.manifest_checks import dims

    shape, where = list(manifest.image_shape), str(manifest.path)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 1, *shape))
    except (RuntimeError, ValueError) as e:
        first = next((x for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise UserError(f"model {name!r} cannot take these shards' {dims(shape)} images "
                        f"({first}); choose a model built for {dims(shape)} images, or "
                        "preprocess the data to the image size the model expects",
                        file=where, field="image_shape") from None
    finally:
        model.train(training)
    if tuple(out.shape) != (2, manifest.num_classes):
        raise UserError(f"model {name!r} gives {dims(out.shape[1:])} scores per image, the "
                        f"shards have {manifest.num_classes} classes", file=where,
                        field="num_classes")
