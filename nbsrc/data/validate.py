"""Data validation: every defect of a dataset, reported with file and line.

Defect kinds (`KINDS`): a labelled image without a latent, a latent without labels, an unreadable or truncated
``.npy``, a latent of the wrong shape or dtype, NaN/Inf values, a box outside its image, a degenerate box
(w <= 0 or h <= 0), a duplicated image name, an unparseable label line, labels whose frame cannot be determined
(`nbsrc.data.label_frame`), a labelled image without an image file, an unreadable image.

A `DefectLog` applies the policy ``on_error``:

- ``raise`` (training default): the first defect raises `DataError` (a ``ValueError`` whose message starts with
  ``path:line:``). Degenerate boxes are the exception: they are always dropped and counted.
- ``skip``: the defective item (line, box, image or latent) is left out, and `DefectLog.log_summary` logs the
  count per kind with an example of each. Nothing is dropped without being counted.
- ``report`` (``check-data``): everything is collected for the report.

`validate_split` / `validate_dataset` walk a dataset and return `ValidationReport` (used by
``python -m nbsrc check-data ROOT``); the datasets call the same checks while they index a split.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tokenize import TokenError

import numpy as np

from nbsrc.config import Config
from nbsrc.data.image_sizes import ImageSizes, read_image_size, split_sizes
from nbsrc.data.label_frame import LabelFrame, LabelFrameError, LabelFrameReport, frame_verdict
from nbsrc.data.layout import (
    LatentIndex,
    basename_of,
    duplicated,
    find_labels,
    list_splits,
    read_split_labels,
    scan_latents,
)
from nbsrc.data.records import ImageRecord

__all__ = [
    "KINDS",
    "DataError",
    "Defect",
    "DefectLog",
    "ValidationReport",
    "check_boxes",
    "check_label_frame",
    "check_latent_file",
    "read_labels_checked",
    "validate_dataset",
    "validate_split",
    "validation_settings",
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
LATENT_DTYPES = (np.float16, np.float32, np.float64)


class DataError(ValueError):
    """A data defect under ``on_error=raise``; ``str(error)`` is ``"path:line: message"``.

    Attributes:
        defect: the `Defect`.
    """

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
    """Collects defects under a policy (see the module docstring).

    Args:
        on_error: ``raise`` | ``skip`` | ``report``.
        context: a few words for the summary (``"train split of /data"``).
    """

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


# ---- checks shared by the datasets and validate_split ---------------------------------------------------
def read_labels_checked(path: str | Path, log: DefectLog) -> list[ImageRecord]:
    """Read a label file, turning unparseable lines into ``unparseable_line`` defects (skipped lines) and
    repeated image names into ``duplicate_name`` defects (later repeats dropped; 2-class repeats merged)."""
    from nbsrc.data.readers import LabelParseError

    errors: list[LabelParseError] = []
    try:
        records = read_split_labels(path, errors=errors)
    except LabelParseError as exc:  # structural errors the reader cannot follow past
        errors.append(exc)
        records = []
    for error in errors:
        log.add("unparseable_line", error.path, error.line, error.reason)
    merged = getattr(records, "duplicates", None) or {}
    for name, sources in merged.items():
        for source in sources[1:]:
            log.add_source(
                "duplicate_name",
                source,
                f"image {name!r} has another header at {sources[0]}; boxes merged",
                fatal=False,
            )
    records = list(records)
    repeats = duplicated([r.name for r in records])
    if repeats:
        first_seen: dict[str, str] = {}
        kept = []
        for record in records:
            if record.name in first_seen:
                log.add_source(
                    "duplicate_name",
                    record.source,
                    f"image {record.name!r} already listed at {first_seen[record.name]}; this entry is left out",
                )
                continue
            first_seen[record.name] = record.source
            kept.append(record)
        records = kept
    return records


def check_duplicate_basenames(records: Sequence[ImageRecord], log: DefectLog) -> list[ImageRecord]:
    """Latents are keyed by basename: two events holding the same basename are ambiguous (later ones left out)."""
    seen: dict[str, ImageRecord] = {}
    kept = []
    for record in records:
        base = basename_of(record.name)
        if base in seen and seen[base].name != record.name:
            log.add_source(
                "duplicate_name",
                record.source,
                f"basename {base!r} of {record.name!r} is also used by {seen[base].name!r} ({seen[base].source}); "
                "latents are keyed by basename, so this entry is left out",
            )
            continue
        seen.setdefault(base, record)
        kept.append(record)
    return kept


def check_boxes(record: ImageRecord, log: DefectLog, frame_size: tuple[float, float] | None) -> ImageRecord:
    """Drop degenerate boxes (counted) and boxes reaching outside the image (``box_outside_frame``).

    Args:
        record: labels as read.
        log: the defect log.
        frame_size: ``(width, height)`` of the frame the labels are in (the original image, the label frame, or
            ``(1, 1)`` for normalized labels); None skips the extent check.
    Returns:
        The record without the bad boxes. Boxes overflowing by at most ``max(2 px, 1 %)`` are kept (datasets clip
        them to the frame). Defects name the box's own ``file:line`` (`ImageRecord.box_source`) when the reader
        kept it, else the image's header line.
    """
    from nbsrc.data.readers import select_boxes

    if record.num_boxes == 0:
        return record
    b = record.boxes.astype(np.float64)
    keep = np.ones(len(b), bool)
    degenerate = ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    for i in np.flatnonzero(degenerate):
        log.add_source(
            "degenerate_box",
            record.box_source(i),
            f"face {i} of {record.name!r}: degenerate box {_fmt_box(b[i])} (w={b[i, 2] - b[i, 0]:g}, "
            f"h={b[i, 3] - b[i, 1]:g}; expected w > 0 and h > 0)",
            fatal=False,
        )
    keep &= ~degenerate
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


NPY_MAGIC = b"\x93NUMPY"
NPY_HEAD_BYTES = 256  # read at once: the whole header of a plain array (numpy pads it to 64 or 128 bytes)
_NPY_DICT = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (?:False|True), 'shape': \(([\d, ]*)\), *\} *\n?"
)
_NPY_DTYPES: dict[str, np.dtype] = {}


def _plain_npy_header(head: bytes) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """``(shape, dtype, data_offset)`` of a ``.npy`` file whose first bytes are `head`, for the header numpy
    writes for plain arrays; None for anything else (then numpy's own reader decides)."""
    if len(head) < 12 or not head.startswith(NPY_MAGIC) or head[6] not in (1, 2, 3):
        return None
    start = 10 if head[6] == 1 else 12
    offset = start + int.from_bytes(head[8:start], "little")
    if offset > len(head):
        return None
    match = _NPY_DICT.fullmatch(head[start:offset].decode("latin1"))
    if match is None:
        return None
    descr, dims = match.groups()
    dtype = _NPY_DTYPES.get(descr)
    if dtype is None:
        try:
            dtype = _NPY_DTYPES.setdefault(descr, np.dtype(descr))
        except TypeError:
            return None
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return shape, dtype, offset


def read_npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """``(shape, dtype, data_offset, file_size)`` of a ``.npy`` file without reading its data.

    One read of the first bytes; headers other than numpy's plain-array form go through `numpy.lib.format`.

    Raises:
        ValueError: not a ``.npy`` file (bad magic or header).
    """
    from numpy.lib import format as npy_format

    with open(path, "rb") as fh:
        plain = _plain_npy_header(fh.read(NPY_HEAD_BYTES))
        if plain is not None:
            return (*plain, os.fstat(fh.fileno()).st_size)
        fh.seek(0)
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
        except (ValueError, OSError, EOFError, SyntaxError, TokenError) as exc:  # TokenError: a cut header
            raise ValueError(f"not a .npy file ({exc})") from None
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
    return tuple(int(s) for s in shape), np.dtype(dtype), offset, size


def check_latent_file(
    path: str | Path,
    log: DefectLog,
    *,
    channels: int = 256,
    spatial: tuple[int, int] | None = None,
    values: bool = False,
) -> tuple[int, int] | None:
    """Check one latent file: readable, complete, shape ``[C, h, w]`` / ``[1, C, h, w]``, float dtype and, with
    `values`, no NaN/Inf (reads the data).

    Args:
        path: the ``.npy`` file.
        log: the defect log.
        channels: expected ``C``.
        spatial: expected ``(h, w)``, or None for any.
        values: also read the values and check they are finite.
    Returns:
        ``(h, w)`` of a good latent, None after a defect (under ``skip`` / ``report``).
    """
    path = Path(path)
    try:
        shape, dtype, offset, size = read_npy_header(path)
    except (ValueError, OSError) as exc:
        log.add("unreadable_latent", path, 0, f"unreadable .npy file: {exc}")
        return None
    if dtype.hasobject or dtype.kind != "f" or dtype.type not in LATENT_DTYPES:
        log.add("bad_dtype", path, 0, f"dtype {dtype} (expected float16 or float32)")
        return None
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - offset < expected_bytes:
        log.add(
            "unreadable_latent",
            path,
            0,
            f"truncated .npy file: {size - offset} data bytes, the header promises {expected_bytes} ({list(shape)} {dtype})",
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
        count = int(np.prod(shape, dtype=np.int64))
        with open(path, "rb") as fh:
            fh.seek(offset)
            array = np.frombuffer(fh.read(expected_bytes), dtype=dtype, count=count)  # (count,)
        bad = count_non_finite(array)
        if bad:
            log.add("non_finite", path, 0, f"{bad} NaN/Inf values of {count}")
            return None
    return hw


def count_non_finite(array: np.ndarray) -> int:
    """Number of NaN/Inf values of a float array. Native float16 is tested on its bits (a value is finite when
    its magnitude bits are below the all-ones exponent ``0x7C00``), ~10x faster than ``np.isfinite``."""
    if array.dtype == np.float16 and array.dtype.isnative:
        magnitude = np.bitwise_and(array.view(np.uint16), np.uint16(0x7FFF))
        if not magnitude.size or magnitude.max() < 0x7C00:
            return 0
    finite = np.isfinite(array)
    return int(finite.size - np.count_nonzero(finite))


# ---- whole splits -----------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Defects of one or more splits.

    Attributes:
        defects: every `Defect` found, in walk order.
        splits: split name -> summary numbers (images, boxes, latents, ...).
        frames: split name -> `LabelFrameReport`.
    """

    defects: list[Defect] = field(default_factory=list)
    splits: dict[str, dict] = field(default_factory=dict)
    frames: dict[str, LabelFrameReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Defect]:
        """Defects that stop training under ``on_error=raise`` (all but dropped degenerate boxes and merged
        2-class headers)."""
        return [d for d in self.defects if d.kind != "degenerate_box" and "boxes merged" not in d.message]

    def counts(self) -> dict[str, int]:
        return dict(Counter(d.kind for d in self.defects))

    def to_text(self, max_per_kind: int | None = 20) -> str:
        """Every defect as ``path:line: [kind] message`` (at most `max_per_kind` per kind), then the counts."""
        lines = []
        shown: Counter = Counter()
        for d in self.defects:
            shown[d.kind] += 1
            if max_per_kind is None or shown[d.kind] <= max_per_kind:
                lines.append(f"{d.where}: [{d.kind}] {d.message}")
        for kind, n in shown.items():
            if max_per_kind is not None and n > max_per_kind:
                lines.append(f"... {n - max_per_kind} more [{kind}] not shown")
        for split, info in self.splits.items():
            lines.append(f"{split}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
        for split, frame in self.frames.items():
            lines.append(f"label frame of {split}: {frame.verdict} - {frame.message}")
        counts = self.counts()
        if counts:
            lines.append("defects: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        else:
            lines.append("no defects")
        return "\n".join(lines)


def validate_split(
    split_dir: str | Path,
    *,
    labels: str | Path | None = None,
    latent_suffix: str | None = "latent_75.npy",
    channels: int = 256,
    spatial: tuple[int, int] | None = None,
    latent_stride: int = 16,
    label_frame: int | None = None,
    resize_policy: str = "stretch",
    sizes_csv: str | Path | None = None,
    images_root: str | Path | None = None,
    sizes_cache: str | Path | None = None,
    check_values: bool = True,
    check_images: bool = True,
    log: DefectLog | None = None,
) -> tuple[DefectLog, dict, LabelFrameReport]:
    """Walk one split and collect its defects.

    Args:
        split_dir: the split folder.
        labels: label file or folder (default: `nbsrc.data.layout.find_labels`).
        latent_suffix: rate file of the nested layout; None checks every rate.
        channels: latent channels.
        spatial: expected latent ``(h, w)`` (None: any, but all equal to the first good one).
        latent_stride: network-frame pixels per latent cell.
        label_frame: labels already in this square frame (None: original pixels).
        resize_policy: ``stretch`` | ``letterbox``.
        sizes_csv: sizes CSV (default: ``image_sizes.csv`` in the split or the root when present).
        images_root: WIDER FACE image tree for the original sizes (`nbsrc.data.image_sizes.split_sizes`).
        sizes_cache: folder caching the sizes read from `images_root`.
        check_values: read every latent and check for NaN/Inf (slow on big data).
        check_images: check that each labelled image exists (when the split has ``images/``).
        log: defect log to add to (default: a new ``report`` log).
    Returns:
        ``(log, summary_numbers, label_frame_report)``.
    """
    split_dir = Path(split_dir)
    log = log or DefectLog("report", context=str(split_dir))
    label_path = Path(labels) if labels is not None else find_labels(split_dir)
    records = read_labels_checked(label_path, log)
    found = split_sizes(split_dir, sizes_csv=sizes_csv, images_root=images_root, cache_dir=sizes_cache)
    sizes = found.sizes if found.sizes is not None else ImageSizes()
    images_dir = sizes.images_dir
    frame_report = frame_verdict(records, sizes if sizes else None, split=split_dir.name, label_file=str(label_path))
    frame = LabelFrame(sizes=sizes, policy=resize_policy, label_frame=label_frame)
    latent_dir = split_dir / "latent"
    index = scan_latents(latent_dir, suffix=latent_suffix) if latent_dir.is_dir() else None
    if index is not None:
        records = check_duplicate_basenames(records, log)

    info = {"images": len(records), "boxes": int(sum(r.num_boxes for r in records))}
    for record in records:
        size = frame_extent(record, frame)
        check_boxes(record, log, size)
        if size is None and record.num_boxes:
            net = (640, 640) if spatial is None else (spatial[1] * latent_stride, spatial[0] * latent_stride)
            try:
                frame.to_net(record, net)
            except LabelFrameError:
                log.add_source(
                    "unknown_frame",
                    record.source,
                    f"original size of {record.name!r} unknown, so its labels cannot be mapped into the "
                    f"{net[0]}x{net[1]} frame ({found.source}); give the WIDER FACE images (images_root), a sizes "
                    f"CSV (name,width,height), or label_frame={net[0]} if the labels are already in that frame",
                )
        if check_images and images_dir is not None:
            image_path = sizes.image_path(record.name)
            if image_path is None:
                log.add_source(
                    "missing_image",
                    record.source,
                    f"no image file for {record.name!r} under {images_dir} (expected {images_dir / record.name}.jpg)",
                )
            else:
                try:
                    read_image_size(image_path)
                except ValueError as exc:
                    log.add("unreadable_image", image_path, 0, str(exc).split(": ", 1)[-1])
    if index is not None:
        matched = match_latents(records, index, log, latent_suffix=latent_suffix)
        info["latents"] = sum(len(v) for v in index.files.values())
        info["layout"] = index.layout
        first_hw = spatial
        for _, files in matched:
            for path in files.values():
                hw = check_latent_file(path, log, channels=channels, spatial=first_hw, values=check_values)
                if hw is not None and first_hw is None:
                    first_hw = hw
        info["latent_hw"] = f"{first_hw[0]}x{first_hw[1]}" if first_hw else "none"
    return log, info, frame_report


def frame_extent(record: ImageRecord, frame: LabelFrame) -> tuple[float, float] | None:
    """``(width, height)`` of the frame the record's labels are in, or None when unknown."""
    if record.normalized:
        return (1.0, 1.0)
    if frame.label_frame is not None:
        return (float(frame.label_frame), float(frame.label_frame))
    size = frame.original_size(record)
    return (float(size[0]), float(size[1])) if size is not None else None


def match_latents(
    records: Sequence[ImageRecord], index: LatentIndex, log: DefectLog, *, latent_suffix: str | None = None
) -> list[tuple[ImageRecord, dict[int | None, Path]]]:
    """Pair each record with its latent files; ``missing_latent`` for labelled images without one and
    ``latent_without_labels`` for latents nobody labels (both left out)."""
    matched = []
    used: set[str] = set()
    missing_rate = set(index.missing_rate)
    for record in records:
        base = basename_of(record.name)
        files = index.lookup(base)
        if not files:
            if base in missing_rate:
                message = f"{record.name!r} has a latent folder {index.folder / base} but no {latent_suffix}"
            elif index.layout == "flat":
                message = f"no latent for {record.name!r} (expected {index.folder / base}.npy)"
            else:
                expected = index.folder / base / (latent_suffix or "latent_<rate>.npy")
                message = f"no latent for {record.name!r} (expected {expected})"
            log.add_source("missing_latent", record.source, message)
            continue
        used.add(base if base in index.files else f"latent_{base}")
        matched.append((record, files))
    for key, files in index.files.items():
        if key not in used:
            path = next(iter(files.values()))
            log.add("latent_without_labels", path, 0, f"latent of {key!r}, which has no entry in the labels")
    return matched


def validation_settings(cfg: Config) -> dict:
    """`validate_split` keyword arguments from a config: the latents' rate, channels and stride, and where the
    original sizes come from (``data.sizes_csv``, ``data.images_root``, ``data.label_frame``)."""
    d, m = cfg.data, cfg.model
    return {
        "latent_suffix": d.latent_suffix,
        "channels": m.latent_channels,
        "latent_stride": m.latent_stride,
        "label_frame": d.label_frame,
        "resize_policy": d.resize_policy,
        "sizes_csv": d.sizes_csv,
        "images_root": d.images_root,
        "sizes_cache": d.cache_dir,
    }


def validate_dataset(
    root: str | Path,
    splits: Iterable[str] | None = None,
    **kwargs,
) -> ValidationReport:
    """Validate every split of a dataset (`validate_split` arguments in `kwargs`); report everything.

    Args:
        root: dataset root with split folders, or one split folder.
        splits: split names (default: all found).
    Returns:
        `ValidationReport`.
    """
    report = ValidationReport()
    for name, folder in list_splits(root, splits):
        log = DefectLog("report", context=f"{name} split")
        try:
            log, info, frame_report = validate_split(folder, log=log, **kwargs)
        except FileNotFoundError as exc:  # e.g. no label file at all
            log.add("missing_labels", folder, 0, str(exc))
            info, frame_report = {}, None
        report.defects.extend(log.defects)
        report.splits[name] = info
        if frame_report is not None:
            report.frames[name] = frame_report
    return report


def check_label_frame(
    root: str | Path,
    splits: Iterable[str] | None = None,
    *,
    sizes_csv: str | Path | None = None,
    images_root: str | Path | None = None,
    sizes_cache: str | Path | None = None,
    net_side: int = 640,
    labels: Mapping[str, str | Path] | None = None,
) -> dict[str, LabelFrameReport]:
    """Report, per split, which frame the labels appear to be in.

    Args:
        root: dataset root holding split folders (``train/``, ``val/``), or one split folder.
        splits: split folder names (default: every split folder found).
        sizes_csv: original sizes (default: ``image_sizes.csv`` at the root or in the split, when present).
        images_root: WIDER FACE image tree for the original sizes (`nbsrc.data.image_sizes.split_sizes`).
        sizes_cache: folder caching sizes read from `images_root`.
        net_side: side of the network frame (640 for 40x40 latents).
        labels: split -> label file, overriding the discovery (`nbsrc.data.layout.find_labels`).
    Returns:
        split -> `LabelFrameReport` (its ``str`` is a short human summary).
    """
    root = Path(root)
    reports = {}
    for split, split_dir in list_splits(root, splits):
        label_path = Path(labels[split]) if labels and split in labels else find_labels(split_dir)
        records = read_split_labels(label_path)
        sizes = split_sizes(split_dir, sizes_csv=sizes_csv, images_root=images_root, cache_dir=sizes_cache).sizes
        reports[split] = frame_verdict(
            records, sizes if sizes else None, net_side=net_side, split=split, label_file=str(label_path)
        )
        logger.info("label frame of %s: %s", split, reports[split].verdict)
    return reports
