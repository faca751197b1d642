"""Single-class VOC AP: equality with a per-detection loop, the plain IoU on normalized boxes, ignore regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbsrc.evaluation.detection_ap import box_iou, detection_ap, detection_pr, max_iou_match, voc_ap


def reference_ap(pred_boxes, pred_scores, gt_boxes, iou_thresh, ignore):
    """VOC devkit style: global ranking, one detection at a time."""
    dets = [(s, i, b) for i, (bs, ss) in enumerate(zip(pred_boxes, pred_scores)) for b, s in zip(bs, ss)]
    order = sorted(range(len(dets)), key=lambda k: -dets[k][0])
    used = [np.zeros(len(g), bool) for g in gt_boxes]
    tp, fp = [], []
    for k in order:
        _, i, box = dets[k]
        if len(gt_boxes[i]) == 0:
            tp.append(0)
            fp.append(1)
            continue
        overlaps = box_iou(box[None], gt_boxes[i])[0]
        j = int(np.argmax(overlaps))
        if overlaps[j] >= iou_thresh:
            if ignore[i][j]:
                continue
            if not used[i][j]:
                used[i][j] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        else:
            tp.append(0)
            fp.append(1)
    n_pos = sum(int((~g).sum()) for g in ignore)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / n_pos
    precision = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def random_case(rng, n_images=6, normalized=True):
    preds, scores, gts, ignore = [], [], [], []
    scale = 1.0 if normalized else 640.0
    for _ in range(n_images):
        m = int(rng.integers(0, 7))
        xy = rng.random((m, 2)) * 0.7
        gt = np.concatenate([xy, xy + 0.02 + rng.random((m, 2)) * 0.25], 1)
        n = int(rng.integers(0, 12))
        src = gt[rng.integers(0, m, n)] if m else np.zeros((n, 4))
        box = src + rng.normal(0, 0.02, (n, 4))
        fp = rng.random(n) < 0.3
        box[fp, :2] = rng.random((int(fp.sum()), 2)) * 0.8
        box[fp, 2:] = box[fp, :2] + 0.05
        box[:, 2:] = np.maximum(box[:, 2:], box[:, :2])
        preds.append(box * scale)
        scores.append(np.round(rng.random(n), 1))  # ties on purpose
        gts.append(gt * scale)
        ignore.append(rng.random(m) < 0.2)
    return preds, scores, gts, ignore


@pytest.mark.parametrize("normalized", [True, False])
def test_equal_to_reference_loop(normalized):
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        preds, scores, gts, ignore = random_case(rng, normalized=normalized)
        if sum(int((~g).sum()) for g in ignore) == 0:
            continue
        for thr in (0.3, 0.5, 0.75):
            ours = detection_ap(preds, scores, gts, iou_thresh=thr, ignore=ignore)
            assert ours == pytest.approx(reference_ap(preds, scores, gts, thr, ignore), abs=1e-12)
            checked += 1
    assert checked > 300


def test_plain_iou_on_normalized_coordinates():
    # The +1-pixel formula on [0, 1] boxes would give 0.930 and 0.503 here.
    assert box_iou(np.array([[0.4, 0.4, 0.5, 0.5]]), np.array([[0.42, 0.42, 0.52, 0.52]]))[0, 0] == pytest.approx(
        0.0064 / 0.0136
    )
    disjoint_pred = [np.array([[0.1, 0.1, 0.2, 0.2]])]
    disjoint_gt = [np.array([[0.3, 0.3, 0.4, 0.4]])]
    assert box_iou(disjoint_pred[0], disjoint_gt[0])[0, 0] == 0.0
    for thr in (0.01, 0.3, 0.5):
        assert detection_ap(disjoint_pred, [np.array([0.9])], disjoint_gt, iou_thresh=thr) == 0.0
    # Touching boxes do not overlap either.
    assert box_iou(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([[0.5, 0.0, 1.0, 0.5]]))[0, 0] == 0.0


def test_plus_one_convention_available():
    iou = box_iou(np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 4]]), plus_one=True)[0, 0]
    assert iou == pytest.approx(50 / 100)


def test_perfect_and_ranked():
    gt = [np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]]), np.array([[0.2, 0.2, 0.4, 0.5]])]
    assert detection_ap(gt, [np.array([0.9, 0.8]), np.array([0.7])], gt) == pytest.approx(1.0)
    # One FP ranked first: precision 0, 1/2, 2/3, 3/4; the envelope is 3/4 at every recall step -> AP 0.75.
    preds = [np.concatenate([gt[0], [[0.6, 0.1, 0.7, 0.2]]]), gt[1]]
    curve = detection_pr(preds, [np.array([0.8, 0.7, 0.95]), np.array([0.6])], gt)
    assert curve.num_gt == 3
    np.testing.assert_allclose(curve.precision, [0, 1 / 2, 2 / 3, 3 / 4])
    np.testing.assert_allclose(curve.recall, [0, 1 / 3, 2 / 3, 1])
    assert curve.ap == pytest.approx(0.75)


def test_ignore_and_duplicates():
    gt = [np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]])]
    preds = [np.array([[0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.3, 0.3]])]
    scores = [np.array([0.9, 0.8, 0.7])]
    curve = detection_pr(preds, scores, gt, ignore=[np.array([False, True])])
    # The first prediction hits the ignored box: neither TP nor FP. Then TP, then a duplicate FP.
    assert curve.num_gt == 1
    np.testing.assert_allclose(curve.scores, [0.8, 0.7])
    np.testing.assert_allclose(curve.precision, [1.0, 0.5])
    assert curve.ap == pytest.approx(1.0)


def test_empty_inputs_and_tensors():
    assert np.isnan(detection_ap([np.zeros((0, 4))], [np.zeros(0)], [np.zeros((0, 4))]))
    assert detection_ap([np.zeros((0, 4))], [np.zeros(0)], [np.array([[0, 0, 1, 1.0]])]) == 0.0
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3]])
    assert detection_ap([boxes], [torch.tensor([0.5])], [boxes.clone()]) == pytest.approx(1.0)
    # Predictions on images without ground truth are false positives.
    ap = detection_ap([boxes, boxes], [torch.tensor([0.5]), torch.tensor([0.9])], [boxes, torch.zeros(0, 4)])
    assert ap == pytest.approx(0.5)


def test_bad_input():
    with pytest.raises(ValueError, match="one entry per image"):
        detection_ap([np.zeros((1, 4))], [], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        detection_ap([np.zeros((1, 4))], [np.zeros(2)], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="NaN"):
        detection_ap([np.full((1, 4), np.nan)], [np.zeros(1)], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="iou_thresh"):
        detection_ap([np.zeros((1, 4))], [np.zeros(1)], [np.zeros((0, 4))], iou_thresh=0)


def test_max_iou_match_candidates_are_exhaustive():
    """The x-sorted candidate search returns what a full IoU matrix gives, ties included."""
    rng = np.random.default_rng(1)
    n_images = 40
    gts = [np.round(rng.random((int(rng.integers(0, 30)), 4)) * 50) for _ in range(n_images)]
    gts = [np.concatenate([g[:, :2], g[:, :2] + g[:, 2:] / 2], 1) for g in gts]
    gts[3] = np.concatenate([gts[3], gts[3][:2]]) if len(gts[3]) >= 2 else gts[3]  # exact duplicates: ties
    preds, image = [], []
    for i, g in enumerate(gts):
        n = int(rng.integers(0, 25))
        src = g[rng.integers(0, len(g), n)] if len(g) else rng.random((n, 4)) * 50
        p = np.round(src + rng.normal(0, 2, (n, 4)))
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2])
        preds.append(p)
        image += [i] * n
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in gts])))
    for plus_one in (False, True):
        for thr in (0.1, 0.5):
            best, index = max_iou_match(
                np.concatenate(preds),
                np.array(image),
                np.concatenate(gts),
                offsets,
                min_iou=thr,
                plus_one=plus_one,
                max_pairs=64,
            )
            k = 0
            for p, g in zip(preds, gts):
                for box in p:
                    full = box_iou(box[None], g, plus_one=plus_one)[0] if len(g) else np.zeros(0)
                    if len(full) and full.max() >= thr:
                        assert index[k] == int(np.argmax(full)) and best[k] == full.max()
                    else:
                        assert index[k] == -1 and best[k] == 0
                    k += 1


def test_voc_ap_ignores_nan_before_first_recall():
    rec = np.array([0.0, 0.0, 0.5, 1.0])
    prec = np.array([np.nan, np.nan, 1.0, 0.5])
    assert voc_ap(rec, prec) == pytest.approx(0.75)
