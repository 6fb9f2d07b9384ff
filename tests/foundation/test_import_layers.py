"""Imports flow one way (docs/architecture.md): a module imports its own package or a lower
layer, never a higher one nor a sibling of its own layer (`train` and `serving` never import
each other: the model directory is their contract), and the modules form no cycle — imports
inside functions and relative imports included, so nothing hides behind a deferred import or
a leading dot."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "streamrec"

# Lowest first. A package or top-level module may import only from strictly lower layers.
LAYERS: list[set[str]] = [
    {"kinds", "fid", "kernel_cache", "table_config", "thread_flag"},
    {"store"},
    {"batch"},
    {"schema"},
    {"embedding"},
    {"config", "json_records"},
    {"config_docs", "data"},
    {"models", "config_init"},  # config_init: a starting config from a data file
    {"retrieval", "onnx_export"},  # onnx_export: a ranker frozen into one ONNX graph
    {"train", "serving"},  # siblings: neither imports the other
    {"api", "push"},  # push: evaluate (train) and publish to a serving folder (store)
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
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every streamrec module the code of `module` imports; relative imports are resolved
    against its package (`is_package`: the module is a package's __init__)."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level > 0:  # from .x import y
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(target)
            else:  # from . import x: each name is a module of the package
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "streamrec":  # from streamrec import api (a module), or a name
                for a in node.names:  # of the lazy package __init__ (__version__): no unit
                    is_module = (SRC / a.name).is_dir() or (SRC / f"{a.name}.py").exists()
                    found.add(f"streamrec.{a.name}" if is_module else "streamrec")
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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a unit from its own layer or a higher one (its own unit is fine)."""
    upward = []
    for module, targets in graph.items():
        here = unit_of(module)
        if here == "streamrec":  # the package's own lazy __init__
            continue
        for target in targets:
            there = unit_of(target)
            if there == "streamrec":  # a name the package's lazy __init__ defines
                continue
            if there != here and LAYER_OF[there] >= LAYER_OF[here]:
                upward.append(f"{module} imports {target}")
    return sorted(upward)


def test_imports_only_go_down() -> None:
    assert upward_imports(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "wrong"),
    [
        ("streamrec.serving.app", "from streamrec.train.trainer import Trainer", True),
        ("streamrec.train.online", "import streamrec.serving.app", True),
        ("streamrec.data.loader", "def f():\n    from streamrec.models import base", True),
        ("streamrec.serving.app", "from ..train import trainer", True),  # relative, upward
        ("streamrec.serving.app", "from .batcher import DynamicBatcher", False),
        ("streamrec.serving.app", "from ..store import read_manifest", False),
        ("streamrec.models.base", "from streamrec.embedding.table import DynamicTable", False),
    ],
)
def test_the_rule_catches_an_upward_or_sideways_import(module, source, wrong) -> None:
    graph = {module: imports_in(source, module)}
    assert bool(upward_imports(graph)) == wrong, graph


def test_relative_imports_resolve_against_the_package() -> None:
    assert imports_in("from . import batcher", "streamrec.serving.app") == {
        "streamrec.serving.batcher"
    }
    assert imports_in("from .x import y", "streamrec.serving", is_package=True) == {
        "streamrec.serving.x"
    }
    assert imports_in("from ...kinds import K", "streamrec.embedding.storage.rocksdb") == {
        "streamrec.kinds"
    }


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
