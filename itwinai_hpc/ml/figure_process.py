"""The test figures of a training, drawn by a process of its own while the trainer exports and
registers the model.

At the end of `train` rank 0 exports the model (torch.export, single-threaded Python) and
draws the test figures (importing matplotlib, drawing, PNG encoding: another single-threaded
0.5 s). One after the other they leave a core idle; side by side they end together. So
`start` writes the evaluation into a TemporaryDirectory of the trainer's (0700, under
$TMPDIR) and starts `python -m itwinai_hpc.ml.figure_process` there (a new interpreter through
fork+exec: nothing of the trainer's threads, CUDA context or registered network memory is
shared), and `Drawing.files` collects the PNGs after the registration. On the 2-core VM the
end of `train` is ~0.5 s shorter (bench_startup.py, see ml/README.md). With one CPU there
is nothing to overlap, and the trainer draws them itself.

The child imports nothing from the job's working directory (a project folder others may
write to): it runs in the private folder, and the package's folder goes on its PYTHONPATH only
when it is not a site-packages folder already (a source checkout), never ahead of the
standard library otherwise.

Nothing is lost when that process cannot run or fails: `files` returns None and the caller
draws in its own process, as before, with the reason on stderr.

The child only draws (figures.py, field_figures.py) and writes PNG files; MLflow stays in the
trainer, which logs them under the same artifact paths `mlflow.log_figure` would.
"""

from __future__ import annotations

import os
import pickle
import signal
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from itwinai_hpc.core import job_env

# The longest a drawing may take before the trainer stops waiting and draws itself.
TIMEOUT_S = 120.0
# The files each task's figures are saved as (figures_of's keys), under evaluation/SPLIT/.
FIGURES = {"classification": ("confusion_matrix.png", "misclassified.png"),
           "regression": ("fields.png", "scatter.png")}


def figures_of(evaluation, split: str, task: str) -> dict:
    """{file name: figure} of `evaluation`, as tracking.log_evaluation / log_regression log
    them (the drawing itself, shared by both processes)."""
    if task == "regression":
        from itwinai_hpc.ml import field_figures

        drawn = (field_figures.fields_figure(evaluation.examples, split),
                 field_figures.scatter_figure(evaluation.scatter, evaluation.metrics, split))
    else:
        from itwinai_hpc.ml import figures

        drawn = (figures.confusion_figure(evaluation, split),
                 figures.misclassified_figure(evaluation, split))
    return dict(zip(FIGURES[task], drawn))


class Drawing:
    """A figure process under way; `files` waits for it."""

    def __init__(self, proc: subprocess.Popen, folder: Path, task: str):
        self.proc, self.folder, self.task = proc, folder, task

    def files(self) -> dict[str, Path] | None:
        """{file name: PNG path} once the process has drawn them all; None (with the reason on
        the log) when it failed or took longer than TIMEOUT_S: then the caller draws."""
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            return self._failed(f"still drawing after {TIMEOUT_S:.0f} s; stopped")
        if code < 0:
            return self._failed(f"was killed by {signal.Signals(-code).name}")
        done = self.folder / "done"
        names = sorted(done.read_text().split()) if done.is_file() else []
        if code != 0 or names != sorted(FIGURES[self.task]):
            return self._failed(f"exited {code} having drawn {names or 'nothing'}")
        return {name: self.folder / name for name in names}

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


def child_env() -> dict[str, str]:
    """The environment of the child: this process's, with the package's folder first on
    PYTHONPATH only for a source checkout (an installed package is found anyway, and its
    site-packages must not go ahead of the standard library)."""
    root = os.path.realpath(Path(__file__).resolve().parents[2])
    try:
        installed = {*site.getsitepackages(), site.getusersitepackages(),
                     sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    except AttributeError:   # an old virtualenv's site module
        installed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    if root in {os.path.realpath(p) for p in installed}:
        return dict(os.environ)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))


def start(evaluation, split: str, task: str, folder: Path) -> Drawing | None:
    """Start drawing `evaluation`'s figures into `folder` (an empty folder of this process's
    own, e.g. under a TemporaryDirectory); None when there is no second CPU to draw on or no
    process can be started: then the caller draws."""
    if job_env.usable_cpus() < 2:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "evaluation.pickle", "wb") as f:
            pickle.dump({"evaluation": evaluation, "split": split, "task": task}, f)
    except Exception as e:   # a full disk, an object pickle cannot take: draw here
        print(f"test figures: cannot hand the evaluation to a drawing process "
              f"({type(e).__name__}: {e}); drawing them here", file=sys.stderr, flush=True)
        return None
    try:
        with open(folder / "stderr", "wb") as err:
            # cwd: `-m` puts the working directory first on sys.path; this one is ours alone.
            proc = subprocess.Popen([sys.executable, "-m", "itwinai_hpc.ml.figure_process",
                                     str(folder)], cwd=folder, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env=child_env(),
                                    close_fds=True)
    except OSError as e:
        print(f"test figures: cannot start the drawing process ({e}); drawing them here",
              file=sys.stderr, flush=True)
        return None
    return Drawing(proc, folder, task)


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
