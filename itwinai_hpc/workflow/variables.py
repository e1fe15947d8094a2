"""`${var}` substitution in a workflow's raw YAML document: `vars`, `${env:NAME[:-default]}`,
the built-ins (workflow_dir, workdir, run_dir, run_id), `$${x}` for a literal `${x}`;
`${matrix.KEY}` in a sweep's args, env and resources becomes a marker that matrix.py fills in.

A value that is one whole reference keeps its type (`nodes: ${n}` stays an int). Every problem
becomes a located UserError; all of them are reported at once. Pure apart from reading os.environ.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from itwinai_hpc.core.errors import UserError, UserErrors
from itwinai_hpc.core.validation import by_line, did_you_mean, dotted
from itwinai_hpc.core.yamlsrc import YamlDoc
from itwinai_hpc.workflow import matrix

VAR_RE = re.compile(r"\$(\$?)\{([^}]*)\}")
VAR_NAME = re.compile(r"^(env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)
BUILTIN_VARS = ("workflow_dir", "workdir", "run_dir", "run_id")
# Names whose values must not be substituted into files (${env:...}): use env-passthrough.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$|^KEY$", re.I)
# Step fields that are raw shell, where substituted values are quoted (shlex.quote leaves a
# plain path as it is, so "${workflow_dir}/x.py" in double quotes keeps working).
SHELL_FIELDS = ("command",)


def substitute_document(doc: YamlDoc, context: dict[str, str]) -> None:
    data = doc.data
    raw_vars = data.get("vars") if isinstance(data, dict) else None
    resolved: dict[str, Any] = {}
    errors: list[UserError] = []
    if isinstance(raw_vars, dict):
        resolving: list[str] = []

        def resolve(name: str) -> Any:
            if name in resolved:
                return resolved[name]
            if name in resolving:
                cycle = " -> ".join(resolving[resolving.index(name):] + [name])
                raise _VarError(f"variables refer to each other in a loop: {cycle}")
            resolving.append(name)
            try:
                value = _subst_value(raw_vars[name], lookup)
            finally:
                resolving.pop()
            resolved[name] = value
            return value

        def lookup(name: str) -> Any:
            if name in raw_vars:
                return resolve(name)
            return _lookup_builtin(name, context, raw_vars)

        for name in list(raw_vars):
            try:
                raw_vars[name] = resolve(name)
            except _VarError as exc:
                file, line = doc.where(("vars", name))
                errors.append(UserError(str(exc), file=file, line=line, field=f"vars.{name}"))
    names = raw_vars if isinstance(raw_vars, dict) else {}

    def lookup_doc(name: str, path: tuple = ()) -> Any:
        if name.startswith(matrix.PREFIX):
            return matrix.reference(name, path, data)
        if name in names:
            return names[name]
        return _lookup_builtin(name, context, names)

    def walk(node: Any, path: tuple) -> Any:
        if isinstance(node, dict):
            for key in node:
                if path == () and key == "vars":
                    continue
                node[key] = walk(node[key], path + (key,))
            return node
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        # `command` is the user's own shell: their text stays raw, but what a variable brings
        # in (a folder name, an environment value) must arrive as one word, never as code.
        shell = len(path) == 3 and path[0] == "steps" and path[2] in SHELL_FIELDS
        try:
            return _subst_value(node, lambda name: lookup_doc(name, path), quote=shell)
        except (_VarError, matrix.MatrixError) as exc:
            file, line = doc.where(path)
            errors.append(UserError(str(exc), file=file, line=line, field=dotted(path, doc.data)))
            return node

    walk(data, ())
    if errors:
        raise UserErrors(by_line(errors))


class _VarError(Exception):
    pass


def _lookup_builtin(name: str, context: dict[str, str], defined) -> Any:
    m = VAR_NAME.fullmatch(name)
    if not m:
        raise _VarError(f"'${{{name}}}' is not a variable reference; write $${{...}} for a "
                        "literal '${...}' (e.g. shell code)")
    is_env, var, default = m.groups()
    if is_env:
        if SECRET_NAME.search(var):
            raise _VarError(f"${{env:{var}}} looks like a secret, and its value would be written "
                            "into the run's scripts, workflow.yml and run.json in clear text; "
                            f"pass it by name instead: env-passthrough: [{var}] (the job gets "
                            "it from the environment you submit from, never from disk)")
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise _VarError(f"environment variable {var} is not set (write ${{env:{var}:-DEFAULT}} "
                        "to give a default)")
    if default is None and var in context:
        return context[var]
    known = sorted(set(defined) | set(BUILTIN_VARS))
    raise _VarError(f"unknown variable ${{{name}}}{did_you_mean(name, known)}; defined: "
                    f"{', '.join(known)}; write $${{{name}}} for a literal '${{{name}}}'")


def _subst_value(value: Any, lookup, quote: bool = False) -> Any:
    # No argument, variable or script line can hold NUL (and a sweep's markers are made of it).
    if isinstance(value, str) and "\x00" in value:
        raise _VarError("contains a NUL character (\\0), which no argument, variable or "
                        "script line can hold; remove it")
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = VAR_RE.fullmatch(value)
    if whole and not whole.group(1) and not quote:
        return lookup(whole.group(2))   # keeps the type: nodes: ${n} stays an int

    def repl(m: re.Match) -> str:
        if m.group(1):                  # $${x} -> literal ${x}
            return "${" + m.group(2) + "}"
        text = str(lookup(m.group(2)))
        return shlex.quote(text) if quote else text

    return VAR_RE.sub(repl, value)
