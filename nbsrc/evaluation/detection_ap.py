"""Single-class VOC average precision, in memory and vectorized (no Python loop per detection or per image).

Boxes are ``[n, 4]`` xyxy in any consistent frame (pixels or [0, 1]). The IoU is the plain continuous one (no
+1 pixel, which would be wrong on normalized coordinates); ``plus_one=True`` is the WIDER protocol's variant.

Matching follows the VOC devkit: detections of all images are ranked by descending score (stable); each takes
the ground-truth box of highest IoU in its image (the first on ties). If that IoU is ``>= iou_thresh``: an
ignored box makes it neither TP nor FP, an unmatched box makes it a TP and marks the box, a matched box makes it
a FP. Otherwise it is a FP. AP is the all-point VOC integral of the precision envelope over recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PRCurve", "box_iou", "detection_ap", "detection_pr", "max_iou_match", "voc_ap"]

# (prediction, ground truth) pairs `max_iou_match` forms at once (small chunks: large temporaries allocate slowly)
MAX_PAIRS = 1 << 16


@dataclass
class PRCurve:
    """Precision/recall over the ranked detections (ignored ones removed)."""

    precision: np.ndarray  # [D] after each counted detection, by rank
    recall: np.ndarray  # [D]
    scores: np.ndarray  # [D] descending
    ap: float  # all-point VOC AP; NaN without non-ignored ground truth
    num_gt: int  # non-ignored ground-truth boxes


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU matrix of ``[n, 4]`` and ``[m, 4]`` xyxy boxes -> ``float64 [n, m]`` (``plus_one``: sizes are
    ``x2 - x1 + 1``, the WIDER / VOC-pixel convention)."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)[:, None, :]  # (n, 1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)[None, :, :]  # (1, m, 4)
    return _pair_iou(a, b, 1.0 if plus_one else 0.0)


def _pair_iou(a: np.ndarray, b: np.ndarray, one: float) -> np.ndarray:
    """Elementwise IoU of broadcastable ``[..., 4]`` xyxy arrays (``one`` = 1 for the +1-pixel convention), in
    the operation order of the WIDER code."""
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
    inter = iw * ih
    union = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one) + area_b - inter
    valid = (iw > 0) & (ih > 0) & (union > 0)
    return np.divide(inter, union, out=np.zeros(np.broadcast(iw, ih).shape), where=valid)


def max_iou_match(
    pred_boxes: np.ndarray,
    pred_image: np.ndarray,
    gt_boxes: np.ndarray,
    gt_offsets: np.ndarray,
    *,
    min_iou: float,
    plus_one: bool = False,
    max_pairs: int = MAX_PAIRS,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ground-truth box of every prediction whose best IoU is ``>= min_iou``, over many images at once.

    Only candidate pairs are formed: with ``IoU >= t`` the overlap in x is at least ``t`` times each box's width,
    so a box can only match a prediction if its ``x1`` lies in ``(x1p - Wp / t, x2p + 1)``; boxes are sorted by
    ``x1`` per image and the candidates found by binary search (the interval is widened slightly, so no
    candidate is lost to rounding).

    Args:
        pred_boxes: ``[N, 4]`` xyxy predictions of all images, concatenated in any order.
        pred_image: ``int [N]`` image index of each prediction.
        gt_boxes: ``[G, 4]`` xyxy ground truth of all images, concatenated image by image.
        gt_offsets: ``int [I + 1]``: image ``i`` owns ``gt_boxes[gt_offsets[i]:gt_offsets[i + 1]]``.
        max_pairs: candidate pairs materialised per chunk (bounds memory).
    Returns:
        ``(best_iou float64 [N], best_index int64 [N])``: the highest IoU and the index of its box *within the
        image* (the first on ties, like ``np.argmax``) where that IoU is ``>= min_iou``; 0 and -1 elsewhere.
    """
    if not min_iou > 0:
        raise ValueError(f"min_iou must be > 0, got {min_iou}")
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)  # (G, 4)
    pred_image = np.asarray(pred_image, dtype=np.int64).reshape(-1)  # (N,)
    gt_offsets = np.asarray(gt_offsets, dtype=np.int64)
    n = len(pred_boxes)
    best_iou = np.zeros(n, np.float64)
    best_index = np.full(n, -1, np.int64)
    if n == 0 or len(gt_boxes) == 0:
        return best_iou, best_index
    one = 1.0 if plus_one else 0.0
    gt_image = np.repeat(np.arange(len(gt_offsets) - 1), np.diff(gt_offsets))  # (G,)
    extent = float(max(np.abs(gt_boxes).max(), np.abs(pred_boxes).max()))
    pred_width = pred_boxes[:, 2] - pred_boxes[:, 0] + one  # (N,)
    reach = float(max(pred_width.max(), 0.0)) / min_iou
    span = 4.0 * (extent + reach + one + 1.0)  # separates images on one sorted axis
    margin = 1e-9 * span * max(len(gt_offsets), 1)
    gt_key = gt_boxes[:, 0] + gt_image * span  # (G,)
    gt_order = np.argsort(gt_key, kind="stable")
    gt_key = gt_key[gt_order]
    pred_base = pred_image * span  # (N,)
    lo = np.searchsorted(gt_key, pred_base + pred_boxes[:, 0] - pred_width / min_iou - margin, side="left")
    hi = np.searchsorted(gt_key, pred_base + pred_boxes[:, 2] + one + margin, side="right")
    counts = np.maximum(hi - lo, 0)  # (N,) candidate boxes per prediction
    ends = np.cumsum(counts)
    start = 0
    while start < n:
        # Largest chunk [start, stop) with at most max_pairs pairs (at least one prediction).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_pairs, side="right")))
        _match_chunk(
            pred_boxes, gt_boxes, gt_order, gt_offsets, gt_image, lo, counts, start, stop, one, best_iou, best_index
        )
        start = stop
    below = best_iou < min_iou
    best_iou[below] = 0.0
    best_index[below] = -1
    return best_iou, best_index


