"""The import graph of a source tree, read with ``ast``: nothing is imported to build it.

Every ``import`` counts, also one inside a function: an import moved into a function body still
ties two modules together, it only hides the cycle from Python until the function runs. Imports
under ``if TYPE_CHECKING:`` never run, but they tie the modules together for every reader and
type checker alike, so they count too (kept apart in ``typing_edges`` for the report).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportGraph:
    """``edges[a]`` holds every module ``a`` imports at run time; ``typing_edges`` the rest."""

    modules: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=dict)
    typing_edges: dict[str, set[str]] = field(default_factory=dict)

    def imports(self, module: str) -> set[str]:
        """Everything ``module`` names in an import, run-time or type-only, ours or not."""
        return self.edges.get(module, set()) | self.typing_edges.get(module, set())


def module_files(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Module name -> file, for each ``package name -> directory`` in ``roots``."""
    found: dict[str, Path] = {}
    for package, directory in roots.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def build_graph(roots: Mapping[str, Path]) -> ImportGraph:
    files = module_files(roots)
    graph = ImportGraph(modules=set(files))
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_only = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            targets = _targets(node, module, is_package, graph.modules)
            if not targets:
                continue
            bucket = graph.typing_edges if id(node) in typing_only else graph.edges
            bucket.setdefault(module, set()).update(t for t in targets if t != module)
    return graph


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                nodes.update(id(n) for n in ast.walk(child))
    return nodes


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    # ``from pkg import name`` imports pkg.name when that is a module of ours.
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return submodules or [base]


def cycles(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, among ours.

    Type-only imports are edges too: a cycle through one is still two modules that need
    each other.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(_ours(graph, start)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(_ours(graph, child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found)


def _ours(graph: ImportGraph, module: str) -> list[str]:
    return sorted(t for t in graph.imports(module) if t in graph.modules)


def forbidden_imports(graph: ImportGraph, importers: Iterable[str],
                      forbidden: tuple[str, ...]) -> list[str]:
    """``importer -> imported`` for each import of a name under one of ``forbidden``."""
    bad = []
    for module in sorted(importers):
        for target in sorted(graph.imports(module)):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} -> {target}")
    return bad


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)
