"""The import rule between the package's folders, read from every import statement (lazy ones
inside functions too), and the size rule for modules. Used by test_layers.py; kept apart so a
test can run it on a planted package and see it fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

# folder -> what it may import besides itself ("run.layout": that module of run/ only)
MAY_IMPORT = {
    "core": set(),
    "run": {"core"},
    "workflow": {"core"},
    "render": {"core", "run", "workflow"},
    "backends": {"core", "run"},
    "ops": {"core", "run", "backends"},
    "data": {"core", "run.layout"},
    "ml": {"core", "run.layout", "data"},
}
FREE = {"commands", "cli", "__init__", "__main__"}   # may import anything
MAX_LINES = 300


def modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, module: str):
    """(names, line) for every import statement of the package in `path`: `from P import a`
    names P.a first (a submodule, when it is one) and then P."""
    top = module.split(".")[0]
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    yield [alias.name], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != top:
                continue
            for alias in node.names:       # `from pkg.run import layout` imports run.layout
                yield [f"{target}.{alias.name}", target], node.lineno


def _known(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _folder(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def violations(package: Path) -> list[str]:
    """Every import that breaks MAY_IMPORT, every module outside the folders, every cycle."""
    mods = modules(package)
    out, edges = [], {}
    for mod, path in mods.items():
        src = _folder(mod)
        where = path.relative_to(package.parent)
        if mod.count(".") == 1 and src not in FREE and src not in MAY_IMPORT:
            out.append(f"{where}: a module outside the layered folders")
        for names, line in imports(path, mod):
            dst_mod = _known(names[0], mods)
            if dst_mod is None or dst_mod == mod:
                continue
            if not (path.name == "__init__.py" and dst_mod.startswith(mod + ".")):
                edges.setdefault(mod, set()).add(dst_mod)
            dst = _folder(dst_mod)
            if src in FREE or dst == src:
                continue
            allowed = MAY_IMPORT.get(src, set())
            sub = ".".join(dst_mod.split(".")[1:3])
            if dst not in allowed and sub not in allowed:
                out.append(f"{where}:{line}: {src}/ may not import {dst_mod}")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def oversized(package: Path, limit: int = MAX_LINES) -> list[str]:
    return [f"{p.relative_to(package.parent)}: {n} lines" for p in sorted(package.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > limit]
