"""The engine's layout: wings without import cycles, a thin top level, plugins that import only the contracts."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx
import pytest

from benchmark.method import PUBLIC_HELPERS

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"__init__", "__main__", "cli", "config", "registry", "method"}
WINGS = {"engine", "evaluation", "data", "backbones", "sweeps", "leaderboard", "world", "perf"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Every module named by an import statement in ``path`` (module level or inside functions), except those under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def import_graph(package: str = "benchmark") -> nx.DiGraph:
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _runtime_imports(path):
            while target and target not in modules:  # `from pkg.mod import fn` names pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a parent package's __init__
                graph.add_edge(name, target)
    return graph


def test_the_engine_has_no_import_cycle():
    graph = import_graph()
    assert graph.number_of_nodes() > 40 and graph.number_of_edges() > 80  # the walker found the code
    cycles = sorted(sorted(c) for c in nx.simple_cycles(graph))
    assert cycles == [], "import cycles (break them, don't move them): " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walker_sees_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other, one of them lazily, are a cycle."""
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demo.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from demo import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph("demo")
    assert [sorted(c) for c in nx.simple_cycles(graph)] == [["demo.a", "demo.b"]]
    assert not graph.has_edge("demo.c", "demo.a")  # annotations only


def test_the_top_level_holds_only_the_face_and_the_contracts():
    package = ROOT / "benchmark"
    modules = {p.stem for p in package.glob("*.py")}
    wings = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules == TOP_LEVEL
    assert wings == WINGS


@pytest.mark.parametrize("wing", sorted(WINGS))
def test_every_wing_says_what_it_holds(wing):
    doc = ast.get_docstring(ast.parse((ROOT / "benchmark" / wing / "__init__.py").read_text()))
    assert doc and len(doc) > 40


def test_backbones_do_not_know_the_world():
    graph = import_graph()
    for module in graph.nodes:
        if module.startswith("benchmark.backbones"):
            assert not [t for t in graph.successors(module) if t.startswith("benchmark.world")], module


def test_method_plugins_import_only_the_contracts_and_public_helpers():
    allowed = {"benchmark.method", "benchmark.registry", *PUBLIC_HELPERS}
    offenders = {}
    for path in sorted((ROOT / "methods").rglob("*.py")):
        used = {n for n in _runtime_imports(path) if n == "benchmark" or n.startswith("benchmark.")}
        bad = sorted(n for n in used if not any(n == a or n.startswith(a + ".") for a in allowed))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
