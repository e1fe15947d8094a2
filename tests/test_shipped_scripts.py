"""The shell scripts the project ships (set-up, cluster, CI) are valid and shellcheck-clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("tests/slurm/*.sh"), ROOT / "tests/run.sh",
                  ROOT / ".ci/run", ROOT / "use-cases/mnist/run-local.sh",
                  ROOT / "container/build.sh"])


def test_every_shipped_shell_script_passes_bash_n_and_shellcheck():
    assert shutil.which("shellcheck"), "shellcheck is required (apt-get install shellcheck)"
    assert len(SCRIPTS) >= 7 and all(p.is_file() for p in SCRIPTS)
    for path in SCRIPTS:
        p = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert p.returncode == 0, f"{path}: {p.stderr}"
    p = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 0, p.stdout


def test_ci_runs_the_test_command_that_the_readme_names():
    readme = (ROOT / "README.md").read_text().splitlines()
    fence = readme.index("```bash")
    setup = [line.split("#")[0].strip() for line in readme[fence + 1:fence + 3]]
    assert setup == ["bash use-cases/mnist/run-local.sh", "bash tests/run.sh"]
    assert readme[fence + 3] == "```"                       # exactly two set-up commands
    assert "exec bash tests/run.sh" in (ROOT / ".ci/run").read_text()
