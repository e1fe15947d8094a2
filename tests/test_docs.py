"""The docs site (docs/, mkdocs.yml) and the README as its front door: the site builds with
`mkdocs build --strict` (no broken link or anchor, no warning), the generated references and
schemas are what the code makes of them now, the README stays short and links into the pages,
and every promise a test quotes still stands on the page the test names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from itwinai_hpc.commands.schema import models_in
from itwinai_hpc.workflow.schema import Workflow

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_generated_references_and_schemas_are_fresh():
    p = subprocess.run([sys.executable, str(DOCS / "gen_reference.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr + "\nrun: .venv/bin/python docs/gen_reference.py"


def test_the_site_builds_strict_with_every_page_and_the_diagram(tmp_path):
    assert MKDOCS.is_file(), "mkdocs is required: pip install -e '.[docs]'"
    site = tmp_path / "site"
    p = subprocess.run([str(MKDOCS), "build", "--strict", "-d", str(site)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "WARNING" not in p.stderr, p.stderr
    for page in ("getting-started", "concepts", "own-use-case", "cluster", "sweeps",
                 "time-limits", "mlflow", "troubleshooting", "editor", "reference/workflow",
                 "reference/cli", "reference/configs"):
        assert (site / page / "index.html").is_file(), page
    concepts = (site / "concepts" / "index.html").read_text()
    assert 'class="mermaid"' in concepts and "flowchart" in concepts
    assert (site / "img" / "scaling-test-cluster.png").stat().st_size > 10_000
    assert not (site / "gen_reference.py").exists()         # the generator is not published


def test_the_workflow_reference_lists_every_field_of_every_model():
    page = (DOCS / "reference" / "workflow.md").read_text()
    for name, model in models_in(Workflow).items():
        assert f"\n## {name}\n" in page, name
        for field, info in model.model_fields.items():
            assert f"| `{info.alias or field}` |" in page, (name, field)


def test_the_cli_reference_has_every_command_and_option():
    from itwinai_hpc.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    page = (DOCS / "reference" / "cli.md").read_text()
    for name, command in sub.choices.items():
        assert f"### `{name}`" in page, name
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (name, flag)


def test_the_readme_is_a_front_door_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 200, len(lines)
    assert lines[0] == "# itwinai-hpc" and lines[2] == "```bash"     # the two commands first
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.S | re.M)     # links outside code
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", prose)
    assert len([link for link in links if link.startswith("docs/")]) >= 10
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (ROOT / link).exists(), link
    # from the front page to a run of your own use case on the local backend, by links only
    assert "docs/own-use-case.md" in links and "docs/getting-started.md" in links
    own = (DOCS / "own-use-case.md").read_text()
    assert re.search(r"itwinai-hpc submit \S+ --backend local", own), \
        "docs/own-use-case.md shows no local run"


def test_the_readme_shows_doctors_real_output_as_the_docs_do():
    # issue 23: doctor's output is shown in the README; the snippet is a real 2-node run, and
    # the README's copy must not drift from the one the cluster page includes
    snippet = (DOCS / "snippets" / "doctor-2-nodes.txt").read_text().rstrip("\n")
    assert "PASS  allreduce" in snippet and "--nodes 2" in snippet
    assert snippet in (ROOT / "README.md").read_text()


PROMISE = re.compile(r'^# ---- (README\.md|docs/[\w./-]+\.md): "(.*?)"', re.S | re.M)


def test_every_promise_a_test_quotes_is_on_the_page_the_test_names():
    quoted = []
    for test in sorted((ROOT / "tests").glob("test_*promises*.py")):
        text = re.sub(r"\n#      ", " ", test.read_text())
        quoted += [(test.name, page, claim) for page, claim in PROMISE.findall(text)]
    assert len(quoted) >= 7, quoted
    for test, page, claim in quoted:
        body = flat((ROOT / page).read_text())
        for part in claim.split("..."):
            part = flat(part).strip(" ()")
            assert len(part) < 4 or part in body, (test, page, part)
