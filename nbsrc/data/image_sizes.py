"""Original image sizes ``(width, height)``, which `nbsrc.data.label_frame` needs to map WIDER labels (original
pixels) into a latent's 640x640 frame: one image's header (`read_image_size`), a sizes CSV (`read_sizes_csv`), the
lookup by record name (`ImageSizes`), and a split's sizes from a sizes CSV, its ``images/`` folder or a WIDER FACE
tree (`split_sizes`). A tree may take any of these shapes, or sit a few levels below ``IMAGES_ROOT``::

    IMAGES_ROOT/WIDER_<split>/images/<event>/<name>.jpg     (the official archives, Kaggle copies)
    IMAGES_ROOT/<split>/images/<event>/<name>.jpg
    IMAGES_ROOT/<event>/<name>.jpg  or  IMAGES_ROOT/<name>.jpg   (one flat folder, used for every split)

A tree's sizes are read header-only once and cached as a sizes CSV, rebuilt when the tree changes. Sizes are never
guessed: a missing one is reported by name (`SplitSizes.missing`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from nbsrc.data.readers.common import IMAGE_EXTENSIONS, strip_image_extension
from nbsrc.folder_search import find_folders
from nbsrc.utils import atomic_write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "SIZES_CSV_NAME",
    "ImageSizes",
    "ImageTreeError",
    "SplitSizes",
    "find_sizes",
    "find_split_trees",
    "index_images",
    "list_images",
    "missing_error",
    "read_image_size",
    "read_sizes_csv",
    "split_sizes",
    "strip_image_extension",
    "tree_sizes",
    "write_sizes_csv",
]

logger = logging.getLogger(__name__)

SIZES_CSV_NAME = "image_sizes.csv"  # looked up at the dataset root and in the split folder
SEARCH_DEPTH = 4  # folders below an images root searched for WIDER_<split>/images
_SKIP_DIRS = ("images", "latent", "latents", "ground_truth", "__pycache__")  # never hold a WIDER image tree
_MEMO: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}  # (tree, fingerprint) -> sizes, per process
_SAID: set[tuple[str, str]] = set()  # (split folder, source) already logged in this process


class ImageTreeError(ValueError):
    """An images root that cannot give a split's sizes unambiguously (the message names the trees)."""


# ---- one image's size, a sizes CSV, the size lookup --------------------------------------------------------
def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header only; ValueError when it is not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return int(width), int(height)


