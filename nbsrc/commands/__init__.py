"""One module per ``python -m nbsrc`` subcommand (see `nbsrc.cli`), and the output path checks they run first."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_output_dir", "check_output_file"]


def _file_in_the_way(path: Path, option: str) -> None:
    """Raise when the nearest existing ancestor of `path` is not a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file (expected a directory)")
            return


def check_output_file(path: str | Path | None, option: str) -> None:
    """Raise `ValueError` naming `option` when `path` cannot become a file: an existing folder, or below a file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory (expected a file path)")
    _file_in_the_way(path, option)


def check_output_dir(path: str | Path | None, option: str) -> None:
    """Raise `ValueError` naming `option` when `path` cannot become a folder: an existing file, or below a file."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: exists and is not a directory (expected a directory)")
    _file_in_the_way(path, option)
