"""Faces for statistics: the faces of a dataset or of the WIDER FACE val ground truth in the network frame,
their size histograms, and one summary row per split.

Boxes are ``[N, 4]`` xyxy in network-frame pixels; "face size" is ``sqrt(w * h)`` in network-frame pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from nbsrc.config import Config
from nbsrc.data.defects import DefectLog
from nbsrc.data.image_sizes import SIZES_CSV_NAME, ImageTreeError, find_sizes
from nbsrc.data.readers import drop_degenerate
from nbsrc.data.readers.wider_mat import read_wider_gt
from nbsrc.data.records import FACE
from nbsrc.data.split_index import SizeSources, index_split
from nbsrc.evaluation.ground_truth import resolve_gt_dir
from nbsrc.frame import FrameMap

__all__ = [
    "FACE_SOURCES",
    "WIDER_WIDTH",
    "dataset_summary",
    "face_boxes_net",
    "face_wh",
    "load_faces",
    "size_histograms",
    "size_percentiles",
    "wider_faces",
]

logger = logging.getLogger(__name__)

WIDER_WIDTH = 1024  # WIDER FACE images are 1024 px wide (used when original sizes are unknown)
PERCENTILES = (5, 25, 50, 75, 95)  # of `size_histograms`


def face_boxes_net(
    records: Sequence[Any],
    *,
    net_size: tuple[int, int] = (640, 640),
    policy: str = "stretch",
    label_frame: int | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    assume_width: int | None = None,
    labels: Sequence[int] | None = (1,),
) -> np.ndarray:
    """All faces (classes `labels`, None: all) of `records` in the network frame: ``float32 [N, 4]`` xyxy pixels.

    `net_size` is (width, height). The original size comes from ``record.image_size``, else `image_sizes[name]`;
    ``normalized`` boxes are scaled by `net_size`; `label_frame`: labels already in a square of that side. An
    unknown size with `assume_width` scales by ``net_w / assume_width`` (exact for letterboxed landscape images),
    without it raises ValueError naming the record.
    """
    out = []
    for record in records:
        boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)  # (N, 4)
        if labels is not None and len(boxes):
            boxes = boxes[np.isin(record.labels, list(labels))]
        if not len(boxes):
            continue
        if record.normalized:
            boxes = boxes * np.array(net_size * 2, dtype=np.float32)
        elif label_frame is not None:
            boxes = boxes * np.array([net_size[0] / label_frame, net_size[1] / label_frame] * 2, dtype=np.float32)
        else:
            size = record.image_size or (image_sizes or {}).get(record.name)
            if size is not None:
                boxes = FrameMap(tuple(size), tuple(net_size), policy).to_net(boxes)
            elif assume_width is not None:
                boxes = boxes * np.float32(net_size[0] / assume_width)
            else:
                raise ValueError(
                    f"{record.source or record.name}: original image size of {record.name!r} unknown; give image "
                    "sizes (sizes CSV or images folder), label_frame, or assume_width"
                )
        out.append(boxes.astype(np.float32))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 4), np.float32)


def face_wh(boxes: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights ``[N]`` float64 of ``[N, 4]`` xyxy boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def size_histograms(boxes: np.ndarray, bins: int = 40) -> dict[str, Any]:
    """Width, height, size and aspect (w/h) of faces with log-spaced histogram data and percentiles."""
    width, height = face_wh(boxes)
    keep = (width > 0) & (height > 0)
    width, height = width[keep], height[keep]
    size = np.sqrt(width * height)
    aspect = width / np.maximum(height, 1e-9)
    result: dict[str, Any] = {"count": int(len(width))}
    for key, values in (("width", width), ("height", height), ("size", size), ("aspect", aspect)):
        if len(values):
            lo, hi = max(float(values.min()), 1e-3), max(float(values.max()), 1e-3) * 1.0001
            edges = np.geomspace(lo, max(hi, lo * 1.01), bins + 1)
            counts, _ = np.histogram(values, bins=edges)
            pct = np.percentile(values, PERCENTILES)
        else:
            edges, counts, pct = np.zeros(bins + 1), np.zeros(bins, int), np.zeros(len(PERCENTILES))
        result[key] = {"values": values, "edges": edges, "counts": counts, "percentiles": dict(zip(PERCENTILES, pct))}
    return result


def size_percentiles(hist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the percentiles of width, height, size and aspect from `size_histograms`."""
    return [
        {"": key, **{f"p{p}": float(v) for p, v in hist[key]["percentiles"].items()}}
        for key in ("width", "height", "size", "aspect")
    ]


