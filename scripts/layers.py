"""The import graph of ``bench/`` and ``methods/``, read from the source with ``ast``, against the levels.

    python scripts/layers.py          # levels, longest chain, cycles, upward and deferred imports, sizes

``tests/test_layers.py`` asserts the same measurements. A module may import its own level and the
levels below; imports under ``if TYPE_CHECKING:`` are types only and not counted. A package import
inside a function hides an edge from the reader, so it is refused (third-party ones are not looked
at) except in the command line, ``bench/cli``, where it defers a heavy dependency until the command
runs (``bench --help`` must not load torch) and its line says so: ``# deferred: torch``. Deferred
imports still count as edges for the level and cycle checks.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Lowest first. ``methods`` (built-in methods; plugins sit at the same place) build on the method kit.
LEVELS = (
    ("bench", "bench.errors", "bench.coercion", "bench.choices"),
    ("bench.engine",),
    ("bench.config",),
    ("bench.store",),
    ("bench.methodkit",),
    ("methods",),
    ("bench.evaluation",),
    ("bench.runs",),
    ("bench.products",),
    ("bench.cli",),
)
MAX_LINES = 420  # "no module over ~400 lines"
DEFERRING = ("bench.cli",)  # the packages whose functions may import the package, each line marked
DEFERRED_MARK = "# deferred:"


def level_of(module: str) -> int | None:
    """The level of a module: its own entry, else its package's (longest prefix wins)."""
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(LEVELS):
        for prefix in prefixes:
            exact = module == prefix
            if exact or (prefix != "bench" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


@dataclass
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)  # module-level imports
    deferred: list[tuple[str, str]] = field(default_factory=list)  # package imports inside functions
    undeclared: list[tuple[str, str]] = field(default_factory=list)  # ... outside DEFERRING, or unmarked
    lines: dict[str, int] = field(default_factory=dict)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [source] + [f"{source}.{alias.name}" for alias in node.names]
    found = []
    for name in names:
        while name and name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known and name != module:
            found.append(name)
    return found


def import_graph(root: Path) -> Graph:
    graph = Graph()
    paths = sorted([*root.glob("bench/**/*.py"), *root.glob("methods/**/*.py")])
    for path in paths:
        graph.modules[_module_name(root, path)] = path
    known = set(graph.modules)
    for module, path in graph.modules.items():
        text = path.read_text()
        source_lines = text.splitlines()
        graph.lines[module] = text.count("\n")
        may_defer = any(module == prefix or module.startswith(prefix + ".") for prefix in DEFERRING)
        edges = graph.edges.setdefault(module, set())
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _is_type_checking(child):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _targets(child, module, is_package, known):  # noqa: B023
                        if in_function:
                            graph.deferred.append((module, target))  # noqa: B023
                            span = source_lines[child.lineno - 1 : child.end_lineno]  # noqa: B023
                            if not (may_defer and any(DEFERRED_MARK in line for line in span)):  # noqa: B023
                                graph.undeclared.append((module, target))  # noqa: B023
                        else:
                            edges.add(target)  # noqa: B023
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, inner)

        visit(ast.parse(text), False)
    graph.deferred = sorted(set(graph.deferred))
    graph.undeclared = sorted(set(graph.undeclared))
    return graph


def upward_edges(graph: Graph) -> list[tuple[str, str]]:
    found = []
    for module, targets in graph.edges.items():
        for target in targets | {t for m, t in graph.deferred if m == module}:
            low, high = level_of(module), level_of(target)
            if low is not None and high is not None and high > low:
                found.append((module, target))
    return sorted(set(found))


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import."""
    edges = {module: set(targets) for module, targets in graph.edges.items()}
    for module, target in graph.deferred:
        edges[module].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def longest_chain(graph: Graph) -> int:
    """The number of modules on the longest import chain (the graph's layers); needs no cycles."""
    memo: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in memo:
            memo[node] = 1 + max((depth(target) for target in graph.edges.get(node, ())), default=0)
        return memo[node]

    return max(depth(node) for node in graph.modules)


def over_size(graph: Graph) -> dict[str, int]:
    """Modules over ``MAX_LINES``."""
    return {module: lines for module, lines in graph.lines.items() if lines > MAX_LINES}


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    graph = import_graph(root)
    found_cycles = cycles(graph)
    print(f"modules: {len(graph.modules)}; import edges: {sum(len(t) for t in graph.edges.values())}")
    for level, prefixes in enumerate(LEVELS):
        members = [m for m in graph.modules if level_of(m) == level]
        print(f"  level {level} {'/'.join(prefixes)}: {len(members)} modules")
    print(f"cycles: {len(found_cycles)} {found_cycles or ''}")
    print(f"longest import chain: {longest_chain(graph) if not found_cycles else 'n/a (cycles)'} modules")
    print(f"upward imports: {len(upward_edges(graph))} {upward_edges(graph) or ''}")
    print(f"package imports inside functions: {len(graph.deferred)} (deferred, counted as edges above)")
    print(f"  not allowed (outside {'/'.join(DEFERRING)} or without {DEFERRED_MARK!r}): ", end="")
    print(f"{len(graph.undeclared)} {graph.undeclared or ''}")
    big = {m: n for m, n in sorted(graph.lines.items(), key=lambda item: -item[1]) if n > MAX_LINES}
    print(f"modules over {MAX_LINES} lines: {len(big)} {big or ''}")
    bad = found_cycles or upward_edges(graph) or graph.undeclared or over_size(graph)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
