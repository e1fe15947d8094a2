"""The test figures of a training, drawn by a process of its own while the trainer exports and
registers the model.

At the end of `train` rank 0 exports the model (torch.export, single-threaded Python) and
draws the test figures (importing matplotlib, drawing, PNG encoding: another single-threaded
0.5 s). One after the other they leave a core idle; side by side they end together. So
`start` writes the evaluation to the run's private temporary folder and starts `python -m
itwinai_hpc.ml.figure_process` on it (a new interpreter through fork+exec: nothing of the
trainer's threads, CUDA context or registered network memory is shared), and `Drawing.files`
collects the PNGs after the registration. On the 2-core VM the end of `train` is ~0.5 s
shorter (bench_train.py --whole-process, see ml/README.md).

Nothing is lost when that process cannot run or fails: `files` returns None and the caller
draws in its own process, as before, with the reason on stderr.

The child only draws (figures.py, field_figures.py) and writes PNG files; MLflow stays in the
trainer, which logs them under the same artifact paths `mlflow.log_figure` would.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

# The longest a drawing may take before the trainer stops waiting and draws itself.
TIMEOUT_S = 120.0


def figures_of(evaluation, split: str, task: str) -> dict:
    """{file name: figure} of `evaluation`, as tracking.log_evaluation / log_regression log
    them (the drawing itself, shared by both processes)."""
    if task == "regression":
        from itwinai_hpc.ml import field_figures

        return {"fields.png": field_figures.fields_figure(evaluation.examples, split),
                "scatter.png": field_figures.scatter_figure(evaluation.scatter,
                                                            evaluation.metrics, split)}
    from itwinai_hpc.ml import figures

    return {"confusion_matrix.png": figures.confusion_figure(evaluation, split),
            "misclassified.png": figures.misclassified_figure(evaluation, split)}


class Drawing:
    """A figure process under way; `files` waits for it."""

    def __init__(self, proc: subprocess.Popen, folder: Path):
        self.proc, self.folder = proc, folder

    def files(self) -> dict[str, Path] | None:
        """{file name: PNG path} once the process has drawn them all; None (with the reason on
        the log) when it failed or took longer than TIMEOUT_S: then the caller draws."""
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return self._failed(f"still drawing after {TIMEOUT_S:.0f} s; stopped")
        done = self.folder / "done"
        if code != 0 or not done.is_file():
            return self._failed(f"exited {code}")
        return {name: self.folder / name for name in done.read_text().split()}

    def stop(self) -> None:
        """Kill the process if it still runs (the registration failed before `files`)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _failed(self, why: str) -> None:
        err = (self.folder / "stderr").read_text(errors="replace").strip().splitlines()
        print(f"test figures: the drawing process {why}" + (f" ({err[-1]})" if err else "")
              + "; drawing them here instead", file=sys.stderr, flush=True)
        return None


def start(evaluation, split: str, task: str, folder: Path) -> Drawing | None:
    """Start drawing `evaluation`'s figures into `folder` (an empty folder of this process's
    own, e.g. under a TemporaryDirectory); None when no process can be started."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "evaluation.pickle", "wb") as f:
            pickle.dump({"evaluation": evaluation, "split": split, "task": task}, f)
    except Exception as e:   # a full disk, an object pickle cannot take: draw here
        print(f"test figures: cannot hand the evaluation to a drawing process "
              f"({type(e).__name__}: {e}); drawing them here", file=sys.stderr, flush=True)
        return None
    # The package as this process imported it, first: a source checkout run without install.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        with open(folder / "stderr", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "itwinai_hpc.ml.figure_process",
                                     str(folder)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    close_fds=True)
    except OSError as e:
        print(f"test figures: cannot start the drawing process ({e}); drawing them here",
              file=sys.stderr, flush=True)
        return None
    return Drawing(proc, folder)


def main(folder: str) -> None:
    """The child: draw the evaluation in `folder`, write each PNG, then `done` naming them."""
    import gc

    gc.disable()   # a short-lived process: matplotlib's import runs ~20% faster without it
    out = Path(folder)
    with open(out / "evaluation.pickle", "rb") as f:
        job = pickle.load(f)   # written by our own parent, in its private temporary folder
    names = []
    for name, fig in figures_of(job["evaluation"], job["split"], job["task"]).items():
        fig.savefig(out / name)
        names.append(name)
    (out / "done").write_text("\n".join(names) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
