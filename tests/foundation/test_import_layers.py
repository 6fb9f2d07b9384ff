"""Imports flow one way (docs/architecture.md): a module imports its own package or a lower
layer, never a higher one, and the modules form no cycle — imports inside functions included,
so a cycle cannot hide behind a deferred import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "streamrec"

# Lowest first. A package or top-level module may import only from strictly lower layers.
LAYERS: list[set[str]] = [
    {"kinds", "fid", "kernel_cache", "table_config"},
    {"store"},
    {"batch"},
    {"schema"},
    {"embedding"},
    {"config", "json_records"},
    {"config_docs", "data"},
    {"models"},
    {"retrieval"},
    {"train"},
    {"serving"},
    {"api"},
    {"closed_loop"},  # the loop with simulated users: benchmarks/closed_loop.py and the demo
    {"demo"},
    {"cli"},
    {"launch"},  # the executable's first code: signals, then the command
    {"__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: its top-level package or module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "streamrec"


def imports_of(path: Path) -> set[str]:
    """Every streamrec module `path` imports, at any depth (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "streamrec":  # from streamrec import api
                found.update(f"streamrec.{a.name}" for a in node.names)
            elif node.module.split(".")[0] == "streamrec":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "streamrec")
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in import_graph()} - {"streamrec"}
    assert units - set(LAYER_OF) == set(), "add the new package or module to LAYERS"


def test_imports_only_go_down() -> None:
    upward = []
    for module, targets in import_graph().items():
        here = unit_of(module)
        if here == "streamrec":  # the package's own lazy __init__
            continue
        for target in targets:
            there = unit_of(target)
            if there != here and LAYER_OF[there] >= LAYER_OF[here]:
                upward.append(f"{module} imports {target}")
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules, or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for root in graph:
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph.get(root, ()))))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child) and child in graph:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_modules_form_no_cycle() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("graph", "cyclic"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(graph) is not None) == cyclic
