"""Open Images box annotations (CSV) -> 2-class face / person records, the cleaning steps, and the converter.

The CSV is an Open Images ``*-annotations-bbox.csv`` (``ImageID``, normalized ``XMin``, ``XMax``, ``YMin``,
``YMax``, and ``ClassName`` or the ``LabelName`` machine id); classes map by `CLASS_MAP`, rows of other classes
are counted and reported, never silently dropped. Each cleaning step takes one record and returns the new record
and a count; `convert_openimages` reads, cleans and writes the 2-class file of `nbsrc.data.readers.twoclass`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import LabelParseError, drop_degenerate, select_boxes, unsafe_name_reason
from nbsrc.data.readers.twoclass import write_twoclass_labels
from nbsrc.data.records import FACE, PERSON, ImageRecord

__all__ = [
    "CLASS_MAP",
    "LABEL_NAMES",
    "ConversionReport",
    "OpenImagesLabels",
    "clean_records",
    "clip_boxes",
    "convert_openimages",
    "drop_duplicates",
    "read_openimages_csv",
]

logger = logging.getLogger(__name__)

# Open Images class name -> our class id.
CLASS_MAP: dict[str, int] = {
    "Human face": FACE,
    "Person": PERSON,
    "Man": PERSON,
    "Woman": PERSON,
    "Boy": PERSON,
    "Girl": PERSON,
}
# Open Images machine ids of those classes (used when the CSV has no ClassName column).
LABEL_NAMES: dict[str, str] = {
    "/m/0dzct": "Human face",
    "/m/01g317": "Person",
    "/m/04yx4": "Man",
    "/m/03bt1vf": "Woman",
    "/m/01bl7v": "Boy",
    "/m/05r655": "Girl",
}
COORD_COLUMNS = ("XMin", "YMin", "XMax", "YMax")
# Optional 0/1 flag columns kept as attributes (-1 when absent or empty).
FLAG_COLUMNS = {
    "IsOccluded": "occluded",
    "IsTruncated": "truncated",
    "IsGroupOf": "group_of",
    "IsDepiction": "depiction",
    "IsInside": "inside",
}


class OpenImagesLabels(list):
    """The face / person records of an Open Images CSV (one per image with such a row, in order of first
    appearance, normalized) and the rows per class name: all (`class_counts`) and those of classes that map to
    neither (`unmapped`); `unmapped_images` had only such rows."""

    def __init__(
        self,
        records: Sequence[ImageRecord] = (),
        class_counts: Mapping[str, int] | None = None,
        unmapped: Mapping[str, int] | None = None,
        unmapped_images: int = 0,
    ) -> None:
        super().__init__(records)
        self.class_counts = Counter(class_counts or {})
        self.unmapped = Counter(unmapped or {})
        self.unmapped_images = int(unmapped_images)

    def __repr__(self) -> str:
        return f"OpenImagesLabels({len(self)} images, {sum(r.num_boxes for r in self)} boxes, unmapped={dict(self.unmapped)})"


# One face / person row of the CSV: (label, xyxy corners, flags in `FLAG_COLUMNS` order of the file, line).
_Row = tuple[int, list[float], list[int], int]


def read_openimages_csv(path: str | Path, *, class_map: Mapping[str, int] | None = None) -> OpenImagesLabels:
    """Read an Open Images box CSV into normalized 2-class records (nothing is cleaned here); the attributes
    hold the `FLAG_COLUMNS` flags (-1 where missing). Unmapped classes are logged as a warning with their counts.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: a missing column, or (naming ``file:line``) a row with the wrong number of fields, a
            non-numeric / non-finite coordinate, an empty or unsafe ImageID, an empty class.
    """
    path = Path(path)
    class_map = dict(CLASS_MAP if class_map is None else class_map)
    if not path.is_file():
        raise FileNotFoundError(f"Open Images CSV {path} not found")
    per_image: dict[str, list[_Row]] = {}  # in order of first appearance
    class_counts: Counter[str] = Counter()
    seen_images: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        columns, class_column = _read_header(reader, path)
        flag_columns = [c for c in FLAG_COLUMNS if c in columns]
        try:
            for fields in reader:
                if not fields:  # a blank line
                    continue
                number = reader.line_num
                row = _row_fields(fields, columns, path, number)
                image_id, class_name = _image_and_class(row, class_column, path, number)
                seen_images.add(image_id)
                class_counts[class_name] += 1
                label = class_map.get(class_name)
                if label is not None:
                    entry = (label, _coordinates(row, path, number), _flags(row, flag_columns), number)
                    per_image.setdefault(image_id, []).append(entry)
        except csv.Error as exc:
            raise LabelParseError(path, reader.line_num, f"malformed CSV ({exc})") from None

    records = [_image_record(path, image_id, rows, flag_columns) for image_id, rows in per_image.items()]
    unmapped = Counter({name: n for name, n in class_counts.items() if name not in class_map})
    unmapped_images = len(seen_images) - len(per_image)
    if unmapped:
        logger.warning(
            "%s: %d row(s) of classes that are neither face nor person were left out: %s (%d image(s) had only those)",
            path,
            sum(unmapped.values()),
            dict(unmapped.most_common()),
            unmapped_images,
        )
    return OpenImagesLabels(records, class_counts, unmapped, unmapped_images)


def _read_header(reader, path: Path) -> tuple[list[str], str]:
    """The header's columns and the class column (``ClassName``, else ``LabelName``) of a CSV reader."""
    try:
        columns = next(reader, [])
    except csv.Error as exc:
        raise LabelParseError(path, reader.line_num, f"malformed CSV header ({exc})") from None
    class_column = "ClassName" if "ClassName" in columns else "LabelName" if "LabelName" in columns else None
    missing = [c for c in ("ImageID", *COORD_COLUMNS) if c not in columns]
    if missing or class_column is None:
        raise ValueError(
            f"{path}: missing column(s) {missing + ([] if class_column else ['ClassName or LabelName'])}; an Open "
            f"Images box CSV needs ImageID, XMin, XMax, YMin, YMax and ClassName or LabelName (got {columns})"
        )
    return columns, class_column


