"""The dspo package imports without circles and without another module's private names.

Every ``import`` and ``from ... import`` in dspo's sources is an edge, whether it runs when the
module loads or inside a function; only imports under ``if TYPE_CHECKING:`` are left out (they
never run). An edge goes to the most specific dspo module it names: ``from dspo.families import
base`` to ``dspo.families.base``, ``from dspo.families import get`` to ``dspo.families``
(its ``__init__.py``). The sources are read, not imported: the test needs no torch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dspo"

# Edges that close a cycle today, each to go when the cycle it closes is broken; a listed edge
# that no longer closes one is named by test_known_cycle_edges_are_still_needed, so the list only
# shrinks.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """``dspo/a/b.py`` -> ``dspo.a.b``; ``dspo/a/__init__.py`` -> ``dspo.a``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                yield from import_nodes(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from import_nodes(node)


def imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from X import ...`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def targets(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, str]]:
    """(dspo module imported, name taken from it) for each import of ``module``; the name is
    empty for ``import X``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, ""
            continue
        source = imported_from(node, module, path.name == "__init__.py")
        if source.split(".")[0] != "dspo":
            continue
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            yield (submodule, "") if submodule in known else (source, alias.name)


def import_graph() -> dict[str, set[str]]:
    """{module: the dspo modules it imports}, self-imports left out."""
    modules = sources()
    known = set(modules)
    return {
        m: {t for t, _ in targets(m, p, known) if t != m and t in known} for m, p in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {m: {t for t in ts if (m, t) not in edges} for m, ts in graph.items()}


def test_the_graph_sees_imports_inside_functions_and_skips_type_only_ones() -> None:
    graph = {"dspo.a": {"dspo.b"}, "dspo.b": {"dspo.c"}, "dspo.c": {"dspo.a"}, "dspo.d": set()}
    assert cycles(graph) == [["dspo.a", "dspo.b", "dspo.c"]]
    assert cycles(without(graph, {("dspo.c", "dspo.a")})) == []
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dspo.x import T\n"
        "def f():\n    from dspo.y import g\n    import dspo.z\n"
        "from .w import h\n"
    )
    tree = ast.parse(code)
    names = [
        (n.module, n.level) if isinstance(n, ast.ImportFrom) else n.names[0].name
        for n in import_nodes(tree)
    ]
    assert names == [("typing", 0), ("dspo.y", 0), "dspo.z", ("w", 1)]
    node = next(n for n in import_nodes(tree) if isinstance(n, ast.ImportFrom) and n.level)
    assert imported_from(node, "dspo.pkg.mod", is_package=False) == "dspo.pkg.w"
    assert imported_from(node, "dspo.pkg", is_package=True) == "dspo.pkg.w"


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values())  # the sources were found and read
    left = cycles(without(graph, KNOWN_CYCLE_EDGES))
    assert left == [], f"dspo modules import each other in a circle: {left}"


def test_known_cycle_edges_are_still_needed() -> None:
    graph = import_graph()
    stale = sorted(
        edge
        for edge in KNOWN_CYCLE_EDGES
        if cycles(without(graph, KNOWN_CYCLE_EDGES - {edge}))
        == cycles(without(graph, KNOWN_CYCLE_EDGES))
    )
    assert stale == [], f"these edges close no cycle any more; drop them from the list: {stale}"


def test_no_module_imports_another_modules_private_names() -> None:
    modules = sources()
    known = set(modules)
    private = sorted(
        f"{m} imports {name} from {source}"
        for m, path in modules.items()
        for source, name in targets(m, path, known)
        if name.startswith("_") and not name.startswith("__") and source != m
    )
    assert private == []
