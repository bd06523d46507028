"""No import circles anywhere in mrcnn/: the imports of every module (at any depth, function-level
ones included) are parsed, and a cycle in the module graph fails the test, naming it."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
    mods = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "mrcnn")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: str, mods: dict[str, str], me: str) -> set[str]:
    """The project modules `path` imports. `from pkg import name` counts `pkg.name` when that is
    a module, else `pkg`; a package's __init__ re-exporting its modules is not an edge back."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in mods else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in mods and m != me and not me.startswith(m + ".")}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u, stack):
        state[u] = 1
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycles_in_mrcnn():
    mods = _modules()
    # A package's __init__ imports its own modules to re-export them; a module importing its
    # package's name is then an edge to those modules, so packages count as their members.
    edges = {m: _imports(p, mods, m) for m, p in mods.items()}
    assert len(mods) > 40  # the walk found the package
    cycles = _cycles({m: {v for v in vs if not mods[v].endswith("__init__.py")}
                      for m, vs in edges.items()})
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
