"""Numbers behind the notebooks: face sizes, anchor coverage, anchor suggestions, dataset and latent statistics.

Boxes are ``[N, 4]`` xyxy in network-frame pixels (see `nbsrc.boxes`); everything is vectorized with
numpy / torch. "Face size" for binning is ``sqrt(w * h)`` in network-frame pixels.

Best-anchor IoU is computed exactly without an ``N x A`` IoU matrix: for axis-aligned boxes of fixed
sizes, the overlap along x depends only on ``|dx|`` and does not grow with it (same along y), so for every
level and anchor shape the best anchor is the one whose grid centre is nearest the face centre. That gives
an ``N x (levels x shapes)`` computation that equals the brute-force maximum (`best_anchor_iou_bruteforce`,
kept as the reference).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbsrc.anchors import AnchorGenerator, feature_sizes
from nbsrc.config import Config, get_preset
from nbsrc.data.records import FACE
from nbsrc.frame import FrameMap

__all__ = [
    "SIZE_BINS",
    "AnchorLayout",
    "anchor_layout",
    "anchor_table",
    "best_anchor_iou",
    "best_anchor_iou_bruteforce",
    "compare_presets",
    "dataset_summary",
    "energy_map",
    "face_boxes_net",
    "kmeans_anchors",
    "latent_statistics",
    "latent_statistics_by_rate",
    "latent_statistics_rows",
    "match_detections",
    "rate_counts",
    "recall_by_size",
    "load_faces",
    "wider_faces",
    "size_percentiles",
    "unmatched_summary",
    "shape_coverage",
    "size_histograms",
    "suggest_anchors",
]

logger = logging.getLogger(__name__)

SIZE_BINS = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, math.inf)  # face size bins, sqrt(w*h) network pixels
WIDER_WIDTH = 1024  # WIDER FACE images are 1024 px wide (used when original sizes are unknown)


# ---- faces in the network frame --------------------------------------------------------------------
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
    """All faces of `records` in the network frame: ``float32 [N, 4]`` xyxy pixels.

    The original size of an image comes from ``record.image_size``, else `image_sizes[name]`. Records with
    ``normalized`` boxes are scaled by `net_size`; `label_frame` means labels are already in a square frame
    of that side. When the size is unknown and `assume_width` is given (WIDER images are 1024 px wide), boxes
    are scaled by ``net_w / assume_width`` on both axes (exact for the letterbox policy of landscape images).

    Args:
        records: ``ImageRecord`` list.
        net_size: (width, height) of the network frame.
        policy: resize policy (`nbsrc.frame.FrameMap`).
        label_frame: side of the square frame the labels are already in (None: original pixels).
        image_sizes: name -> (width, height) of originals.
        assume_width: width to assume when an image's size is unknown (None: raise).
        labels: class ids to keep (None: all).

    Raises:
        ValueError: an image's original size is unknown and nothing was assumed (names the record).
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


