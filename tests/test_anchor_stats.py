"""Anchor coverage and anchor suggestions (`nbsrc.anchor_stats`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torchvision.ops import box_iou

from nbsrc import anchor_stats, face_stats
from nbsrc.boxes import cxcywh_to_xyxy
from nbsrc.config import get_preset
from tests.conftest import shared_path


def best_anchor_iou_bruteforce(
    boxes: np.ndarray | Tensor, anchors: Tensor, image_size: tuple[int, int], chunk: int = 256
) -> np.ndarray:
    """Reference: max IoU of each face over every anchor (``anchors`` ``[A, 4]`` cxcywh normalized, as
    `nbsrc.anchors` makes them), chunked over faces. ``image_size`` is (H, W)."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    anchors_xyxy = cxcywh_to_xyxy(anchors.to(torch.float64)) * scale  # (A, 4)
    faces = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)  # (N, 4)
    best = [box_iou(faces[i : i + chunk], anchors_xyxy).max(dim=1).values for i in range(0, len(faces), chunk)]
    return torch.cat(best).numpy() if best else np.zeros(0)


def _random_faces(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.05 * side, 1.05 * side, (n, 2))
    sizes = np.exp(rng.uniform(np.log(2), np.log(side * 1.2), (n, 2)))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


@pytest.mark.parametrize(("preset", "side"), [("mnet-biubug6", 640), ("mnet-2cls", 640), ("r18-p2p6", 192)])
def test_best_anchor_iou_equals_brute_force(preset, side):
    layout = anchor_stats.anchor_layout(preset, side)
    faces = _random_faces(400, side)
    exact = anchor_stats.best_anchor_iou(faces, layout)
    anchors = layout.generator()(layout.image_size)
    assert anchors.shape[0] == layout.num_anchors
    reference = best_anchor_iou_bruteforce(faces, anchors, layout.image_size)
    # Anchors from nbsrc.anchors are float32: equal up to that rounding.
    np.testing.assert_allclose(exact["iou"], reference, atol=2e-5)
    assert exact["level"].max() < len(layout.strides)


def test_best_anchor_iou_hand_computed():
    layout = anchor_stats.anchor_layout("mnet-biubug6", 640)  # strides 8/16/32, squares 16,32 / 64,128 / 256,512
    faces = np.array(
        [
            [4.0, 4.0, 20.0, 20.0],  # 16x16 centred on the first stride-8 cell centre (12, 12): IoU 1
            [0.0, 0.0, 2.0, 2.0],  # 2x2 in the corner: best is the 16x16 anchor at (4, 4): 4 / 256
            [208.0, 208.0, 464.0, 464.0],  # 256x256 centred at (336, 336) = (10 + 0.5) * 32, a stride-32 centre
        ]
    )
    result = anchor_stats.best_anchor_iou(faces, layout)
    np.testing.assert_allclose(result["iou"], [1.0, 4.0 / 256.0, 1.0], atol=1e-12)
    assert result["level"].tolist() == [0, 0, 2]
    assert result["shape"].tolist() == [0, 0, 0]


def test_anchor_table_counts_match_published_numbers():
    rows = anchor_stats.anchor_table(anchor_stats.anchor_layout("mnet-biubug6"))
    assert [r["anchors"] for r in rows[:-1]] == [80 * 80 * 2, 40 * 40 * 2, 20 * 20 * 2]
    assert rows[-1]["anchors"] == 16800
    assert anchor_stats.anchor_layout("r18-p2p6").num_anchors == 204600
    assert anchor_stats.anchor_layout("mnet-2cls").num_anchors == 50400


def test_recall_by_size_bins_and_thresholds():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 40, 40]], dtype=np.float64)
    best = np.array([0.1, 0.4, 0.6, 0.3])
    rows = anchor_stats.recall_by_size(boxes, best, bins=(0, 8, 16, 32, math.inf))
    by_bin = {r["size (px)"]: r for r in rows}
    assert [r["faces"] for r in rows] == [1, 1, 1, 1, 4]
    assert by_bin["8-16"]["recall@0.35"] == 1.0 and by_bin["8-16"]["recall@0.5"] == 0.0
    assert by_bin["16-32"]["recall@0.5"] == 1.0
    assert by_bin["0-8"]["unmatched"] == 1
    assert by_bin["all"]["recall@0.35"] == pytest.approx(0.5)
    assert by_bin["all"]["mean best IoU"] == pytest.approx(0.35)


def test_kmeans_recovers_clusters_and_is_deterministic():
    rng = np.random.default_rng(1)
    centres = np.array([[8.0, 10.0], [30.0, 40.0], [120.0, 150.0]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.03, (300, 2))) for c in centres])
    found = anchor_stats.kmeans_anchors(wh, 3, seed=0)
    np.testing.assert_allclose(found, centres, rtol=0.05)
    np.testing.assert_array_equal(found, anchor_stats.kmeans_anchors(wh, 3, seed=0))
    coverage = anchor_stats.shape_coverage(wh, found)
    assert coverage["recall@0.5"] == 1.0 and coverage["mean IoU"] > 0.9
    with pytest.raises(ValueError, match="k=5"):
        anchor_stats.kmeans_anchors(wh[:4], 5)


def test_suggest_anchors_rows():
    layout = anchor_stats.anchor_layout("mnet-biubug6", 320)
    faces = _random_faces(300, 320, seed=3)
    rows = anchor_stats.suggest_anchors(faces, layout, ks=(2, 6))
    assert [r["anchors"] for r in rows] == ["mnet-biubug6 (6 shapes)", "k-means k=2", "k-means k=6"]
    for row in rows:
        assert 0 <= row["grid recall@0.5"] <= row["grid recall@0.35"] <= 1
        assert row["grid mean IoU"] <= row["shape IoU"] + 1e-9  # the grid can only lose against aligned centres
    assert rows[2]["shape IoU"] > rows[1]["shape IoU"]


def test_load_faces_and_compare_presets_on_real_wider_val():
    faces = face_stats.load_faces(get_preset("mnet-biubug6"), gt_dir=shared_path("data/widerface_val_gt"))
    assert faces["images"] == 3226
    assert len(faces["boxes"]) == 39708 - 11  # the 11 degenerate boxes of the real val set are dropped
    boxes = faces["boxes"]
    # No sizes in the .mat: WIDER's 1024 px width is assumed, so 640 / 1024 of the original extent.
    assert boxes[:, 2].max() <= 640 * 1.01
    rows, ious = anchor_stats.compare_presets(["mnet-biubug6", "r18-p2p6"], boxes)
    rows = {r["preset"]: r for r in rows}
    # Stride-4 levels with 8 px anchors cover far more of WIDER's small faces than stride 8 with 16 px anchors.
    assert rows["r18-p2p6"]["recall@0.35"] > rows["mnet-biubug6"]["recall@0.35"] + 0.2
    assert rows["mnet-biubug6"]["unmatched"] > 10000  # faces under ~8 px at 640: no 16 px anchor reaches IoU 0.2
    assert rows["mnet-biubug6"]["unmatched"] == int((ious["mnet-biubug6"] < 0.2).sum())
    summary = anchor_stats.unmatched_summary(boxes, ious["mnet-biubug6"])
    assert summary["unmatched"] == rows["mnet-biubug6"]["unmatched"] and summary["median size (px)"] < 8
    hist = face_stats.size_histograms(boxes)
    assert hist["count"] == len(boxes) and hist["width"]["counts"].sum() == len(boxes)
    assert [r[""] for r in face_stats.size_percentiles(hist)] == ["width", "height", "size", "aspect"]
