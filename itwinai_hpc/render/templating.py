"""The Jinja environment every template is rendered in: where templates are found (a site's
--templates folder first), the filters (shq, comment, matrix_variable, sbatch_folder) and the
functions templates call. templates/README.md lists this context for template authors.

Whatever a template does wrong (bytes that are not UTF-8, a name that is not defined, an include
that is missing or never ends, an expression that raises) becomes a TemplateFileError naming the
template's file and line: render turns it into one clean error, before anything is written.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import sys
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import jinja2
from jinja2.loaders import split_template_path

from itwinai_hpc.core import job_env, markers
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.render.binds import bind_pair
from itwinai_hpc.run import layout
from itwinai_hpc.run.paths import dependency_option, sbatch_folder
from itwinai_hpc.run.planned import PlannedStep


def builtin_templates() -> Path:
    """templates/ inside the installed wheel, or at the repository root in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "sbatch.sh.j2").is_file():
            return candidate
    raise RuntimeError(f"itwinai-hpc's templates are missing (looked in {package}/templates and "
                       f"{package.parent}/templates): the installation is broken")


def shell_quote(value) -> str:
    """The one filter that quotes a value for a shell line: the result is always one word. A
    sweep's ${matrix.KEY} (a marker, matrix.py) becomes "$MATRIX_KEY", set per task."""
    text = str(value)
    if "\x00" not in text:
        return shlex.quote(text)
    parts = []
    for literal, key in zip(*[iter(markers.MARKER.split(text) + [None])] * 2):
        if literal:
            parts.append(shlex.quote(literal))
        if key is not None:
            parts.append(f'"${markers.variable(key)}"')
    return "".join(parts)


def comment_safe(value) -> str:
    """Text for a `# ...` line: a newline would end the comment and start a command."""
    return " ".join(str(value).split())


def template_env(templates_dir: str | Path | None = None) -> jinja2.Environment:
    """Jinja environment: the user's --templates folder first, then the built-in templates."""
    search = [str(builtin_templates())]
    if templates_dir is not None:
        if not Path(templates_dir).is_dir():
            raise UserError(f"--templates {templates_dir}: not a folder")
        search.insert(0, str(templates_dir))
    env = _Environment(loader=_StrictLoader(search), trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True,
                       undefined=jinja2.StrictUndefined, autoescape=False,
                       bytecode_cache=_bytecode_cache())
    env.filters["shq"] = shell_quote
    env.filters["comment"] = comment_safe
    env.filters["matrix_variable"] = markers.variable
    env.filters["sbatch_folder"] = sbatch_folder
    env.globals.update(layout=layout, runtime_exports=runtime_exports, task_setup=task_setup,
                       bind_pair=bind_pair, matrix_json=matrix_json, job_env=job_env)
    return env


def matrix_json(keys, values) -> str:
    """A sweep task's values as the JSON object $ITWINAI_HPC_MATRIX holds."""
    return json.dumps(dict(zip(keys, values)))


def runtime_exports(job: PlannedStep, indent: int = 0) -> str:
    """runtime-env as `export NAME="value"` lines: values hold only $NAME / ${NAME} (schema.py
    refuses quotes, backslashes, backticks and $(...)), so double quotes expand exactly those."""
    return "\n".join(f'{" " * indent}export {name}="{value}"' for name, value in job.runtime_env)


def task_setup(job: PlannedStep, indent: int = 2) -> str:
    """What runs in each srun task (torchrun: each node) before the command: the node-setup
    lines, then runtime-env again, so $SLURM_NODEID and friends are that task's."""
    lines = [" " * indent + line for line in job.node_setup]
    exports = runtime_exports(job, indent)
    return "\n".join(lines + ([exports] if exports else []))


def submit_dependency(steps: list[PlannedStep]):
    """A template function: a step's --dependency options in submit.sh, whose job ids are the
    shell variables job_N that the lines before it set."""
    var = {j.name: f'"$job_{j.index}"' for j in steps}

    def options(job: PlannedStep) -> list[str]:
        return dependency_option([var[n] for n in job.needs_ok], [var[n] for n in job.waits_for])
    return options


class TemplateFileError(jinja2.TemplateSyntaxError):
    """Any problem of a template, located at its file and line. A TemplateSyntaxError, as the
    code that renders reports those with their file and line (render/folder.py); str() is the
    message alone (with the file in front where there is no line to report it with)."""

    def __init__(self, message: str, filename: str, lineno: int | None = None) -> None:
        super().__init__(message, lineno or 0, Path(filename).name, filename)
        self.translated = True          # Jinja adds no "File ..., line ..." to str()

    def __str__(self) -> str:
        return str(self.message) if self.lineno else f"{self.filename}: {self.message}"


