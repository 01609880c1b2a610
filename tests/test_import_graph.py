"""The package's modules import each other without cycles, and every module imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import shortcut_detect

PACKAGE = "shortcut_detect"
ROOT = Path(shortcut_detect.__file__).resolve().parent


def _module_names() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_names()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve_relative(module: str, level: int, target: str | None) -> str:
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level and inside module-level
    ``if`` / ``try`` blocks, but not under ``if TYPE_CHECKING:`` nor inside functions."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def _with_parents(importer: str, name: str) -> set[str]:
    """``name`` and the packages Python imports before it, except the importer's own
    parents (those are already being imported when the importer runs)."""
    parts = name.split(".")
    own_parents = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    chain = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {module for module in chain if module in MODULES and module not in own_parents}


def import_graph() -> dict[str, set[str]]:
    """Package-internal import edges made at import time (module -> imported modules)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = (
                    _resolve_relative(module, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                # `from package import name` imports package.name too when it is a module.
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    edges |= _with_parents(module, target)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_the_imports_it_should():
    graph = import_graph()
    # Direct, `from package import module` and implicit parent-package edges.
    assert "shortcut_detect.results" in graph["shortcut_detect.gradcam"]
    assert "shortcut_detect.cam" in graph["shortcut_detect.gradcam"]
    assert "shortcut_detect.common.device" in graph["shortcut_detect.cam.engine"]
    # TYPE_CHECKING-only imports are not edges.
    assert not any(target.startswith("matplotlib") for target in graph["shortcut_detect.viz"])


def test_package_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    if module.startswith(f"{PACKAGE}.app"):
        pytest.importorskip("gradio", reason="the web app needs the [app] extra")
    assert importlib.import_module(module).__name__ == module


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every package ``path`` imports, anywhere (functions included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_ray_executor_imports_ray_and_only_when_a_ray_run_starts():
    import subprocess
    import sys

    importers = [name for name, path in MODULES.items() if "ray" in _imported_roots(path)]
    assert importers == [f"{PACKAGE}.audit.ray_executor"]
    code = (
        "import sys, shortcut_detect, shortcut_detect.cli, shortcut_detect.audit.pipeline,"
        " shortcut_detect.audit.ray_executor;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
