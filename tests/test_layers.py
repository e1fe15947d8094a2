"""The house rules, for every module and every import (lazy ones too): which folder may import
which (tests/import_rule.py holds the table), no import cycle, no module over 300 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import import_rule

PACKAGE = Path(__file__).resolve().parent.parent / "itwinai_hpc"


def test_every_import_of_the_package_follows_the_folder_rule_and_makes_no_cycle():
    assert import_rule.violations(PACKAGE) == []


def test_no_module_is_over_300_lines():
    assert import_rule.oversized(PACKAGE) == []


def test_every_folder_of_the_rule_exists():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"
                  and p.name != "templates") == sorted([*import_rule.MAY_IMPORT, "commands"])


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "itwinai_hpc"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return pkg


def test_the_rule_catches_a_lazy_import_against_the_table_a_cycle_and_a_loose_module(tmp_path):
    pkg = _plant(tmp_path, {
        "core/errors.py": "",
        "run/layout.py": "",
        "run/manifest.py": "def f():\n    from itwinai_hpc.workflow import load\n",
        "workflow/load.py": "from itwinai_hpc.core import errors\n",
        "data/shards.py": "from itwinai_hpc.run import manifest\nimport itwinai_hpc.run.layout\n",
        "ml/a.py": "from . import b\n",
        "ml/b.py": "from .a import x\n",
        "loose.py": "",
    })
    found = import_rule.violations(pkg)
    assert "itwinai_hpc/run/manifest.py:2: run/ may not import itwinai_hpc.workflow.load" in found
    assert "itwinai_hpc/data/shards.py:1: data/ may not import itwinai_hpc.run.manifest" in found
    assert not any("run.layout" in f for f in found)         # data/ may use run/layout
    assert "import cycle: itwinai_hpc.ml.a -> itwinai_hpc.ml.b" in found
    assert "itwinai_hpc/loose.py: a module outside the layered folders" in found
    assert len(found) == 4, found


def test_the_size_rule_names_a_module_over_the_limit(tmp_path):
    pkg = _plant(tmp_path, {"core/big.py": "x = 1\n" * 301, "core/ok.py": "x = 1\n" * 300})
    assert import_rule.oversized(pkg) == ["itwinai_hpc/core/big.py: 301 lines"]


def test_the_shared_layer_tool_agrees_where_the_session_has_it():
    """../shared/tools/layers.py is the project's own checker of the same table; CI has
    shared/ beside the checkout. This test keeps the two tables from drifting."""
    tool = PACKAGE.parent.parent / "shared" / "tools" / "layers.py"
    assert tool.is_file(), f"{tool} is missing (shared/ lies beside the checkout)"
    p = subprocess.run([sys.executable, str(tool), str(PACKAGE.parent)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith("layers: 0 violations, 0 cycles")