FACE_SOURCES = ("wider", "dataset")  # load_faces: the WIDER FACE val ground truth, or a dataset's labels


def load_faces(
    cfg: Config,
    *,
    faces: str | None = None,
    gt_dir: str | Path | None = None,
    dataset_root: str | Path | None = None,
    split: str = "val",
    max_images: int | None = None,
) -> dict[str, Any]:
    """Faces (class face) of the first `max_images` images, in the network frame of `cfg` (``data.image_size``).

    `faces`: ``"wider"``: the WIDER FACE val faces (`wider_faces`) of `gt_dir`, else ``cfg.eval.gt_dir``, else
    what `nbsrc.evaluation.ground_truth.resolve_gt_dir` finds. ``"dataset"``: the labels of `split` under
    `dataset_root` (else ``cfg.data.dataset_root``), indexed and mapped as the datasets do
    (`nbsrc.data.split_index.index_split`). None: ``"wider"`` when `gt_dir` is given, else ``"dataset"``.

    Returns ``{"boxes": [N, 4] xyxy, "per_image": list of [n, 4], "images": int, "source": str}``. Raises
    ValueError for an unknown `faces` or no dataset root, `nbsrc.data.label_frame.LabelFrameError` for labels
    whose frame cannot be determined.
    """
    if faces is None:
        faces = "wider" if gt_dir is not None else "dataset"
    if faces not in FACE_SOURCES:
        raise ValueError(f"faces must be one of {', '.join(FACE_SOURCES)}; got {faces!r}")
    if faces == "wider":
        return wider_faces(cfg, gt_dir=gt_dir, max_images=max_images)
    dataset_root = dataset_root if dataset_root is not None else cfg.data.dataset_root
    if dataset_root is None:
        raise ValueError("load_faces(faces='dataset'): give dataset_root (or data.dataset_root)")
    net = (cfg.data.image_size, cfg.data.image_size)
    log = DefectLog(cfg.data.on_error, context=f"{Path(dataset_root).name}/{split} labels")
    sizes = SizeSources(sizes_csv=cfg.data.sizes_csv, images_root=cfg.data.images_root, cache_dir=cfg.data.cache_dir)
    index = index_split(
        Path(dataset_root) / split,
        log,
        max_images=max_images,
        latents="ignored",
        sizes=sizes,
        label_frame=cfg.data.label_frame,
        resize_policy=cfg.data.resize_policy,
    )
    log.log_summary(logger)
    source = f"{log.context} ({index.label_path.name})"
    dropped = 0
    per_image = []
    for record in index.records:
        record, count = drop_degenerate(record)
        dropped += count
        boxes = index.frame.to_net(record, net)[0].boxes[record.labels == FACE]
        per_image.append(np.asarray(boxes, np.float32).reshape(-1, 4))  # (n, 4)
    if dropped:
        logger.info("%s: dropped %d degenerate boxes (w <= 0 or h <= 0)", source, dropped)
    boxes = np.concatenate(per_image) if per_image else np.zeros((0, 4), np.float32)
    return {"boxes": boxes, "per_image": per_image, "images": len(per_image), "source": source}


def _wider_sizes(cfg: Config, gt_folder: Path) -> tuple[Any, str]:
    """Original sizes of the WIDER val images (`ImageSizes` or None) and their source: ``data.sizes_csv``, else an
    ``image_sizes.csv`` in or up to two folders above `gt_folder`, and the ``WIDER_val`` tree of ``data.images_root``."""
    csv_path = cfg.data.sizes_csv
    if csv_path is None:
        near = (gt_folder, gt_folder.parent, gt_folder.parent.parent)
        csv_path = next((d / SIZES_CSV_NAME for d in near if (d / SIZES_CSV_NAME).is_file()), None)
    if csv_path is None and cfg.data.images_root is None:
        return None, "no sizes CSV and no WIDER FACE images"
    try:  # the WIDER val ground truth describes the val split's images
        found = find_sizes(
            gt_folder / "val", sizes_csv=csv_path, images_root=cfg.data.images_root, cache_dir=cfg.data.cache_dir
        )
    except ImageTreeError as err:
        logger.warning("WIDER FACE val image sizes: %s", err)
        return None, "no WIDER FACE val images"
    return found.sizes, found.source


