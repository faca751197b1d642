"""Helpers shared by the label readers: reading text and number lines with clear errors, exact float writing,
selecting boxes of a record (box conventions: `nbsrc.boxes`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from nbsrc.data.records import ImageRecord

__all__ = [
    "IMAGE_EXTENSIONS",
    "strip_image_extension",
    "LabelParseError",
    "WIDER_ATTRIBUTES",
    "drop_degenerate",
    "format_boxes_xywh",
    "format_float32",
    "handle_error",
    "is_number",
    "iter_lines",
    "parse_numbers",
    "read_text",
    "select_boxes",
    "unsafe_name_reason",
    "xywh_array_to_xyxy",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# The six WIDER attribute columns after ``x y w h`` in ``wider_face_*_bbx_gt.txt``, in file order.
WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


class LabelParseError(ValueError):
    """An unparseable line of a label file; the message starts with ``"<path>:<line>: "`` (`line` is 1-based,
    0 when the problem concerns the whole file)."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = int(line)
        self.reason = reason
        where = f"{self.path}:{self.line}" if self.line > 0 else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.line, self.reason))


def strip_image_extension(name: str) -> str:
    """``"0--Parade/x.jpg"`` -> ``"0--Parade/x"`` (only known image extensions are removed)."""
    name = name.strip().replace("\\", "/").lstrip("/")
    stem, dot, ext = name.rpartition(".")
    if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        return stem
    return name


def unsafe_name_reason(name: str) -> str | None:
    """Why image name `name` cannot serve as a path inside an output folder (an absolute path or a ``..``
    component, with ``/`` or ``\\`` as separators), or None when it can."""
    text = str(name).replace("\\", "/")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":" and text[0].isalpha()):
        return "is an absolute path"
    if ".." in text.split("/"):
        return "has a '..' component"
    return None


def handle_error(error: LabelParseError, errors: list[LabelParseError] | None) -> None:
    """Raise `error`, or append it to `errors` when the caller collects them (the line is then skipped)."""
    if errors is None:
        raise error
    errors.append(error)


def read_text(path: str | Path, what: str) -> str:
    """The text of a label file, with `FileNotFoundError` / `ValueError` naming the file and the format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a {what} file") from None


def is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line_number, stripped_line)`` for every non-blank line (1-based numbers)."""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _shorten(line: str, limit: int = 80) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_numbers(
    line: str, path: str | Path, number: int, counts: Sequence[int], expected: str
) -> list[float] | LabelParseError:
    """Parse a whitespace-separated line of finite numbers whose count is one of `counts`; `expected` describes
    the accepted layouts for the message. A `LabelParseError` is returned, not raised, so that callers choose
    raise or collect."""
    tokens = (line.replace(",", " ") if "," in line else line).split()
    try:  # fast path: every token a finite number (the per-token loop below words the error otherwise)
        values = list(map(float, tokens))
    except ValueError:
        values = None
    if values is not None and all(map(math.isfinite, values)):
        if len(values) not in counts:
            return LabelParseError(path, number, f"expected {expected}, got {len(values)} values: {_shorten(line)!r}")
        return values
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            return LabelParseError(path, number, f"{token!r} is not a number; expected {expected}: {_shorten(line)!r}")
        if not math.isfinite(value):
            return LabelParseError(path, number, f"non-finite value {token!r}; expected {expected}: {_shorten(line)!r}")
        values.append(value)
    if len(values) not in counts:
        return LabelParseError(path, number, f"expected {expected}, got {len(values)} values: {_shorten(line)!r}")
    return values


def xywh_array_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xywh as read from a file -> ``float32 [N, 4]`` xyxy, computed in float64 and rounded once."""
    # torch and nbsrc.boxes (which imports it) load on first use: importing the readers stays free of torch
    import torch

    from nbsrc.boxes import xywh_to_xyxy

    xywh = np.ascontiguousarray(np.asarray(xywh, dtype=np.float64).reshape(-1, 4))  # (N, 4)
    return xywh_to_xyxy(torch.from_numpy(xywh)).numpy().astype(np.float32)


def format_boxes_xywh(xyxy: np.ndarray) -> list[list[str]]:
    """``[N, 4]`` xyxy -> per box the four strings ``x y w h`` that `xywh_array_to_xyxy` reads back to exactly
    the float32 `xyxy` (so files written by our writers read back to identical records).

    ``x`` and ``y`` are the shortest float32 strings; ``w`` and ``h`` the shortest float32 string of the size
    when that adds back exactly, else the float64 difference to the parsed corner (exact except for
    degenerate boxes whose far corner is ~1e-9 times the near one).
    """
    import torch

    from nbsrc.boxes import xyxy_to_xywh

    xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)  # (N, 4)
    n = len(xyxy)
    corner_text = format_float32(xyxy[:, :2])
    corner = np.asarray([float(t) for t in corner_text], np.float64).reshape(n, 2)  # (N, 2) as read back
    size64 = xyxy_to_xywh(torch.from_numpy(xyxy.astype(np.float64))).numpy()[:, 2:]  # (N, 2)
    size_text = format_float32(size64.astype(np.float32))
    size = np.asarray([float(t) for t in size_text], np.float64).reshape(n, 2)  # (N, 2)
    wrong = ((corner + size).astype(np.float32) != xyxy[:, 2:]) & np.isfinite(xyxy[:, 2:])  # (N, 2)
    exact = xyxy[:, 2:].astype(np.float64) - corner  # (N, 2)
    exact_flat = exact.reshape(-1)  # (2N,) in size_text order
    for flat_index in np.flatnonzero(wrong.reshape(-1)):  # (2N,)
        size_text[flat_index] = repr(float(exact_flat[flat_index]))
    return [corner_text[2 * i : 2 * i + 2] + size_text[2 * i : 2 * i + 2] for i in range(n)]


def format_float32(values: np.ndarray) -> list[str]:
    """Shortest decimal strings that read back (``float`` then float32) to exactly the float32 `values`."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)  # (K,)
    integral = np.isfinite(flat) & (np.abs(flat) < 2**24) & (flat == np.rint(flat))
    out = [str(v) for v in np.where(integral, flat, 0).astype(np.int64).tolist()]
    for i in np.flatnonzero(~integral).tolist():
        value = flat[i]
        text = np.format_float_positional(value, unique=True, trim="-")
        if np.float32(float(text)) != value and not np.isnan(value):
            text = repr(float(value))  # exact: every float32 is a float64
        out[i] = text
    return out


def select_boxes(record: ImageRecord, keep: np.ndarray) -> ImageRecord:
    """A copy of `record` with only the boxes `keep` (``bool [N]`` or indices) selects, in every per-box field."""
    n = record.num_boxes
    attributes = {
        key: (np.asarray(value)[keep] if np.ndim(value) >= 1 and len(value) == n else value)
        for key, value in record.attributes.items()
    }
    return replace(
        record,
        boxes=record.boxes[keep],
        landmarks=record.landmarks[keep],
        landmarks_valid=record.landmarks_valid[keep],
        labels=record.labels[keep],
        attributes=attributes,
        box_lines=record.box_lines[keep] if record.box_lines is not None else None,
    )


def drop_degenerate(record: ImageRecord) -> tuple[ImageRecord, int]:
    """Drop boxes with width <= 0 or height <= 0, which readers keep; ``(record, number_dropped)``, the same
    record when nothing is dropped."""
    boxes = record.boxes
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (N,)
    dropped = int(len(keep) - keep.sum())
    if dropped == 0:
        return record, 0
    return select_boxes(record, keep), dropped
