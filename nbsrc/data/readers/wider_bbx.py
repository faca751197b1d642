"""Official WIDER FACE ``wider_face_{train,val}_bbx_gt.txt``.

Layout, repeated per image::

    0--Parade/0_Parade_marchingband_1_849.jpg
    1
    449 330 122 149 0 0 0 0 0 0

- the image path (the record name drops the extension: ``0--Parade/0_Parade_marchingband_1_849``);
- the number of faces N;
- N lines of ``x y w h blur expression illumination invalid occlusion pose`` (10 integers, original-image
  pixels);
- when N = 0, **one dummy line of ten zeros** follows; it is skipped (it is not a face and not an image name).

Boxes become xyxy (``x2 = x + w``, `nbsrc.boxes.xywh_to_xyxy`); the six attributes go to
``record.attributes`` (``int64 [N]`` each); these files carry no landmarks (``landmarks_valid`` all False).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import (
    WIDER_ATTRIBUTES,
    LabelParseError,
    handle_error,
    is_number,
    iter_lines,
    parse_numbers,
    read_text,
    xywh_array_to_xyxy,
)
from nbsrc.data.readers.retinaface_txt import parse_header
from nbsrc.data.records import FACE, ImageRecord

__all__ = ["read_wider_bbx_gt"]

logger = logging.getLogger(__name__)

FACE_EXPECTED = "10 numbers (x y w h blur expression illumination invalid occlusion pose)"


def read_wider_bbx_gt(path: str | Path, *, errors: list[LabelParseError] | None = None) -> list[ImageRecord]:
    """Read an official ``wider_face_*_bbx_gt.txt``: one record per image in file order.

    `errors`, when given, collects bad face lines and unsafe names (that face or image skipped); defects of the
    structure (count, names, dummy line) always raise, since the file cannot be followed past them.

    Raises:
        FileNotFoundError: `path` does not exist.
        LabelParseError: naming ``file:line``: a bad count, face line or dummy line, fewer or more face lines
            than the count, an unsafe image name.
    """
    path = Path(path)
    text = read_text(path, "WIDER bbx_gt")
    reader = _BbxReader(path, list(iter_lines(text)), errors)
    while reader.i < len(reader.lines):
        reader.read_image()
    records = _records(reader.images, reader.rows, reader.row_lines)
    logger.debug("%s: %d images, %d faces", path, len(records), len(reader.rows))
    return records


class _BbxReader:
    """Follows the lines of a bbx_gt file image by image (layout in the module docstring), collecting the kept
    images (``(name, source, number of faces)``) and the 10 values and line of each of their faces."""

    def __init__(self, path: Path, lines: list[tuple[int, str]], errors: list[LabelParseError] | None) -> None:
        self.path, self.lines, self.errors = path, lines, errors
        self.i = 0  # index in `lines` of the next line to read
        self.images: list[tuple[str, str, int]] = []
        self.rows: list[list[float]] = []
        self.row_lines: list[int] = []  # 1-based line of each row

    def read_image(self) -> None:
        """Read the image whose name is the next line: its count, then its dummy line or its face lines."""
        number, line = self.lines[self.i]
        tokens = line.split()
        if all(is_number(t) for t in tokens):
            images = self.images
            previous = f" (image {images[-1][0]!r} has {images[-1][2]} face(s))" if images else ""
            raise LabelParseError(
                self.path, number, f"expected an image name, got a line of {len(tokens)} number(s){previous}: {line!r}"
            )
        name = parse_header(
            line, self.path, number, "an image path such as '0--Parade/0_Parade_marchingband_1_849.jpg'"
        )
        rejected = isinstance(name, LabelParseError)
        if rejected:  # its count and face lines are still followed, and the faces reported
            handle_error(name, self.errors)
        count_number, count = self._count(number, line)
        self.i += 2
        if count == 0:
            self._skip_dummy(line)
            kept = 0
        else:
            kept = self._faces(line, count, count_number, rejected_at=number if rejected else None)
        if not rejected:
            self.images.append((name, f"{self.path}:{number}", kept))

    def _count(self, number: int, line: str) -> tuple[int, int]:
        """``(line number, value)`` of the face count after the image name `line`."""
        if self.i + 1 >= len(self.lines):
            raise LabelParseError(self.path, number, f"image {line!r} is not followed by its face count (end of file)")
        count_number, count_line = self.lines[self.i + 1]
        try:
            count = int(count_line)
        except ValueError:
            count = -1
        if count < 0:
            raise LabelParseError(
                self.path, count_number, f"expected the face count of {line!r} (an integer >= 0), got {count_line!r}"
            )
        return count_number, count

    def _skip_dummy(self, line: str) -> None:
        """Skip the dummy line of zeros the official files put after a zero count (when present)."""
        if self.i < len(self.lines) and all(is_number(t) for t in self.lines[self.i][1].split()):
            dummy_number, dummy = self.lines[self.i]
            values = [float(t) for t in dummy.split()]
            if any(v != 0 for v in values):
                raise LabelParseError(
                    self.path,
                    dummy_number,
                    f"image {line!r} has 0 faces, so this line must be the dummy line of zeros; got {dummy!r}",
                )
            self.i += 1

    def _faces(self, line: str, count: int, count_number: int, rejected_at: int | None) -> int:
        """Read the `count` face lines of the image `line`; returns the number kept (none when its name was
        rejected at line `rejected_at`: each face is then reported)."""
        kept = 0
        for k in range(count):
            if self.i >= len(self.lines):
                raise LabelParseError(
                    self.path, count_number, f"image {line!r} declares {count} faces but the file ends after {k}"
                )
            face_number, face_line = self.lines[self.i]
            self.i += 1
            values = self._face_values(face_number, face_line, line, (count, count_number, k))
            if values is None:
                continue
            if rejected_at is not None:
                handle_error(
                    LabelParseError(
                        self.path, face_number, f"face line of the rejected image name at line {rejected_at}"
                    ),
                    self.errors,
                )
                continue
            self.rows.append(values)
            self.row_lines.append(face_number)
            kept += 1
        return kept

    def _face_values(
        self, face_number: int, face_line: str, line: str, progress: tuple[int, int, int]
    ) -> list[float] | None:
        """The 10 values of face line `face_line` of the image `line`, or None when it is reported as bad; raises
        when it is not a face line at all. `progress` is ``(count, line of the count, faces read before)``."""
        values = parse_numbers(face_line, self.path, face_number, (10,), FACE_EXPECTED)
        if isinstance(values, LabelParseError):
            tokens = face_line.split()
            if len(tokens) != 10 and not all(is_number(t) for t in tokens):
                count, count_number, k = progress
                raise LabelParseError(
                    self.path,
                    face_number,
                    f"image {line!r} declares {count} faces (line {count_number}) but only {k} face line(s) "
                    f"precede {face_line!r}",
                )
            handle_error(values, self.errors)
            return None
        if any(not v.is_integer() for v in values[4:]):
            handle_error(
                LabelParseError(
                    self.path, face_number, f"the six attributes must be integers ({FACE_EXPECTED}): {face_line!r}"
                ),
                self.errors,
            )
            return None
        return values


def _records(images: list[tuple[str, str, int]], rows: list[list[float]], row_lines: list[int]) -> list[ImageRecord]:
    """One record per image ``(name, source, number of faces)``; `rows` hold their faces' 10 values in order."""
    table = np.asarray(rows, np.float64).reshape(-1, 10)  # (T, 10)
    xyxy = xywh_array_to_xyxy(table[:, :4])  # (T, 4)
    attributes = table[:, 4:].astype(np.int64)  # (T, 6)
    records = []
    start = 0
    for name, source, count in images:
        stop = start + count
        records.append(
            ImageRecord(
                name=name,
                boxes=xyxy[start:stop],
                labels=np.full(count, FACE, np.int64),
                attributes={attr: attributes[start:stop, k].copy() for k, attr in enumerate(WIDER_ATTRIBUTES)},
                source=source,
                box_lines=np.asarray(row_lines[start:stop], np.int64),
            )
        )
        start = stop
    return records