def _wh(boxes: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def size_histograms(boxes: np.ndarray, bins: int = 40) -> dict[str, Any]:
    """Width, height, size and aspect (w/h) of faces with log-spaced histogram data and percentiles."""
    width, height = _wh(boxes)
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
            pct = np.percentile(values, [5, 25, 50, 75, 95])
        else:
            edges, counts, pct = np.zeros(bins + 1), np.zeros(bins, int), np.zeros(5)
        result[key] = {
            "values": values,
            "edges": edges,
            "counts": counts,
            "percentiles": dict(zip((5, 25, 50, 75, 95), pct)),
        }
    return result


def size_percentiles(hist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of percentiles (5, 25, 50, 75, 95) of width, height, size and aspect from `size_histograms`."""
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
    """Faces (class face) for anchor statistics, in the network frame of `cfg` (``data.image_size`` square).

    Args:
        cfg: the preset's config (``data.image_size``, ``data.resize_policy``; the data-location fields).
        faces: ``"wider"``: the WIDER FACE val faces (`wider_faces`) of `gt_dir`, else ``cfg.eval.gt_dir``, else
            the ground truth `nbsrc.evaluation.ground_truth.resolve_gt_dir` finds without a dataset (a folder among
            the Kaggle inputs, else the official files shipped with nbsrc). ``"dataset"``: the labels of `split`
            under `dataset_root` (else ``cfg.data.dataset_root``), mapped exactly as the datasets map them
            (`nbsrc.data.label_frame.LabelFrame` with ``cfg.data``: sizes CSV, images, ``label_frame``,
            ``resize_policy``). None: ``"wider"`` when `gt_dir` is given, else ``"dataset"``.
        max_images: the first N images only.

    Returns:
        ``{"boxes": [N, 4] xyxy, "per_image": list of [n, 4], "images": int, "source": str}``.

    Raises:
        ValueError: an unknown `faces`, or ``"dataset"`` without a dataset root.
        nbsrc.data.label_frame.LabelFrameError: dataset labels whose frame cannot be determined.
    """
    from nbsrc.data.image_sizes import split_sizes
    from nbsrc.data.label_frame import LabelFrame
    from nbsrc.data.layout import find_labels, read_split_labels
    from nbsrc.data.readers import drop_degenerate

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
    split_dir = Path(dataset_root) / split
    label_file = find_labels(split_dir)
    records = read_split_labels(label_file)
    found = split_sizes(
        split_dir, sizes_csv=cfg.data.sizes_csv, images_root=cfg.data.images_root, cache_dir=cfg.data.cache_dir
    )
    frame = LabelFrame(found.sizes, cfg.data.resize_policy, cfg.data.label_frame)
    source = f"{Path(dataset_root).name}/{split} labels ({label_file.name})"
    if max_images is not None:
        records = records[:max_images]
    dropped = 0
    per_image = []
    for record in records:
        record, count = drop_degenerate(record)
        dropped += count
        boxes = frame.to_net(record, net)[0].boxes[record.labels == FACE]
        per_image.append(np.asarray(boxes, np.float32).reshape(-1, 4))  # (n, 4)
    if dropped:
        logger.info("%s: dropped %d degenerate boxes (w <= 0 or h <= 0)", source, dropped)
    boxes = np.concatenate(per_image) if per_image else np.zeros((0, 4), np.float32)
    return {"boxes": boxes, "per_image": per_image, "images": len(per_image), "source": source}


def _wider_sizes(cfg: Config, gt_folder: Path) -> tuple[Any, str]:
    """Original sizes of the WIDER val images (`nbsrc.data.label_frame.ImageSizes` or None) and their source:
    ``data.sizes_csv``, else an ``image_sizes.csv`` in the ground-truth folder, its parent or grandparent, and
    the ``WIDER_val`` tree below ``data.images_root`` (`nbsrc.data.image_sizes.find_sizes`)."""
    from nbsrc.data.image_sizes import ImageTreeError, find_sizes
    from nbsrc.data.label_frame import SIZES_CSV_NAME

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
    """The faces of the WIDER FACE val ground truth in the network frame of `cfg` (see `load_faces`).

    Degenerate boxes (``w <= 0`` or ``h <= 0``) are dropped. An image's original size comes from `_wider_sizes`;
    without one, WIDER's 1024 px width is assumed (the ``.mat`` files carry no sizes; exact for ``letterbox`` of
    landscape images). The mapping is one array pass over all faces.
    """
    from nbsrc.data.readers.wider_mat import read_wider_gt
    from nbsrc.evaluation.ground_truth import resolve_gt_dir

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
        logger.info(
            "%s: original sizes of %s of %s images unknown (%s), assuming WIDER's %d px width",
            source,
            f"{len(names) - known:,}",
            f"{len(names):,}",
            sizes_source,
            WIDER_WIDTH,
        )
    return {"boxes": net[keep], "per_image": per_image, "images": len(names), "source": source}


# ---- anchors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnchorLayout:
    """Anchor geometry of a preset at one network size: strides, shapes (w, h) pixels per level, clipping."""

    name: str
    strides: list[int]
    shapes: list[np.ndarray]  # per level [K, 2] (w, h) pixels
    image_size: tuple[int, int]  # (H, W)
    clip: bool = False

    def generator(self) -> AnchorGenerator:
        return AnchorGenerator(self.strides, [torch.as_tensor(s, dtype=torch.float64) for s in self.shapes], self.clip)

    @property
    def num_anchors(self) -> int:
        return sum(h * w * len(s) for (h, w), s in zip(feature_sizes(self.image_size, self.strides), self.shapes))


_STRIDES_CACHE: dict[str, list[int]] = {}


def _model_strides(cfg: Config) -> list[int]:
    """Strides of the preset's network, asked from the model itself (built once per model design)."""
    key = f"{cfg.model.backbone}/{cfg.model.neck}/{cfg.model.input_kind}/{cfg.model.latent_stride}/{cfg.model.bridge}"
    if key not in _STRIDES_CACHE:
        from nbsrc.model import build_model

        model = build_model(cfg.replace(**{"model.pretrained": "none"}))
        _STRIDES_CACHE[key] = [int(s) for s in model.strides]
    return _STRIDES_CACHE[key]


def anchor_layout(preset: str | Config, image_size: int | tuple[int, int] | None = None) -> AnchorLayout:
    """The anchors a preset's model uses (strides from the model, shapes from ``cfg.anchors``).

    Args:
        preset: preset name or a `Config`.
        image_size: network frame side or (H, W); default ``cfg.data.image_size``.
    """
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    side = image_size if image_size is not None else cfg.data.image_size
    hw = (side, side) if isinstance(side, int) else (int(side[0]), int(side[1]))
    strides = _model_strides(cfg)
    generator = AnchorGenerator.from_config(cfg.anchors, strides)
    shapes = [s.numpy().astype(np.float64) for s in generator.shapes]
    return AnchorLayout(cfg.preset, strides, shapes, hw, cfg.anchors.clip)


def anchor_table(layout: AnchorLayout) -> list[dict[str, Any]]:
    """Per level: stride, feature map, anchors per location, anchors, and the anchor shapes (w x h px)."""
    rows = []
    for level, ((fh, fw), stride, shapes) in enumerate(
        zip(feature_sizes(layout.image_size, layout.strides), layout.strides, layout.shapes)
    ):
        rows.append(
            {
                "level": level,
                "stride": stride,
                "feature map": f"{fh}x{fw}",
                "anchors/location": len(shapes),
                "anchors": fh * fw * len(shapes),
                "shapes (w x h px)": ", ".join(f"{w:.0f}x{h:.0f}" for w, h in shapes),
            }
        )
    rows.append(
        {
            "level": "total",
            "stride": "",
            "feature map": "",
            "anchors/location": "",
            "anchors": layout.num_anchors,
            "shapes (w x h px)": "",
        }
    )
    return rows


def best_anchor_iou(boxes: np.ndarray | Tensor, layout: AnchorLayout) -> dict[str, np.ndarray]:
    """Exact best IoU of each face with any anchor of `layout` (see the module docstring for why it is exact).

    Args:
        boxes: ``[N, 4]`` xyxy network-frame pixels.
        layout: the anchors (`anchor_layout`).

    Returns:
        ``iou [N]`` float64, ``level [N]`` and ``shape [N]`` (index within the level) of the best anchor.
    """
    faces = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)  # (N, 4)
    height, width = layout.image_size
    n = faces.shape[0]
    if n == 0:
        return {"iou": np.zeros(0), "level": np.zeros(0, np.int64), "shape": np.zeros(0, np.int64)}
    cx = (faces[:, 0] + faces[:, 2]) / 2
    cy = (faces[:, 1] + faces[:, 3]) / 2
    area = (faces[:, 2] - faces[:, 0]).clamp(min=0) * (faces[:, 3] - faces[:, 1]).clamp(min=0)  # (N,)
    best = torch.full((n,), -1.0, dtype=torch.float64)
    best_level = torch.zeros(n, dtype=torch.int64)
    best_shape = torch.zeros(n, dtype=torch.int64)
    for level, ((fh, fw), stride, shapes) in enumerate(
        zip(feature_sizes(layout.image_size, layout.strides), layout.strides, layout.shapes)
    ):
        if len(shapes) == 0:
            continue
        wh = torch.as_tensor(np.asarray(shapes, dtype=np.float64)).reshape(-1, 2)  # (K, 2)
        if layout.clip:
            wh = torch.stack([wh[:, 0].clamp(max=width), wh[:, 1].clamp(max=height)], dim=1)  # (K, 2)
        ax = (torch.floor(cx / stride).clamp(0, fw - 1) + 0.5) * stride  # (N,) nearest grid centre
        ay = (torch.floor(cy / stride).clamp(0, fh - 1) + 0.5) * stride  # (N,)
        x1 = ax[:, None] - wh[None, :, 0] / 2  # (N, K)
        x2 = ax[:, None] + wh[None, :, 0] / 2  # (N, K)
        y1 = ay[:, None] - wh[None, :, 1] / 2  # (N, K)
        y2 = ay[:, None] + wh[None, :, 1] / 2  # (N, K)
        iw = (torch.minimum(x2, faces[:, 2:3]) - torch.maximum(x1, faces[:, 0:1])).clamp(min=0)  # (N, K)
        ih = (torch.minimum(y2, faces[:, 3:4]) - torch.maximum(y1, faces[:, 1:2])).clamp(min=0)  # (N, K)
        inter = iw * ih
        iou = inter / (area[:, None] + (wh[:, 0] * wh[:, 1])[None, :] - inter).clamp(min=1e-12)  # (N, K)
        level_best, level_shape = iou.max(dim=1)
        better = level_best > best
        best = torch.where(better, level_best, best)
        best_level = torch.where(better, torch.full_like(best_level, level), best_level)
        best_shape = torch.where(better, level_shape, best_shape)
    return {"iou": best.clamp(min=0).numpy(), "level": best_level.numpy(), "shape": best_shape.numpy()}


