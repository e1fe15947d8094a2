"""Rewrite tests/golden/ from the current templates: `.venv/bin/python tests/update_golden.py`.

Run it by hand after a deliberate change to what render writes, then read `git diff tests/golden`
before committing: the golden files are the review of the generated scripts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from golden_cases import CASES, GOLDEN, normalized, render_fixed  # noqa: E402


def main() -> int:
    for case, (workflow, overrides, *profile) in CASES.items():
        run = render_fixed(workflow, overrides, *profile)
        folder = GOLDEN / case
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in run.files.items():
            (folder / name).write_text(normalized(text))
        print(f"{folder}: {len(run.files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
