"""Detections matched to the faces of one image, for drawing true positives, false positives and misses
(`nbsrc.viz.detection_gallery`)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["match_detections"]


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
