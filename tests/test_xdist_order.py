"""tests/run.sh's two xdist workers get the slowest files first, and the files of a shared
session fixture on one worker (tests/xdist_order.py). Checked with real pytest-xdist on a
small suite whose tests write which worker ran them: an xdist release that ignores the
scheduler or the order (as `--dist loadgroup`'s marks were ignored under pytest 9) fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import xdist_order

TEST_FILE = """
import os, time
def _log(name):
    with open({log!r}, "a") as f:
        worker, path = os.environ["PYTEST_XDIST_WORKER"], __file__.split("/suite/")[1]
        f.write(f"{{worker}} {{path}} {{name}}\\n")
{tests}
"""

CONFTEST = """
import os
from pathlib import Path
import pytest
import xdist_order
xdist_order.TABLE = Path({table!r})

def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" in os.environ:
        xdist_order.order_items(items)

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return xdist_order.make_scheduler(config, log)
"""


def test_workers_get_the_slowest_files_first_and_a_shared_fixtures_files_together(tmp_path):
    suite = tmp_path / "suite"
    log = tmp_path / "ran.txt"
    group = xdist_order.SHARED_FIXTURE_FILES["trained"]
    # (path, tests, seconds in the table): by test count xdist would deal many.py first
    files = [("tests/test_many.py", 12, 1.0), ("tests/test_slow.py", 1, 300.0),
             ("tests/test_middle.py", 2, 40.0), ("tests/test_unlisted.py", 3, None),
             *((path, 2, 20.0) for path in group)]
    table = tmp_path / "durations.txt"
    table.write_text("".join(f"{s} {p}\n" for p, _, s in files if s is not None))
    for path, count, _ in files:
        # each test sleeps a little, so both workers are busy while units are dealt
        tests = "".join(f"def test_{i}():\n    _log('{i}')\n    time.sleep(0.3)\n"
                        for i in range(count))
        (suite / path).parent.mkdir(parents=True, exist_ok=True)
        (suite / path).write_text(TEST_FILE.format(log=str(log), tests=tests))
    (suite / "tests/conftest.py").write_text(CONFTEST.format(table=str(table)))
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    env_path = f"{Path(xdist_order.__file__).parent}"
    p = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-q",
                        "tests"], cwd=suite, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    ran = [line.split() for line in log.read_text().splitlines()]
    assert len(ran) == 12 + 1 + 2 + 3 + 2 * len(group)
    workers_of = {path: {w for w, f, _ in ran if f == path} for path, _, _ in files}
    # a shared fixture's files all ran on one worker, each file on one worker
    assert len(set().union(*(workers_of[p] for p in group))) == 1, workers_of
    assert all(len(w) == 1 for w in workers_of.values()), workers_of
    # each worker took its units in the table's order, a group's seconds summed: the slowest
    # file (300 s), the group (3 x 20 s), then 40 s, 1 s and the unlisted file
    units = ["tests/test_slow.py", "group", "tests/test_middle.py", "tests/test_many.py",
             "tests/test_unlisted.py"]
    firsts = set()
    for worker in ("gw0", "gw1"):
        order = [("group" if f in group else f) for w, f, _ in ran if w == worker]
        firsts.add(order[0])
        ranks = [units.index(u) for u in order]
        assert ranks == sorted(ranks), (worker, order, ran)
    assert firsts == {"tests/test_slow.py", "group"}, ran
    # a file's tests kept their order
    for path, count, _ in files:
        assert [int(n) for _, f, n in ran if f == path] == list(range(count))
