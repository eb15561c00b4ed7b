"""The import graph of gpufleet's packages, read from the source (ast: nothing is imported),
points one way: no module reaches itself through its imports, and the layering that
dispatcher/__init__.py's docstring draws holds. Every import counts, at the top of a module,
inside a function or under TYPE_CHECKING: a cycle hidden in a function is still a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {  # the repository's folders and their import names (pyproject.toml's package-dir)
    "gpufleet": "gpufleet",
    "dispatcher": "gpufleet.dispatcher",
    "worker": "gpufleet.worker",
    "cli": "gpufleet.cli",
}
SHARED = ("gpufleet.dispatcher.errors", "gpufleet.dispatcher.settings")  # "shared by all" in the docstring


def module_files() -> dict[str, Path]:
    """Every module of the three packages by its import name (gpufleet.dispatcher.routing.models)."""
    found = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The known modules `module` imports: `from a import b` is a.b when that is a module, else a."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}"
                else:
                    yield from _known(base, known)


def _known(name: str, known: set[str]) -> Iterator[str]:
    if name in known:
        yield name


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: set(imported(m, path, known)) - {m} for m, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def edges_from(graph: dict[str, set[str]], prefix: str) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() if m == prefix or m.startswith(prefix + ".") for t in targets)


def inside(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


GRAPH = import_graph()


def test_the_graph_sees_the_imports_that_once_made_circles() -> None:
    """A check of the reader itself: relative, function-level and TYPE_CHECKING imports."""
    assert "gpufleet.dispatcher.sim.sim_fleet" in GRAPH["gpufleet.dispatcher.sim.simulator"]
    assert "gpufleet.worker.job_run" in GRAPH["gpufleet.worker.node_worker"]
    assert "gpufleet.dispatcher.routing.models" in GRAPH["gpufleet.dispatcher.routing.policies"]
    assert "gpufleet.dispatcher.errors" in GRAPH["gpufleet.dispatcher.routing.policies"]  # from ..errors
    assert "gpufleet.worker.context" in GRAPH["gpufleet.worker.node_worker"]  # from . import context


def test_a_circle_is_found_wherever_it_closes() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_no_module_reaches_itself_through_its_imports() -> None:
    """dispatcher/, worker/ and cli/ (whose command modules once imported cli/main.py back)."""
    assert cycles(GRAPH) == []


def test_routing_imports_no_other_part_of_the_dispatcher() -> None:
    """Pure code, run unchanged by the dispatcher, the tests and the simulator."""
    allowed = ("gpufleet.dispatcher.routing", *SHARED)
    assert [(m, t) for m, t in edges_from(GRAPH, "gpufleet.dispatcher.routing") if not inside(t, *allowed)] == []


def test_store_imports_only_routings_two_records() -> None:
    allowed = ("gpufleet.dispatcher.store", "gpufleet.dispatcher.routing.models", *SHARED)
    assert [(m, t) for m, t in edges_from(GRAPH, "gpufleet.dispatcher.store") if not inside(t, *allowed)] == []


def test_the_dispatcher_imports_neither_the_worker_nor_the_cli() -> None:
    """Nor the top-level gpufleet package, which re-exports the dispatcher's API."""
    assert [(m, t) for m, t in edges_from(GRAPH, "gpufleet.dispatcher") if not inside(t, "gpufleet.dispatcher")] == []


def test_the_worker_imports_no_cli() -> None:
    assert [(m, t) for m, t in edges_from(GRAPH, "gpufleet.worker") if inside(t, "gpufleet.cli")] == []
