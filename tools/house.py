"""The house in figures: lines, import cycles, forbidden imports, private imports, long functions.

Run from the project root: ``python tools/house.py [--json]``. It reads the package's source as text
(``ast``), runs nothing of it, and prints the figures the architecture is held to
(``docs/architecture.md``); ``tests/test_house.py`` asserts the rules on every test run.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

PACKAGE = "sftl_dask"

# Imports that must not exist, straight or through another module (DESIGN.md, "Who may import whom").
# Each rule: (importer prefix, imported prefix). A prefix matches the module or anything below it.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("sftl_dask.training", "sftl_dask.testbed"),
    ("sftl_dask.training", "sftl_dask.pipelines"),
    ("sftl_dask.validate", "sftl_dask.training"),
    ("sftl_dask.models", "sftl_dask.simulate"),
    ("sftl_dask.io", "sftl_dask.testbed"),
    ("sftl_dask.staging", "sftl_dask.io"),
    ("sftl_dask.retrieve", "sftl_dask.testbed"),
    ("sftl_dask.api", "sftl_dask.testbed"),
)
# The layers of docs/architecture.md, lowest first: an import never runs from a layer to a higher one. A module
# belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("physics", ("sftl_dask.physics",)),
    ("core", ("sftl_dask.geo", "sftl_dask.staging", "sftl_dask.features", "sftl_dask.metrics",
              "sftl_dask.version", "sftl_dask.progress", "sftl_dask.times", "sftl_dask.data")),
    ("readers, writers, models, figures", ("sftl_dask.io", "sftl_dask.models", "sftl_dask.plotting",
                                           "sftl_dask.cluster", "sftl_dask.report")),
    ("science and the world", ("sftl_dask", "sftl_dask.matchups", "sftl_dask.ingest", "sftl_dask.testbed",
                               "sftl_dask.simulate", "sftl_dask.retrieve", "sftl_dask.rechunk",
                               "sftl_dask.validate", "sftl_dask.api", "sftl_dask.training")),
    ("pipelines", ("sftl_dask.pipelines",)),
    ("command line", ("sftl_dask.cli",)),
)


def layer_of(mod: str) -> int:
    """The index in :data:`LAYERS` of ``mod``'s layer (longest matching prefix).

    Raises
    ------
    KeyError
        For a module of no layer (a new top-level module must be placed in LAYERS).
    """
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        raise KeyError(f"{mod}: in no layer of tools/house.py LAYERS")
    return best[0]


# physics imports nothing else of the package; plotting is a leaf (it may use physics for units only).
LEAVES: dict[str, tuple[str, ...]] = {
    "sftl_dask.physics": ("sftl_dask.physics",),
    "sftl_dask.plotting": ("sftl_dask.physics", "sftl_dask.metrics"),
    "sftl_dask.geo": ("sftl_dask.physics",),
    "sftl_dask.staging": ("sftl_dask.physics",),
}


# A function over the limit is allowed where its docstring says why, with this phrase.
LONG_REASON = "Why this is long:"


@dataclass
class Edge:
    """One import of a module of the package by another."""

    src: str
    dst: str
    line: int
    names: list[str]
    in_function: bool


@dataclass
class House:
    """The figures of one tree."""

    lines: int = 0
    modules: int = 0
    imports: int = 0
    imports_in_functions: int = 0
    cycles: list[list[str]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    long_functions: list[tuple[str, int]] = field(default_factory=list)


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for p in sorted((root / PACKAGE).rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        out[name] = p
    return out


def _resolve(mod: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    base = node.module or ""
    if node.level:
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return base


def _edges(mods: dict[str, pathlib.Path]) -> Iterable[Edge]:
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        in_func: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for n in ast.walk(fn):
                    if isinstance(n, ast.Import | ast.ImportFrom):
                        in_func.add(id(n))
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                base = _resolve(mod, path, n)
                if not base.startswith(PACKAGE):
                    continue
                for a in n.names:
                    full = f"{base}.{a.name}"
                    dst = full if full in mods else base
                    if dst in mods and dst != mod:
                        yield Edge(mod, dst, n.lineno, [a.name], id(n) in in_func)
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name in mods and a.name != mod:
                        yield Edge(mod, a.name, n.lineno, [], id(n) in in_func)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _reach(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module reachable from ``start``, with one path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return paths


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def measure(root: pathlib.Path, max_function_lines: int = 80) -> House:
    """Measure the package under ``root``.

    Parameters
    ----------
    root : pathlib.Path
        The project root (the folder holding ``sftl_dask/``).
    max_function_lines : int
        Functions longer than this many lines (definition to last statement) are listed, unless their docstring
        says why (a paragraph starting with ``Why this is long:``).

    Returns
    -------
    House
        The figures; ``cycles``, ``forbidden`` and ``private_imports`` are empty in a tidy house.
    """
    mods = _modules(root)
    house = House(modules=len(mods))
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in _edges(mods):
        house.imports += 1
        house.imports_in_functions += e.in_function
        graph[e.src].add(e.dst)
        if layer_of(e.dst) > layer_of(e.src):
            house.forbidden.append(f"{mods[e.src]}:{e.line} imports {e.dst}: up from layer "
                                   f"'{LAYERS[layer_of(e.src)][0]}' to '{LAYERS[layer_of(e.dst)][0]}'")
        for name in e.names:
            if name.startswith("_") and not name.startswith("__"):
                house.private_imports.append(f"{mods[e.src]}:{e.line} imports {e.dst}.{name}")
        # a module whose name is private, imported from elsewhere (e.g. sftl_dask._staging)
        leaf = e.dst.rsplit(".", 1)[-1]
        if leaf.startswith("_") and not leaf.startswith("__") and e.src.rsplit(".", 1)[0] != e.dst.rsplit(".", 1)[0]:
            house.private_imports.append(f"{mods[e.src]}:{e.line} imports private module {e.dst}")
    house.cycles = _cycles(graph)
    for src in sorted(graph):
        reach = _reach(graph, src)
        for a, b in FORBIDDEN:
            if _under(src, a):
                for dst, path in reach.items():
                    if _under(dst, b):
                        house.forbidden.append(" -> ".join(path))
                        break
        for leaf, allowed in LEAVES.items():
            if _under(src, leaf):
                for dst in sorted(graph[src]):
                    if not _under(dst, leaf) and not any(_under(dst, ok) for ok in allowed):
                        house.forbidden.append(f"{src} -> {dst} (a leaf imports the package)")
    for mod, path in mods.items():
        text = path.read_text()
        house.lines += len(text.splitlines())
        for fn in ast.walk(ast.parse(text)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if n > max_function_lines and LONG_REASON not in (ast.get_docstring(fn) or ""):
                    house.long_functions.append((f"{mod}.{fn.name}", n))
    house.long_functions.sort(key=lambda t: -t[1])
    return house


def floors(root: pathlib.Path) -> dict[str, int]:
    """Each module's floor: 0 for a module that imports nothing of the package, else one above the highest
    module it imports (the longest import path below it). Requires an acyclic graph.
    """
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in _edges(mods):
        graph[e.src].add(e.dst)
    # a package's __init__ re-exports: count it as the floor of what it imports, not a room of its own
    out: dict[str, int] = {}

    def floor(m: str, seen: tuple[str, ...] = ()) -> int:
        if m not in out:
            below = [floor(d, (*seen, m)) for d in graph[m] if d not in seen]
            out[m] = 1 + max(below) if below else 0
        return out[m]

    for m in mods:
        floor(m)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="project root (default: .)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--max-lines", type=int, default=80, help="list functions longer than this (lines)")
    ap.add_argument("--floors", action="store_true", help="print each module's floor (imports run downwards)")
    args = ap.parse_args(argv)
    if args.floors:
        by_floor: dict[int, list[str]] = {}
        for m, f in floors(pathlib.Path(args.root)).items():
            by_floor.setdefault(f, []).append(m.removeprefix(PACKAGE + "."))
        for f in sorted(by_floor, reverse=True):
            print(f"floor {f:2d}: " + "  ".join(sorted(by_floor[f])))
        return 0
    house = measure(pathlib.Path(args.root), args.max_lines)
    if args.json:
        print(json.dumps(asdict(house), indent=1))
        return 0
    print(f"lines {house.lines} in {house.modules} modules; {house.imports} internal imports, "
          f"{house.imports_in_functions} inside functions")
    print(f"import cycles: {len(house.cycles)}")
    for c in house.cycles:
        print("  " + " <-> ".join(c))
    print(f"forbidden imports: {len(house.forbidden)}")
    for f in house.forbidden:
        print("  " + f)
    print(f"private names imported across modules: {len(house.private_imports)}")
    for p in house.private_imports:
        print("  " + p)
    print(f"functions over {args.max_lines} lines: {len(house.long_functions)}")
    for name, n in house.long_functions:
        print(f"  {n:4d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
