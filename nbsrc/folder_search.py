"""Breadth-first search of a folder tree for the folders that hold something (a dataset, an image tree, ground truth)."""

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
    """The folders at most `max_depth` levels below `root` (itself included) for which `matches` is true, level by
    level in name order.

    A match is not entered, nor are hidden folders and those named in `skip` (lower case, compared
    case-insensitively). `shallowest` stops after the first level holding a match; `max_folders` bounds the
    folders tested (a warning says so when reached).
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
