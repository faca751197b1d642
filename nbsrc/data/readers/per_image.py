"""Per-image label files: a flat ``labelstxt/<name>.txt`` folder or a ``labels/<event>/<name>.txt`` tree.

Each file holds the face lines of one image without any header (an empty file is a zero-face image):

- 20 numbers: the RetinaFace layout of `nbsrc.data.readers.retinaface_txt` (``x y w h``, 5 x ``(lx ly flag)``,
  score; ``lx`` of the first point < 0 means no landmarks);
- 4 numbers: ``x y w h``;
- 10 numbers: ``x y w h`` and the six WIDER attributes of ``wider_face_*_bbx_gt.txt``.

The record name is the file's path relative to the folder without ``.txt`` (``"0--Parade/0_Parade_x"`` in a
tree, ``"0_Parade_x"`` in a flat folder). A RetinaFace ``label.txt`` / ``labels.txt`` lying at the top of the
folder (the file the per-image tree is usually made from) is recognised by its ``#`` header and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nbsrc.data.readers.common import LabelParseError, handle_error, iter_lines, parse_numbers, read_text
from nbsrc.data.readers.retinaface_txt import build_face_records, describe_counts
from nbsrc.data.records import ImageRecord

__all__ = ["PER_IMAGE_COUNTS", "list_label_files", "read_per_image_labels"]

logger = logging.getLogger(__name__)

PER_IMAGE_COUNTS = (4, 10, 20)
_COMBINED_NAMES = ("label.txt", "labels.txt")


def _starts_with_header(path: Path) -> bool:
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                return line.lstrip().startswith("#")
    return False


def list_label_files(folder: str | Path) -> list[Path]:
    """The per-image ``.txt`` files under `folder` (recursive, sorted; hidden folders and a top-level combined
    ``label.txt`` / ``labels.txt`` with ``#`` headers are left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"{folder} is a file; expected a folder of per-image <name>.txt label files")
        raise FileNotFoundError(f"per-image label folder {folder} not found")
    files = []
    for path in sorted(folder.rglob("*.txt")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if len(relative.parts) == 1 and path.name in _COMBINED_NAMES and _starts_with_header(path):
            logger.info("%s: a combined label file with '#' headers, not a per-image file; skipped", path)
            continue
        files.append(path)
    return files


def read_per_image_labels(folder: str | Path, *, errors: list[LabelParseError] | None = None) -> list[ImageRecord]:
    """Read every per-image label file under `folder`: one record per file, sorted by name, ``source``
    ``"<file>:1"``. `errors`, when given, collects unparseable lines (skipped) instead of raising the first.

    Raises:
        FileNotFoundError: `folder` does not exist.
        LabelParseError: naming ``file:line``: a header line, a count other than 4, 10 or 20, a non-number.
    """
    folder = Path(folder)
    files = list_label_files(folder)
    if not files:
        logger.warning("%s: no per-image .txt label files found", folder)
    expected = describe_counts(PER_IMAGE_COUNTS)
    entries = []
    for path in files:
        rows, lines = [], []
        for number, line in iter_lines(read_text(path, "per-image label")):
            if line.startswith("#"):
                handle_error(
                    LabelParseError(
                        path, number, f"header line {line!r} in a per-image label file; expected only {expected}"
                    ),
                    errors,
                )
                continue
            values = parse_numbers(line, path, number, PER_IMAGE_COUNTS, expected)
            if isinstance(values, LabelParseError):
                handle_error(values, errors)
                continue
            rows.append(values)
            lines.append(number)
        name = path.relative_to(folder).with_suffix("").as_posix()
        entries.append((name, f"{path}:1", rows, lines))
    records = build_face_records(entries)
    logger.debug("%s: %d images, %d faces", folder, len(records), sum(r.num_boxes for r in records))
    return records