def best_anchor_iou_bruteforce(
    boxes: np.ndarray | Tensor, anchors: Tensor, image_size: tuple[int, int], chunk: int = 256
) -> np.ndarray:
    """Reference: max IoU of each face over every anchor (``anchors`` ``[A, 4]`` cxcywh normalized, as
    `nbsrc.anchors` makes them), chunked over faces. ``image_size`` is (H, W)."""
    from torchvision.ops import box_iou

    from nbsrc.boxes import cxcywh_to_xyxy

    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    anchors_xyxy = cxcywh_to_xyxy(anchors.to(torch.float64)) * scale  # (A, 4)
    faces = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)  # (N, 4)
    best = [box_iou(faces[i : i + chunk], anchors_xyxy).max(dim=1).values for i in range(0, len(faces), chunk)]
    return torch.cat(best).numpy() if best else np.zeros(0)


def _bin_labels(bins: Sequence[float]) -> list[str]:
    labels = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        labels.append(f">= {lo:g}" if math.isinf(hi) else f"{lo:g}-{hi:g}")
    return labels


def recall_by_size(
    boxes: np.ndarray,
    best_iou: np.ndarray,
    *,
    bins: Sequence[float] = SIZE_BINS,
    thresholds: Sequence[float] = (0.35, 0.5),
    force_iou: float = 0.2,
) -> list[dict[str, Any]]:
    """Per face-size bin: faces, mean best IoU, recall at each IoU threshold, faces no anchor can match.

    "Recall at t" is the fraction of faces whose best anchor has IoU >= t (the anchor that can become a
    positive); "unmatched" counts faces whose best IoU is below `force_iou`, which matching never assigns.
    """
    width, height = _wh(boxes)
    size = np.sqrt(np.clip(width, 0, None) * np.clip(height, 0, None))
    best_iou = np.asarray(best_iou, dtype=np.float64)
    rows = []
    edges = list(bins)
    for label, lo, hi in zip(_bin_labels(edges), edges[:-1], edges[1:]):
        mask = (size >= lo) & (size < hi)
        rows.append(_recall_row(label, best_iou[mask], thresholds, force_iou))
    rows.append(_recall_row("all", best_iou, thresholds, force_iou))
    return rows


