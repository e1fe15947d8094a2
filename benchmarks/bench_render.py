"""Render a generated 100-step workflow (a DAG with fan-in); time each phase against a plain
Jinja baseline, and time `submit --backend local` against the bare CLI start.

1. render: render_run() builds a fresh Jinja environment and compiles the three entry templates
   (and their partials) on every call, then renders 2 scripts per step and submit.sh. The
   baseline does the same amount of templating work the same way: per call a fresh environment
   over a loader of 3 sbatch-like templates, compiled, and 2 * STEPS + 1 renders. The ratio is
   what loading, validation, planning and the quoting filters cost on top of templating.
2. local submit: `itwinai-hpc submit WF --backend local` returns once the runner is spawned
   (the step runs on in the background). Baseline: `itwinai-hpc --version`, the same interpreter
   start and CLI import. The difference is render + write + spawn. (This was a wall-clock
   assert in tests/test_local_backend.py, which a loaded 2-core machine made flaky.)

Run: .venv/bin/python benchmarks/bench_render.py [STEPS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2

from itwinai_hpc.render.folder import render_run, render_workflow
from itwinai_hpc.render.plan import plan
from itwinai_hpc.workflow.load import read_workflow, resolve_workflow

CLI = [sys.executable, "-m", "itwinai_hpc.cli"]
BASELINE_TEMPLATE = ("#!/bin/bash\n#SBATCH --job-name={{ n }}\n#SBATCH --time=01:00:00\n"
                     "set -euo pipefail\n{% for a in args %}export A{{ loop.index }}={{ a }}\n"
                     "{% endfor %}srun python -m {{ n }} --in {{ d }}\n")


def generate(n: int) -> str:
    lines = ["name: bench", "vars:", "  data: /scratch/data", "defaults:",
             "  resources: {time: '01:00:00', cpus-per-task: 4, mem: 8G}",
             "  container: {image: img.sif, binds: ['${data}']}", "steps:"]
    for i in range(n):
        needs = [f"s{j}" for j in (i - 1, i // 2) if 0 <= j < i]
        launcher = ("none", "srun", "torchrun")[i % 3]
        lines.append(f"  - name: s{i}\n    command: python -m step{i}\n    launcher: {launcher}\n"
                     f"    args: [--in, '${{data}}/s{i}', --seed, {i}]\n"
                     f"    needs: [{', '.join(sorted(set(needs)))}]")
    return "\n".join(lines) + "\n"


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def plain_jinja(n: int) -> None:
    """The baseline: what render_run does with templates, without the workflow around them."""
    env = jinja2.Environment(loader=jinja2.DictLoader(
        {name: BASELINE_TEMPLATE for name in ("sbatch", "local", "submit")}), trim_blocks=True)
    for i in range(n):
        env.get_template("sbatch").render(n=f"s{i}", d="/x", args=["a", "b"])
        env.get_template("local").render(n=f"s{i}", d="/x", args=["a", "b"])
    env.get_template("submit").render(n="all", d="/x", args=[f"s{i}" for i in range(n)])


def seconds(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def bench_local_submit(tmp: Path, repeat: int = 5) -> tuple[float, float]:
    """Medians of `submit --backend local` (a 1-step workflow) and of `--version`."""
    wf = tmp / "one.yml"
    wf.write_text("name: one\ndefaults: {container: none}\n"
                  "steps:\n  - {name: s, command: 'true'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    submits, starts = [], []
    for i in range(repeat):                     # alternate, so both see the same machine load
        starts.append(seconds(CLI + ["--version"], tmp, env))
        submits.append(seconds(CLI + ["submit", str(wf), "--backend", "local", "-o",
                                      str(tmp / f"local-{i}")], tmp, env))
    return statistics.median(submits), statistics.median(starts)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wf = tmp / "wf.yml"
        wf.write_text(generate(n))

        def load():
            return resolve_workflow(read_workflow(wf), wf, run_dir=tmp / "run", run_id="b-1")

        t_load = best(load)
        loaded = load()
        t_plan = best(lambda: plan(loaded.workflow))
        t_render = best(lambda: render_run(loaded))
        counter = iter(range(10**6))
        t_write = best(lambda: render_workflow(wf, run_dir=tmp / f"w{next(counter)}",
                                               run_id="b").write())
        plain_jinja(n)                          # warm-up: both sides have imported jinja
        t_jinja = best(lambda: plain_jinja(n))
        submit, start = bench_local_submit(tmp)
    total = t_load + t_render
    print(f"{n}-step workflow (best of 5):")
    print(f"  load + validate   {t_load * 1000:8.1f} ms")
    print(f"  plan              {t_plan * 1000:8.1f} ms")
    print(f"  render (memory)   {t_render * 1000:8.1f} ms   (plans again, compiles the templates)")
    print(f"  load + render + write {t_write * 1000:8.1f} ms")
    print(f"  baseline: fresh Jinja environment, 3 templates compiled, {2 * n + 1} renders "
          f"{t_jinja * 1000:.1f} ms; load+render / baseline = {total / t_jinja:.1f}x")
    print(f"  per step: {total / n * 1000:.2f} ms")
    print("`submit --backend local` of a 1-step workflow, returns once the runner is spawned "
          "(median of 5):")
    print(f"  submit {submit * 1000:.0f} ms; baseline `--version` {start * 1000:.0f} ms; "
          f"ratio {submit / start:.1f}x (render + write + spawn: {(submit - start) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
