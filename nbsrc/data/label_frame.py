"""The label frame: mapping labels from original-image pixels into the network frame.

WIDER labels are in original-image pixels (e.g. a 1024x683 photo), so every box and landmark goes through
`nbsrc.frame.FrameMap` with the resize policy that made the network frame (a latent ``[256, h, w]`` describes
``(w * 16, h * 16)`` pixels). The original size comes from the record (``ImageRecord.image_size``), else from
`nbsrc.data.image_sizes.ImageSizes`; ``data.label_frame=640`` says the labels are already in a 640x640 frame.
Otherwise `LabelFrameError` says what to provide: the mapping never guesses. Box conventions: `nbsrc.boxes`.

`frame_verdict` reports which frame a split's labels appear to be in (for `nbsrc.data.validate.check_label_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from nbsrc.data.image_sizes import SIZES_CSV_NAME, ImageSizes, strip_image_extension
from nbsrc.data.records import ImageRecord
from nbsrc.frame import FrameMap

__all__ = [
    "LabelFrame",
    "LabelFrameError",
    "LabelFrameReport",
    "frame_verdict",
]


class LabelFrameError(ValueError):
    """The network frame of an image's labels cannot be determined (the message says what to provide)."""


@dataclass(frozen=True)
class LabelFrame:
    """How the labels of a dataset relate to the network frame."""

    sizes: ImageSizes | None = None
    policy: str = "stretch"  # `nbsrc.frame.FrameMap`
    label_frame: int | None = None  # side of the square frame the labels are already in, None: original pixels

    def original_size(self, record: ImageRecord) -> tuple[int, int] | None:
        """``(width, height)`` of the record's original image, or None."""
        if record.image_size is not None:
            return (int(record.image_size[0]), int(record.image_size[1]))
        if self.sizes is not None:
            return self.sizes.get(record.name)
        return None

    def frame(self, record: ImageRecord, net_size: tuple[int, int]) -> FrameMap | None:
        """Original image -> network frame map of `record` (for mapping predictions back), or None when the
        original size is unknown."""
        size = self.original_size(record)
        return FrameMap(size, tuple(net_size), self.policy) if size is not None else None

    def explain_missing(self, record: ImageRecord, net_size: tuple[int, int]) -> str:
        """The error message for a record whose frame cannot be determined."""
        where = record.source or record.name
        tried = self.sizes.sources if self.sizes is not None else []
        folder = (self.sizes.images_dir or self.sizes.tree) if self.sizes is not None else None
        expected = folder / f"{strip_image_extension(record.name)}.jpg" if folder is not None else None
        unreadable = self.sizes.unreadable.get(strip_image_extension(record.name)) if self.sizes is not None else None
        lines = [
            f"{where}: cannot map the labels of {record.name!r} into the {net_size[0]}x{net_size[1]} network frame: "
            "the original image size is unknown"
            + (f" (looked in {', '.join(tried)})" if tried else " (no sizes CSV and no images were found)")
            + (f"; its image gave no size ({unreadable})" if unreadable else "")
            + ". Provide one of:",
            "  - the WIDER FACE images: images_root (data.images_root) = a folder holding "
            "WIDER_<split>/images/<event>/<name>.jpg"
            + (f" (expected {expected})" if expected is not None else "")
            + "; on Kaggle, attach a WIDER FACE dataset to the notebook;",
            f"  - a sizes CSV with the header 'name,width,height' (sizes_csv / data.sizes_csv, or {SIZES_CSV_NAME} "
            "at the dataset root; `python -m nbsrc image-sizes IMAGES_DIR --out image_sizes.csv` writes one);",
            "  - label_frame=640 (data.label_frame) if the labels are already in the 640x640 frame of the latents.",
        ]
        return "\n".join(lines)

    def to_net(self, record: ImageRecord, net_size: tuple[int, int]) -> tuple[ImageRecord, FrameMap | None]:
        """`record` with boxes and landmarks in pixels of the ``(width, height)`` network frame, and the original ->
        network map (None when the original size is unknown but not needed: ``label_frame`` given, or normalized
        labels under ``stretch``). LabelFrameError: the frame cannot be determined."""
        net_size = (int(net_size[0]), int(net_size[1]))
        frame = self.frame(record, net_size)
        n = record.num_boxes
        if record.normalized:
            if self.policy == "stretch":
                scale = np.asarray(net_size, np.float32)
                return _mapped(record, record.boxes * np.tile(scale, 2), record.landmarks * scale), frame
            if frame is None:
                raise LabelFrameError(self.explain_missing(record, net_size))
            size = np.asarray(frame.orig_size, np.float32)
            boxes = frame.to_net(record.boxes * np.tile(size, 2))
            landmarks = frame.to_net(record.landmarks * size)
            return _mapped(record, boxes, landmarks), frame
        if self.label_frame is not None:
            side = float(self.label_frame)
            if (side, side) == (float(net_size[0]), float(net_size[1])):
                return _mapped(record, record.boxes, record.landmarks), frame
            scale = np.asarray([net_size[0] / side, net_size[1] / side], np.float32)
            return _mapped(record, record.boxes * np.tile(scale, 2), record.landmarks * scale), frame
        if frame is None:
            raise LabelFrameError(self.explain_missing(record, net_size))
        boxes = frame.to_net(record.boxes) if n else record.boxes
        landmarks = frame.to_net(record.landmarks) if n else record.landmarks
        return _mapped(record, boxes, landmarks), frame


def _mapped(record: ImageRecord, boxes: np.ndarray, landmarks: np.ndarray) -> ImageRecord:
    landmarks = np.where(record.landmarks_valid[:, None, None], landmarks, 0.0).astype(np.float32)  # (N, 5, 2)
    return replace(record, boxes=np.asarray(boxes, np.float32), landmarks=landmarks, normalized=False)


