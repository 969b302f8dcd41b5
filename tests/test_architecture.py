"""The package's shape: no import cycle inside fastmlr/, between modules or between packages; no oversized module.

The import graph is read from the source with :mod:`ast`, not by importing:
every ``import`` and ``from ... import`` statement counts, at module level and
inside functions alike (a function-level import is still a dependency, only a
later one). Importing a submodule ``a.b.c`` is an edge to ``a.b.c`` alone: the
parent packages it executes first are not counted, so a package whose
``__init__`` imports its own submodules is not a cycle by itself.

Imports made by name count too: ``importlib.import_module("fastmlr.x")``, any
string constant that is exactly a module's dotted name (a table of modules loaded
later, such as the ops' optional backends or the commands; not the module after
``-m`` in a command line, which runs in another process), and an f-string
``f"fastmlr.deploy.{name}"`` whose literal start names a package (an edge to that
package). The package-level graph folds each module into its unit: the
subpackage of ``fastmlr`` it lies in (``fastmlr.ops._cpp`` -> ``fastmlr.ops``),
or itself for a top-level module (``fastmlr.constants``).
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


def _named_module(text: str, mods, prefix_only: bool = False) -> str | None:
    """The package module a string names: exactly (a dotted module name), or, for the literal start of an
    f-string (``"fastmlr.deploy."``), the deepest package that start spells out."""
    if not prefix_only:
        return text if text in mods else None
    base = text.rstrip(".") if text.endswith(".") else text.rsplit(".", 1)[0]
    while base and base not in mods:
        base = base.rsplit(".", 1)[0] if "." in base else ""
    return base if base and base != PKG else None


def imports_of(module: str, path: str, mods: dict[str, str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its file, by statement or by name."""
    is_pkg = os.path.basename(path) == "__init__.py"
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    # A module named after "-m" in a command line runs in another process: not an import.
    commands = {id(b) for n in ast.walk(tree) if isinstance(n, (ast.List, ast.Tuple))
                for a, b in zip(n.elts, n.elts[1:]) if isinstance(a, ast.Constant) and a.value == "-m"}
    out = set()
    for node in ast.walk(tree):
        if id(node) in commands:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PKG + "."):
            target = _named_module(node.value, mods)
            if target:
                out.add(target)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            start = str(node.values[0].value)
            if start.startswith(PKG + ".") and len(node.values) > 1:
                target = _named_module(start, mods, prefix_only=True)
                if target:
                    out.add(target)
        elif isinstance(node, ast.Import):
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


def unit_of(module: str) -> str:
    """The package-level unit of ``module``: ``fastmlr.<first part>`` (a subpackage, or a top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded into units (:func:`unit_of`); edges inside a unit and to ``fastmlr`` itself dropped."""
    out: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        unit = unit_of(mod)
        out.setdefault(unit, set()).update(unit_of(t) for t in targets if unit_of(t) not in (unit, PKG))
    out.pop(PKG, None)
    return out


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


def test_names_of_modules_are_edges(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text(
        "import importlib\n"
        "LOADERS = {'b': 'fastmlr.sub.b'}\n"
        "def f(name):\n    return importlib.import_module(f'fastmlr.sub.{name}')\n"
        "MSG = 'fastmlr.sub.b is not a whole-string name here'\n"
        "CMD = ['python', '-m', 'fastmlr.sub.b']\n")
    mods = package_modules(str(pkg))
    assert imports_of("fastmlr.a", str(pkg / "a.py"), mods) == {"fastmlr.sub.b", "fastmlr.sub"}
    graph = {"fastmlr.a": {"fastmlr.sub.b"}, "fastmlr.sub.b": {"fastmlr.sub.c"}, "fastmlr.sub.c": {"fastmlr.a"},
             "fastmlr.sub": set()}
    assert package_graph(graph) == {"fastmlr.a": {"fastmlr.sub"}, "fastmlr.sub": {"fastmlr.a"}}
    assert import_cycles(package_graph(graph)) == [["fastmlr.a", "fastmlr.sub"]]


def test_the_backends_tables_of_modules_are_seen():
    # The dispatcher loads the optional backends by name; the test must see those edges.
    graph = import_graph()
    assert {"fastmlr.ops._cpp", "fastmlr.ops._triton", "fastmlr.ops._nodes"} <= graph["fastmlr.ops._dispatch"]
    assert graph["fastmlr.bench.runtimes"] & {"fastmlr.deploy", "fastmlr.deploy.onnx"}


def test_no_import_cycle_between_packages():
    units = package_graph(import_graph())
    assert {"fastmlr.ops", "fastmlr.kernels", "fastmlr.deploy", "fastmlr.runtime"} <= set(units)
    cycles = import_cycles(units)
    assert not cycles, "packages that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in cycles)
    # The runners never import the builders; the kernels never import the ops' declarations.
    assert "fastmlr.deploy" not in units["fastmlr.runtime"] and "fastmlr.ops" not in units["fastmlr.kernels"]


def test_no_module_over_the_line_limit():
    long = {}
    for mod, path in package_modules().items():
        with open(path, encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        if n > MAX_LINES:
            long[mod] = n
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{m} ({n})" for m, n in sorted(long.items()))


def _modules_naming(name: str, folders) -> list[str]:
    root = os.path.dirname(ROOT)
    found = []
    for folder in folders:
        for path, mod in ((p, m) for m, p in package_modules(os.path.join(root, folder), folder).items()):
            with open(path, encoding="utf-8") as fh:
                if name in fh.read():
                    found.append(mod)
    return sorted(found)


def test_an_op_is_named_only_where_it_is_declared():
    """Outside fastmlr/ops, kernels and models no module of fastmlr/ or tools/ names an op (by its name or its
    ONNX node's); inside fastmlr/ops at most 3 modules do. Everything else reads the declarations."""
    from fastmlr import ops

    assert len(ops.specs()) >= 6
    for spec in ops.specs():
        for name in (spec.name, *((spec.onnx.op_type,) if spec.onnx else ())):
            where = _modules_naming(name, ("fastmlr", "tools"))
            outside = [m for m in where if not m.startswith(("fastmlr.ops", "fastmlr.kernels", "fastmlr.models"))]
            assert not outside, f"{name} is named outside the ops, kernels and models: {outside}"
            inside = [m for m in where if m.startswith("fastmlr.ops")]
            assert len(inside) in (1, 2, 3), f"{name} is named in {len(inside)} modules of fastmlr/ops: {inside}"
