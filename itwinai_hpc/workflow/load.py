"""Load a workflow file: YAML -> --set overrides -> ${var} substitution -> matrices -> typed,
checked Workflow.

Every problem becomes a UserError naming the file, the YAML line and the field; all problems of a
file are reported at once. Each concern lives in its own module (overrides.py, variables.py,
validation.py, graph.py); this one only strings them together. Never imports torch or mlflow;
writes nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc.core.errors import UserErrors
from itwinai_hpc.core.overrides import apply_override
from itwinai_hpc.core.validation import by_line, validate_model
from itwinai_hpc.core.yamlsrc import YamlDoc, load_yaml
from itwinai_hpc.workflow.graph import check_graph
from itwinai_hpc.workflow.matrix import expand_matrices
from itwinai_hpc.workflow.profiles import LoadedProfile, load_profile
from itwinai_hpc.workflow.schema import Workflow
from itwinai_hpc.workflow.site_checks import site_refusals
from itwinai_hpc.workflow.variables import substitute_document

# What ${run_dir} and ${run_id} become where there is no run (validate).
PLACEHOLDERS = {"run_dir": "<run_dir>", "run_id": "<run_id>"}


@dataclass(frozen=True)
class LoadedWorkflow:
    """A workflow as written, validated, with the run it was resolved for (run_dir/run_id are
    None when it was loaded only to be checked: then ${run_dir} holds a placeholder)."""

    workflow: Workflow
    path: Path            # the workflow file as given
    doc: YamlDoc          # raw data after overrides and substitution (for line lookups)
    overrides: tuple[str, ...]
    run_dir: Path | None = None
    run_id: str | None = None
    workdir: Path = Path(".")  # ${workdir}: where the jobs run (the submitting folder)
    site: LoadedProfile | None = None   # the profile plan() merges under `defaults`


def read_workflow(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> YamlDoc:
    """Parse `path` once and apply the --set overrides to the raw document."""
    doc = load_yaml(path, keep_number_text=True)
    for item in overrides:
        apply_override(doc, item)
    return doc


def resolve_workflow(doc: YamlDoc, path: str | Path, overrides: tuple[str, ...] = (), *,
                     run_dir: Path | None = None, run_id: str | None = None,
                     workdir: Path | None = None, profile: str | None = None) -> LoadedWorkflow:
    """Substitute and validate a document from read_workflow for one run (or for checking only,
    without run_dir/run_id). Raises UserError(s); writes nothing."""
    path = Path(path)
    workdir = Path(workdir or os.getcwd()).absolute()
    context = {"workflow_dir": str(path.resolve().parent), "workdir": str(workdir),
               **PLACEHOLDERS}
    if run_dir is not None:
        context["run_dir"] = str(run_dir)
    if run_id is not None:
        context["run_id"] = run_id
    substitute_document(doc, context)
    expand_matrices(doc)
    wf = validate_model(Workflow, doc)
    problems = check_graph(wf, doc)       # the workflow as written: its lines, its fields
    if problems:
        raise UserErrors(by_line(problems))
    # The site profile (--profile over `profile:`); plan() merges it under the defaults. The
    # workflow stays as written, naming its profile, so its resolved copy renders the same.
    site = load_profile(profile or wf.profile)
    wf = wf.model_copy(update={"profile": site.name})
    refused = site_refusals(wf, doc, site)      # what this site would refuse (site_checks.py)
    if refused:
        raise UserErrors(by_line(refused))
    return LoadedWorkflow(wf, path, doc, tuple(overrides), run_dir, run_id, workdir, site)


def load_workflow(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  profile: str | None = None) -> LoadedWorkflow:
    """Parse, override, substitute and validate `path` for checking (validate, tests); to render
    a run use render.render_workflow, which resolves ${run_dir}/${run_id} for that run."""
    return resolve_workflow(read_workflow(path, overrides), path, tuple(overrides),
                            profile=profile)


def workflow_name(doc: YamlDoc) -> str:
    """The document's raw `name` (to name a run before validation), or 'workflow'."""
    data = doc.data
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,62}", name) \
        else "workflow"
