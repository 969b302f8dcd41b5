"""The package's shape: no import cycle inside fastmlr/, no oversized module.

The import graph is read from the source with :mod:`ast`, not by importing:
every ``import`` and ``from ... import`` statement counts, at module level and
inside functions alike (a function-level import is still a dependency, only a
later one). Importing a submodule ``a.b.c`` is an edge to ``a.b.c`` alone: the
parent packages it executes first are not counted, so a package whose
``__init__`` imports its own submodules is not a cycle by itself.
"""

from __future__ import annotations

import ast
import os

PKG = "fastmlr"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PKG)
MAX_LINES = 450


def package_modules(root: str = ROOT, pkg: str = PKG) -> dict[str, str]:
    """{dotted module name: file path} for every .py file under ``root``."""
    mods = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, root)
        prefix = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
        for f in sorted(files):
            if f.endswith(".py"):
                mods[prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"] = os.path.join(folder, f)
    return mods


def _resolve(base: str, name: str, mods) -> str | None:
    """``base.name`` if that is a module of the package, else ``base`` if it is one, else None."""
    full = f"{base}.{name}" if name else base
    if full in mods:
        return full
    return base if base in mods else None


def imports_of(module: str, path: str, mods: dict[str, str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its file."""
    is_pkg = os.path.basename(path) == "__init__.py"
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    target = _resolve(alias.name, "", mods)
                    if target:
                        out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                # A package's own name is its __init__; "." inside it is the package itself.
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != PKG and not base.startswith(PKG + "."):
                continue
            for alias in node.names:
                target = _resolve(base, alias.name, mods)
                if target:
                    out.add(target)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = package_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds at least one cycle), sorted.

    Tarjan's algorithm, iterative so that a deep package cannot exhaust the recursion limit.
    """
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return sorted(comps)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_relative_imports_resolve_to_package_modules(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (pkg / f).write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\nfrom .. import a\n")
    (pkg / "sub" / "b.py").write_text(
        "def f():\n    from . import Thing\n    from ..a import g\n    import fastmlr.sub\n")
    mods = package_modules(str(pkg))
    assert imports_of("fastmlr.sub", str(pkg / "sub" / "__init__.py"), mods) == {"fastmlr.sub.b", "fastmlr.a"}
    assert imports_of("fastmlr.sub.b", str(pkg / "sub" / "b.py"), mods) == {"fastmlr.sub", "fastmlr.a"}


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    cycles = import_cycles(graph)
    assert not cycles, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_over_the_line_limit():
    long = {}
    for mod, path in package_modules().items():
        with open(path, encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES:
            long[mod] = n
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{m} ({n})" for m, n in sorted(long.items()))