# ---- which frame are the labels in? ------------------------------------------------------------------
@dataclass
class LabelFrameReport:
    """What the box extents of one split say about its label frame.

    ``verdict``: ``original`` (original-image pixels), ``network`` (already in the ``net_side`` frame),
    ``normalized`` (fractions of the image), ``ambiguous`` (both fit), ``inconsistent`` (neither fits), ``unknown``
    (no original sizes and nothing exceeds the network frame).
    """

    split: str
    label_file: str
    verdict: str
    message: str  # one sentence for people, with the config setting to use
    images: int = 0
    boxes: int = 0
    images_with_size: int = 0  # images whose original size is known
    net_side: int = 640
    inside_original: float | None = None  # fraction of boxes (of images with a known size) inside their image
    inside_network: float | None = None  # fraction of boxes inside the net_side square
    max_extent: tuple[float, float] = (0.0, 0.0)  # largest x2 and y2 of any box, in label units
    max_extent_over_size: tuple[float, float] | None = None  # largest x2 / width and y2 / height
    size_sources: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def __str__(self) -> str:
        parts = [f"{self.split}: {self.verdict} - {self.message}"]
        parts.append(f"  {self.images} images, {self.boxes} boxes, {self.images_with_size} with a known original size")
        if self.inside_original is not None:
            parts.append(f"  boxes inside their original image: {self.inside_original:.1%}")
        if self.inside_network is not None:
            parts.append(f"  boxes inside the {self.net_side}x{self.net_side} frame: {self.inside_network:.1%}")
        return "\n".join(parts)


def _tolerance(side: np.ndarray | float) -> np.ndarray | float:
    """Allowed overflow past a frame edge: annotators' boxes often poke a few pixels out."""
    return np.maximum(2.0, 0.01 * np.asarray(side, np.float64))


def frame_verdict(
    records: Sequence[ImageRecord],
    sizes: ImageSizes | None,
    *,
    net_side: int = 640,
    split: str = "",
    label_file: str = "",
) -> LabelFrameReport:
    """`LabelFrameReport` of one split's records (see `check_label_frame`)."""
    boxes_all = [r.boxes for r in records if r.num_boxes]
    n_boxes = int(sum(len(b) for b in boxes_all))
    report = LabelFrameReport(
        split=split,
        label_file=label_file,
        verdict="unknown",
        message="",
        images=len(records),
        boxes=n_boxes,
        net_side=net_side,
        size_sources=sizes.sources if sizes is not None else [],
    )
    if n_boxes == 0:
        report.message = "no boxes to judge the frame by"
        return report
    if all(r.normalized for r in records):
        report.verdict = "normalized"
        report.message = "boxes are fractions of the image size; they are scaled to the network frame directly"
        return report
    stacked = np.concatenate(boxes_all, axis=0).astype(np.float64)  # (T, 4)
    report.max_extent = (float(stacked[:, 2].max()), float(stacked[:, 3].max()))
    inside_net = (stacked[:, 2] <= net_side + _tolerance(net_side)) & (stacked[:, 3] <= net_side + _tolerance(net_side))
    report.inside_network = float(inside_net.mean())

    ratios, inside_orig = [], []
    frame = LabelFrame(sizes=sizes)
    for record in records:
        size = frame.original_size(record)
        if size is None:
            continue
        report.images_with_size += 1
        if not record.num_boxes:
            continue
        w, h = size
        b = record.boxes.astype(np.float64)
        ratios.append(np.stack([b[:, 2] / w, b[:, 3] / h], axis=1))  # (N, 2)
        inside_orig.append((b[:, 2] <= w + _tolerance(w)) & (b[:, 3] <= h + _tolerance(h)))
    net_hint = f"data.label_frame={net_side}"
    if not inside_orig:
        if report.inside_network < 0.99:
            report.verdict = "original"
            report.message = (
                f"{1 - report.inside_network:.1%} of the boxes reach past {net_side} px, so the labels are not in the "
                f"{net_side} frame; they are probably in original-image pixels. Give the original sizes so that they can be "
                "mapped: the WIDER FACE images (images_root; on Kaggle, attach a WIDER FACE dataset) or a sizes CSV"
            )
        else:
            report.message = (
                f"every box fits in {net_side}x{net_side} and no original size is known: give the sizes (the WIDER FACE "
                f"images as images_root, or a sizes CSV) to tell original pixels from the {net_side} frame, or set {net_hint} if the "
                "labels are in that frame"
            )
        return report
    ratio = np.concatenate(ratios, axis=0)  # (T', 2)
    report.max_extent_over_size = (float(ratio[:, 0].max()), float(ratio[:, 1].max()))
    report.inside_original = float(np.concatenate(inside_orig).mean())
    fits_orig = report.inside_original >= 0.99
    fits_net = report.inside_network >= 0.99
    if fits_orig and not fits_net:
        report.verdict = "original"
        report.message = "boxes fit their original images and reach past the network frame: original-image pixels (keep data.label_frame=None)"
    elif fits_net and not fits_orig:
        report.verdict = "network"
        report.message = f"boxes fit the {net_side} frame but not their original images: set {net_hint}"
    elif fits_orig and fits_net:
        report.verdict = "ambiguous"
        report.message = (
            f"boxes fit both their original images and the {net_side} frame (small originals or central faces); "
            f"original pixels is the default, set {net_hint} if the labels were made in that frame"
        )
    else:
        report.verdict = "inconsistent"
        report.message = (
            f"only {report.inside_original:.1%} of the boxes fit their original images and {report.inside_network:.1%} "
            f"the {net_side} frame: check the sizes source and the label file"
        )
    return report
