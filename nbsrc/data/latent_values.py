"""NaN/Inf check of latent files when a dataset is indexed, cached by file size and modification time.

A file whose path, size and modification time are unchanged is not read again. The cache is
``latent_values.json`` in the split folder, or ``latent-values/<split>-<key>.json`` in a cache or run folder
when the split folder is read-only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nbsrc.latents import count_file_non_finite
from nbsrc.utils import atomic_write_text

__all__ = ["CACHE_NAME", "ValueCache", "find_non_finite"]

logger = logging.getLogger(__name__)

CACHE_NAME = "latent_values.json"
CACHE_VERSION = 1
READ_THREADS = 8  # concurrent reads: enough to keep a disk or a network mount busy


class ValueCache:
    """What earlier checks found per latent file, keyed by its path relative to the split folder `root`;
    `folders` may keep the cache, in order of preference (the first writable one is written)."""

    def __init__(self, root: str | Path, folders: Sequence[str | Path | None]) -> None:
        self.root = Path(root)
        resolved = self.root.resolve()
        key = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
        self.paths: list[Path] = []
        for folder in folders:
            if folder is None:
                continue
            folder = Path(folder)
            if folder.resolve() == resolved:
                path = folder / CACHE_NAME
            else:
                path = folder / "latent-values" / f"{resolved.name or 'split'}-{key}.json"
            if path not in self.paths:
                self.paths.append(path)
        self.entries: dict[str, list[int]] = {}  # relative path -> [size, mtime_ns, non-finite count]
        for path in reversed(self.paths):  # the preferred file's entries win
            self.entries.update(self._read(path))

    def _read(self, path: Path) -> dict[str, list[int]]:
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CACHE_VERSION:
                return {}
            return {str(k): [int(x) for x in v] for k, v in data["files"].items() if len(v) == 3}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s: unreadable latent value cache (%s); the values are checked again", path, exc)
            return {}

    def key(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path.resolve())

    def lookup(self, path: Path, stamp: tuple[int, int]) -> int | None:
        """The cached non-finite count of `path` when its size and modification time are unchanged."""
        entry = self.entries.get(self.key(path))
        if entry is not None and (entry[0], entry[1]) == stamp:
            return entry[2]
        return None

    def store(self, path: Path, stamp: tuple[int, int], bad: int) -> None:
        self.entries[self.key(path)] = [stamp[0], stamp[1], int(bad)]

    def save(self) -> Path | None:
        """Write the cache (atomically) to the first writable folder; None when none is."""
        text = json.dumps({"version": CACHE_VERSION, "root": str(self.root.resolve()), "files": self.entries})
        for path in self.paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, text + "\n")
            except OSError as exc:
                logger.debug("cannot write %s (%s)", path, exc)
                continue
            return path
        return None


def find_non_finite(
    paths: Sequence[str | Path],
    *,
    root: str | Path,
    cache_folders: Sequence[str | Path | None] = (),
    threads: int = READ_THREADS,
) -> tuple[dict[Path, int], dict[Path, str]]:
    """Check the values of latent files (headers already checked) in split folder `root`, reading only those
    not in the cache (`ValueCache`; no `cache_folders`: no cache), in threads since the reads are I/O bound.

    Returns:
        ``(non_finite, unreadable)``: path -> number of NaN/Inf values for the files holding any, and path ->
        reason for files that could not be read.
    """
    paths = [Path(p) for p in paths]
    cache = ValueCache(root, cache_folders)
    non_finite: dict[Path, int] = {}
    unreadable: dict[Path, str] = {}
    todo: list[tuple[Path, tuple[int, int]]] = []
    cached = 0
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            unreadable[path] = f"cannot read the file ({exc.strerror or exc})"
            continue
        stamp = (int(stat.st_size), int(stat.st_mtime_ns))
        bad = cache.lookup(path, stamp)
        if bad is None:
            todo.append((path, stamp))
            continue
        cached += 1
        if bad:
            non_finite[path] = bad
    if not todo:
        logger.debug("%s: values of %d latents known from the cache", root, len(paths))
        return non_finite, unreadable

    def check(item: tuple[Path, tuple[int, int]]) -> tuple[Path, tuple[int, int], int | str]:
        path, stamp = item
        try:
            return path, stamp, count_file_non_finite(path)
        except (OSError, ValueError) as exc:
            return path, stamp, str(exc)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo)))) as pool:
        for path, stamp, result in pool.map(check, todo):
            if isinstance(result, str):
                unreadable[path] = result
                continue
            cache.store(path, stamp, result)
            if result:
                non_finite[path] = result
    elapsed = time.perf_counter() - start
    written = cache.save() if cache.paths else None
    logger.info(
        "%s: NaN/Inf check of %d latents in %.1f s (%d more known from the cache)%s",
        root,
        len(todo),
        elapsed,
        cached,
        f"; cached in {written}" if written else ("; not cached (no writable folder)" if cache.paths else ""),
    )
    return non_finite, unreadable