def _row_fields(fields: list[str], columns: list[str], path: Path, number: int) -> dict[str, str]:
    """Column -> field of one CSV row, which must have one field per header column."""
    if len(fields) != len(columns):
        raise LabelParseError(
            path,
            number,
            f"expected {len(columns)} comma-separated fields (one per header column), found "
            f"{len(fields)}; a field holding a comma must be quoted",
        )
    return dict(zip(columns, fields))


def _image_and_class(row: Mapping[str, str], class_column: str, path: Path, number: int) -> tuple[str, str]:
    """The row's ImageID (a safe relative name) and class name (a ``LabelName`` id read as its class name)."""
    image_id = (row.get("ImageID") or "").strip()
    class_name = (row.get(class_column) or "").strip()
    if class_column == "LabelName":
        class_name = LABEL_NAMES.get(class_name, class_name)
    if not image_id or not class_name:
        raise LabelParseError(path, number, f"empty ImageID or {class_column}")
    unsafe = unsafe_name_reason(image_id)
    if unsafe:
        raise LabelParseError(
            path, number, f"ImageID {image_id!r} {unsafe}; expected an image id such as 'f00d696f4d0663e1'"
        )
    return image_id, class_name


def _coordinates(row: Mapping[str, str], path: Path, number: int) -> list[float]:
    """The row's finite ``XMin YMin XMax YMax``."""
    coords = []
    for column in COORD_COLUMNS:
        text = row.get(column)
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise LabelParseError(
                path, number, f"{column} = {text!r} is not a number (expected a normalized coordinate)"
            ) from None
        if not math.isfinite(value):
            raise LabelParseError(path, number, f"{column} = {text!r} is not finite")
        coords.append(value)
    return coords


def _flags(row: Mapping[str, str], flag_columns: Sequence[str]) -> list[int]:
    """The row's 0/1 flags of `flag_columns` (-1 for an empty or non-numeric field)."""
    flags = []
    for column in flag_columns:
        try:
            flags.append(int(float(row[column])))
        except (TypeError, ValueError):
            flags.append(-1)
    return flags


def _image_record(path: Path, image_id: str, rows: Sequence[_Row], flag_columns: Sequence[str]) -> ImageRecord:
    """The record of one image from its face / person rows (flags absent from the file are -1)."""
    boxes = np.asarray([coords for _, coords, _, _ in rows], np.float64).reshape(-1, 4)  # (N, 4) xyxy
    attributes = {FLAG_COLUMNS[c]: np.full(len(rows), -1, np.int64) for c in FLAG_COLUMNS}
    for k, column in enumerate(flag_columns):
        attributes[FLAG_COLUMNS[column]] = np.asarray([flags[k] for _, _, flags, _ in rows], np.int64)  # (N,)
    return ImageRecord(
        name=image_id,
        boxes=boxes,
        labels=np.asarray([label for label, _, _, _ in rows], np.int64),
        normalized=True,
        attributes=attributes,
        source=f"{path}:{rows[0][3]}",
        box_lines=np.asarray([line for _, _, _, line in rows], np.int64),
    )


