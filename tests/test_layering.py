"""The package's import direction (house style rule 1), read from the source with `ast`.

Levels, low to high; a module may import only from its own level or below:

0. foundation: config, boxes, utils, distributed (the process group), runs, frame, folder_search, paths, pictures,
   preprocess, latents, data.records
1. anchors, matching
2. model/*, loss, postprocess, checkpoint, detector, export, draw, weights (the shipped weight files), pretrained
3. data/* (which may import only the foundation)
4. engine, optim, tracking, evaluation/*, detect_sources, face_stats, anchor_stats, latent_stats,
   viz
5. nbrun, kaggle, notebook (a notebook's parameters and config), launch (training from a notebook)
6. cli, commands/*, __init__, __main__

Plus: matplotlib only in viz and evaluation/*; papermill, nbconvert and jupytext only in nbrun and kaggle (and
the commands); nothing imports the notebooks; only `nbsrc.paths` (and each notebook's bootstrap cell, which
runs before nbsrc is importable) names the Kaggle mounts.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nbsrc"

LEVELS: list[tuple[int, str]] = [
    (0, "nbsrc.config"),
    (0, "nbsrc.boxes"),
    (0, "nbsrc.utils"),
    (0, "nbsrc.distributed"),
    (0, "nbsrc.runs"),
    (0, "nbsrc.frame"),
    (0, "nbsrc.folder_search"),
    (0, "nbsrc.paths"),
    (0, "nbsrc.pictures"),
    (0, "nbsrc.preprocess"),
    (0, "nbsrc.latents"),
    (0, "nbsrc.data.records"),
    (1, "nbsrc.anchors"),
    (1, "nbsrc.matching"),
    (2, "nbsrc.model"),
    (2, "nbsrc.loss"),
    (2, "nbsrc.postprocess"),
    (2, "nbsrc.checkpoint"),
    (2, "nbsrc.detector"),
    (2, "nbsrc.export"),
    (2, "nbsrc.draw"),
    (2, "nbsrc.weights"),
    (2, "nbsrc.pretrained"),
    (3, "nbsrc.data"),
    (4, "nbsrc.engine"),
    (4, "nbsrc.optim"),
    (4, "nbsrc.tracking"),
    (4, "nbsrc.evaluation"),
    (4, "nbsrc.detect_sources"),
    (4, "nbsrc.face_stats"),
    (4, "nbsrc.anchor_stats"),
    (4, "nbsrc.latent_stats"),
    (4, "nbsrc.viz"),
    (5, "nbsrc.nbrun"),
    (5, "nbsrc.kaggle"),
    (5, "nbsrc.launch"),
    (5, "nbsrc.notebook"),
    (6, "nbsrc.cli"),
    (6, "nbsrc.commands"),
    (6, "nbsrc.__main__"),
    (6, "nbsrc"),
]
TOP = 6


def level_of(module: str) -> int:
    """Level of the longest matching prefix; a module not in the table counts as the top level."""
    best = None
    for level, prefix in LEVELS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
            best = (level, prefix)
    return best[0] if best is not None else TOP


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, including imports inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if target.startswith("nbsrc")]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_there_is_something_to_check():
    names = {module_name(p) for p in SOURCES}
    assert {"nbsrc.config", "nbsrc.anchor_stats", "nbsrc.viz", "nbsrc.nbrun", "nbsrc.paths"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    own = module_name(path)
    own_level = level_of(own)
    problems = []
    for line, target in imports_of(path):
        if target.startswith("nbsrc.") and level_of(target) > own_level:
            # `from nbsrc import paths` style: judged by the imported module.
            problems.append(
                f"{path.relative_to(ROOT)}:{line}: level {own_level} imports {target} (level {level_of(target)})"
            )
        if own.startswith("nbsrc.data") and own != "nbsrc.data.records" and target.startswith("nbsrc."):
            if level_of(target) not in (0,) and not target.startswith("nbsrc.data"):
                problems.append(f"{path.relative_to(ROOT)}:{line}: data imports {target} (only the foundation)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_third_party_boundaries(path):
    own = module_name(path)
    problems = []
    for line, target in imports_of(path):
        root = target.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line}"
        if root == "matplotlib" and not (own == "nbsrc.viz" or own.startswith("nbsrc.evaluation")):
            problems.append(f"{where}: matplotlib outside viz / evaluation")
        if root in ("papermill", "nbconvert", "jupytext", "nbformat") and level_of(own) < 5:
            problems.append(f"{where}: {root} below the notebook runner")
        if root == "notebooks" or target.startswith("nbsrc.notebooks"):
            problems.append(f"{where}: imports the notebooks")
        if own.startswith("nbsrc.model") and (
            root in ("matplotlib", "papermill") or target.startswith(("nbsrc.data", "nbsrc.engine"))
        ):
            problems.append(f"{where}: the model imports {target}")
    assert not problems, "\n".join(problems)


def test_only_paths_names_kaggle_mounts():
    pattern = re.compile(r"/kaggle/")
    offenders = []
    for path in SOURCES:
        if path.name == "paths.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        cells = re.split(r"^# %%.*$", path.read_text(), flags=re.M)
        # cells[0] is the header, cells[1] the title, cells[2] the bootstrap (allowed: nbsrc is not importable yet)
        for index, cell in enumerate(cells):
            if index != 2 and pattern.search(cell):
                offenders.append(f"{path.relative_to(ROOT)} cell {index - 1}")
    assert not offenders, f"Kaggle paths outside nbsrc/paths.py: {offenders}"


def _module_graph() -> dict[str, set[str]]:
    """Which nbsrc modules each nbsrc module imports (imports inside functions included).

    ``from nbsrc.a import name`` depends on ``nbsrc.a.name`` when that is a module, else on ``nbsrc.a``; an imported
    name resolves to the longest module name it starts with. ``import nbsrc.a.b`` depends on ``nbsrc.a.b`` only.
    """
    modules = {module_name(p) for p in SOURCES}

    def resolve(target: str) -> str:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        own = module_name(path)
        by_line: dict[int, list[str]] = {}
        for line, target in imports_of(path):
            if target == "nbsrc" or target.startswith("nbsrc."):
                by_line.setdefault(line, []).append(target)
        targets = set()
        for names in by_line.values():
            # a ``from`` statement lists its module, then each name: the names say what it depends on
            targets |= {t for t in names if not any(n.startswith(t + ".") for n in names)}
        graph[own] = {resolve(t) for t in targets} - {own, ""}
    return graph


def test_no_import_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                cycles.append(" -> ".join(cycle))
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles inside nbsrc:\n" + "\n".join(cycles)
