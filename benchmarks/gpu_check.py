"""Helpers of benchmarks/gpu_check.sh (runnable on a CPU too, where they check the CPU path):

  gpu_check.py loaders SHARDS MODEL_URI   the registered model through every loader on this
      node: mlflow.pyfunc.load_model (no model_config, as a user or `mlflow models serve` loads
      it), mlflow.pytorch.load_model, and our graph moved to the GPU (what `predict` runs);
      each must give the probabilities of the CPU graph, and the accuracy is printed.
  gpu_check.py imports IMPORTTIME_LOG     from `python -X importtime` stderr: the total, the
      heaviest top-level packages, and who imported transformers, pandas and pyarrow.
  gpu_check.py heat-shards DEST [MEMBERS] the second use case's shards (use-cases/heat-diffusion:
      its simulator, its pairs, itwinai_hpc.data.write_shards) without the NetCDF file between
      them, whose xarray and h5netcdf the GPU image lacks: the same pairs its preprocess.py
      writes from generate.py's file (tests/test_gpu_check.py compares the two).
  gpu_check.py image-site DEST            DEST filled with links to what the GPU image's Python
      has (IMAGE_HAS and what they require), from this Python's environment: a venv whose .pth
      names DEST lacks everything else, as the GPU node does (`gpu_check.sh rehearse`).
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from pathlib import Path

# What the GPU machine's Python has (the device README): torch and what it requires, h5py,
# jinja2, pyyaml, numpy. Everything else the run needs comes from the carried wheels.
IMAGE_HAS = ("torch", "numpy", "h5py", "jinja2", "pyyaml")


def loaders(shards: str, uri: str) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch
    import numpy as np
    import torch

    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml import registry, tracking
    from itwinai_hpc.ml.predict import inference_device

    tracking.configure(None)
    manifest = read_manifest(shards)
    images, labels = read_rows(manifest, "test", 0, manifest.splits["test"].num_samples)
    device = inference_device()
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                 if device.type == "cuda" else ""))
    reference = registry.load_model(uri)(torch.from_numpy(images)).detach().numpy()

    t0 = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(uri)
    probs = pyfunc.predict(images)
    report("pyfunc", probs, reference, labels, time.perf_counter() - t0)
    t0 = time.perf_counter()
    graph = mlflow.pytorch.load_model(uri)
    report("pytorch", graph(torch.from_numpy(images)).detach().numpy(), reference, labels,
           time.perf_counter() - t0)
    t0 = time.perf_counter()
    on_device = registry.load_model(uri, device)
    with torch.inference_mode():
        out = torch.cat([on_device(torch.from_numpy(images[i:i + 1000]).to(device)).cpu()
                         for i in range(0, len(images), 1000)]).numpy()
    # On a GPU, convolutions run in TF32 by default (cudnn.allow_tf32): probabilities move by
    # up to ~1e-3 (emulated on a CPU with a trained mnist-cnn), the classes hardly at all.
    report(f"graph on {device}", out, reference, labels, time.perf_counter() - t0,
           atol=1e-4 if device.type == "cpu" else 1e-2)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)


def report(name: str, probs, reference, labels, seconds: float, *, atol: float = 1e-4) -> None:
    """One loader's result beside the CPU graph's: the same probabilities within `atol` and the
    same classes for all but 0.1% of the images, or exit 1."""
    import numpy as np

    diff = float(np.abs(probs - reference).max())
    agree = float((probs.argmax(axis=1) == reference.argmax(axis=1)).mean())
    acc = float((probs.argmax(axis=1) == labels).mean())
    same = diff <= atol and agree >= 0.999
    print(f"{name}: loaded and predicted {len(labels)} in {seconds:.2f} s, accuracy {acc:.4f}, "
          f"{'same as' if same else 'DIFFERENT from'} the CPU graph (largest probability "
          f"difference {diff:.1e}, classes agree on {agree:.2%})")
    if not same:
        raise SystemExit(1)


def imports(log: str) -> None:
    lines = []
    for line in open(log):
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            lines.append((int(m[1]), int(m[2]), len(m[3]), m[4]))
    own = Counter()
    for self_us, _, _, name in lines:
        own[name.split(".")[0]] += self_us
    print(f"imports: {sum(own.values()) / 1e6:.2f} s in all; heaviest: " + ", ".join(
        f"{k} {v / 1e6:.2f} s" for k, v in own.most_common(8)))
    for target in ("transformers", "pandas", "pyarrow", "torch._dynamo", "matplotlib"):
        for i, (_, cum, indent, name) in enumerate(lines):
            if name == target:
                chain, level = [f"{name} {cum / 1e6:.2f} s"], indent
                for _, _, indent2, name2 in lines[i + 1:]:   # parents follow, less indented
                    if indent2 < level:
                        chain.append(name2)
                        level = indent2
                print(f"imports: {' <- '.join(chain) if len(chain) > 1 else chain[0]}"
                      + ("" if len(chain) > 1 else " (at run time, by a function)"))
                break
        else:
            print(f"imports: {target} not imported")


def heat_shards(dest: str, members: int = 24) -> None:
    """generate.py's ensemble (its defaults but `members`) as preprocess.py pairs it."""
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "use-cases" / "heat-diffusion"))
    from heat_forecast.pairs import SPLITS, make_pairs, pair_index, split_members
    from heat_forecast.simulate import simulate

    from itwinai_hpc.data import write_shards

    # generate.py's defaults (times, size, substeps, seed) and preprocess.py's lead, written
    # again: those scripts import xarray at their top. tests/ml/test_gpu_check.py keeps them equal.
    times, lead = 9, 1
    temperature, kappa, source = simulate(members, times, 64, 20, 0)
    chosen = split_members(members)
    splits = {s: make_pairs(temperature, kappa, source, pair_index(chosen[s], times, lead), lead)
              for s in SPLITS}
    write_shards(dest, splits, dataset="heat-diffusion")
    print(f"heat-diffusion shards in {dest}: " + ", ".join(
        f"{s} {len(splits[s]['inputs'])}" for s in SPLITS) + f" pairs ({members} members)")


def image_site(dest: str) -> None:
    import importlib.metadata as md

    from packaging.requirements import Requirement

    out, todo, seen = Path(dest), list(IMAGE_HAS), set()
    out.mkdir(parents=True, exist_ok=True)
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].startswith("..")}:
            if top not in ("__pycache__", "bin") and not (out / top).exists():
                (out / top).symlink_to(site / top)
    print(f"{len(seen)} distributions linked into {out}: {', '.join(sorted(seen))}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "loaders":
        loaders(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "imports":
        imports(sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "heat-shards":
        heat_shards(sys.argv[2], *map(int, sys.argv[3:]))
    elif len(sys.argv) == 3 and sys.argv[1] == "image-site":
        image_site(sys.argv[2])
    else:
        raise SystemExit(__doc__)