def wider_faces(cfg: Config, *, gt_dir: str | Path | None = None, max_images: int | None = None) -> dict[str, Any]:
    """The faces of the WIDER FACE val ground truth in the network frame of `cfg` (see `load_faces`), degenerate
    boxes dropped. Images of unknown size (the ``.mat`` files carry none) are assumed `WIDER_WIDTH` wide."""
    where = resolve_gt_dir(gt_dir if gt_dir is not None else cfg.eval.gt_dir)
    gt = read_wider_gt(where.folder, attributes=False)
    names = gt.image_names()[:max_images]
    per_image_xywh = [b for per_event in gt.boxes for b in per_event][: len(names)]
    counts = np.array([len(b) for b in per_image_xywh], np.int64)  # (I,)
    xywh = np.concatenate(per_image_xywh).astype(np.float64).reshape(-1, 4) if names else np.zeros((0, 4))  # (F, 4)

    side = cfg.data.image_size
    sizes, sizes_source = _wider_sizes(cfg, where.folder)
    assumed = (side / WIDER_WIDTH, side / WIDER_WIDTH, 0.0, 0.0)
    coeffs = np.tile(np.asarray(assumed), (len(names), 1))  # (I, 4) sx, sy, px, py
    known = 0
    if sizes is not None:
        for i, name in enumerate(names):
            size = sizes.get(name)
            if size is not None:
                frame = FrameMap(tuple(size), (side, side), cfg.data.resize_policy)
                coeffs[i] = (*frame.scale, *frame.pad)
                known += 1
    per_face = np.repeat(coeffs, counts, axis=0)  # (F, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (F, 4)
    net = (xyxy * per_face[:, [0, 1, 0, 1]] + per_face[:, [2, 3, 2, 3]]).astype(np.float32)  # (F, 4)
    keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)  # (F,)
    image = np.repeat(np.arange(len(names)), counts)  # (F,)
    kept_counts = np.bincount(image[keep], minlength=len(names))  # (I,)
    per_image = np.split(net[keep], np.cumsum(kept_counts)[:-1]) if len(names) else []

    source = f"WIDER FACE val ({where.description})"
    dropped = int((~keep).sum())
    if dropped:
        logger.info("%s: dropped %d degenerate boxes (w <= 0 or h <= 0)", source, dropped)
    if known < len(names):
        unknown = f"{len(names) - known:,} of {len(names):,}"
        message = "%s: original sizes of %s images unknown (%s), assuming WIDER's %d px width"
        logger.info(message, source, unknown, sizes_source, WIDER_WIDTH)
    return {"boxes": net[keep], "per_image": per_image, "images": len(names), "source": source}


# ---- per split ------------------------------------------------------------------------------------
def dataset_summary(
    boxes_per_split: Mapping[str, Sequence[np.ndarray]], rates_per_split: Mapping[str, Mapping[int, int]] | None = None
) -> list[dict[str, Any]]:
    """One row per split of `boxes_per_split` (split -> per-image ``[N, 4]`` network-frame boxes): images, faces,
    face sizes (network pixels), and the images of each latent rate (`rates_per_split`: split -> {rate: images})."""
    rows = []
    for split, per_image in boxes_per_split.items():
        counts = np.array([len(b) for b in per_image])
        all_boxes = (
            np.concatenate([np.asarray(b).reshape(-1, 4) for b in per_image]) if len(per_image) else np.zeros((0, 4))
        )
        width, height = face_wh(all_boxes)
        size = np.sqrt(np.clip(width * height, 0, None))
        row: dict[str, Any] = {
            "split": split,
            "images": len(per_image),
            "faces": int(counts.sum()),
            "faces/image": float(counts.mean()) if len(counts) else 0.0,
            "images without faces": int((counts == 0).sum()),
            "median size (px)": float(np.median(size)) if len(size) else float("nan"),
            "p5-p95 size (px)": f"{np.percentile(size, 5):.1f}-{np.percentile(size, 95):.1f}" if len(size) else "",
            "faces < 16 px": int((size < 16).sum()),
        }
        for rate, count in sorted(((rates_per_split or {}).get(split) or {}).items()):
            row[f"latent_{rate}"] = count
        rows.append(row)
    return rows
