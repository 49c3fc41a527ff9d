"""The house rule, checked: cli → pipeline → stages → shared pieces, no arrow back, no cycle, and
no module much over 400 lines (docs/pipeline.md draws the map)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clip_export"
CLI = {"cli", "cli_parse", "cli_render", "cli_embed", "cli_convert", "cli_run"}
PIPELINE = {"pipeline"}
# One module per stage. The serving runtime (runtime.py) is not a stage but the library's serving
# API, built only from shared pieces: release's client check compares transformers.js with it.
STAGES = {"export", "convert", "quantize4", "preprocess_stage", "tensorrt", "verify", "bench", "release", "embed"}
# embed's parts are shared pieces: embed_inputs (reader), embed_store (writer), embed_ray (the Ray
# engine, imported by embed only for --ray) and compat (the interchangeability check that both the
# compat command and embed run).
MAX_LINES = 420


def layer(module: str) -> int:
    if module in CLI:
        return 0
    if module in PIPELINE:
        return 1
    return 2 if module in STAGES else 3


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports, at any depth of the file)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[path.stem] = deps & {p.stem for p in PACKAGE.glob("*.py")}
    return graph


def test_every_stage_is_a_module_of_the_package() -> None:
    assert STAGES | CLI | PIPELINE <= set(imports())


def test_no_module_imports_upward_and_no_stage_imports_another() -> None:
    graph = imports()
    wrong = []
    for module, deps in graph.items():
        if module == "__init__":
            continue  # the package's public API re-exports the entry points
        for dep in deps:
            if layer(dep) < layer(module) or (layer(module) == layer(dep) == 2 and dep != module):
                wrong.append(f"{module} imports {dep}")
    assert sorted(wrong) == KNOWN_EXCEPTIONS


KNOWN_EXCEPTIONS: list[str] = []


def test_there_is_no_import_cycle() -> None:
    graph = imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and (seen.add(dep) or reaches(dep, target, seen))):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES or path.stem in OVER_SIZE, (
        f"{path.name} has grown past {MAX_LINES} lines: split it"
    )


OVER_SIZE: set[str] = set()


def test_every_module_a_docstring_names_exists() -> None:
    """`(graph_variants)` named a module that never existed: a docstring's `(snake_name)` or
    `clip_export.name` must be a module of the package (or, for the first form, a name it defines)."""
    modules = {p.stem for p in PACKAGE.rglob("*.py")}
    defined = set()
    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name):
                defined.add(node.id)
    wrong = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node) or ""
                wrong += [
                    f"{path.name}: ({m})"
                    for m in re.findall(r"\(([a-z]+_[a-z0-9_]+)\)", doc)
                    if m not in modules | defined
                ]
                wrong += [
                    f"{path.name}: clip_export.{m}"
                    for m in re.findall(r"clip_export\.(\w+)", doc)
                    if m not in modules | {"core", "stages", "runtime"}
                ]
    assert wrong == []