def _match_chunk(
    pred_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_order: np.ndarray,
    gt_offsets: np.ndarray,
    gt_image: np.ndarray,
    lo: np.ndarray,
    counts: np.ndarray,
    start: int,
    stop: int,
    one: float,
    best_iou: np.ndarray,
    best_index: np.ndarray,
) -> None:
    cnt = counts[start:stop]
    has = cnt > 0
    if not has.any():
        return
    pair_start = np.cumsum(cnt) - cnt  # (P,) first pair of each prediction
    pair_pred = np.repeat(np.arange(stop - start), cnt)  # (T,) prediction (chunk-local) of each pair
    sorted_pos = lo[start:stop][pair_pred] + (np.arange(len(pair_pred)) - pair_start[pair_pred])  # (T,)
    gt_index = gt_order[sorted_pos]  # (T,) global box index
    iou = _pair_iou(pred_boxes[start:stop][pair_pred], gt_boxes[gt_index], one)  # (T,)
    seg = pair_start[has]
    seg_max = np.maximum.reduceat(iou, seg)  # (P',) one per prediction with candidates
    local = gt_index - gt_offsets[gt_image[gt_index]]  # (T,) index within the image
    # np.argmax semantics: among the maxima, the smallest index in the image's original order.
    tie_index = np.where(iou == np.repeat(seg_max, cnt[has]), local, np.iinfo(np.int64).max)
    owner = start + np.flatnonzero(has)
    best_iou[owner] = seg_max
    best_index[owner] = np.minimum.reduceat(tie_index, seg)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point VOC AP: sentinels (0, 0) / (1, 0), precision envelope from the right, sum of
    Δrecall · precision where recall changes. NaN precision at points where recall does not change is never read.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _as_list(arrays: Sequence, width: int | None, what: str) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
        a = a.reshape(-1, width) if width else a.reshape(-1)  # (n, 4) boxes or (n,) scores
        if not np.isfinite(a).all():
            raise ValueError(f"{what}[{i}] holds NaN or infinite values")
        out.append(a)
    return out


