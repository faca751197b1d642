"""Where things are in a dataset folder (the retina-modify layout and its variants).

A dataset root holds split folders (``train/``, ``val/``). A split folder holds any of::

    <split>/labels.txt                         RetinaFace label.txt (also found at <split>/latent/labels.txt)
    <split>/labelstxt/<image>.txt              per-image label files (or <split>/labels/<event>/<image>.txt)
    <split>/labels_2cls.txt                    2-class (face + person) labels
    <split>/latent/<image>/latent_{12,25,50,75,100}.npy     nested latents, one file per JPEG AI rate
    <split>/latent/<image>.npy                 flat latents, one file per image
    <split>/images/<event>/<image>.jpg         RGB images (or flat <split>/images/<image>.jpg)
    <split>/ground_truth/wider_*_val.mat       WIDER evaluation ground truth

Latents are keyed by the image basename (the WIDER file name without extension).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nbsrc.data.readers import detect_format, read_labels
from nbsrc.data.records import ImageRecord

__all__ = [
    "LABEL_CANDIDATES",
    "LatentIndex",
    "TWOCLASS_CANDIDATES",
    "find_labels",
    "list_splits",
    "parse_rate",
    "read_split_labels",
    "scan_latents",
]

LABEL_CANDIDATES = (
    "labels.txt",
    "label.txt",
    "latent/labels.txt",
    "latent/label.txt",
    "labelstxt",
    "labels",
)
TWOCLASS_CANDIDATES = ("labels_2cls.txt",)
_RATE_RE = re.compile(r"latent_(\d+)\.npy")
SPLIT_MARKERS = ("latent", "images", "labels.txt", "label.txt", "labelstxt", "labels")


def parse_rate(filename: str) -> int | None:
    """``"latent_75.npy"`` -> 75; None for any other name."""
    match = _RATE_RE.fullmatch(filename)
    return int(match.group(1)) if match else None


def is_split_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in SPLIT_MARKERS)


def list_splits(root: str | Path, splits: Iterable[str] | None = None) -> list[tuple[str, Path]]:
    """``(name, folder)`` of the splits of `root`, a dataset root or itself a split folder (named after it).

    Raises:
        FileNotFoundError: `root` or a requested split does not exist, or no split folder is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found")
    children = [(p.name, p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and is_split_dir(p)]
    if splits is None:
        if children:
            return children
        if is_split_dir(root):
            return [(root.name, root)]
        raise FileNotFoundError(
            f"{root}: no split folder found (expected train/ and val/ holding latent/, images/ or labels.txt)"
        )
    out = []
    for split in splits:
        folder = root / split
        if folder.is_dir():
            out.append((split, folder))
        elif split == root.name and is_split_dir(root):
            out.append((split, root))
        else:
            found = [name for name, _ in children]
            raise FileNotFoundError(f"split folder {folder} not found (split folders in {root}: {found or 'none'})")
    return out


def find_labels(split_dir: str | Path, *, twoclass: bool = False) -> Path:
    """The label file (or per-image label folder) of a split: the first of `TWOCLASS_CANDIDATES` (when
    `twoclass`), `LABEL_CANDIDATES` and ``wider_face_*_bbx_gt.txt`` that exists.

    Raises:
        FileNotFoundError: none exists (the message lists what was looked for).
    """
    split_dir = Path(split_dir)
    candidates = (TWOCLASS_CANDIDATES if twoclass else ()) + LABEL_CANDIDATES
    for candidate in candidates:
        path = split_dir / candidate
        if path.is_file() or (path.is_dir() and any(path.rglob("*.txt"))):
            return path
    bbx = sorted(split_dir.glob("wider_face_*_bbx_gt.txt"))
    if bbx:
        return bbx[0]
    raise FileNotFoundError(
        f"{split_dir}: no label file found; looked for {', '.join(candidates)} and wider_face_*_bbx_gt.txt "
        "(or pass the label file explicitly)"
    )


def read_split_labels(path: str | Path, *, errors: list | None = None) -> list[ImageRecord]:
    """Read a label file or folder of any supported format (`nbsrc.data.readers.read_labels`); `errors`
    collects unparseable lines instead of raising, for the formats that support it."""
    path = Path(path)
    fmt = detect_format(path)
    if errors is not None and fmt in ("retinaface", "wider_bbx", "per_image", "twoclass"):
        records = read_labels(path, format=fmt, errors=errors)
    else:
        records = read_labels(path, format=fmt)
    return records if isinstance(records, list) else list(records)  # a list subclass keeps its `duplicates`


@dataclass
class LatentIndex:
    """The latent files of a split."""

    folder: Path  # the ``latent/`` folder
    layout: str  # ``nested`` (``<image>/latent_<rate>.npy``), ``flat`` (``<image>.npy``), ``mixed`` or ``empty``
    # image basename -> rate (None for flat files or unrated names) -> path
    files: dict[str, dict[int | None, Path]] = field(default_factory=dict)
    missing_rate: list[str] = field(default_factory=list)  # nested folders lacking the requested rate file

    def lookup(self, basename: str) -> dict[int | None, Path] | None:
        """The files of an image by basename (flat files named ``latent_<basename>.npy`` are found too)."""
        return self.files.get(basename) or self.files.get(f"latent_{basename}")

    @property
    def rates(self) -> list[int | None]:
        found = {rate for per_image in self.files.values() for rate in per_image}
        return sorted(found, key=lambda r: -1 if r is None else r)


def scan_latents(latent_dir: str | Path, *, suffix: str | None = "latent_75.npy") -> LatentIndex:
    """Index the latents of a split's ``latent/`` folder.

    `suffix` is the rate file of the nested layout (``latent_75.npy``); None takes every ``*.npy`` of each image
    folder (all rates). Raises `FileNotFoundError` when `latent_dir` does not exist.
    """
    latent_dir = Path(latent_dir)
    if not latent_dir.is_dir():
        raise FileNotFoundError(f"latent folder {latent_dir} not found (expected <split>/latent/)")
    index = LatentIndex(folder=latent_dir, layout="empty")
    subdirs: list[os.DirEntry] = []
    flat: list[os.DirEntry] = []
    with os.scandir(latent_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry)
            elif entry.name.endswith(".npy"):
                flat.append(entry)
    for entry in sorted(flat, key=lambda e: e.name):
        index.files[entry.name[:-4]] = {None: Path(entry.path)}
    for entry in sorted(subdirs, key=lambda e: e.name):
        _scan_image_folder(index, Path(entry.path), suffix)
    if subdirs and (index.files or index.missing_rate):
        index.layout = "nested" if not flat else "mixed"
    elif flat:
        index.layout = "flat"
    return index


def _scan_image_folder(index: LatentIndex, folder: Path, suffix: str | None) -> None:
    """Add the rate files of one ``<latent>/<image>/`` folder to `index` (see `scan_latents`); a folder holding
    latents but not the `suffix` one goes to ``missing_rate``."""
    if suffix is not None:
        path = folder / suffix
        if path.is_file():
            index.files[folder.name] = {parse_rate(suffix): path}
        elif any(name.endswith(".npy") for name in os.listdir(folder)):
            index.missing_rate.append(folder.name)
        return
    per_image: dict[int | None, Path] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".npy") and not name.startswith("."):
            per_image[parse_rate(name)] = folder / name
    if per_image:
        index.files[folder.name] = per_image