def clip_boxes(record: ImageRecord) -> tuple[ImageRecord, int]:
    """Clip boxes to [0, 1] for normalized records, to ``[0, W] x [0, H]`` with ``image_size`` (`ValueError`
    without); ``(clipped_record, number_of_boxes_changed)``."""
    if record.normalized:
        upper = np.ones(4, np.float32)
    elif record.image_size is not None:
        width, height = record.image_size
        upper = np.asarray([width, height, width, height], np.float32)
    else:
        raise ValueError(f"{record.source or record.name}: cannot clip pixel boxes without the image size")
    clipped = np.clip(record.boxes, np.float32(0), upper)  # (N, 4)
    changed = int((clipped != record.boxes).any(axis=1).sum())
    if changed == 0:
        return record, 0
    return replace(record, boxes=clipped, attributes=dict(record.attributes)), changed


def drop_duplicates(record: ImageRecord, iou_thresh: float) -> tuple[ImageRecord, int]:
    """Drop boxes whose IoU with an earlier *kept* box of the same class reaches `iou_thresh` (a face inside its
    person box stays); ``(deduplicated_record, number_dropped)``."""
    import torch
    from torchvision.ops import box_iou

    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    n = record.num_boxes
    if n < 2 or len(np.unique(record.labels)) == n:
        return record, 0
    boxes = torch.from_numpy(record.boxes).double()  # (N, 4)
    iou = box_iou(boxes, boxes).numpy()  # (N, N)
    same_class = record.labels[:, None] == record.labels[None, :]  # (N, N)
    later_duplicate = np.triu((iou >= iou_thresh) & same_class, k=1)  # (N, N): j > i overlapping i
    if not later_duplicate.any():
        return record, 0
    keep = np.ones(n, bool)
    for i in np.flatnonzero(later_duplicate.any(axis=1)).tolist():
        if keep[i]:
            keep[later_duplicate[i]] = False
    return select_boxes(record, keep), int(n - keep.sum())


@dataclass
class ConversionReport:
    """What `convert_openimages` / `clean_records` did (counts of images and boxes)."""

    images: int = 0  # records written, images emptied by cleaning included
    boxes: dict[int, int] = field(default_factory=dict)  # class id -> boxes written
    clipped: int = 0
    degenerate: int = 0  # w <= 0 or h <= 0 after clipping
    duplicates: int = 0
    emptied_images: int = 0  # every box dropped by cleaning (still written, zero boxes)
    unmapped: dict[str, int] = field(default_factory=dict)  # rows per class name that is neither face nor person
    unmapped_images: int = 0  # images with only such rows (not written)

    @property
    def total_boxes(self) -> int:
        return sum(self.boxes.values())


def clean_records(
    records: Sequence[ImageRecord],
    *,
    clip: bool = True,
    drop_degenerate_boxes: bool = True,
    dedup_iou: float | None = None,
) -> tuple[list[ImageRecord], ConversionReport]:
    """Apply the cleaning steps in order: `clip_boxes`, `drop_degenerate`, and with `dedup_iou`
    `drop_duplicates`; ``(cleaned_records, report)`` (the report's ``unmapped`` fields left empty)."""
    report = ConversionReport()
    cleaned = []
    for record in records:
        had_boxes = record.num_boxes > 0
        if clip:
            record, n = clip_boxes(record)
            report.clipped += n
        if drop_degenerate_boxes:
            record, n = drop_degenerate(record)
            report.degenerate += n
        if dedup_iou is not None:
            record, n = drop_duplicates(record, dedup_iou)
            report.duplicates += n
        if had_boxes and record.num_boxes == 0:
            report.emptied_images += 1
        cleaned.append(record)
    counts = Counter(int(label) for record in cleaned for label in record.labels.tolist())
    report.images = len(cleaned)
    report.boxes = dict(sorted(counts.items()))
    return cleaned, report


def convert_openimages(
    csv_path: str | Path,
    out_txt: str | Path,
    *,
    clip: bool = True,
    drop_degenerate_boxes: bool = True,
    dedup_iou: float | None = None,
    class_map: Mapping[str, int] | None = None,
) -> ConversionReport:
    """Convert an Open Images box CSV into the 2-class label file `out_txt` (cleaning as `clean_records`);
    the `ConversionReport` is also logged."""
    labels = read_openimages_csv(csv_path, class_map=class_map)
    cleaned, report = clean_records(labels, clip=clip, drop_degenerate_boxes=drop_degenerate_boxes, dedup_iou=dedup_iou)
    report.unmapped = dict(labels.unmapped)
    report.unmapped_images = labels.unmapped_images
    write_twoclass_labels(out_txt, cleaned)
    logger.info(
        "%s -> %s: %d images, %d boxes %s; clipped %d, dropped %d degenerate and %d duplicate boxes; %d image(s) "
        "emptied by cleaning; unmapped classes %s",
        csv_path,
        out_txt,
        report.images,
        report.total_boxes,
        report.boxes,
        report.clipped,
        report.degenerate,
        report.duplicates,
        report.emptied_images,
        report.unmapped or "none",
    )
    return report