def detection_pr(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
    ignore: Sequence[np.ndarray] | None = None,
) -> PRCurve:
    """Precision/recall curve and VOC AP of one class over a set of images.

    Per image: `pred_boxes` ``[n, 4]`` xyxy (numpy or CPU tensors), `pred_scores` ``[n]``, `gt_boxes` ``[m, 4]``
    xyxy in the same frame, optional `ignore` ``bool [m]`` (boxes that count neither as ground truth nor as false
    positives). A detection matches a box when their IoU is ``>= iou_thresh``.
    """
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes):
        raise ValueError(
            f"pred_boxes, pred_scores and gt_boxes need one entry per image, got "
            f"{len(pred_boxes)}, {len(pred_scores)}, {len(gt_boxes)}"
        )
    if not 0 < iou_thresh <= 1:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    boxes = _as_list(pred_boxes, 4, "pred_boxes")
    scores = _as_list(pred_scores, None, "pred_scores")
    gts = _as_list(gt_boxes, 4, "gt_boxes")
    for i, (b, s) in enumerate(zip(boxes, scores)):
        if len(b) != len(s):
            raise ValueError(f"image {i}: {len(b)} boxes but {len(s)} scores")
    gt_counts = np.array([len(g) for g in gts], np.int64)
    gt_offsets = np.concatenate(([0], np.cumsum(gt_counts)))
    if ignore is None:
        ignored = np.zeros(int(gt_offsets[-1]), bool)
    else:
        if len(ignore) != len(gts):
            raise ValueError(f"ignore needs one entry per image, got {len(ignore)} for {len(gts)} images")
        parts = [np.asarray(g, dtype=bool).reshape(-1) for g in ignore]  # (m,) per image
        for i, (p, g) in enumerate(zip(parts, gts)):
            if len(p) != len(g):
                raise ValueError(f"image {i}: ignore has {len(p)} entries for {len(g)} boxes")
        ignored = np.concatenate(parts) if parts else np.zeros(0, bool)
    num_gt = int((~ignored).sum())

    pred_counts = np.array([len(b) for b in boxes], np.int64)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    image = np.repeat(np.arange(len(boxes)), pred_counts)  # (D,)
    order = np.argsort(-all_scores, kind="stable")  # rank -> detection
    all_boxes, all_scores, image = all_boxes[order], all_scores[order], image[order]

    gt_all = np.concatenate(gts) if gts else all_boxes[:0]
    best_iou, best_local = max_iou_match(all_boxes, image, gt_all, gt_offsets, min_iou=iou_thresh)
    hit = (best_iou >= iou_thresh) & (best_local >= 0)
    best_global = np.where(hit, gt_offsets[image] + best_local, -1)
    hit_ignored = hit & ignored[np.maximum(best_global, 0)] if len(ignored) else np.zeros_like(hit)
    # First detection (in rank order) on each counted box is a TP; later ones on the same box are FPs.
    counted_hits = np.flatnonzero(hit & ~hit_ignored)
    _, first = np.unique(best_global[counted_hits], return_index=True)
    tp = np.zeros(len(all_scores), bool)
    tp[counted_hits[first]] = True
    keep = ~hit_ignored
    tp = tp[keep]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    precision = ctp / np.maximum(ctp + cfp, 1)
    recall = ctp / num_gt if num_gt else np.zeros(len(ctp))
    ap = voc_ap(recall, precision) if num_gt else float("nan")
    return PRCurve(precision=precision, recall=recall, scores=all_scores[keep], ap=ap, num_gt=num_gt)


def detection_ap(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_thresh: float = 0.5,
    ignore: Sequence[np.ndarray] | None = None,
) -> float:
    """VOC all-point AP of one class (see `detection_pr`); NaN when no ground truth is counted."""
    return detection_pr(pred_boxes, pred_scores, gt_boxes, iou_thresh=iou_thresh, ignore=ignore).ap
