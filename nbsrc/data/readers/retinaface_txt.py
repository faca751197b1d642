"""RetinaFace ``label.txt`` (retinaface_gt_v1.1 layout, as read by biubug6 ``data/wider_face.py``).

Layout::

    # 0--Parade/0_Parade_marchingband_1_849.jpg
    449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.174 425.893 0.0 538.357 431.491 0.0 0.82
    84 92 16 22 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1

- A header ``# <event>/<file>.jpg`` starts an image; the record name is ``<event>/<basename>`` without the
  extension. A header followed by no face line is a valid zero-face image.
- Train face lines hold 20 numbers: ``x y w h`` in original-image pixels, then 5 x ``(lx ly flag)`` (left
  eye, right eye, nose, left and right mouth corner), then a score. ``lx`` of the first point < 0 means the
  face has no landmarks: it gets ``landmarks_valid = False`` and zero landmarks (never fake valid points).
- Val face lines hold 4 numbers ``x y w h``.

Boxes become xyxy (``x2 = x + w``, `nbsrc.boxes.xywh_to_xyxy`). The per-point flags and the score are kept
in ``attributes["landmark_flags"]`` (``float32 [N, 5]``) and ``attributes["score"]`` (``float32 [N]``), -1 for
4-number lines, so that `write_retinaface_labels` reproduces a file's records exactly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import (
    WIDER_ATTRIBUTES,
    LabelParseError,
    format_boxes_xywh,
    format_float32,
    handle_error,
    iter_lines,
    parse_numbers,
    read_text,
    unsafe_name_reason,
    xywh_array_to_xyxy,
)
from nbsrc.data.records import FACE, ImageRecord
from nbsrc.utils import atomic_write_text

__all__ = ["FACE_LINE_LAYOUTS", "build_face_records", "read_retinaface_labels", "write_retinaface_labels"]

logger = logging.getLogger(__name__)

# Number of values -> description, for the face lines these readers understand.
FACE_LINE_LAYOUTS = {
    4: "x y w h",
    10: "x y w h blur expression illumination invalid occlusion pose",
    20: "x y w h + 5 x (lx ly flag) + score",
}
RETINAFACE_COUNTS = (4, 20)


def describe_counts(counts: Sequence[int]) -> str:
    """``"4 numbers (x y w h) or 20 numbers (...)"`` for error messages."""
    return " or ".join(f"{c} numbers ({FACE_LINE_LAYOUTS[c]})" for c in counts)


def name_from_header(header: str) -> str:
    """``"0--Parade/0_Parade_x.jpg"`` -> ``"0--Parade/0_Parade_x"`` (a leading ``./`` removed); `ValueError`
    for an unsafe name (`unsafe_name_reason`)."""
    name = header.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    reason = unsafe_name_reason(name)
    if reason:
        raise ValueError(
            f"image name {header.strip()!r} {reason}, so files named after it would land outside their folder"
        )
    stem, dot, ext = name.rpartition(".")
    if dot and "/" not in ext and ext:
        name = stem
    return name


def parse_header(header: str, path: str | Path, number: int, expected: str) -> str | LabelParseError:
    """The image name of a ``#`` header line (`name_from_header`), or a `LabelParseError` (returned, not raised)
    for an empty or unsafe name; `expected` describes the header (``"'# <event>/<file>.jpg'"``)."""
    try:
        name = name_from_header(header)
    except ValueError as exc:
        return LabelParseError(path, number, f"{exc}; expected a relative name as in {expected}")
    if not name:
        return LabelParseError(path, number, f"empty header; expected {expected}")
    return name


def build_face_records(entries: Iterable[tuple[str, str, list[list[float]], list[int]]]) -> list[ImageRecord]:
    """One face record per ``(name, source, rows, lines)`` entry: ``rows`` the values of its face lines (a
    layout of `FACE_LINE_LAYOUTS`), ``lines`` their line numbers. ``landmark_flags`` / ``score`` attributes
    always, the six WIDER attributes when a line of the image had them (-1 elsewhere)."""
    entries = list(entries)
    all_rows = [row for _, _, rows, _ in entries for row in rows]
    total = len(all_rows)
    xywh = np.zeros((total, 4), np.float64)
    landmarks = np.zeros((total, 5, 2), np.float32)
    valid = np.zeros(total, bool)
    flags = np.full((total, 5), -1.0, np.float32)
    score = np.full(total, -1.0, np.float32)
    wider = np.full((total, len(WIDER_ATTRIBUTES)), -1, np.int64)
    has_wider = np.zeros(total, bool)
    lengths = np.fromiter(map(len, all_rows), np.int64, total)  # (T,)
    for length in np.unique(lengths).tolist():  # one array per line layout (4, 10 or 20 values)
        rows = np.flatnonzero(lengths == length)  # (k,)
        values = np.array([all_rows[i] for i in rows.tolist()], np.float64).reshape(len(rows), length)  # (k, L)
        xywh[rows] = values[:, :4]
        if length == 20:
            points = values[:, 4:19].reshape(-1, 5, 3)  # (k, 5, lx ly flag)
            flags[rows] = points[:, :, 2]
            score[rows] = values[:, 19]
            has_points = points[:, 0, 0] >= 0  # (k,)
            landmarks[rows[has_points]] = points[has_points, :, :2]
            valid[rows[has_points]] = True
        elif length == 10:
            wider[rows] = values[:, 4:10]
            has_wider[rows] = True
    xyxy = xywh_array_to_xyxy(xywh)  # (T, 4)

    records = []
    start = 0
    for name, source, rows, lines in entries:
        stop = start + len(rows)
        attributes = {"landmark_flags": flags[start:stop].copy(), "score": score[start:stop].copy()}
        if has_wider[start:stop].any():
            for k, attr in enumerate(WIDER_ATTRIBUTES):
                attributes[attr] = wider[start:stop, k].copy()
        records.append(
            ImageRecord(
                name=name,
                boxes=xyxy[start:stop],
                landmarks=landmarks[start:stop],
                landmarks_valid=valid[start:stop],
                labels=np.full(stop - start, FACE, np.int64),
                attributes=attributes,
                source=source,
                box_lines=np.asarray(lines, np.int64),
            )
        )
        start = stop
    return records


def read_retinaface_labels(path: str | Path, *, errors: list[LabelParseError] | None = None) -> list[ImageRecord]:
    """Read a RetinaFace ``label.txt``: one record per header in file order (a repeated header gives a second
    record). `errors`, when given, collects unparseable lines (skipped) instead of raising the first; the face
    lines under a rejected header are reported too, never given to the image before.

    Raises:
        FileNotFoundError: `path` does not exist.
        LabelParseError: naming ``file:line``: a face line before any header, an empty or unsafe name, a count
            other than 4 or 20, a non-number.
    """
    path = Path(path)
    text = read_text(path, "RetinaFace label.txt")
    expected = describe_counts(RETINAFACE_COUNTS)
    entries: list[tuple[str, str, list[list[float]], list[int]]] = []
    rejected = 0  # line of the last header when it was rejected: its face lines are reported, not given to another
    for number, line in iter_lines(text):
        if line.startswith("#"):
            name = parse_header(line[1:], path, number, "'# <event>/<file>.jpg'")
            if isinstance(name, LabelParseError):
                handle_error(name, errors)
                rejected = number
                continue
            rejected = 0
            entries.append((name, f"{path}:{number}", [], []))
            continue
        values = parse_numbers(line, path, number, RETINAFACE_COUNTS, expected)
        if isinstance(values, LabelParseError):
            handle_error(values, errors)
            continue
        if rejected:
            handle_error(LabelParseError(path, number, f"face line of the rejected header at line {rejected}"), errors)
            continue
        if not entries:
            handle_error(LabelParseError(path, number, "face line before any '# <event>/<file>.jpg' header"), errors)
            continue
        entries[-1][2].append(values)
        entries[-1][3].append(number)
    repeated = {name: n for name, n in Counter(name for name, _, _, _ in entries).items() if n > 1}
    if repeated:
        logger.warning(
            "%s: %d image name(s) appear under more than one header, e.g. %s", path, len(repeated), next(iter(repeated))
        )
    records = build_face_records(entries)
    logger.debug("%s: %d images, %d faces", path, len(records), sum(r.num_boxes for r in records))
    return records


def landmark_fields(record: ImageRecord) -> np.ndarray:
    """``float32 [N, 16]``: the 5 x ``(lx ly flag)`` and score fields of a record's face lines (-1 in every
    landmark field without landmarks; flag 0 and score 1 when the attributes lack them)."""
    n = record.num_boxes
    valid = record.landmarks_valid
    flags = record.attributes.get("landmark_flags")
    if flags is None:
        flags = np.where(valid[:, None], np.zeros((n, 5), np.float32), np.float32(-1))  # (N, 5)
    flags = np.asarray(flags, np.float32).reshape(n, 5)  # (N, 5)
    score = record.attributes.get("score")
    if score is None:
        score = np.where(valid, np.float32(1), np.float32(-1))
    score = np.asarray(score, np.float32).reshape(n, 1)  # (N, 1)
    points = np.concatenate([record.landmarks, flags[:, :, None]], axis=2)  # (N, 5, 3)
    points[~valid, :, :2] = -1.0
    return np.concatenate([points.reshape(n, 15), score], axis=1)  # (N, 16)


def write_retinaface_labels(path: str | Path, records: Sequence[ImageRecord], *, extension: str = ".jpg") -> Path:
    """Write pixel-frame records as a RetinaFace ``label.txt`` with 20-number face lines (atomically), so that
    `read_retinaface_labels` reads back identical records; `extension` is appended to each header's name."""
    path = Path(path)
    for record in records:
        if record.normalized:
            raise ValueError(
                f"{path}: record {record.name!r} ({record.source}) is normalized; the RetinaFace label.txt holds "
                "original-image pixels (scale by the image size first)"
            )
        if not record.name or any(c in record.name for c in "\n\r"):
            raise ValueError(f"{path}: record name {record.name!r} ({record.source}) cannot be written as a header")
    boxes = np.concatenate([r.boxes for r in records] + [np.zeros((0, 4), np.float32)])  # (T, 4)
    fields = np.concatenate([landmark_fields(r) for r in records] + [np.zeros((0, 16), np.float32)])  # (T, 16)
    box_texts = format_boxes_xywh(boxes)
    field_texts = format_float32(fields)
    lines = []
    face = 0
    for record in records:
        lines.append(f"# {record.name}{extension}")
        for _ in range(record.num_boxes):
            lines.append(" ".join(box_texts[face] + field_texts[16 * face : 16 * face + 16]))
            face += 1
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path
