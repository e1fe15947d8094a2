"""Steps run inside a container for real. The rendered `apptainer exec` lines run through
tests/apptainer_sandbox/apptainer: a stand-in that accepts exactly the options Apptainer
documents and runs the step in a bubblewrap sandbox that shows only the image, Apptainer's
default binds ($HOME, /tmp, /var/tmp, the working directory, /proc, /sys, /dev) and the --binds.
The working directory and the workflows live where no default bind reaches, so a forgotten bind
fails here as it would on a cluster. tests/run.sh installs bwrap; without it these tests fail
(never skip), on a developer's machine as in CI."""

from __future__ import annotations

import csv
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.ops import operations
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "tests" / "apptainer_sandbox"
GOLDEN = ROOT / "tests" / "golden"
# Places Apptainer binds into every container by default (and the image's folders).
DEFAULT_BINDS = ("/tmp", "/var/tmp", "/proc", "/sys", "/dev", "/usr", "/etc")


def _stand_in():
    """tests/apptainer_sandbox/apptainer as a module (a script without .py)."""
    loader = SourceFileLoader("apptainer_stand_in", str(SANDBOX / "apptainer"))
    module = module_from_spec(spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def _missing(what: str) -> None:
    """A missing tool fails the test, here as in CI: green means the same everywhere."""
    pytest.fail(f"{what} (tests/run.sh installs it)")


def _under_default_binds(path: str | Path) -> bool:
    """Whether Apptainer shows `path` in every container: /tmp, /var/tmp, $HOME, the image."""
    home = pwd.getpwuid(os.getuid()).pw_dir
    real = os.path.realpath(path)
    return any(real == h or real.startswith(h.rstrip("/") + "/")
               for h in (*DEFAULT_BINDS, home, os.path.realpath(home)))


def _outside_default_binds() -> Path:
    """A parent folder that no default bind covers, for the working directory and workflows."""
    for candidate in (os.environ.get("ITWINAI_HPC_OUTSIDE_BINDS_DIR"), "/srv", "/mnt", "/opt"):
        if not candidate or _under_default_binds(candidate):
            continue
        real = os.path.realpath(candidate)
        if os.path.isdir(real) and os.access(real, os.W_OK):
            return Path(real)
    _missing("no writable folder outside Apptainer's default binds (/srv, /mnt, /opt; or set "
             "ITWINAI_HPC_OUTSIDE_BINDS_DIR)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """The stand-in's image of this venv, in a folder outside the default binds."""
    if not shutil.which("bwrap"):
        _missing("bubblewrap (bwrap) is missing: apt-get install bubblewrap")
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "true"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode:                    # e.g. a container that may not create namespaces
        _missing(f"bwrap cannot create a sandbox here: {probe.stderr.strip()}")
    folder = Path(tempfile.mkdtemp(prefix="itwinai-hpc-image-", dir=_outside_default_binds()))
    out = folder / "itwinai-hpc.sif"
    subprocess.run([sys.executable, str(SANDBOX / "build_image.py"), str(out)], check=True,
                   capture_output=True)
    yield out
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def place(image: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder outside the default binds with work/ (the cwd: the jobs' working directory)
    and workflow/ (beside it, not under it); the stand-in first on PATH."""
    base = Path(tempfile.mkdtemp(prefix="itwinai-hpc-containers-", dir=image.parent.parent))
    for sub in ("work", "workflow"):
        (base / sub).mkdir()
    monkeypatch.chdir(base / "work")
    monkeypatch.setenv("PATH", f"{SANDBOX}{os.pathsep}{Path(sys.executable).parent}"
                               f"{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(base / "work" / "runs"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def workflow_file(folder: Path, name: str, image: Path, steps: str, defaults: str = "",
                  head: str = "") -> Path:
    """folder/wf.yml: every step in `image`; `steps` are YAML list items, `defaults` more
    lines of `defaults:`, `head` top-level lines (vars)."""
    wf = folder / "wf.yml"
    wf.write_text(f"name: {name}\n{head}defaults:\n  container: {{image: {image}}}\n{defaults}"
                  f"steps:\n{steps}")
    return wf


def submit(workflow: Path, *overrides: str, name: str = "run", timeout: float = 120,
           backend: str = "local") -> RunManifest:
    """Submit `workflow` into runs/NAME of the cwd and wait until every step has ended."""
    out = Path.cwd() / "runs" / name
    args = ["submit", str(workflow), "--backend", backend, "-o", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    manifest = RunManifest.load(out)
    operations.wait(manifest, interval=0.2, timeout=timeout)
    return RunManifest.load(out)


def log_of(manifest: RunManifest, step: str) -> str:
    files = operations.backend_for(manifest).log_files(manifest, manifest.step(step))
    return "".join(f.read_text() for f in files)


# --- the bind sandbox -------------------------------------------------------------------------


def test_a_step_reads_the_config_its_workflow_folder_holds_inside_the_container(place, image):
    # The MNIST workflows pass `--config ${workflow_dir}/x.yml`: the folder must be bound.
    (place / "workflow" / "step.yml").write_text("greeting: from the workflow's folder\n")
    wf = workflow_file(place / "workflow", "reads-config", image,
                       '  - {name: show, command: cat, args: ["${workflow_dir}/step.yml"]}\n')
    manifest = submit(wf)
    log = log_of(manifest, "show")
    assert manifest.step("show").state == "COMPLETED", log
    assert "greeting: from the workflow's folder" in log


def test_the_workflow_folder_is_read_only_inside_the_container(place, image):
    wf = workflow_file(place / "workflow", "ro-config", image,
                       '  - {name: write, command: touch, args: ["${workflow_dir}/written"]}\n')
    manifest = submit(wf)
    assert manifest.step("write").state == "FAILED"
    assert "Read-only file system" in log_of(manifest, "write")
    assert not (place / "workflow" / "written").exists()


def test_a_workflow_kept_in_the_working_directory_may_still_write_there(place, image,
                                                                       monkeypatch):
    # Run from the workflow's own folder: its bind must not take the working directory's
    # writes away (read-write there), and the run folder inside it stays writable too.
    work = place / "workflow"
    (work / "step.yml").write_text("n: 1\n")
    wf = workflow_file(work, "in-place", image, '  - {name: write, command: cp, args: '
                       '["${workflow_dir}/step.yml", "${workdir}/copied.yml"]}\n')
    monkeypatch.chdir(work)
    manifest = submit(wf)
    assert manifest.step("write").state == "COMPLETED", log_of(manifest, "write")
    assert (work / "copied.yml").read_text() == "n: 1\n"
    script = (Path(manifest.run_dir) / "01-write.sh").read_text()
    assert f"apptainer exec --bind {work} --bind" in script


def test_the_workflow_folder_bind_is_read_only_unless_something_written_lies_inside():
    from itwinai_hpc.render.binds import workflow_bind_for
    bind = workflow_bind_for("/proj/wf", run_dir="/scratch/runs/r1", workdir="/scratch")
    assert bind(()) == "/proj/wf:/proj/wf:ro"
    assert bind(["/proj"]) is None                              # a bind covers it already
    assert bind(["/proj/wf:/data:ro"]) is None
    assert bind(["/proj/wf/data"]) == "/proj/wf"                # a bind inside: read-write
    assert workflow_bind_for("/proj", "/proj/runs/r1", "/elsewhere")(()) == "/proj"
    assert workflow_bind_for("/proj", "/runs/r1", "/proj/sub")(()) == "/proj"
    assert workflow_bind_for("/proj", "/runs/r1", "/project")(()) == "/proj:/proj:ro"


def test_a_step_reading_a_file_outside_its_binds_fails_and_passes_once_it_is_bound(place, image):
    elsewhere = place / "reference"
    elsewhere.mkdir()
    (elsewhere / "labels.txt").write_text("seven\n")
    wf = workflow_file(place / "workflow", "forgot-a-bind", image,
                       '  - {name: read, command: cat, args: ["${ref}/labels.txt"]}\n',
                       head=f"vars: {{ref: {elsewhere}}}\n")
    forgot = submit(wf, name="forgot")
    log = log_of(forgot, "read")
    assert forgot.step("read").state == "FAILED"
    assert "No such file or directory" in log and "seven" not in log

    bound = submit(wf, "defaults.container.binds=[\"${ref}\"]", name="bound")
    assert bound.step("read").state == "COMPLETED", log_of(bound, "read")
    assert "seven" in log_of(bound, "read")


def test_what_the_container_shows_of_the_host_is_the_image_and_the_default_binds(place, image):
    # Nothing of the host but the image, the default binds and the --binds: the repository,
    # /srv and the working directory's siblings are not there; the working directory is.
    (place / "workflow" / "beside.txt").write_text("x")
    hidden = [place / "workflow" / "beside.txt"]
    if not _under_default_binds(ROOT):               # a checkout under /tmp or $HOME is seen
        hidden += [ROOT / "use-cases", ROOT / "tests", ROOT / "README.md"]
    home = pwd.getpwuid(os.getuid()).pw_dir
    probe = ("test -d /proc/self && test -d /sys/class && test -e /dev/null && test -d /tmp"
             f" && test -d /var/tmp && test -d {shlex.quote(home)} && test -w ."
             + "".join(f" && ! test -e {shlex.quote(str(h))}" for h in hidden)
             + ' && test -x "$(command -v itwinai-hpc)" && echo sandbox-ok')
    p = subprocess.run(["apptainer", "exec", str(image), "bash", "-c", probe],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "sandbox-ok" in p.stdout, p.stderr
    p = subprocess.run(["apptainer", "exec", str(image), "touch", "/usr/escaped"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Read-only file system" in p.stderr


@pytest.mark.slurm
def test_the_sbatch_container_lines_run_on_the_slurm_cluster(place, image, slurm_cluster):
    # The batch shell's own line, and torchrun agents started by srun on two nodes, each
    # `exec apptainer exec ...`: both read the workflow's config inside the container.
    (place / "workflow" / "step.yml").write_text("greeting: read on a node\n")
    wf = workflow_file(place / "workflow", "sbatch-config", image, """\
  - {name: batch, command: cat, args: ["${workflow_dir}/step.yml"]}
  - name: agents
    needs: [batch]
    launcher: torchrun
    command: cat
    args: ["${workflow_dir}/step.yml"]
    resources: {nodes: 2}
""", defaults='  resources: {time: "00:05:00", cpus-per-task: 1}\n')
    manifest = submit(wf, backend="slurm", timeout=180)
    for step in ("batch", "agents"):
        log = log_of(manifest, step)
        assert manifest.step(step).state == "COMPLETED", log[-3000:]
        assert "greeting: read on a node" in log
    assert log_of(manifest, "agents").count("greeting: read on a node") == 2   # one a node


def test_an_unknown_apptainer_flag_fails_as_apptainer_fails(place, image):
    p = subprocess.run(["apptainer", "exec", "--bind-ro", "/data", str(image), "true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert 'Error for command "exec": unknown flag: --bind-ro' in p.stderr
    # ... and in a rendered line: a workflow's container option that Apptainer lacks
    wf = workflow_file(place / "workflow", "bad-option", image, '  - {name: a, command: "true"}\n')
    manifest = submit(wf, "defaults.container.options=[--gpus]")
    assert manifest.step("a").state == "FAILED"
    assert "unknown flag: --gpus" in log_of(manifest, "a")


def test_apptainers_documented_options_are_accepted_with_their_value_types(place, image):
    ok = subprocess.run(["apptainer", "exec", "--nv", "-B", "/proc:/hostproc:ro", "--cleanenv",
                         "--cpu-shares=512", "--env", "A=1,B=2", str(image), "bash", "-c",
                         'echo "$A$B" && test -d /hostproc/self'],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "12", ok.stderr
    bad = subprocess.run(["apptainer", "exec", "--cpu-shares", "many", str(image), "true"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and 'invalid argument "many" for "--cpu-shares"' in bad.stderr
    missing = subprocess.run(["apptainer", "exec", "--bind", str(place / "nope"), str(image),
                              "true"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 255 and "doesn't exist" in missing.stderr


def test_apptainerenv_variables_reach_the_step_without_their_prefix(place, image):
    env = {**os.environ, "APPTAINERENV_SECRET_NAME": "inside", "SECRET_NAME": "host",
           "APPTAINERENV_PREPEND_PATH": "/first"}
    p = subprocess.run(["apptainer", "exec", str(image), "bash", "-c",
                        'echo "$SECRET_NAME ${PATH%%:*} ${APPTAINERENV_SECRET_NAME:-gone}"'],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.split() == ["inside", "/first", "gone"], p.stderr
    # the host's PATH stays outside: the image's own PATH finds the venv's itwinai-hpc
    p = subprocess.run(["apptainer", "exec", str(image), "bash", "-c", 'echo "$PATH"'],
                       capture_output=True, text=True, timeout=60)
    assert str(SANDBOX) not in p.stdout and f"{Path(sys.prefix)}/bin" in p.stdout


def test_every_rendered_apptainer_line_uses_only_apptainers_documented_options():
    """The golden scripts' container lines parse with Apptainer's own option table."""
    stand_in = _stand_in()
    lines = []
    for script in sorted(GOLDEN.rglob("*")):
        if script.suffix not in (".sh", ".sbatch"):
            continue
        for line in script.read_text().splitlines():
            words = line.strip().removeprefix("exec ").split(" ", 1)
            if words[0] in ("apptainer", "singularity") and len(words) > 1 \
                    and words[1].startswith(("exec ", "run ")):
                lines.append((script, shlex.split(words[1].rstrip("\\"))))
    assert len(lines) >= 10
    for script, words in lines:
        flags = stand_in.COMMANDS[words[0]][0]
        options, positional = stand_in.parse(words[1:], flags)     # raises on a bad option
        assert positional and positional[0].endswith(".sif"), (script, words)
        assert options.get("bind"), (script, words)


# --- the MNIST workflows, end to end, inside the container ------------------------------------


@pytest.mark.slow
@pytest.mark.slurm
def test_mnist_training_and_inference_run_end_to_end_inside_the_container(
        place, image, slurm_cluster, use_mnist_digits_25k):
    # Training with the local backend (torchrun in the container), inference on the SLURM test
    # cluster (srun, then the container): each backend's container lines run the MNIST steps,
    # on 25,000 real training digits and all 10,000 test digits.
    use_case = place / "workflow" / "mnist"
    shutil.copytree(ROOT / "use-cases" / "mnist", use_case)
    use_mnist_digits_25k(use_case)
    cfg = use_case / "mnist-ai-train.yml"
    cfg.write_text(cfg.read_text().replace("epochs: 2", "epochs: 1"))
    assert "epochs: 1" in cfg.read_text()
    with_image = f"vars.image={image}"

    train = submit(use_case / "training-workflow.yml", with_image, name="train",
                         timeout=600)
    for step in ("preprocess", "train"):
        assert train.step(step).state == "COMPLETED", log_of(train, step)[-4000:]
    scripts = (Path(train.run_dir) / "02-train.sh").read_text()
    assert f"apptainer exec --bind {use_case}:{use_case}:ro" in scripts
    assert "registered mnist-cnn version 1 as @champion" in log_of(train, "train")

    infer = submit(use_case / "inference-workflow.yml", with_image, name="infer",
                         timeout=300, backend="slurm")
    for step in ("prepare", "predict"):
        assert infer.step(step).state == "COMPLETED", log_of(infer, step)[-4000:]
    with open(Path(infer.run_dir) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000                            # one row per test image
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert accuracy > 0.95                                # one epoch of 20,000 digits
    assert f"accuracy {accuracy:.4f}" in log_of(infer, "predict")