class _StrictLoader(jinja2.FileSystemLoader):
    """FileSystemLoader that reads each template as strict UTF-8: a template with other bytes is
    an error naming its file, line and byte, not a UnicodeDecodeError from deep inside Jinja.
    Only regular files are templates (as for FileSystemLoader)."""

    def get_source(self, environment: jinja2.Environment, template: str):
        pieces = split_template_path(template)
        for folder in self.searchpath:
            filename = posixpath.join(folder, *pieces)   # as Jinja's: no drive to break out
            if os.path.isfile(filename):
                break
        else:
            plural = "path" if len(self.searchpath) == 1 else "paths"
            paths = ", ".join(repr(p) for p in self.searchpath)
            raise jinja2.TemplateNotFound(template, f"{template!r} not found in search "
                                                    f"{plural}: {paths}")
        try:
            with open(filename, "rb") as f:
                data = f.read()
            mtime = os.path.getmtime(filename)
        except OSError as exc:
            raise TemplateFileError(f"cannot read the template: {exc.strerror or exc}",
                                    filename) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line_start = data.rfind(b"\n", 0, exc.start) + 1
            raise TemplateFileError(
                f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
                f"{exc.start - line_start + 1}); save the template as UTF-8", filename,
                data.count(b"\n", 0, exc.start) + 1) from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")    # as reading it as text does

        def uptodate() -> bool:
            try:
                return os.path.getmtime(filename) == mtime
            except OSError:
                return False
        return text, os.path.normpath(filename), uptodate


class _Environment(jinja2.Environment):
    """Jinja's environment, whose errors while rendering name the template and line."""

    def handle_exception(self, source: str | None = None) -> NoReturn:
        exc = sys.exc_info()[1]
        frames = _template_frames(exc.__traceback__) if exc is not None else []
        if exc is None or not frames or \
                isinstance(exc, (jinja2.TemplateSyntaxError, UserError)):
            super().handle_exception(source)       # located already, or not a template's
        filename, lineno = frames[-1]
        if isinstance(exc, RecursionError):
            raise TemplateFileError(_endless(frames), *frames[_cycle_start(frames)]) from None
        if isinstance(exc, jinja2.TemplateError):
            raise TemplateFileError(str(exc), filename, lineno) from None
        if _builtin(filename):          # a built-in template's bug: the traceback shows it
            super().handle_exception(source)
        raise TemplateFileError(f"{type(exc).__name__}: {exc}", filename, lineno) from None


def _template_frames(tb: TracebackType | None) -> list[tuple[str, int]]:
    """(template file, template line) of each frame of template code, outermost first."""
    frames = []
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None and template.filename:
            frames.append((template.filename, template.get_corresponding_lineno(tb.tb_lineno)))
        tb = tb.tb_next
    return frames


def _cycle_start(frames: list[tuple[str, int]]) -> int:
    """The first frame that the recursion comes back to (same template, same line)."""
    seen: dict[tuple[str, int], int] = {}
    for i, frame in enumerate(frames):
        if frame in seen:
            return seen[frame]
        seen[frame] = i
    return len(frames) - 1


def _endless(frames: list[tuple[str, int]]) -> str:
    start = _cycle_start(frames)
    cycle = []
    for frame in frames[start:]:
        if frame in cycle:
            break
        cycle.append(frame)
    chain = " -> ".join(f"{Path(f).name}:{line}" for f, line in cycle + cycle[:1])
    return (f"templates include (or call) each other without end: {chain} -> ... (Python's "
            "recursion limit was reached)")


def _builtin(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(builtin_templates().resolve())
    except (OSError, RuntimeError):
        return False


class _PrivateBytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's compiled templates, kept between runs (compiling them is most of `render`'s
    time). Keyed by each template's file and checked against its source, so an edited or
    --templates template is compiled afresh; a cache that cannot be written is skipped."""

    def dump_bytecode(self, bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """The user's own cache folder (0700, theirs: loading compiled code from a folder someone
    else can write would run their code), or None where there is none."""
    import os
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "itwinai-hpc" / "templates"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = folder.stat()
    except (OSError, RuntimeError):         # no home, read-only home, ...
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return _PrivateBytecodeCache(str(folder))

