"""The house rule, checked by folder: cli → pipeline → stages/ → runtime/ → core/, no arrow back up, no
stage importing another, no cycle, no module much over 400 lines (docs/pipeline.md draws the map)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clip_export"
# The layers, top to bottom, by folder: what a module may import is anything in a lower layer, and
# anything in its own layer except another stage (a stage is one module or one folder under stages/,
# whose other modules are its private helpers). The top-level package __init__ re-exports the API.
LAYERS = ["cli", "pipeline", "stages", "runtime", "core"]
MAX_LINES = 420


def dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    first = module.split(".")[0]
    if first.startswith("cli"):
        return 0
    return LAYERS.index(first)


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "stages" and len(parts) > 1 else None


def imports() -> dict[str, set[str]]:
    """module (dotted, relative to clip_export) -> the package modules it imports, at any depth of the file."""
    modules = {dotted(p): p for p in PACKAGE.rglob("*.py") if dotted(p)}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clip_export."):
                base = node.module.removeprefix("clip_export.")
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; the package imports by absolute name")
            elif isinstance(node, ast.Import):
                deps |= {a.name.removeprefix("clip_export.") for a in node.names if a.name.startswith("clip_export.")}
        graph[module] = {d for d in deps if d in modules and d != module}
    return graph


def test_the_folders_are_the_layers() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert {"stages", "runtime", "core", "pipeline.py", "cli.py", "__init__.py"} <= top
    assert all(
        name.startswith("cli") or name in {"stages", "runtime", "core", "pipeline.py", "__init__.py"} for name in top
    )


def test_no_module_imports_upward_and_no_stage_imports_another() -> None:
    wrong = []
    for module, deps in imports().items():
        for dep in deps:
            if layer(dep) < layer(module):
                wrong.append(f"{module} imports {dep} (a higher layer)")
            elif stage_of(module) and stage_of(dep) and stage_of(module) != stage_of(dep):
                wrong.append(f"{module} imports {dep} (another stage)")
    assert sorted(wrong) == []


def test_there_is_no_import_cycle() -> None:
    graph = imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and (seen.add(dep) or reaches(dep, target, seen))):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name} has grown past {MAX_LINES} lines: split it"


def test_tests_mirror_the_package() -> None:
    """One test module per module, in the same folder: tests/<folder>/test_<module>.py."""
    tests = Path(__file__).resolve().parent
    orphans = [
        str(t.relative_to(tests))
        for t in tests.rglob("test_*.py")
        if t.parent != tests and not (PACKAGE / t.parent.relative_to(tests) / f"{t.stem[5:]}.py").exists()
    ]
    assert orphans == []


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
                    if m not in modules | {"core", "stages", "runtime", "bench", "release", "embed"}
                ]
    assert wrong == []
