"""Detections matched to one image's faces (`nbsrc.evaluation.detection_matching`)."""

from __future__ import annotations

import numpy as np

from nbsrc.evaluation.detection_matching import match_detections


def test_match_detections_tp_fp_miss_ignored():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], dtype=np.float64)
    preds = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 61], [100, 100, 110, 110]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    match = match_detections(preds, scores, gt, gt_ignore=np.array([False, False, True]))
    assert match["tp"].tolist() == [True, False, False, False]
    assert match["ignored"].tolist() == [False, False, True, False]
    assert match["fp"].tolist() == [False, True, False, True]  # duplicate of face 0, and a box on nothing
    assert match["gt_matched"].tolist() == [True, False, True]
    empty = match_detections(np.zeros((0, 4)), np.zeros(0), gt)
    assert empty["gt_matched"].sum() == 0 and len(empty["tp"]) == 0
