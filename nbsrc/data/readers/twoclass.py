"""The 2-class (face + person) label file, e.g. ``wider_val_gt_cleanedBoundary_1203.txt``.

Layout::

    # f00d696f4d0663e1.jpg
    2 0.115099 0.045099 0.7415259999999999 0.876759
    1 0.493055556 0.0595703 0.17592592499999998 0.09667970000000001

- a header ``# <id>.jpg`` starts an image (record name ``<id>``, no extension);
- one line per object ``cls x y w h``: class id (1 face, 2 person; `nbsrc.data.records`) and the top-left
  corner and size **normalized** to the image width and height.

Reading rejects (``file:line``) a class other than 1 or 2, a negative width or height, and a corner outside
`NORMALIZED_RANGE` (pixel values in a normalized file); boxes reaching a little outside [0, 1] are kept, as
``convert-openimages --no-clip`` writes them. The writer refuses what the reader would reject.

Records have ``normalized=True`` and boxes xyxy in [0, 1] units (``x2 = x + w``, `nbsrc.boxes.xywh_to_xyxy`);
no landmarks. A header that appears again (the real file repeats 5) is merged into the first record: its
boxes are appended, the repeat is logged and listed in `TwoClassLabels.duplicates`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import (
    LabelParseError,
    format_boxes_xywh,
    handle_error,
    iter_lines,
    parse_numbers,
    read_text,
    unsafe_name_reason,
    xywh_array_to_xyxy,
)
from nbsrc.data.readers.retinaface_txt import parse_header
from nbsrc.data.records import CLASS_NAMES, ImageRecord
from nbsrc.utils import atomic_write_text

__all__ = ["NORMALIZED_RANGE", "TwoClassLabels", "read_twoclass_labels", "write_twoclass_labels"]

logger = logging.getLogger(__name__)

LINE_EXPECTED = "5 numbers (cls x y w h, cls 1 (face) or 2 (person), x y w h normalized to the image size)"
# Accepted box corners (x, y, x + w, y + h) of a normalized file: beyond it the values are pixels, not fractions.
NORMALIZED_RANGE = (-0.5, 1.5)


def box_problem(label: float, xywh: Sequence[float]) -> str | None:
    """What is wrong with one object ``cls x y w h`` of a 2-class file (None when nothing is): a class other
    than 1 / 2, a non-finite value, a negative width or height, a corner outside `NORMALIZED_RANGE`."""
    if label not in CLASS_NAMES:
        return f"class {label:g}; expected 1 (face) or 2 (person)"
    x, y, w, h = (float(v) for v in xywh)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"box x y w h = {x:g} {y:g} {w:g} {h:g} is not finite"
    if w < 0 or h < 0:
        return f"negative width or height (w={w:g}, h={h:g}); expected w >= 0 and h >= 0"
    low, high = NORMALIZED_RANGE
    if min(x, y) < low or max(x + w, y + h) > high:
        return (
            f"box x y w h = {x:g} {y:g} {w:g} {h:g} reaches outside the normalized range [{low:g}, {high:g}]; "
            "expected coordinates normalized to the image size (pixel values?)"
        )
    return None


class TwoClassLabels(list):
    """The records of a 2-class file plus `duplicates`: image name -> ``"file:line"`` of each of its headers,
    for the names whose header repeats (their boxes merged in file order)."""

    def __init__(self, records: Sequence[ImageRecord] = (), duplicates: dict[str, list[str]] | None = None) -> None:
        super().__init__(records)
        self.duplicates: dict[str, list[str]] = dict(duplicates or {})

    def __repr__(self) -> str:
        return f"TwoClassLabels({len(self)} images, {len(self.duplicates)} duplicated headers)"


def read_twoclass_labels(path: str | Path, *, errors: list[LabelParseError] | None = None) -> TwoClassLabels:
    """Read a 2-class label file: one normalized record per distinct image in order of first appearance.
    `errors`, when given, collects unparseable lines (skipped, with those under a rejected header) instead of
    raising the first.

    Raises:
        FileNotFoundError: `path` does not exist.
        LabelParseError: naming ``file:line``: an object line before any header, an empty or unsafe name, a line
            without 5 numbers, or an object `box_problem` names.
    """
    path = Path(path)
    text = read_text(path, "2-class label")
    sources: dict[str, list[str]] = {}
    rows: dict[str, list[list[float]]] = {}  # in order of first appearance
    row_lines: dict[str, list[int]] = {}  # 1-based line of each row
    current: str | None = None
    rejected = 0  # line of the last header when it was rejected
    for number, line in iter_lines(text):
        if line.startswith("#"):
            name = parse_header(line[1:], path, number, "'# <id>.jpg'")
            if isinstance(name, LabelParseError):
                handle_error(name, errors)
                current, rejected = None, number
                continue
            rejected = 0
            if name not in rows:
                rows[name] = []
                row_lines[name] = []
                sources[name] = []
            sources[name].append(f"{path}:{number}")
            current = name
            continue
        values = parse_numbers(line, path, number, (5,), LINE_EXPECTED)
        if isinstance(values, LabelParseError):
            handle_error(values, errors)
            continue
        problem = box_problem(values[0], values[1:])
        if problem:
            handle_error(LabelParseError(path, number, f"{problem}: {line!r}"), errors)
            continue
        if rejected:
            handle_error(
                LabelParseError(path, number, f"object line of the rejected header at line {rejected}"), errors
            )
            continue
        if current is None:
            handle_error(LabelParseError(path, number, "object line before any '# <id>.jpg' header"), errors)
            continue
        rows[current].append(values)
        row_lines[current].append(number)

    records = _records(rows, row_lines, sources)
    duplicates = {name: where for name, where in sources.items() if len(where) > 1}
    if duplicates:
        first = next(iter(duplicates.items()))
        logger.warning(
            "%s: %d image header(s) repeated; their boxes were merged (e.g. %r at %s)",
            path,
            len(duplicates),
            first[0],
            ", ".join(first[1]),
        )
    logger.debug("%s: %d images, %d boxes", path, len(records), sum(len(r) for r in rows.values()))
    return TwoClassLabels(records, duplicates)


def _records(
    rows: dict[str, list[list[float]]], row_lines: dict[str, list[int]], sources: dict[str, list[str]]
) -> list[ImageRecord]:
    """One normalized record per image of `rows` (``cls x y w h`` values, in order of first appearance)."""
    table = np.asarray([row for per_image in rows.values() for row in per_image], np.float64).reshape(-1, 5)  # (T, 5)
    xyxy = xywh_array_to_xyxy(table[:, 1:])  # (T, 4)
    labels = table[:, 0].astype(np.int64)  # (T,)
    records = []
    start = 0
    for name, per_image in rows.items():
        stop = start + len(per_image)
        records.append(
            ImageRecord(
                name=name,
                boxes=xyxy[start:stop],
                labels=labels[start:stop],
                normalized=True,
                source=sources[name][0],
                box_lines=np.asarray(row_lines[name], np.int64),
            )
        )
        start = stop
    return records


def write_twoclass_labels(path: str | Path, records: Sequence[ImageRecord], *, extension: str = ".jpg") -> Path:
    """Write normalized records (or pixel ones with ``image_size``) in the 2-class layout (atomically), so that
    `read_twoclass_labels` reads back identical boxes and labels; `extension` is appended to each header's name.

    Raises:
        ValueError: a record that `read_twoclass_labels` would reject; nothing is written.
    """
    path = Path(path)
    normalized_boxes = []
    for record in records:
        boxes = record.boxes
        if not record.normalized:
            if record.image_size is None:
                raise ValueError(
                    f"{path}: record {record.name!r} ({record.source}) is in pixels without an image_size; the "
                    "2-class file holds boxes normalized to the image size"
                )
            width, height = record.image_size
            boxes = boxes / np.asarray([width, height, width, height], np.float32)
        if not record.name or any(c in record.name for c in "\n\r") or unsafe_name_reason(record.name):
            raise ValueError(f"{path}: record name {record.name!r} ({record.source}) cannot be written as a header")
        xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)  # (N, 4)
        low, high = NORMALIZED_RANGE
        suspect = ~np.isin(record.labels, list(CLASS_NAMES)) | ~np.isfinite(xyxy).all(1)  # (N,)
        suspect |= (xyxy[:, 2:] < xyxy[:, :2]).any(1) | (xyxy < low).any(1) | (xyxy > high).any(1)
        for k in np.flatnonzero(suspect).tolist():  # exact verdict on the text the reader will see
            problem = box_problem(float(record.labels[k]), [float(v) for v in format_boxes_xywh(xyxy[k : k + 1])[0]])
            if problem:
                raise ValueError(
                    f"{path}: object {k} of record {record.name!r} ({record.source}): {problem}; the 2-class file "
                    "could not be read back"
                )
        normalized_boxes.append(boxes)
    box_texts = format_boxes_xywh(np.concatenate(normalized_boxes + [np.zeros((0, 4), np.float32)]))  # (T, 4)
    lines = []
    box = 0
    for record in records:
        lines.append(f"# {record.name}{extension}")
        for label in record.labels.tolist():
            lines.append(f"{label} " + " ".join(box_texts[box]))
            box += 1
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path
