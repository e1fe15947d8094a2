"""Container binds as a runtime reads them (SRC[:DST[:OPTS]], several joined by commas): what
a rendered script binds, creates or requires, and the check that every bind splits back into
the paths meant. Pure.
"""

from __future__ import annotations

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.run.paths import BINDING_RUNTIMES, bind_problem


def check_binds(steps, workflow_dir: str, workflow_bind, workflow_file: str) -> None:
    """Every bind that a container runtime reads as SRC[:DST[:OPTS]] must split back into the
    paths meant: the workflow's own folder (bound as a path) may hold no ':' or ',', and a
    bind (after ${...} substitution) no ',', at most two ':', and a DST that is absolute, so
    that a ':' in a substituted path is not taken for SRC:DST. UserError, located."""
    for job in steps:
        c = job.container
        if c is None or c.runtime not in BINDING_RUNTIMES:
            continue
        folder = workflow_dir if workflow_bind(c.binds) else None
        if folder and bind_problem(folder):
            raise UserError(f"the workflow's folder {folder!r} {bind_problem(folder)} (step "
                            f"'{job.name}' runs in a container ({c.runtime}), which binds it)",
                            file=workflow_file)
        for bind in c.binds:
            parts = bind.split(":")
            if "," in bind or len(parts) > 3 or (len(parts) > 1 and not parts[1].startswith("/")):
                raise UserError(f"bind {bind!r} does not read as SRC[:DST[:OPTIONS]] with an "
                                "absolute DST: a path with ':' or ',' cannot be bound into a "
                                f"container ({c.runtime}): they separate SRC:DST and binds; use "
                                "a path without them", file=workflow_file,
                                field=f"steps.{job.name}.container.binds")


def bind_pair(bind: str) -> str:
    """A bind as SRC:DST (`/data` -> `/data:/data`), for runtimes that want both sides."""
    return bind if ":" in bind else f"{bind}:{bind}"


def bind_sources_for(run_dir: str, workdir: str):
    """A template function: a container's bind sources split into (create, require). Folders
    in the run folder or under the working directory are the workflow's own, and may not exist
    yet (data, MLflow store): they are created. Anything else (a site library file, read-only
    data) must exist; creating it would fail on a file, or hide a typo."""
    owned = (run_dir.rstrip("/") + "/", workdir.rstrip("/") + "/")

    def split(binds) -> tuple[list[str], list[str]]:
        create: list[str] = []
        require: list[str] = []
        for bind in binds:
            source = bind.split(":", 1)[0]
            (create if (source.rstrip("/") + "/").startswith(owned) else require).append(source)
        return create, require
    return split


def workflow_bind_for(workflow_dir: str, run_dir: str, workdir: str):
    """A template function: the bind that shows a container the workflow's own folder (its
    config files: `--config ${workflow_dir}/x.yml`), or None where one of the container's binds
    covers it already. Read-only, unless the working directory, the run folder or a bind lies
    inside it: the step writes there, and a read-only mount would take that away."""
    def under(path: str, folder: str) -> bool:
        return (path.rstrip("/") + "/").startswith(folder.rstrip("/") + "/")

    def bind(binds) -> str | None:
        sources = [b.split(":", 1)[0] for b in binds]
        if any(under(workflow_dir, source) for source in sources):
            return None
        if any(under(path, workflow_dir) for path in (workdir, run_dir, *sources)):
            return workflow_dir
        return f"{workflow_dir}:{workflow_dir}:ro"
    return bind