def _recall_row(label: str, ious: np.ndarray, thresholds: Sequence[float], force_iou: float) -> dict[str, Any]:
    n = len(ious)
    row: dict[str, Any] = {"size (px)": label, "faces": n, "mean best IoU": float(ious.mean()) if n else float("nan")}
    for t in thresholds:
        row[f"recall@{t:g}"] = float((ious >= t).mean()) if n else float("nan")
    row["unmatched"] = int((ious < force_iou).sum())
    return row


def compare_presets(
    presets: Sequence[str | Config],
    boxes: np.ndarray,
    *,
    image_size: int | None = None,
    force_iou: float = 0.2,
    small: float = 16.0,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Anchor coverage of several presets on the same faces.

    Returns:
        One row per preset (anchors, mean best IoU, recall at 0.35 / 0.5, unmatched faces, recall at 0.35 of
        faces smaller than `small` px) and the best-anchor IoU per face of each preset (name -> ``[N]``).
    """
    width, height = _wh(boxes)
    is_small = np.sqrt(np.clip(width * height, 0, None)) < small
    rows, ious = [], {}
    for preset in presets:
        layout = anchor_layout(preset, image_size)
        iou = best_anchor_iou(boxes, layout)["iou"]
        ious[layout.name] = iou
        n = max(len(iou), 1)
        small_recall = float((iou[is_small] >= 0.35).mean()) if is_small.any() else float("nan")
        rows.append(
            {
                "preset": layout.name,
                "strides": "/".join(map(str, layout.strides)),
                "anchors": layout.num_anchors,
                "mean best IoU": float(iou.mean()) if len(iou) else float("nan"),
                "recall@0.35": float((iou >= 0.35).sum() / n),
                "recall@0.5": float((iou >= 0.5).sum() / n),
                "unmatched": int((iou < force_iou).sum()),
                f"recall@0.35 (<{small:g} px)": small_recall,
            }
        )
    return rows, ious


def unmatched_summary(boxes: np.ndarray, best_iou: np.ndarray, force_iou: float = 0.2) -> dict[str, Any]:
    """Faces whose best anchor IoU is below `force_iou` (matching never assigns them): count, share, sizes."""
    width, height = _wh(boxes)
    size = np.sqrt(np.clip(width * height, 0, None))
    mask = np.asarray(best_iou) < force_iou
    return {
        "faces": len(size),
        "unmatched": int(mask.sum()),
        "share": float(mask.mean()) if len(size) else float("nan"),
        "median size (px)": float(np.median(size[mask])) if mask.any() else float("nan"),
        "largest (px)": float(size[mask].max()) if mask.any() else float("nan"),
        "smallest matched (px)": float(size[~mask].min()) if (~mask).any() else float("nan"),
    }


# ---- anchor shape suggestions ---------------------------------------------------------------------
def _shape_iou(wh: Tensor, centroids: Tensor) -> Tensor:
    """IoU of boxes and centroids sharing one centre: ``[N, 2]`` x ``[K, 2]`` -> ``[N, K]``."""
    inter = torch.minimum(wh[:, None, 0], centroids[None, :, 0]) * torch.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centroids[:, 0] * centroids[:, 1])[None, :] - inter  # (N, K)
    return inter / union.clamp(min=1e-12)


def kmeans_anchors(wh: np.ndarray, k: int, *, iters: int = 300, seed: int = 0) -> np.ndarray:
    """k-means of face (w, h) with the distance ``1 - IoU`` (boxes compared at a common centre).

    k-means++ seeding, medians as centroids, stops when assignments no longer change.

    Returns:
        ``[k, 2]`` (w, h) sorted by area.
    """
    data = torch.as_tensor(np.asarray(wh, dtype=np.float64)).reshape(-1, 2)  # (N, 2)
    data = data[(data > 0).all(dim=1)]
    if len(data) < k:
        raise ValueError(f"k-means of anchor shapes: {len(data)} faces for k={k}; need at least k")
    gen = torch.Generator().manual_seed(seed)
    centroids = data[torch.randint(len(data), (1,), generator=gen)]
    while len(centroids) < k:  # k-means++: next centre drawn with probability ~ distance^2
        dist = (1 - _shape_iou(data, centroids)).min(dim=1).values ** 2
        pick = torch.multinomial(dist / dist.sum() if dist.sum() > 0 else torch.ones_like(dist), 1, generator=gen)
        centroids = torch.cat([centroids, data[pick]])
    assign = torch.full((len(data),), -1, dtype=torch.int64)
    for _ in range(iters):
        new_assign = _shape_iou(data, centroids).argmax(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):
            members = data[assign == j]
            if len(members):
                centroids[j] = members.median(dim=0).values
    order = torch.argsort(centroids[:, 0] * centroids[:, 1])
    return centroids[order].numpy()


def shape_coverage(wh: np.ndarray, anchor_wh: np.ndarray) -> dict[str, float]:
    """How well anchor shapes fit face shapes when centres coincide (an upper bound of positional IoU)."""
    data = torch.as_tensor(np.asarray(wh, dtype=np.float64)).reshape(-1, 2)  # (N, 2)
    anchors = torch.as_tensor(np.asarray(anchor_wh, dtype=np.float64)).reshape(-1, 2)  # (K, 2)
    best = _shape_iou(data, anchors).max(dim=1).values if len(data) else torch.zeros(0, dtype=torch.float64)
    n = max(len(best), 1)
    return {
        "mean IoU": float(best.mean()) if len(best) else float("nan"),
        "recall@0.35": float((best >= 0.35).sum() / n),
        "recall@0.5": float((best >= 0.5).sum() / n),
    }


def _assign_levels(shapes: np.ndarray, layout: AnchorLayout) -> list[np.ndarray]:
    """Put each shape on the level whose stride best matches it, keeping the layout's size/stride ratio."""
    ratios = [np.sqrt(s[:, 0] * s[:, 1]).mean() / stride for s, stride in zip(layout.shapes, layout.strides) if len(s)]
    ratio = float(np.median(ratios)) if ratios else 4.0
    sizes = np.sqrt(shapes[:, 0] * shapes[:, 1])
    log_strides = np.log2(np.asarray(layout.strides, dtype=np.float64))
    level = np.abs(np.log2(sizes / ratio)[:, None] - log_strides[None, :]).argmin(axis=1)
    return [shapes[level == i] for i in range(len(layout.strides))]


def suggest_anchors(
    boxes: np.ndarray, layout: AnchorLayout, ks: Sequence[int] = (2, 4, 6, 9), *, seed: int = 0
) -> list[dict[str, Any]]:
    """k-means anchor shapes for several k, next to the layout's own shapes, with their coverage.

    Each row: shape-only coverage (centres aligned) and positional coverage (the shapes placed on the
    layout's levels by size / stride, best anchor over the real grid): mean best IoU and recall at 0.35 / 0.5.
    """
    width, height = _wh(boxes)
    keep = (width > 0) & (height > 0)
    wh = np.stack([width[keep], height[keep]], axis=1)  # (N, 2)
    faces = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[keep]  # (N, 4)
    candidates = [(f"{layout.name} ({sum(len(s) for s in layout.shapes)} shapes)", None)]
    candidates += [(f"k-means k={k}", k) for k in ks if k <= len(wh)]
    rows = []
    for label, k in candidates:
        if k is None:
            shapes = np.concatenate([s for s in layout.shapes if len(s)], axis=0)
            placed = layout
        else:
            shapes = kmeans_anchors(wh, k, seed=seed)
            placed = AnchorLayout(label, layout.strides, _assign_levels(shapes, layout), layout.image_size, layout.clip)
        shape_cov = shape_coverage(wh, shapes)
        iou = best_anchor_iou(faces, placed)["iou"]
        n = max(len(iou), 1)
        rows.append(
            {
                "anchors": label,
                "shapes (w x h px)": ", ".join(f"{w:.0f}x{h:.0f}" for w, h in shapes),
                "shape IoU": shape_cov["mean IoU"],
                "shape recall@0.5": shape_cov["recall@0.5"],
                "grid mean IoU": float(iou.mean()) if len(iou) else float("nan"),
                "grid recall@0.35": float((iou >= 0.35).sum() / n),
                "grid recall@0.5": float((iou >= 0.5).sum() / n),
                "anchors per image": placed.num_anchors,
            }
        )
    return rows


# ---- dataset and latent statistics ----------------------------------------------------------------
def dataset_summary(
    boxes_per_split: Mapping[str, Sequence[np.ndarray]], rates_per_split: Mapping[str, Mapping[int, int]] | None = None
) -> list[dict[str, Any]]:
    """One row per split: images, faces, faces per image, images without faces, face size percentiles
    (network pixels), faces under 16 px, and how many images have each latent rate.

    Args:
        boxes_per_split: split -> per-image ``[N, 4]`` network-frame boxes.
        rates_per_split: split -> {rate: images with that latent}.
    """
    rows = []
    for split, per_image in boxes_per_split.items():
        counts = np.array([len(b) for b in per_image])
        all_boxes = (
            np.concatenate([np.asarray(b).reshape(-1, 4) for b in per_image]) if len(per_image) else np.zeros((0, 4))
        )
        width, height = _wh(all_boxes)
        size = np.sqrt(np.clip(width * height, 0, None))
        row: dict[str, Any] = {
            "split": split,
            "images": len(per_image),
            "faces": int(counts.sum()) if len(counts) else 0,
            "faces/image": float(counts.mean()) if len(counts) else 0.0,
            "images without faces": int((counts == 0).sum()) if len(counts) else 0,
            "median size (px)": float(np.median(size)) if len(size) else float("nan"),
            "p5-p95 size (px)": f"{np.percentile(size, 5):.1f}-{np.percentile(size, 95):.1f}" if len(size) else "",
            "faces < 16 px": int((size < 16).sum()),
        }
        for rate, count in sorted(((rates_per_split or {}).get(split) or {}).items()):
            row[f"latent_{rate}"] = count
        rows.append(row)
    return rows


def latent_statistics(latents: Iterable[np.ndarray], bins: int = 80) -> dict[str, Any]:
    """Per-channel mean / std and a value histogram of a set of latents ``[C, h, w]`` (same C).

    Returns:
        ``mean [C]``, ``std [C]``, ``hist [bins]``, ``edges [bins+1]``, ``min``, ``max``, ``zero_fraction``, ``count``.
    """
    stack = [np.asarray(x, dtype=np.float32) for x in latents]
    if not stack:
        raise ValueError("latent statistics: no latents given")
    channels = {x.shape[0] for x in stack}
    if len(channels) != 1 or any(x.ndim != 3 for x in stack):
        raise ValueError(
            f"latent statistics: expected [C, h, w] latents with one C, got {sorted({x.shape for x in stack})}"
        )
    per_channel = np.concatenate([x.reshape(x.shape[0], -1) for x in stack], axis=1)  # (C, n*h*w)
    values = per_channel.reshape(-1)  # (C*n*h*w,)
    lo, hi = np.percentile(values, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(values.min()) - 0.5, float(values.max()) + 0.5
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return {
        "mean": per_channel.mean(axis=1, dtype=np.float64),
        "std": per_channel.std(axis=1, dtype=np.float64),
        "hist": hist,
        "edges": edges,
        "min": float(values.min()),
        "max": float(values.max()),
        "zero_fraction": float((values == 0).mean()),
        "count": len(stack),
    }


def rate_counts(split_dir: str | Path) -> dict[int, int]:
    """Images of a split that have each latent rate (``{12: n, 25: n, ...}``; flat unrated files count as 0)."""
    from nbsrc.data.layout import scan_latents

    latent_dir = Path(split_dir) / "latent"
    if not latent_dir.is_dir():
        return {}
    counts: dict[int, int] = {}
    for per_image in scan_latents(latent_dir, suffix=None).files.values():
        for rate in per_image:
            counts[rate or 0] = counts.get(rate or 0, 0) + 1
    return dict(sorted(counts.items()))


def latent_statistics_by_rate(
    split_dir: str | Path, *, max_files: int = 32, channels: int = 256, bins: int = 80
) -> dict[int, dict[str, Any]]:
    """`latent_statistics` per rate of a split, from up to `max_files` latents per rate spread over the split."""
    from nbsrc.data.layout import scan_latents
    from nbsrc.latents import load_latent

    latent_dir = Path(split_dir) / "latent"
    if not latent_dir.is_dir():
        raise FileNotFoundError(f"{latent_dir}: no latent folder")
    by_rate: dict[int, list[Path]] = {}
    for per_image in scan_latents(latent_dir, suffix=None).files.values():
        for rate, path in per_image.items():
            by_rate.setdefault(rate or 0, []).append(path)
    result = {}
    for rate, files in sorted(by_rate.items()):
        pick = np.unique(np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int))
        result[rate] = latent_statistics([load_latent(files[i], channels) for i in pick], bins=bins)
    return result


def latent_statistics_rows(by_rate: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of `latent_statistics_by_rate`: one per rate."""
    rows = []
    for rate, st in by_rate.items():
        rows.append(
            {
                "rate": f"latent_{rate}" if rate else "latent",
                "bpp": rate / 100 if rate else float("nan"),
                "files": st["count"],
                "min": st["min"],
                "max": st["max"],
                "channel mean (avg)": float(np.mean(st["mean"])),
                "channel std (min)": float(np.min(st["std"])),
                "channel std (max)": float(np.max(st["std"])),
                "zeros": st["zero_fraction"],
            }
        )
    return rows


def energy_map(latent: np.ndarray) -> np.ndarray:
    """RMS over channels of a latent ``[C, h, w]`` (or ``[1, C, h, w]``): ``float32 [h, w]``."""
    array = np.asarray(latent, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"energy map: expected a latent [C, h, w], got shape {array.shape}")
    return np.sqrt((array.astype(np.float64) ** 2).mean(axis=0)).astype(np.float32)


# ---- detections against ground truth ----------------------------------------------------------------
def match_detections(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    iou_thresh: float = 0.5,
    gt_ignore: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Greedy matching in score order, one detection per face (the VOC / WIDER rule, without the +1 area).

    Returns:
        ``tp [P]`` bool, ``ignored [P]`` bool (matched an ignored face: neither TP nor FP), ``fp [P]`` bool,
        ``gt_matched [G]`` bool, ``gt_ignore [G]`` bool (misses are ``~gt_matched & ~gt_ignore``).
    """
    from torchvision.ops import box_iou

    preds = torch.as_tensor(np.asarray(pred_boxes, dtype=np.float64)).reshape(-1, 4)  # (P, 4)
    gts = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float64)).reshape(-1, 4)  # (G, 4)
    ignore = np.zeros(len(gts), bool) if gt_ignore is None else np.asarray(gt_ignore, bool).reshape(-1)
    order = np.argsort(-np.asarray(pred_scores, dtype=np.float64).reshape(-1), kind="stable")
    tp = np.zeros(len(preds), bool)
    hit_ignored = np.zeros(len(preds), bool)
    matched = np.zeros(len(gts), bool)
    if len(preds) and len(gts):
        iou = box_iou(preds, gts).numpy()  # (P, G)
        for p in order:
            candidates = np.where(~matched, iou[p], -1.0)
            g = int(candidates.argmax())
            if candidates[g] >= iou_thresh:
                matched[g] = True
                if ignore[g]:
                    hit_ignored[p] = True
                else:
                    tp[p] = True
    return {"tp": tp, "ignored": hit_ignored, "fp": ~tp & ~hit_ignored, "gt_matched": matched, "gt_ignore": ignore}
