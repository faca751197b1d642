"""Breadth-first search of a folder tree for the folders that hold something (a dataset, an image tree, ground truth).

`find_folders` visits `root` and the folders below it level by level, in name order, and returns those a test
accepts. It never enters hidden folders, folders with a skipped name (per-image trees that are large and hold
nothing searched for), or the folders below a match; it can stop at the first level with a match, and after a
number of folders visited (bounding the time spent on a large input mount).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

__all__ = ["find_folders"]

logger = logging.getLogger(__name__)


def _subfolders(folder: Path, skip: Collection[str]) -> list[Path]:
    """The folders directly in `folder` to search next, in name order ([] when it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []
    return [folder / name for name in names if name.lower() not in skip]


def find_folders(
    root: str | Path,
    matches: Callable[[Path], bool],
    *,
    max_depth: int,
    skip: Collection[str] = (),
    shallowest: bool = False,
    max_folders: int | None = None,
) -> list[Path]:
    """The folders at most `max_depth` levels below `root` (itself included) for which `matches` is true.

    Args:
        root: the folder searched.
        matches: the test of one folder; a match is returned and not entered.
        max_depth: levels searched below `root`.
        skip: folder names (lower case, compared case-insensitively) never entered.
        shallowest: stop after the first level holding a match.
        max_folders: stop after testing this many folders (a warning says so); None: no bound.
    Returns:
        The matches in search order (level by level, name order within a folder).
    """
    root = Path(root)
    found: list[Path] = []
    frontier, visited = [root], 0
    for depth in range(max_depth + 1):
        deeper: list[Path] = []
        for folder in frontier:
            if max_folders is not None and visited >= max_folders:
                logger.warning("search below %s stopped after %d folders", root, max_folders)
                return found
            visited += 1
            if matches(folder):
                found.append(folder)
            elif depth < max_depth:
                deeper += _subfolders(folder, skip)
        if found and shallowest:
            return found
        frontier = deeper
    return found
