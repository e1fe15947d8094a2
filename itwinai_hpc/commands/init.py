"""`itwinai-hpc init NAME`: write a new use case's folder (workflow, configs, model module,
preprocessing through write_shards, container recipe, README) from the templates in scaffold/,
so that `itwinai-hpc submit DIR/workflow.yml --backend local --wait --set
defaults.container=none` runs at once. All or nothing: every file is rendered first, written into
a temporary folder beside the target, and that folder is renamed into place."""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from itwinai_hpc.commands.init_args import TEMPLATES
from itwinai_hpc.core.errors import UserError

SCAFFOLD = Path(__file__).resolve().parent / "scaffold"
NAME_RULE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
SAFE_FOLDER = re.compile(r"[A-Za-z0-9_.+/-]+\Z")
SCHEMAS = {"workflow.yml": "workflow", "train.yml": "train", "inference.yml": "inference"}


def files_for(template: str, package: str) -> dict[str, str]:
    """{path in the use-case folder: template file in scaffold/} of one template."""
    files = {"workflow.yml": "workflow.yml.j2", "inference.yml": "inference.yml.j2",
             "preprocess.py": "preprocess.py.j2", f"{package}/__init__.py": "package.py.j2",
             f"{package}/model.py": "model.py.j2", "README.md": "README.md.j2",
             "apptainer.def": "apptainer.def.j2", "requirements.txt": "requirements.txt.j2"}
    if template == "script":                # own loop; predicts through plain mlflow.pyfunc
        files["train.py"] = "train.py.j2"
        files["predict.py"] = "predict.py.j2"
        del files["inference.yml"]
    else:
        files["train.yml"] = "train.yml.j2"
    return files


def check_name(name: str) -> str:
    """The Python package name of a use case NAME; a UserError for a NAME that cannot be one, a
    folder name, an MLflow model name and a ${var} value at once."""
    if not NAME_RULE.match(name):
        raise UserError(f"{name!r} is not a use-case name: use lower-case letters, digits, '-' "
                        "and '_', starting with a letter, at most 32 characters (e.g. "
                        "heat_forecast)", field="NAME")
    package = name.replace("-", "_")
    if keyword.iskeyword(package):
        raise UserError(f"{name!r} is a Python keyword; its model package could not be "
                        "imported: choose another name", field="NAME")
    if package in sys.stdlib_module_names or importlib.util.find_spec(package) is not None:
        raise UserError(f"{name!r} is the name of a Python module that exists already "
                        f"({package}); the use case's package would hide it on PYTHONPATH: "
                        "choose another name", field="NAME")
    return package


def schema_lines(target: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The `# yaml-language-server: $schema=...` line for each YAML file, and the schema files
    to write: the repository's docs/schema/ (relative path) where the target lies inside a
    checkout that has it, else schema/*.schema.json written beside the use case."""
    for folder in target.parents:
        shipped = folder / "docs" / "schema"
        if (shipped / "workflow.schema.json").is_file():
            rel = Path(os.path.relpath(shipped, target))
            return {f: f"# yaml-language-server: $schema={rel / k}.schema.json"
                    for f, k in SCHEMAS.items()}, {}
    from itwinai_hpc.commands.schema import schema_text

    return ({f: f"# yaml-language-server: $schema=schema/{k}.schema.json"
             for f, k in SCHEMAS.items()},
            {f"schema/{k}.schema.json": schema_text(k) for k in SCHEMAS.values()})


def render_files(name: str, template: str, target: Path, folder: str) -> dict[str, str]:
    """Every file of the use case as {relative path: text}; nothing written. `folder` is the
    target as the user named it (in the README's and the recipe's commands)."""
    import jinja2

    package = check_name(name)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(SCAFFOLD)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    schema, schema_files = schema_lines(target)
    task = "classification" if template == "classification" else "regression"
    context = {"name": name, "package": package, "template": template, "task": task,
               "folder": folder}
    texts: dict[str, str] = {}
    for path, source in files_for(template, package).items():
        text = env.get_template(source).render(**context)
        texts[path] = f"{schema[path]}\n{text}" if path in schema else text
    kinds = {SCHEMAS[path] for path in texts if path in SCHEMAS}
    texts.update({path: text for path, text in schema_files.items()
                  if path.split("/")[1].split(".")[0] in kinds})
    return texts


def write_use_case(name: str, template: str, target: Path) -> list[str]:
    """Render, then write all files under a temporary folder and rename it to `target` (which
    must be absent or an empty folder). Returns the paths written, relative to target."""
    check_name(name)
    if template not in TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}",
                        field="--template")
    folder = str(target)
    if not SAFE_FOLDER.match(folder):
        raise UserError(f"{folder!r}: a use-case folder for a container recipe and a workflow "
                        "needs a path of letters, digits and . _ - + / only", field="--dir")
    target = target.absolute()
    if target.is_symlink():
        raise UserError("is a symbolic link; init writes only into a real new or empty folder "
                        "(choose another --dir)", file=str(target))
    for parent in target.parents:             # the first one that exists must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{parent} is not a folder; choose another --dir",
                                file=str(target))
            break
    if target.exists() and not target.is_dir():
        raise UserError("exists and is not a folder; choose another --dir", file=str(target))
    if target.is_dir() and any(target.iterdir()):
        raise UserError("the folder exists and is not empty; init writes only into a new or "
                        "empty folder (choose another NAME or --dir)", file=str(target))
    texts = render_files(name, template, target, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a fresh folder of an unguessable name (0700): nothing planted beside the target is used
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.init-"))
    try:
        for path, text in texts.items():
            dest = partial / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)         # mkdtemp's 0700 -> what mkdir would have given
        if target.is_dir():
            target.rmdir()                    # empty, checked above
        os.rename(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return sorted(texts)


def cmd_init(args) -> int:
    target = Path(args.dir) if args.dir else Path("use-cases") / args.name
    written = write_use_case(args.name, args.template, target)
    print(f"wrote {target}/ ({args.template} template): {', '.join(written)}")
    print(f"run it here (no SLURM, no container):\n  itwinai-hpc submit "
          f"{target / 'workflow.yml'} --backend local --wait --set defaults.container=none")
    print(f"then read {target / 'README.md'}: where your data, model and packages go")
    return 0