def read_sizes_csv(path: str | Path) -> dict[str, tuple[int, int]]:
    """Name (without extension, e.g. ``0--Parade/x``) -> ``(width, height)`` from a CSV ``name,width,height``.

    Raises ValueError naming ``file:line`` for a bad header, row or size, or a name given twice with two sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sizes CSV {path} not found (expected columns name,width,height)")
    sizes: dict[str, tuple[int, int]] = {}
    seen_at: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None or [h.strip().lower() for h in header[:3]] != ["name", "width", "height"]:
            raise ValueError(f"{path}:1: expected the header 'name,width,height', got {header!r}")
        for number, row in enumerate(rows, 2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{number}: expected 'name,width,height', got {','.join(row)!r}")
            name = strip_image_extension(row[0])
            try:
                width, height = int(row[1]), int(row[2])
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: width and height must be integers, got {row[1]!r}, {row[2]!r}"
                ) from None
            if width <= 0 or height <= 0:
                raise ValueError(f"{path}:{number}: width and height must be > 0, got {width}x{height}")
            if name in sizes and sizes[name] != (width, height):
                raise ValueError(
                    f"{path}:{number}: {name!r} listed again with size {width}x{height} "
                    f"(line {seen_at[name]} says {sizes[name][0]}x{sizes[name][1]})"
                )
            sizes[name] = (width, height)
            seen_at[name] = number
    return sizes


class ImageSizes:
    """Original image sizes by record name, from `sizes` (checked first), a sizes CSV and/or an images folder.

    Lookups try the full name (``event/basename``), then the basename: a bare name matches an entry of any folder
    (when unique), a name with a folder only an entry without one (a flat CSV or folder), never an image of another
    folder.
    """

    def __init__(
        self,
        *,
        sizes: Mapping[str, tuple[int, int]] | None = None,
        sizes_csv: str | Path | None = None,
        images_dir: str | Path | None = None,
    ) -> None:
        self.sizes_csv = Path(sizes_csv) if sizes_csv is not None else None
        self.images_dir = Path(images_dir) if images_dir is not None else None
        table = {strip_image_extension(k): (int(v[0]), int(v[1])) for k, v in (sizes or {}).items()}
        if self.sizes_csv is not None:
            for key, value in read_sizes_csv(self.sizes_csv).items():
                table.setdefault(key, value)
        self._table = table
        self._by_basename = _unique_basenames(table)
        self._flat = {key: value for key, value in table.items() if "/" not in key}  # entries without a folder
        self._image_index: dict[str, Path] | None = None
        self._cache: dict[str, tuple[int, int] | None] = {}
        self.unreadable: dict[str, str] = {}  # name -> why its image file gave no size
        self.described: str | None = None  # where the sizes come from, when a caller knows better (an image tree)
        self.tree: Path | None = None  # the image tree the table was read from (for messages)

    def __bool__(self) -> bool:
        return bool(self._table) or self.images_dir is not None

    @property
    def sources(self) -> list[str]:
        """Where the sizes come from (for messages)."""
        if self.described:
            return [self.described]
        out = []
        if self.sizes_csv is not None:
            out.append(f"sizes CSV {self.sizes_csv}")
        if self.images_dir is not None:
            out.append(f"images folder {self.images_dir}")
        if self._table and self.sizes_csv is None:
            out.append(f"{len(self._table)} given sizes")
        return out

    def image_path(self, name: str) -> Path | None:
        """The image file of `name` in the images folder (or the image tree the sizes came from), or None."""
        folder = self.images_dir if self.images_dir is not None else self.tree
        if folder is None or not folder.is_dir():
            return None
        name = strip_image_extension(name)
        for ext in IMAGE_EXTENSIONS[:3]:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
        if self._image_index is None:
            self._image_index = index_images(folder)
        found = self._image_index.get(name)
        if found is None:  # by basename: a bare name anywhere, a name with a folder only from a flat folder
            found = self._image_index.get(name.rsplit("/", 1)[-1])
            if found is not None and "/" in name and found.parent != folder:
                return None  # another folder's image of the same basename is never taken for it
        return found

    def get(self, name: str) -> tuple[int, int] | None:
        """``(width, height)`` of the original image `name`, or None when no source knows it."""
        name = strip_image_extension(name)
        if name in self._cache:
            return self._cache[name]
        size = self._table.get(name)
        if size is None:  # by basename: a bare name from any entry, a name with a folder only from flat entries
            size = (self._by_basename if "/" not in name else self._flat).get(name.rsplit("/", 1)[-1])
        if size is None:
            path = self.image_path(name)
            if path is not None:
                try:
                    size = read_image_size(path)
                except ValueError as exc:  # reported by validation as unreadable_image; here the size is unknown
                    self.unreadable[name] = str(exc)
        self._cache[name] = size
        return size


def _unique_basenames(table: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    by_base: dict[str, tuple[int, int]] = {}
    ambiguous: set[str] = set()
    for key, value in table.items():
        base = key.rsplit("/", 1)[-1]
        if base in by_base and by_base[base] != value:
            ambiguous.add(base)
        by_base.setdefault(base, value)
    for base in ambiguous:
        del by_base[base]
    return by_base


def list_images(images_dir: str | Path) -> dict[str, str]:
    """Every image below `images_dir`: relative name without extension -> relative path (``0--Parade/x`` ->
    ``0--Parade/x.jpg``), hidden files and folders left out."""
    images_dir = Path(images_dir)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative_dir = os.path.relpath(dirpath, images_dir)
        for filename in sorted(filenames):
            if filename.startswith(".") or os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            relative = filename if relative_dir == "." else f"{relative_dir}/{filename}".replace(os.sep, "/")
            out[strip_image_extension(relative)] = relative
    return out


def index_images(images_dir: str | Path) -> dict[str, Path]:
    """Every image below `images_dir` by ``relative/name`` and by basename (both without extension); a basename
    that occurs in two folders is reachable only by its relative name."""
    images_dir = Path(images_dir)
    index: dict[str, Path] = {}
    base_count: dict[str, int] = {}
    for relative, file in list_images(images_dir).items():
        index[relative] = images_dir / file
        base = relative.rsplit("/", 1)[-1]
        base_count[base] = base_count.get(base, 0) + 1
        if base_count[base] == 1:
            index.setdefault(base, images_dir / file)
        elif index.get(base) is not None and base != relative:
            index.pop(base, None)
    return index


# ---- finding the tree of a split ---------------------------------------------------------------------------
def _split_aliases(split: str) -> set[str]:
    names = {split.lower(), f"wider_{split.lower()}"}
    if split.lower() in ("val", "valid", "validation"):
        names |= {"val", "wider_val", "validation"}
    return names


def _images_directly(folder: str | os.PathLike, probe: int = 50) -> bool:
    """Whether `folder` holds image files itself (looks at its first `probe` entries)."""
    try:
        with os.scandir(folder) as entries:
            return any(
                e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in islice(entries, probe)
            )
    except OSError:
        return False


def _holds_images(folder: Path) -> bool:
    """Whether `folder` is a flat folder of images: it holds images itself, or most of its subfolders do (the
    WIDER event folders). A folder of unrelated mounts (Kaggle's inputs) is not one."""
    if _images_directly(folder):
        return True
    try:
        subdirs = [e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return False
    return bool(subdirs) and 2 * sum(_images_directly(d) for d in subdirs[:100]) > len(subdirs[:100])


def find_split_trees(images_root: str | Path, split: str, *, flat: bool = True) -> list[Path]:
    """The image folders of `split` (``.../WIDER_val/images``) up to `SEARCH_DEPTH` levels below `images_root`,
    shallowest first. With `flat`, when no split-named tree exists, `images_root` itself if it holds images or
    event folders of images (off for a search through unrelated inputs)."""
    root = Path(images_root)
    aliases = _split_aliases(split)
    if root.name.lower() in aliases:  # the split's own folder was given
        return [root / "images"] if (root / "images").is_dir() else [root]

    def is_split_tree(folder: Path) -> bool:
        return folder.name.lower() in aliases and (folder / "images").is_dir()

    found = find_folders(root, is_split_tree, max_depth=SEARCH_DEPTH, skip=_SKIP_DIRS, shallowest=True)
    if found:
        return [folder / "images" for folder in found]
    folder = root / "images" if (root / "images").is_dir() else root
    if flat and _holds_images(folder):
        if not any(p.is_dir() and p.name.lower().startswith("wider_") for p in root.iterdir()):
            return [folder]  # a folder of WIDER_train/ only holds no images of val
    return []


# ---- reading a tree's sizes, cached ------------------------------------------------------------------------
def _fingerprint(images_dir: Path, listing: dict[str, str]) -> str:
    """Changes when an image is added, removed or renamed, or a folder of the tree is modified."""
    digest = hashlib.sha1()
    for relative in sorted(listing.values()):
        digest.update(relative.encode() + b"\n")
    folders = {os.path.dirname(relative) for relative in listing.values()} | {""}
    for folder in sorted(folders):
        try:
            digest.update(f"{folder}:{(images_dir / folder).stat().st_mtime_ns}\n".encode())
        except OSError:
            continue
    return digest.hexdigest()


def _cache_paths(cache_dir: Path, images_dir: Path) -> tuple[Path, Path]:
    key = hashlib.sha1(str(images_dir.resolve()).encode()).hexdigest()[:16]
    stem = cache_dir / "image-sizes" / f"{images_dir.resolve().parent.name or 'images'}-{key}"
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def _csv_text(sizes: dict[str, tuple[int, int]], listing: dict[str, str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "width", "height"])
    for name in sorted(sizes):
        writer.writerow([listing.get(name, name), *sizes[name]])
    return buffer.getvalue()


def _read_headers(images_dir: Path, listing: dict[str, str]) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Sizes from the headers of every listed image (threads: the reads wait on the disk, not the CPU)."""

    def one(item: tuple[str, str]) -> tuple[str, tuple[int, int] | None, str]:
        name, relative = item
        try:
            return name, read_image_size(images_dir / relative), ""
        except (OSError, ValueError) as exc:
            return name, None, str(exc)

    sizes: dict[str, tuple[int, int]] = {}
    unreadable: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for name, size, why in pool.map(one, sorted(listing.items()), chunksize=64):
            if size is None:
                unreadable[name] = why
            else:
                sizes[name] = size
    return sizes, unreadable


@dataclass
class TreeSizes:
    """The sizes of one image tree and where they came from."""

    images_dir: Path
    sizes: dict[str, tuple[int, int]]
    unreadable: dict[str, str] = field(default_factory=dict)
    cache_csv: Path | None = None
    reused: bool = False


def tree_sizes(
    images_dir: str | Path, cache_dir: str | Path | None = None, listing: dict[str, str] | None = None
) -> TreeSizes:
    """Original sizes of every image below `images_dir`, read header-only once and cached in
    ``<cache_dir>/image-sizes/<tree>-<hash>.csv`` (a ``.json`` beside it holds the tree's fingerprint), or for this
    process only without `cache_dir`. `listing`: the tree's `list_images`, when the caller has it."""
    images_dir = Path(images_dir)
    listing = list_images(images_dir) if listing is None else listing
    fingerprint = _fingerprint(images_dir, listing)
    memo_key = (str(images_dir.resolve()), fingerprint)
    csv_path, meta_path = _cache_paths(Path(cache_dir), images_dir) if cache_dir is not None else (None, None)
    if memo_key in _MEMO:
        return TreeSizes(images_dir, _MEMO[memo_key], cache_csv=csv_path, reused=True)
    if csv_path is not None and csv_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == fingerprint and meta.get("tree") == str(images_dir.resolve()):
                sizes = read_sizes_csv(csv_path)
                _MEMO[memo_key] = sizes
                return TreeSizes(images_dir, sizes, dict(meta.get("unreadable", {})), csv_path, reused=True)
        except (OSError, ValueError) as exc:
            logger.warning("image sizes cache %s is unusable (%s); reading the image headers again", csv_path, exc)
    sizes, unreadable = _read_headers(images_dir, listing)
    if unreadable:
        logger.warning(
            "%s: %d image files gave no size (e.g. %s)", images_dir, len(unreadable), next(iter(unreadable.values()))
        )
    if csv_path is not None:
        try:
            atomic_write_text(csv_path, _csv_text(sizes, listing))
            meta = {"tree": str(images_dir.resolve()), "fingerprint": fingerprint, "unreadable": unreadable}
            atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
        except OSError as exc:  # a read-only cache costs the next run a re-read, nothing else
            logger.warning("cannot cache image sizes in %s (%s)", csv_path.parent, exc)
            csv_path = None
    _MEMO[memo_key] = sizes
    return TreeSizes(images_dir, sizes, unreadable, csv_path, reused=False)


def write_sizes_csv(images_dir: str | Path, out: str | Path) -> int:
    """Write ``name,width,height`` of every image below `images_dir` to `out` (atomic); returns the count."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} not found")
    listing = list_images(images_dir)
    if not listing:
        raise ValueError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found below it")
    sizes, unreadable = _read_headers(images_dir, listing)
    for name, why in sorted(unreadable.items()):
        logger.warning("%s: no size (%s)", listing[name], why)
    atomic_write_text(out, _csv_text(sizes, listing))
    return len(sizes)


# ---- the sizes of a split ----------------------------------------------------------------------------------
@dataclass
class SplitSizes:
    """The original sizes a split's labels are mapped with."""

    sizes: ImageSizes | None  # None when no source exists
    source: str  # where they came from, for the log line and messages
    tree: Path | None = None  # the WIDER FACE image folder used, when sizes come from one

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names (without extension) whose original size no source knows."""
        if self.sizes is None:
            return [strip_image_extension(n) for n in names]
        return [strip_image_extension(n) for n in names if self.sizes.get(n) is None]


def _merge_trees(trees: list[Path], split: str) -> list[tuple[Path, dict[str, str]]]:
    """One tree per set of files: copies (the same file names) collapse to the first; different trees that
    hold a common image are an error naming both."""
    kept: list[tuple[Path, dict[str, str]]] = []
    for tree in trees:
        listing = list_images(tree)
        for other, other_listing in kept:
            if set(listing) == set(other_listing):
                logger.info("%s holds the same images as %s; using the latter", tree, other)
                break
            common = set(listing) & set(other_listing)
            if common:
                raise ImageTreeError(
                    f"two image trees claim the images of split {split!r}: {other} and {tree} both hold "
                    f"{sorted(common)[0]!r} (and {len(common) - 1} more) but differ in others; set images_root "
                    "(data.images_root) to the one to use"
                )
        else:
            kept.append((tree, listing))
    return kept  # (tree, its listing)


def split_sizes(
    split_dir: str | Path,
    *,
    sizes_csv: str | Path | None = None,
    images_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    search_flat: bool = True,
) -> SplitSizes:
    """`find_sizes` with one log line, the first time in a process, saying where the sizes of the split come from."""
    found = find_sizes(split_dir, sizes_csv, images_root, cache_dir, search_flat)
    key = (str(Path(split_dir).resolve()), found.source)
    if key not in _SAID:
        _SAID.add(key)
        logger.info("original image sizes of %s: %s", Path(split_dir).name, found.source)
    return found


def missing_error(found: SplitSizes, names: list[str], label_file: str | Path | None) -> str | None:
    """The message for labelled images whose size no source knows (None when every size is known): names them."""
    missing = found.missing(names)
    if not missing or found.sizes is None:
        return None
    shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5:,} more" if len(missing) > 5 else "")
    return (
        f"{found.source}: no size for {len(missing):,} of the {len(names):,} images labelled in "
        f"{label_file or 'the labels'}: {shown}. Attach the complete WIDER FACE images of this split "
        "(images_root), give their sizes (sizes_csv), or set data.on_error=skip to leave these images out"
    )


def find_sizes(split_dir: str | Path, sizes_csv=None, images_root=None, cache_dir=None, search_flat=True) -> SplitSizes:
    """Where the original sizes of one split come from (the arguments of `split_sizes`), first hit wins:

    1. `sizes_csv` (``data.sizes_csv``), else ``image_sizes.csv`` in the split folder or the dataset root;
    2. the split's own ``images/`` folder (read lazily, header-only);
    3. the WIDER FACE tree of this split below `images_root` (`tree_sizes`, cached under `cache_dir`).

    A CSV and a tree combine: the CSV's sizes win, the tree fills in the rest. ImageTreeError: `images_root` holds
    no images of this split, or two trees disagree.
    """
    split_dir = Path(split_dir)
    split = split_dir.name
    csv_path: Path | None = Path(sizes_csv) if sizes_csv is not None else None
    if csv_path is not None and not csv_path.is_file():
        raise FileNotFoundError(f"sizes CSV {csv_path} (data.sizes_csv) not found (expected columns name,width,height)")
    if csv_path is None:
        for folder in (split_dir, split_dir.parent):
            if (folder / SIZES_CSV_NAME).is_file():
                csv_path = folder / SIZES_CSV_NAME
                break
    own_images = split_dir / "images"
    if own_images.is_dir():
        sizes = ImageSizes(sizes_csv=csv_path, images_dir=own_images)
        what = f"sizes CSV {csv_path} and images {own_images}" if csv_path else f"images {own_images}"
        return SplitSizes(sizes, what, None)
    tree_result: TreeSizes | None = None
    if images_root is not None:
        root = Path(images_root)
        if not root.is_dir():
            raise FileNotFoundError(f"images_root {root} (data.images_root) is not a folder")
        results = [
            tree_sizes(t, cache_dir, listing)
            for t, listing in _merge_trees(find_split_trees(root, split, flat=search_flat), split)
        ]
        if len(results) == 1:
            tree_result = results[0]
        elif results:  # disjoint trees of one split, read as one
            merged = {name: size for result in results for name, size in result.sizes.items()}
            unreadable = {name: why for result in results for name, why in result.unreadable.items()}
            tree_result = TreeSizes(root, merged, unreadable, None, all(result.reused for result in results))
        elif csv_path is None:
            raise ImageTreeError(
                f"images_root {root} holds no images of split {split!r}: expected {root}/WIDER_{split}/images/"
                f"<event>/<name>.jpg, {root}/{split}/images/..., or a flat folder of images"
            )
    if tree_result is None:
        if csv_path is None:
            return SplitSizes(None, "no sizes CSV and no images", None)
        return SplitSizes(ImageSizes(sizes_csv=csv_path), f"sizes CSV {csv_path}", None)
    table = dict(tree_result.sizes)
    if csv_path is not None:  # the CSV's sizes win, the tree fills in the rest
        table.update(read_sizes_csv(csv_path))
    sizes = ImageSizes(sizes=table)
    sizes.unreadable.update(tree_result.unreadable)
    cached = (
        f"; sizes {'reused from' if tree_result.reused else 'cached in'} {tree_result.cache_csv}"
        if tree_result.cache_csv is not None
        else ""
    )
    what = f"WIDER FACE images {tree_result.images_dir} ({len(table):,} images{cached})"
    if csv_path is not None:
        what = f"sizes CSV {csv_path}, then {what}"
    sizes.described = what
    sizes.tree = tree_result.images_dir
    return SplitSizes(sizes, what, tree_result.images_dir)
