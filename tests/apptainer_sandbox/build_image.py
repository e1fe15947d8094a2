"""What `apptainer build` is for the test stand-in: write an image file naming the host folders
that make up the image's root file system, as apptainer.def would build it: the operating
system (/usr, /etc and the /bin, /lib* links), the Python that runs this interpreter's venv,
the venv with its packages, and itwinai-hpc itself (for an editable install, only its package
and templates: never the rest of the repository, whose use-cases/ a step must be given by a
bind). Nothing is copied: the stand-in mounts these folders read-only.

    python tests/apptainer_sandbox/build_image.py OUT.sif      (run with the venv's python)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_contents() -> dict:
    """The image as the stand-in reads it, for the venv of the running interpreter."""
    import itwinai_hpc
    from itwinai_hpc.render.templating import builtin_templates

    folders: list[str] = []
    symlinks: dict[str, str] = {}
    for path in SYSTEM:
        if os.path.islink(path):
            symlinks[path] = os.readlink(path)
        elif os.path.isdir(path):
            folders.append(path)
    package = Path(itwinai_hpc.__file__).resolve().parent
    for extra in (sys.base_prefix, sys.prefix, str(package), str(builtin_templates())):
        extra = os.path.realpath(extra)
        if not any(extra == f or extra.startswith(f + "/") for f in folders):
            folders.append(extra)
    venv_bin = str(Path(sys.prefix) / "bin")
    return {
        "format": "itwinai-hpc-test-image/1",
        "built_from": "apptainer.def, with this machine's files (tests/apptainer_sandbox)",
        "folders": folders,
        "symlinks": symlinks,
        # apptainer.def's %environment, and pip's scripts on PATH as in the real image
        "environment": {"PATH": f"{venv_bin}:{IMAGE_PATH}", "PYTHONUNBUFFERED": "1",
                        "MLFLOW_ALLOW_FILE_STORE": "true"},
        "runscript": ["itwinai-hpc"],
    }


def write_image(out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(image_contents(), indent=2) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.sif")
    print(write_image(sys.argv[1]))
