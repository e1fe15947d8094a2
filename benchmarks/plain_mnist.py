"""The plain torch loop as a process of its own: what `bench_train.py --whole-process` times
against `itwinai-hpc train` from process start to exit. The same model, optimizer, OneCycle
schedule, batch size, label smoothing, precision and memory format as the recipe it is given
(bench_train passes the train config's values), on the same shards: the whole train split held
in memory as normalised floats and sliced by hand, then the test accuracy. It imports torch,
numpy and the shard reader, not pydantic, MLflow or the trainer; it logs, validates,
checkpoints and registers nothing. Prints one JSON line: test_accuracy, train_s, samples_per_s.

Run: .venv/bin/python benchmarks/plain_mnist.py --data SHARDS [--model mnist-cnn] [--epochs 1]
     [--batch-size 128] [--optimizer adam] [--lr 1e-3] [--max-lr 0.01] [--pct-start 0.3]
     [--label-smoothing 0] [--seed 42] [--precision fp32|bf16] [--no-channels-last]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="mnist-cnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-lr", type=float, default=0.01)
    ap.add_argument("--pct-start", type=float, default=0.3)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    args = ap.parse_args()

    import torch

    from itwinai_hpc.data.rows import read_rows
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml.models import build_model

    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    manifest = read_manifest(args.data)
    norm = manifest.normalization

    def split(name: str):
        images, labels = read_rows(manifest, name, 0, manifest.splits[name].num_samples)
        x = torch.from_numpy(images).unsqueeze(1).float()
        return ((x / 255 - norm["mean"]) / norm["std"]).contiguous(memory_format=fmt), \
            torch.from_numpy(labels)

    torch.manual_seed(args.seed)
    model = build_model(args.model, manifest.num_classes).to(memory_format=fmt)
    x, y = split("train")
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    bs, n = args.batch_size, len(y)
    steps = -(-n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.max_lr,
                                                total_steps=args.epochs * steps,
                                                pct_start=args.pct_start)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    bf16 = args.precision == "bf16"
    g = torch.Generator().manual_seed(args.seed)
    train_s = 0.0
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t0
    tx, ty = split("test")
    model.eval()
    with torch.inference_mode():
        right = sum(int((model(tx[i:i + args.eval_batch_size]).argmax(1)
                         == ty[i:i + args.eval_batch_size]).sum())
                    for i in range(0, len(ty), args.eval_batch_size))
    print(json.dumps({"test_accuracy": right / len(ty), "train_s": train_s,
                      "samples_per_s": args.epochs * n / train_s}), flush=True)


if __name__ == "__main__":
    main()
