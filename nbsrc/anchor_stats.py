"""Anchor coverage: the anchors a preset's model uses, the best anchor IoU of each face, recall by face size,
presets compared on the same faces, and k-means anchor shapes suggested from the faces.

Boxes are ``[N, 4]`` xyxy in network-frame pixels; faces come from `nbsrc.face_stats`.

Best-anchor IoU is exact without an ``N x A`` IoU matrix: for boxes of fixed sizes the overlap along x never
grows with ``|dx|`` (same along y), so per level and anchor shape the best anchor is the one whose grid centre is
nearest the face centre: an ``N x (levels x shapes)`` computation equal to the brute-force maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbsrc.anchors import AnchorGenerator, feature_sizes
from nbsrc.config import Config, get_preset
from nbsrc.face_stats import face_wh
from nbsrc.model import build_model

__all__ = [
    "SIZE_BINS",
    "AnchorLayout",
    "anchor_layout",
    "anchor_table",
    "best_anchor_iou",
    "compare_presets",
    "kmeans_anchors",
    "recall_by_size",
    "shape_coverage",
    "suggest_anchors",
    "unmatched_summary",
]

SIZE_BINS = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, math.inf)  # face size bins, sqrt(w*h) network pixels


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
        model = build_model(cfg.replace(**{"model.pretrained": "none"}))
        _STRIDES_CACHE[key] = [int(s) for s in model.strides]
    return _STRIDES_CACHE[key]


def anchor_layout(preset: str | Config, image_size: int | tuple[int, int] | None = None) -> AnchorLayout:
    """The anchors a preset's model (name or `Config`) uses at `image_size` (side or (H, W); default
    ``cfg.data.image_size``): strides from the model, shapes from ``cfg.anchors``."""
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
    rows.append({**dict.fromkeys(rows[0], ""), "level": "total", "anchors": layout.num_anchors})
    return rows


def best_anchor_iou(boxes: np.ndarray | Tensor, layout: AnchorLayout) -> dict[str, np.ndarray]:
    """Exact best IoU of each face ``[N, 4]`` xyxy with any anchor of `layout` (see the module docstring).

    Returns ``iou [N]`` float64, ``level [N]`` and ``shape [N]`` (index within the level) of the best anchor.
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
    width, height = face_wh(boxes)
    size = np.sqrt(np.clip(width, 0, None) * np.clip(height, 0, None))
    best_iou = np.asarray(best_iou, dtype=np.float64)
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        label = f">= {lo:g}" if math.isinf(hi) else f"{lo:g}-{hi:g}"
        rows.append(_recall_row(label, best_iou[(size >= lo) & (size < hi)], thresholds, force_iou))
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
    """Anchor coverage of several presets on the same faces: one row per preset (anchors, mean best IoU, recall
    at 0.35 / 0.5, unmatched faces, recall at 0.35 of faces under `small` px) and each preset's best IoU ``[N]``."""
    width, height = face_wh(boxes)
    is_small = np.sqrt(np.clip(width * height, 0, None)) < small
    rows, ious = [], {}
    for preset in presets:
        layout = anchor_layout(preset, image_size)
        iou = best_anchor_iou(boxes, layout)["iou"]
        ious[layout.name] = iou
        coverage = _coverage(iou)
        small_recall = float((iou[is_small] >= 0.35).mean()) if is_small.any() else float("nan")
        rows.append(
            {
                "preset": layout.name,
                "strides": "/".join(map(str, layout.strides)),
                "anchors": layout.num_anchors,
                "mean best IoU": coverage["mean IoU"],
                "recall@0.35": coverage["recall@0.35"],
                "recall@0.5": coverage["recall@0.5"],
                "unmatched": int((iou < force_iou).sum()),
                f"recall@0.35 (<{small:g} px)": small_recall,
            }
        )
    return rows, ious


def unmatched_summary(boxes: np.ndarray, best_iou: np.ndarray, force_iou: float = 0.2) -> dict[str, Any]:
    """Faces whose best anchor IoU is below `force_iou` (matching never assigns them): count, share, sizes."""
    width, height = face_wh(boxes)
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
    """k-means of face (w, h) ``[N, 2]`` with the distance ``1 - IoU`` at a common centre (k-means++ seeding,
    medians as centroids): ``[k, 2]`` (w, h) sorted by area."""
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


def _coverage(iou: np.ndarray) -> dict[str, float]:
    """Mean and recall at 0.35 / 0.5 of best IoUs ``[N]`` (recalls are 0 without faces)."""
    n = max(len(iou), 1)
    return {
        "mean IoU": float(iou.mean()) if len(iou) else float("nan"),
        "recall@0.35": float((iou >= 0.35).sum() / n),
        "recall@0.5": float((iou >= 0.5).sum() / n),
    }


def shape_coverage(wh: np.ndarray, anchor_wh: np.ndarray) -> dict[str, float]:
    """How well anchor shapes fit face shapes when centres coincide (an upper bound of positional IoU)."""
    data = torch.as_tensor(np.asarray(wh, dtype=np.float64)).reshape(-1, 2)  # (N, 2)
    anchors = torch.as_tensor(np.asarray(anchor_wh, dtype=np.float64)).reshape(-1, 2)  # (K, 2)
    best = _shape_iou(data, anchors).max(dim=1).values.numpy() if len(data) else np.zeros(0)
    return _coverage(best)


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
    """k-means anchor shapes for several k, next to the layout's own shapes, with their coverage: shape-only
    (centres aligned) and on the grid (shapes placed on the layout's levels by size / stride)."""
    width, height = face_wh(boxes)
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
        grid = _coverage(best_anchor_iou(faces, placed)["iou"])
        rows.append(
            {
                "anchors": label,
                "shapes (w x h px)": ", ".join(f"{w:.0f}x{h:.0f}" for w, h in shapes),
                "shape IoU": shape_cov["mean IoU"],
                "shape recall@0.5": shape_cov["recall@0.5"],
                "grid mean IoU": grid["mean IoU"],
                "grid recall@0.35": grid["recall@0.35"],
                "grid recall@0.5": grid["recall@0.5"],
                "anchors per image": placed.num_anchors,
            }
        )
    return rows
