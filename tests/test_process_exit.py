"""The `itwinai-hpc` process ends without Python's module teardown (commands/process.py:
exit_now), and nothing a user can see changes: the exit status, every byte of output through a
pipe, the atexit handlers (MLflow ending its run, logging closing its files), the threads a
normal exit waits for. What it saves is measured by benchmarks/bench_startup.py (train and
predict; `--source` a tree of an older commit beside this one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from itwinai_hpc.commands.process import exit_now

    out = Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit").write_text("ran"))

    def late():
        time.sleep(0.5)
        (out / "thread").write_text("finished")

    threading.Thread(target=late).start()

    class Teardown:
        def __del__(self):
            (out / "teardown").write_text("ran")

    kept = Teardown()        # a module global: freed only by the teardown exit_now skips
    sys.stdout.write("x" * 200_000)
    print("end")
    exit_now(int(sys.argv[2]))
""")


def run_script(tmp_path: Path, code: int, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(code)],
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
                          timeout=60)


def test_exit_status_output_atexit_handlers_and_threads_are_as_a_normal_exit_leaves_them(
        tmp_path):
    done = run_script(tmp_path, 3)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 200_000 + "end\n"          # buffered output through a pipe
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "finished"  # waited for, as Python would
    assert not (tmp_path / "teardown").exists()             # the teardown was skipped
    assert done.stderr == ""


def test_itwinai_hpc_normal_exit_1_gives_the_teardown_back(tmp_path):
    done = run_script(tmp_path, 0, ITWINAI_HPC_NORMAL_EXIT="1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "teardown").read_text() == "ran"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_closed_pipe_at_exit_is_reported_as_python_reports_it(tmp_path):
    """stdout's reader gone before the last flush: Python's own exit (status 120), not a
    silent 0 from os._exit."""
    script = ("import sys; from itwinai_hpc.commands.process import exit_now\n"
              "sys.stdout.write('x' * 100); exit_now(0)")
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={"PYTHONPATH": str(REPO)})
    assert reader.stdout is not None
    reader.stdout.close()
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 120, err
    assert b"BrokenPipeError" in err


def test_the_console_script_and_python_m_end_through_exit_now(tmp_path):
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "itwinai-hpc"]
    assert script.value == "itwinai_hpc.__main__:run"
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [\n")
    for argv in (["-m", "itwinai_hpc"], ["-m", "itwinai_hpc.cli"]):
        done = subprocess.run([sys.executable, *argv, "validate", str(bad)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert str(bad) in done.stderr and "Traceback" not in done.stderr


def test_a_thread_pool_still_alive_at_exit_does_not_hold_the_exit(tmp_path):
    """A pool's idle workers end when Python's exit tells them to (concurrent.futures registers
    that with threading, called before the non-daemon threads are joined). exit_now joined them
    by hand and waited for ever wherever a pool was still alive at exit: MLflow's artifact pool,
    not yet collected, once train held the garbage collector off (core/startup.py)."""
    script = ("from concurrent.futures import ThreadPoolExecutor\n"
              "from itwinai_hpc.commands.process import exit_now\n"
              "pool = ThreadPoolExecutor(2)\n"
              "print(pool.submit(lambda: 6 * 7).result(), flush=True)\n"
              "exit_now(4)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (4, "42\n", "")
