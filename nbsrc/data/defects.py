"""Data defects (`KINDS`), the ``on_error`` policy that decides what happens to them, and the checks of one item
(a record's boxes, an image file, a latent file) that find them. A `DefectLog` applies the policy:

- ``raise`` (training default): the first defect raises `DataError` (a ``ValueError`` whose message starts with
  ``path:line:``). Degenerate boxes are the exception: they are always dropped and counted.
- ``skip``: the defective item (line, box, image or latent) is left out, and `DefectLog.log_summary` logs the
  count per kind with an example of each. Nothing is dropped without being counted.
- ``report`` (``check-data``, `nbsrc.data.validate`): everything is collected for the report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbsrc.data.image_sizes import ImageSizes, read_image_size
from nbsrc.data.readers import select_boxes
from nbsrc.data.records import ImageRecord
from nbsrc.latents import LATENT_DTYPES, count_file_non_finite, read_npy_header

__all__ = [
    "KINDS",
    "DataError",
    "Defect",
    "DefectLog",
    "check_boxes",
    "check_image",
    "check_latent_file",
]

logger = logging.getLogger(__name__)

KINDS = {
    "missing_latent": "labelled image without a latent file",
    "latent_without_labels": "latent file of an image absent from the labels",
    "unreadable_latent": "unreadable or truncated .npy file",
    "bad_shape": "latent of the wrong shape",
    "bad_dtype": "latent of the wrong dtype",
    "non_finite": "NaN/Inf values in a latent",
    "box_outside_frame": "box reaching outside its image",
    "degenerate_box": "box with width or height <= 0 (dropped)",
    "duplicate_name": "image name given more than once",
    "unparseable_line": "label line that cannot be parsed",
    "unknown_frame": "labels whose frame cannot be determined",
    "missing_image": "labelled image without an image file",
    "unreadable_image": "image file that cannot be read",
    "missing_labels": "split without a label file",
}
ON_ERROR = ("raise", "skip", "report")


class DataError(ValueError):
    """A data defect (`defect`) under ``on_error=raise``; ``str(error)`` is ``"path:line: message"``."""

    def __init__(self, defect: Defect, hint: str = "") -> None:
        self.defect = defect
        self.hint = hint
        super().__init__(str(defect) + hint)

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.defect, self.hint))


@dataclass(frozen=True)
class Defect:
    """One defect: its kind (a key of `KINDS`), where (file and 1-based line, 0 when it concerns the whole file)
    and a message saying what was found and what was expected."""

    kind: str
    path: str
    line: int
    message: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line > 0 else self.path

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def split_source(source: str) -> tuple[str, int]:
    """``"path:12"`` -> ``("path", 12)``; a source without a line number gives line 0."""
    path, sep, line = source.rpartition(":")
    if sep and line.isdigit():
        return path, int(line)
    return source, 0


class DefectLog:
    """Collects defects under the policy `on_error` (see the module docstring); `context` names the data in the
    summary (``"train split of /data"``)."""

    def __init__(self, on_error: str = "raise", context: str = "") -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
        self.on_error = on_error
        self.context = context
        self.defects: list[Defect] = []
        self.at_load: Counter = Counter()  # kind -> items left out when they were loaded (`left_out_at_load`)

    def add(self, kind: str, path: str | Path, line: int, message: str, *, fatal: bool = True) -> Defect:
        """Record a defect; under ``raise`` a `fatal` one raises `DataError`."""
        if kind not in KINDS:
            raise ValueError(f"unknown defect kind {kind!r}; expected one of {list(KINDS)}")
        defect = Defect(kind, str(path), int(line), message)
        self.defects.append(defect)
        if self.on_error == "raise" and fatal:
            raise DataError(
                defect, " (set data.on_error=skip to leave such items out, or run check-data for a full report)"
            )
        return defect

    def add_source(self, kind: str, source: str, message: str, *, fatal: bool = True) -> Defect:
        """`add` with a ``"path:line"`` source string."""
        path, line = split_source(source)
        return self.add(kind, path, line, message, fatal=fatal)

    def counts(self) -> dict[str, int]:
        return dict(Counter(d.kind for d in self.defects))

    def of_kind(self, kind: str) -> list[Defect]:
        return [d for d in self.defects if d.kind == kind]

    def __len__(self) -> int:
        return len(self.defects)

    def summary(self) -> str:
        """``"3 degenerate_box, 1 missing_latent"`` plus the first example of each kind."""
        counts = self.counts()
        if not counts:
            return "no defects"
        firsts: dict[str, Defect] = {}
        for d in self.defects:
            firsts.setdefault(d.kind, d)
        lines = [", ".join(f"{n} {kind}" for kind, n in counts.items())]
        lines += [f"  e.g. [{kind}] {firsts[kind]}" for kind in counts]
        return "\n".join(lines)

    def left_out_at_load(self, kind: str, path: str | Path, message: str, name: str) -> Defect:
        """Record an item that failed when it was loaded (under ``skip``: the dataset returns None for it and the
        collate function leaves it out of its batch) and log it with the count so far."""
        defect = self.add(kind, path, 0, message, fatal=False)
        self.at_load[kind] += 1
        total = ", ".join(f"{n} {k}" for k, n in self.at_load.items())
        prefix = f"{self.context}: " if self.context else ""
        logger.warning(
            "%s%s: %r left out of its batch (data.on_error=skip); left out when loaded so far in this process: %s",
            prefix,
            defect,
            name,
            total,
        )
        return defect

    def log_summary(self, log: logging.Logger | None = None) -> None:
        """Log the counts per kind (warning when something was left out)."""
        log = log or logger
        if not self.defects:
            return
        prefix = f"{self.context}: " if self.context else ""
        left_out = {k: n for k, n in self.counts().items() if k != "degenerate_box"}
        level = logging.WARNING if left_out else logging.INFO
        log.log(level, "%sleft out / fixed by kind: %s", prefix, self.summary())


# ---- checks of one item ---------------------------------------------------------------------------------
def check_boxes(record: ImageRecord, log: DefectLog, frame_size: tuple[float, float] | None) -> ImageRecord:
    """`record` without its degenerate boxes (counted) and boxes reaching outside the image (``box_outside_frame``).

    `frame_size` is the ``(width, height)`` the labels are in (``(1, 1)`` for normalized labels; None skips the
    extent check). Boxes overflowing by at most ``max(2 px, 1 %)`` are kept (datasets clip them to the frame).
    """
    if record.num_boxes == 0:
        return record
    b = record.boxes.astype(np.float64)
    degenerate = ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    for i in np.flatnonzero(degenerate):
        log.add_source(
            "degenerate_box",
            record.box_source(i),
            f"face {i} of {record.name!r}: degenerate box {_fmt_box(b[i])} (w={b[i, 2] - b[i, 0]:g}, "
            f"h={b[i, 3] - b[i, 1]:g}; expected w > 0 and h > 0)",
            fatal=False,
        )
    keep = ~degenerate
    if frame_size is not None:
        w, h = float(frame_size[0]), float(frame_size[1])
        tol_w, tol_h = (0.01 * w, 0.01 * h) if record.normalized else (max(2.0, 0.01 * w), max(2.0, 0.01 * h))
        outside = (b[:, 0] < -tol_w) | (b[:, 1] < -tol_h) | (b[:, 2] > w + tol_w) | (b[:, 3] > h + tol_h)
        outside &= keep
        unit = "normalized image" if record.normalized else f"{w:g}x{h:g} image"
        for i in np.flatnonzero(outside):
            log.add_source(
                "box_outside_frame",
                record.box_source(i),
                f"face {i} of {record.name!r}: box {_fmt_box(b[i])} reaches outside the {unit} "
                "(wrong label frame or image size?)",
            )
        keep &= ~outside
    if keep.all():
        return record
    return select_boxes(record, keep)


def _fmt_box(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in np.round(box, 2)) + ")"


def check_latent_file(
    path: str | Path,
    log: DefectLog,
    *,
    channels: int = 256,
    spatial: tuple[int, int] | None = None,
    values: bool = False,
) -> tuple[int, int] | None:
    """``(h, w)`` of a good latent file, None after a defect: readable, complete, shape ``[C, h, w]`` or
    ``[1, C, h, w]`` (``C = channels``, ``(h, w) = spatial`` unless None), float dtype and, with `values`, no
    NaN/Inf (reads the data)."""
    path = Path(path)
    try:
        header = read_npy_header(path)
    except (ValueError, OSError) as exc:
        log.add("unreadable_latent", path, 0, f"unreadable .npy file: {exc}")
        return None
    shape, dtype = header.shape, header.dtype
    if dtype.hasobject or dtype.kind != "f" or dtype.type not in LATENT_DTYPES:
        log.add("bad_dtype", path, 0, f"dtype {dtype} (expected float16 or float32)")
        return None
    if header.present < header.promised:
        log.add(
            "unreadable_latent",
            path,
            0,
            f"truncated .npy file: {header.present} data bytes, the header promises {header.promised} "
            f"({list(shape)} {dtype})",
        )
        return None
    core = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(core) != 3 or core[0] != channels or min(core) < 1:
        log.add("bad_shape", path, 0, f"shape {list(shape)} (expected [{channels}, h, w] or [1, {channels}, h, w])")
        return None
    hw = (int(core[1]), int(core[2]))
    if spatial is not None and hw != tuple(spatial):
        log.add(
            "bad_shape",
            path,
            0,
            f"shape {list(shape)}: spatial size {hw[0]}x{hw[1]} differs from the expected {spatial[0]}x{spatial[1]}",
        )
        return None
    if values:
        bad = count_file_non_finite(path, header)
        if bad:
            log.add("non_finite", path, 0, f"{bad} NaN/Inf values of {header.count}")
            return None
    return hw


def check_image(record: ImageRecord, sizes: ImageSizes, log: DefectLog) -> tuple[Path, tuple[int, int]] | None:
    """The image file of `record` in the images folder of `sizes` and its ``(width, height)`` from the header;
    ``missing_image`` when the folder has no file for it, ``unreadable_image`` when the file gives no size (None
    after either)."""
    path = sizes.image_path(record.name)
    if path is None:
        folder = sizes.images_dir
        log.add_source(
            "missing_image",
            record.source,
            f"no image file for {record.name!r} under {folder} (expected {folder / record.name}.jpg)",
        )
        return None
    try:
        size = read_image_size(path)
    except ValueError as exc:
        log.add("unreadable_image", path, 0, str(exc).split(": ", 1)[-1])
        return None
    return path, size
