"""The wheel carries the templates, and an installed itwinai-hpc renders from them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_templates_and_renders_from_them(tmp_path):
    # Built with the venv's hatchling (the dev extra) and no package index: what this test
    # proves does not depend on an index being reachable.
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                        str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("itwinai_hpc-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    shipped = {Path(n).name for n in names if n.startswith("itwinai_hpc/templates/")}
    in_repo = {p.name for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert shipped == in_repo and "sbatch.sh.j2" in shipped and "README.md" in shipped
    profiles = {Path(n).name for n in names if n.startswith("itwinai_hpc/workflow/profiles/")}
    in_repo_profiles = {p.name for p in (ROOT / "itwinai_hpc/workflow/profiles").glob("*.yml")}
    assert in_repo_profiles and in_repo_profiles <= profiles
    code = ("from itwinai_hpc.render.templating import builtin_templates; "
            "print(builtin_templates()); "
            "from itwinai_hpc.cli import main; raise SystemExit(main(['render', "
            f"{str(ROOT / 'use-cases/mnist/training-workflow.yml')!r}, '-o', 'run', "
            "'--profile', 'lumi']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(site / "itwinai_hpc" / "templates")
    assert "torchrun_agent" in (tmp_path / "run" / "02-train.sbatch").read_text()
