"""One pass over a split folder: labels -> records -> latent files -> original sizes and label frame.

`index_split` gives the `SplitIndex` that both datasets and ``check-data`` (`nbsrc.data.validate`) build on; what
it finds wrong (bad lines, repeated names, unmatched latents) goes to a `nbsrc.data.defects.DefectLog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nbsrc.data.defects import DefectLog
from nbsrc.data.image_sizes import ImageSizes, SplitSizes, split_sizes
from nbsrc.data.label_frame import LabelFrame, LabelFrameReport, frame_verdict
from nbsrc.data.layout import LatentIndex, find_labels, read_split_labels, scan_latents
from nbsrc.data.readers import LabelParseError, select_boxes
from nbsrc.data.records import ImageRecord

__all__ = [
    "LATENT_MODES",
    "SizeSources",
    "SplitIndex",
    "frame_extent",
    "index_split",
    "keep_classes",
    "read_labels_checked",
]

LATENT_MODES = ("required", "if_present", "ignored")  # what `index_split` does with the split's latent/ folder
Matched = list[tuple[ImageRecord, dict[int | None, Path]]]  # a record and its latent files (rate -> path)


@dataclass(frozen=True)
class SizeSources:
    """Where the original image sizes of a split may come from."""

    sizes_csv: str | Path | None = None  # a CSV ``name,width,height``
    images_dir: str | Path | None = None  # the split's images (then only it and `sizes_csv` are used)
    images_root: str | Path | None = None  # a WIDER FACE image tree (`nbsrc.data.image_sizes.split_sizes`)
    cache_dir: str | Path | None = None  # where sizes read from `images_root` are cached

    def find(self, folder: Path) -> SplitSizes:
        if self.images_dir is not None:
            sizes = ImageSizes(sizes_csv=self.sizes_csv, images_dir=self.images_dir)
            return SplitSizes(sizes, f"images {self.images_dir}")
        return split_sizes(folder, sizes_csv=self.sizes_csv, images_root=self.images_root, cache_dir=self.cache_dir)


@dataclass
class SplitIndex:
    """A split folder indexed once."""

    folder: Path
    log: DefectLog
    label_path: Path | None  # None when records were given
    labelled: list[ImageRecord]  # every record of the labels (repeated names left out), before ``max_images``
    # the first ``max_images``, without basenames used twice when latents are matched (they are keyed by basename)
    records: list[ImageRecord]
    latents: LatentIndex | None  # None when the latents were not looked at
    matched: Matched  # each record having latent files; empty without `latents`
    sizes: SplitSizes
    frame: LabelFrame

    @property
    def labelled_images(self) -> int:
        return len(self.labelled)

    def frame_report(self, net_side: int = 640, split: str | None = None) -> LabelFrameReport:
        """Which frame the labels appear to be in (`nbsrc.data.label_frame.frame_verdict`); `split` defaults to
        the folder's name."""
        return frame_verdict(
            self.labelled,
            self.sizes.sizes or None,
            net_side=net_side,
            split=self.folder.name if split is None else split,
            label_file=str(self.label_path),
        )


def index_split(
    folder: str | Path,
    log: DefectLog,
    *,
    labels: str | Path | Sequence[ImageRecord] | None = None,
    twoclass: bool = False,
    max_images: int | None = None,
    latents: str = "ignored",
    latent_suffix: str | None = "latent_75.npy",
    sizes: SizeSources | None = None,
    label_frame: int | None = None,
    resize_policy: str = "stretch",
) -> SplitIndex:
    """Index a split folder in one pass.

    Args:
        log: its ``on_error`` decides whether a defect raises.
        labels: label file or folder (default: `nbsrc.data.layout.find_labels`), or records taken as they are.
        twoclass: look for the 2-class label file first.
        max_images: use only the first N labelled images (the latents of the others are not strays).
        latents: ``required`` (``<folder>/latent`` must exist), ``if_present`` or ``ignored``.
        latent_suffix: the rate file of the nested layout; None takes every rate.
        sizes: default: the sizes CSV or ``images/`` of the split.
        label_frame: labels already in this square frame (None: original pixels).
    Raises:
        FileNotFoundError: no label file, or no latent folder when `latents` is ``required``.
        nbsrc.data.defects.DataError: a defect under ``on_error=raise``.
    """
    if latents not in LATENT_MODES:
        raise ValueError(f"latents must be one of {list(LATENT_MODES)}, got {latents!r}")
    folder = Path(folder)
    if labels is None or isinstance(labels, (str, Path)):
        label_path = Path(labels) if labels is not None else find_labels(folder, twoclass=twoclass)
        labelled = read_labels_checked(label_path, log)
    else:
        label_path, labelled = None, list(labels)
    records = labelled if max_images is None else labelled[:max_images]
    index = None
    matched: Matched = []
    if latents == "required" or (latents == "if_present" and (folder / "latent").is_dir()):
        index = scan_latents(folder / "latent", suffix=latent_suffix)
        records = check_duplicate_basenames(records, log)
        if max_images is not None:  # the latents of images beyond the cap are not strays
            beyond = {record.basename for record in labelled[max_images:]}
            for key in [k for k in index.files if k in beyond or k.removeprefix("latent_") in beyond]:
                del index.files[key]
        matched = match_latents(records, index, log, latent_suffix=latent_suffix)
    found = (sizes or SizeSources()).find(folder)
    frame = LabelFrame(sizes=found.sizes or None, policy=resize_policy, label_frame=label_frame)
    return SplitIndex(folder, log, label_path, labelled, records, index, matched, found, frame)


def read_labels_checked(path: str | Path, log: DefectLog) -> list[ImageRecord]:
    """Read a label file, turning unparseable lines into ``unparseable_line`` defects (skipped lines) and
    repeated image names into ``duplicate_name`` defects (later repeats dropped; 2-class repeats merged)."""
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
    return kept


def check_duplicate_basenames(records: Sequence[ImageRecord], log: DefectLog) -> list[ImageRecord]:
    """Latents are keyed by basename: two events holding the same basename are ambiguous (later ones left out)."""
    seen: dict[str, ImageRecord] = {}
    kept = []
    for record in records:
        base = record.basename
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


def match_latents(
    records: Sequence[ImageRecord], index: LatentIndex, log: DefectLog, *, latent_suffix: str | None = None
) -> Matched:
    """Pair each record with its latent files; ``missing_latent`` for labelled images without one and
    ``latent_without_labels`` for latents nobody labels (both left out)."""
    matched = []
    used: set[str] = set()
    missing_rate = set(index.missing_rate)
    for record in records:
        base = record.basename
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


def frame_extent(record: ImageRecord, frame: LabelFrame) -> tuple[float, float] | None:
    """``(width, height)`` of the frame the record's labels are in, or None when unknown."""
    if record.normalized:
        return (1.0, 1.0)
    if frame.label_frame is not None:
        return (float(frame.label_frame), float(frame.label_frame))
    size = frame.original_size(record)
    return (float(size[0]), float(size[1])) if size is not None else None


def keep_classes(record: ImageRecord, num_classes: int) -> tuple[ImageRecord, int]:
    """`record` without its boxes of class ``>= num_classes`` (persons for a face-only model), and how many
    boxes that left out."""
    if not record.num_boxes or not (record.labels >= num_classes).any():
        return record, 0
    keep = record.labels < num_classes
    return select_boxes(record, keep), int((~keep).sum())
