"""A --templates folder with a broken template: one clean error naming the template file (and
line), exit 2, no traceback and no run folder, whatever the template does wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def render(tmp_path: Path, templates: dict[str, bytes | str]) -> tuple[subprocess.CompletedProcess,
                                                                        Path]:
    folder = tmp_path / "templates"
    for name, body in templates.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body)
    wf = tmp_path / "wf.yml"
    wf.write_text("name: w\ndefaults: {container: none}\nsteps:\n  - {name: a, command: echo}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "render", str(wf), "-o",
                        str(tmp_path / "run"), "--templates", str(folder)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    return p, folder


def clean_error(p: subprocess.CompletedProcess, tmp_path: Path) -> str:
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and p.stderr.strip() == errors[0], p.stderr[-3000:]
    # no run folder, not even a half-written hidden one beside it
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cache", "templates", "wf.yml"] or \
        sorted(x.name for x in tmp_path.iterdir()) == ["templates", "wf.yml"]
    return errors[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, body, line, says", [
    ("sbatch.sh.j2", b"#!/bin/bash\n# ok\n# caf\xe9 \xff\n{{ job.name }}\n", 3, "UTF-8"),
    ("_header.j2", b"# header \xff\xfe\n", 1, "UTF-8"),                   # an included one
    ("sbatch.sh.j2", '#!/bin/bash\n{% include "sbatch.sh.j2" %}\n', 2, "include"),
    ("sbatch.sh.j2", "#!/bin/bash\n\n{{ undefined_name }}\n", 3, "'undefined_name' is undefined"),
    ("sbatch.sh.j2", '#!/bin/bash\n{% include "missing.j2" %}\n', 2, "missing.j2"),
    ("sbatch.sh.j2", "#!/bin/bash\n{{ job.nme.first }}\n", 2, "nme"),
    ("sbatch.sh.j2", "#!/bin/bash\n# one\n{{ 1 // 0 }}\n", 3, "division"),
    ("sbatch.sh.j2", "#!/bin/bash\n{% if %}\n", 2, "Expected an expression"),   # as before
])
def test_a_broken_template_is_one_error_naming_its_file_and_line(tmp_path, name, body, line,
                                                                 says):
    p, folder = render(tmp_path, {name: body})
    error = clean_error(p, tmp_path)
    assert f"{folder / name}:{line}: " in error, error
    assert says in error, error


@pytest.mark.timeout(120)
def test_templates_that_include_each_other_without_end_are_one_error(tmp_path):
    p, folder = render(tmp_path, {"sbatch.sh.j2": '#!/bin/bash\n{% include "a.j2" %}\n',
                                  "a.j2": '# a\n\n{% include "sbatch.sh.j2" %}\n'})
    error = clean_error(p, tmp_path)
    assert str(folder / "sbatch.sh.j2") in error or str(folder / "a.j2") in error, error
    assert "include" in error, error


@pytest.mark.timeout(120)
def test_a_working_template_folder_still_renders(tmp_path):
    p, folder = render(tmp_path, {"_header.j2": "# my site's header for {{ job.name }}\n"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "# my site's header for a" in (tmp_path / "run" / "01-a.sbatch").read_text()
