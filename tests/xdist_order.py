"""How tests/run.sh's pytest-xdist workers share the suite: longest work first.

xdist's `--dist loadfile` deals a file's tests to one worker, files with the most tests first.
Test count says little about time here (one test of the GPU script's rehearsal takes minutes,
a file of 60 parser tests a second), so the few slow files came last and one worker ran them
alone while the other idled. Instead:

- each worker sorts the files it collected by their time in the last full run
  (tests/file_durations.txt, slowest first; a file not listed counts 0 s and keeps its place
  after the listed ones), and the scheduler below deals them in that order: the slowest start
  first and the many quick files fill the gaps at the end (longest processing time first);
- the files that share an expensive session fixture are one unit, dealt to one worker, so the
  fixture is built once (SHARED_FIXTURE_FILES).

Tests inside a file keep their order. A shuffled run (-p randomly) is left as it is.
Rewrite the table after a change that moves minutes: run the suite with --durations=0 into a
log and `.venv/bin/python tests/xdist_order.py LOG > tests/file_durations.txt`.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

TABLE = Path(__file__).with_name("file_durations.txt")

# A session fixture that takes a minute, and the files whose tests use it: one work unit.
SHARED_FIXTURE_FILES: dict[str, tuple[str, ...]] = {
    # tests/ml/conftest.py's `trained`: three torchrun trainings
    "trained": ("tests/ml/test_mlflow_content.py", "tests/ml/test_predict.py",
                "tests/ml/test_train_ddp.py"),
}
_UNIT_OF_FILE = {f: name for name, files in SHARED_FIXTURE_FILES.items() for f in files}


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its file, or the shared-fixture group its file is in."""
    path = nodeid.split("::", 1)[0]
    return _UNIT_OF_FILE.get(path, path)


def read_table() -> dict[str, float]:
    """TABLE's `SECONDS PATH` lines -> {path: seconds}; '#' starts a comment; no table, no
    seconds (every file keeps its place)."""
    table: dict[str, float] = {}
    for line in (TABLE.read_text() if TABLE.exists() else "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2:
            table[fields[1]] = float(fields[0])
    return table


def order_items(items: list[pytest.Item]) -> None:
    """Sort items in place: units by their seconds in the table, slowest first (a group's are
    its files' sum); stable, so a file's tests and unlisted files keep their order."""
    table = read_table()
    seconds: dict[str, float] = defaultdict(float)
    for path, s in table.items():
        seconds[_UNIT_OF_FILE.get(path, path)] += s
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(unit_of(item.nodeid), i)
    items.sort(key=lambda it: (-seconds.get(unit_of(it.nodeid), 0.0),
                               first_seen[unit_of(it.nodeid)]))


def warn_about_ungrouped_files(items: list[pytest.Item]) -> None:
    """A warning for a file that uses a fixture of SHARED_FIXTURE_FILES and is not listed
    there: its worker would build the fixture a second time."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        path = item.nodeid.split("::", 1)[0]
        for name, files in SHARED_FIXTURE_FILES.items():
            defs = info.name2fixturedefs.get(name, ()) if info else ()
            if defs and defs[-1].scope == "session" and path not in files:
                warnings.warn(pytest.PytestWarning(
                    f"{path} uses the session fixture {name!r}: add it to "
                    f"SHARED_FIXTURE_FILES[{name!r}] in tests/xdist_order.py"), stacklevel=1)
                return


def make_scheduler(config: pytest.Config, log):
    """The scheduler for `--dist loadfile`: xdist's, with shared-fixture groups as units and
    the collection's order (order_items) kept instead of sorting by test count."""
    from xdist.scheduler import LoadFileScheduling

    class DurationOrderedScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False
    return DurationOrderedScheduling(config, log)


_DURATION_LINE = re.compile(r"^([0-9.]+)s (?:setup|call|teardown)\s+([^:\s]+)::")


def table_from_log(lines) -> str:
    """pytest --durations=0 output -> the table's text, slowest first."""
    per_file: dict[str, float] = defaultdict(float)
    for line in lines:
        if m := _DURATION_LINE.match(line):
            per_file[m.group(2)] += float(m.group(1))
    rows = sorted(per_file.items(), key=lambda kv: (-kv[1], kv[0]))
    return ("# seconds per test file in a full run (tests/xdist_order.py reads it)\n"
            + "".join(f"{s:7.1f} {path}\n" for path, s in rows if s >= 0.5))


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log_file:
        sys.stdout.write(table_from_log(log_file))
