"""Render a generated 100-step workflow (a DAG with fan-in) and report the time per phase.

Baseline, side by side: the same number of plain Jinja renders of one sbatch-like template, so
the ratio says what validation, planning and quoting cost on top of templating itself.
Run: .venv/bin/python benchmarks/bench_render.py [STEPS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jinja2

from itwinai_hpc.plan import plan
from itwinai_hpc.render import render_run
from itwinai_hpc.workflow import load_workflow


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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "wf.yml"
        wf.write_text(generate(n))
        t_load = best(lambda: load_workflow(wf))
        loaded = load_workflow(wf)
        t_plan = best(lambda: plan(loaded.workflow))
        t_render = best(lambda: render_run(loaded, Path(tmp) / "run", "bench-1"))
        counter = iter(range(10**6))
        t_write = best(lambda: render_run(loaded, Path(tmp) / f"w{next(counter)}", "b").write())
        template = jinja2.Template("#!/bin/bash\n#SBATCH --job-name={{ n }}\n"
                                   "#SBATCH --time=01:00:00\nset -euo pipefail\n"
                                   "srun python -m {{ n }} --in {{ d }}\n")
        t_jinja = best(lambda: [template.render(n=f"s{i}", d="/x") for i in range(n + 1)])
    total = t_load + t_render
    print(f"{n}-step workflow (best of 5):")
    print(f"  load + validate   {t_load * 1000:8.1f} ms")
    print(f"  plan              {t_plan * 1000:8.1f} ms")
    print(f"  render (memory)   {t_render * 1000:8.1f} ms")
    print(f"  render + write    {t_write * 1000:8.1f} ms")
    print(f"  baseline: {n + 1} plain Jinja renders {t_jinja * 1000:.1f} ms; "
          f"load+render / baseline = {total / t_jinja:.1f}x")
    print(f"  per step: {total / n * 1000:.2f} ms")


if __name__ == "__main__":
    main()
