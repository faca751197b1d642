"""``check-data``: every defect of a dataset, reported with file and line.

`validate_split` indexes a split as the datasets do (`nbsrc.data.split_index.index_split`) under a ``report``
`nbsrc.data.defects.DefectLog`, then checks every record, image and latent file; `validate_dataset` does it for
every split. `check_label_frame` says, per split, which frame the labels appear to be in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nbsrc.config import Config
from nbsrc.data.defects import Defect, DefectLog, check_boxes, check_image, check_latent_file
from nbsrc.data.image_sizes import ImageSizes
from nbsrc.data.label_frame import LabelFrameError, LabelFrameReport
from nbsrc.data.layout import list_splits
from nbsrc.data.records import ImageRecord
from nbsrc.data.split_index import SizeSources, SplitIndex, frame_extent, index_split

__all__ = [
    "ValidationReport",
    "check_label_frame",
    "validate_dataset",
    "validate_split",
    "validation_settings",
]

logger = logging.getLogger(__name__)


@dataclass
class ValidationReport:
    """Defects of one or more splits."""

    defects: list[Defect] = field(default_factory=list)  # in walk order
    splits: dict[str, dict] = field(default_factory=dict)  # split -> summary numbers (images, boxes, latents, ...)
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
    """Walk one split and collect its defects; returns ``(log, summary_numbers, label_frame_report)``.

    Arguments as in `nbsrc.data.split_index.index_split` and `SizeSources` (`sizes_cache` is its ``cache_dir``),
    and:
        spatial: expected latent ``(h, w)`` (None: any, but all equal to the first good one).
        latent_stride: network-frame pixels per latent cell.
        check_values: read every latent and check for NaN/Inf (slow on big data).
        check_images: check that each labelled image exists (when the split has ``images/``).
        log: default: a new ``report`` log.
    """
    split_dir = Path(split_dir)
    log = log or DefectLog("report", context=str(split_dir))
    index = index_split(
        split_dir,
        log,
        labels=labels,
        latents="if_present",
        latent_suffix=latent_suffix,
        sizes=SizeSources(sizes_csv=sizes_csv, images_root=images_root, cache_dir=sizes_cache),
        label_frame=label_frame,
        resize_policy=resize_policy,
    )
    net = (640, 640) if spatial is None else (spatial[1] * latent_stride, spatial[0] * latent_stride)
    sizes = index.sizes.sizes
    images = sizes if check_images and sizes is not None and sizes.images_dir is not None else None
    for record in index.records:
        _check_record(record, index, net, images)
    info = {"images": len(index.records), "boxes": int(sum(r.num_boxes for r in index.records))}
    if index.latents is not None:
        info.update(_check_latents(index, channels=channels, spatial=spatial, values=check_values))
    return log, info, index.frame_report()


def _check_record(record: ImageRecord, index: SplitIndex, net: tuple[int, int], images: ImageSizes | None) -> None:
    """Boxes against the record's frame, whether that frame is known, and with `images` its image file."""
    size = frame_extent(record, index.frame)
    check_boxes(record, index.log, size)
    if size is None and record.num_boxes:
        try:
            index.frame.to_net(record, net)
        except LabelFrameError:
            index.log.add_source(
                "unknown_frame",
                record.source,
                f"original size of {record.name!r} unknown, so its labels cannot be mapped into the "
                f"{net[0]}x{net[1]} frame ({index.sizes.source}); give the WIDER FACE images (images_root), a sizes "
                f"CSV (name,width,height), or label_frame={net[0]} if the labels are already in that frame",
            )
    if images is not None:
        check_image(record, images, index.log)


def _check_latents(index: SplitIndex, *, channels: int, spatial: tuple[int, int] | None, values: bool) -> dict:
    """Check every matched latent file (all of `spatial` size, else the first good one's); the summary numbers."""
    first_hw = spatial
    for _, files in index.matched:
        for path in files.values():
            hw = check_latent_file(path, index.log, channels=channels, spatial=first_hw, values=values)
            if hw is not None and first_hw is None:
                first_hw = hw
    return {
        "latents": sum(len(v) for v in index.latents.files.values()),
        "layout": index.latents.layout,
        "latent_hw": f"{first_hw[0]}x{first_hw[1]}" if first_hw else "none",
    }


def validation_settings(cfg: Config) -> dict:
    """`validate_split` keyword arguments from a config."""
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
    """Validate every split (default: all found) of `root`, a dataset root or one split folder; `kwargs` go
    to `validate_split`."""
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
    """Per split of `root` (a dataset root or one split folder), which frame the labels appear to be in.

    `labels` maps a split to its label file (default: `nbsrc.data.layout.find_labels`); `net_side` is the side
    of the network frame (640 for 40x40 latents); the sizes arguments are those of `validate_split`.
    """
    sources = SizeSources(sizes_csv=sizes_csv, images_root=images_root, cache_dir=sizes_cache)
    reports = {}
    for split, split_dir in list_splits(root, splits):
        log = DefectLog("raise", context=f"{split} split")
        index = index_split(split_dir, log, labels=labels.get(split) if labels else None, sizes=sources)
        reports[split] = index.frame_report(net_side, split)
        logger.info("label frame of %s: %s", split, reports[split].verdict)
    return reports
