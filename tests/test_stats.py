"""Anchor and dataset statistics (`nbsrc.stats`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbsrc import stats
from nbsrc.data.records import ImageRecord
from tests.conftest import shared_path


def _random_faces(n: int, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.05 * side, 1.05 * side, (n, 2))
    sizes = np.exp(rng.uniform(np.log(2), np.log(side * 1.2), (n, 2)))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


@pytest.mark.parametrize(("preset", "side"), [("mnet-biubug6", 640), ("mnet-2cls", 640), ("r18-p2p6", 192)])
def test_best_anchor_iou_equals_brute_force(preset, side):
    layout = stats.anchor_layout(preset, side)
    faces = _random_faces(400, side)
    exact = stats.best_anchor_iou(faces, layout)
    anchors = layout.generator()(layout.image_size)
    assert anchors.shape[0] == layout.num_anchors
    reference = stats.best_anchor_iou_bruteforce(faces, anchors, layout.image_size)
    # Anchors from nbsrc.anchors are float32: equal up to that rounding.
    np.testing.assert_allclose(exact["iou"], reference, atol=2e-5)
    assert exact["level"].max() < len(layout.strides)


def test_best_anchor_iou_hand_computed():
    layout = stats.anchor_layout("mnet-biubug6", 640)  # strides 8/16/32, squares 16,32 / 64,128 / 256,512
    faces = np.array(
        [
            [4.0, 4.0, 20.0, 20.0],  # 16x16 centred on the first stride-8 cell centre (12, 12): IoU 1
            [0.0, 0.0, 2.0, 2.0],  # 2x2 in the corner: best is the 16x16 anchor at (4, 4): 4 / 256
            [208.0, 208.0, 464.0, 464.0],  # 256x256 centred at (336, 336) = (10 + 0.5) * 32, a stride-32 centre
        ]
    )
    result = stats.best_anchor_iou(faces, layout)
    np.testing.assert_allclose(result["iou"], [1.0, 4.0 / 256.0, 1.0], atol=1e-12)
    assert result["level"].tolist() == [0, 0, 2]
    assert result["shape"].tolist() == [0, 0, 0]


def test_anchor_table_counts_match_published_numbers():
    rows = stats.anchor_table(stats.anchor_layout("mnet-biubug6"))
    assert [r["anchors"] for r in rows[:-1]] == [80 * 80 * 2, 40 * 40 * 2, 20 * 20 * 2]
    assert rows[-1]["anchors"] == 16800
    assert stats.anchor_layout("r18-p2p6").num_anchors == 204600
    assert stats.anchor_layout("mnet-2cls").num_anchors == 50400


def test_recall_by_size_bins_and_thresholds():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 40, 40]], dtype=np.float64)
    best = np.array([0.1, 0.4, 0.6, 0.3])
    rows = stats.recall_by_size(boxes, best, bins=(0, 8, 16, 32, math.inf))
    by_bin = {r["size (px)"]: r for r in rows}
    assert [r["faces"] for r in rows] == [1, 1, 1, 1, 4]
    assert by_bin["8-16"]["recall@0.35"] == 1.0 and by_bin["8-16"]["recall@0.5"] == 0.0
    assert by_bin["16-32"]["recall@0.5"] == 1.0
    assert by_bin["0-8"]["unmatched"] == 1
    assert by_bin["all"]["recall@0.35"] == pytest.approx(0.5)
    assert by_bin["all"]["mean best IoU"] == pytest.approx(0.35)


def test_face_boxes_net_maps_frames():
    stretched = ImageRecord("a/b", boxes=[[100, 50, 300, 250]], image_size=(1000, 500))
    normalized = ImageRecord("c", boxes=[[0.5, 0.5, 1.0, 1.0]], normalized=True)
    other_class = ImageRecord("d", boxes=[[0, 0, 10, 10]], labels=[2], image_size=(640, 640))
    boxes = stats.face_boxes_net([stretched, normalized, other_class], net_size=(640, 640))
    np.testing.assert_allclose(boxes, [[64, 64, 192, 320], [320, 320, 640, 640]])
    letterbox = stats.face_boxes_net([stretched], policy="letterbox")
    np.testing.assert_allclose(letterbox, [[64, 192, 192, 320]])  # scale 0.64, pad (0, 160)
    in_frame = stats.face_boxes_net([ImageRecord("e", boxes=[[10, 10, 20, 20]])], label_frame=640)
    np.testing.assert_allclose(in_frame, [[10, 10, 20, 20]])
    sizes = stats.face_boxes_net([ImageRecord("e", boxes=[[0, 0, 100, 100]])], image_sizes={"e": (200, 100)})
    np.testing.assert_allclose(sizes, [[0, 0, 320, 640]])
    assumed = stats.face_boxes_net([ImageRecord("e", boxes=[[0, 0, 512, 512]])], assume_width=1024)
    np.testing.assert_allclose(assumed, [[0, 0, 320, 320]])
    with pytest.raises(ValueError, match="labels.txt:7.*original image size"):
        stats.face_boxes_net([ImageRecord("x/y", boxes=[[0, 0, 5, 5]], source="labels.txt:7")])


def test_kmeans_recovers_clusters_and_is_deterministic():
    rng = np.random.default_rng(1)
    centres = np.array([[8.0, 10.0], [30.0, 40.0], [120.0, 150.0]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.03, (300, 2))) for c in centres])
    found = stats.kmeans_anchors(wh, 3, seed=0)
    np.testing.assert_allclose(found, centres, rtol=0.05)
    np.testing.assert_array_equal(found, stats.kmeans_anchors(wh, 3, seed=0))
    coverage = stats.shape_coverage(wh, found)
    assert coverage["recall@0.5"] == 1.0 and coverage["mean IoU"] > 0.9
    with pytest.raises(ValueError, match="k=5"):
        stats.kmeans_anchors(wh[:4], 5)


def test_suggest_anchors_rows():
    layout = stats.anchor_layout("mnet-biubug6", 320)
    faces = _random_faces(300, 320, seed=3)
    rows = stats.suggest_anchors(faces, layout, ks=(2, 6))
    assert [r["anchors"] for r in rows] == ["mnet-biubug6 (6 shapes)", "k-means k=2", "k-means k=6"]
    for row in rows:
        assert 0 <= row["grid recall@0.5"] <= row["grid recall@0.35"] <= 1
        assert row["grid mean IoU"] <= row["shape IoU"] + 1e-9  # the grid can only lose against aligned centres
    assert rows[2]["shape IoU"] > rows[1]["shape IoU"]


def test_load_faces_and_compare_presets_on_real_wider_val():
    from nbsrc.config import get_preset

    faces = stats.load_faces(get_preset("mnet-biubug6"), gt_dir=shared_path("data/widerface_val_gt"))
    assert faces["images"] == 3226
    assert len(faces["boxes"]) == 39708 - 11  # the 11 degenerate boxes of the real val set are dropped
    boxes = faces["boxes"]
    # No sizes in the .mat: WIDER's 1024 px width is assumed, so 640 / 1024 of the original extent.
    assert boxes[:, 2].max() <= 640 * 1.01
    rows, ious = stats.compare_presets(["mnet-biubug6", "r18-p2p6"], boxes)
    rows = {r["preset"]: r for r in rows}
    # Stride-4 levels with 8 px anchors cover far more of WIDER's small faces than stride 8 with 16 px anchors.
    assert rows["r18-p2p6"]["recall@0.35"] > rows["mnet-biubug6"]["recall@0.35"] + 0.2
    assert rows["mnet-biubug6"]["unmatched"] > 10000  # faces under ~8 px at 640: no 16 px anchor reaches IoU 0.2
    assert rows["mnet-biubug6"]["unmatched"] == int((ious["mnet-biubug6"] < 0.2).sum())
    summary = stats.unmatched_summary(boxes, ious["mnet-biubug6"])
    assert summary["unmatched"] == rows["mnet-biubug6"]["unmatched"] and summary["median size (px)"] < 8
    hist = stats.size_histograms(boxes)
    assert hist["count"] == len(boxes) and hist["width"]["counts"].sum() == len(boxes)
    assert [r[""] for r in stats.size_percentiles(hist)] == ["width", "height", "size", "aspect"]


def test_load_faces_from_dataset_labels(tmp_path):
    from nbsrc.config import get_preset
    from nbsrc.data.readers.retinaface_txt import write_retinaface_labels

    records = [
        ImageRecord("0--a/x", boxes=[[100, 100, 200, 300], [0, 0, 0, 5]]),  # the second is degenerate
        ImageRecord("0--a/y", boxes=np.zeros((0, 4))),
    ]
    (tmp_path / "val").mkdir()
    write_retinaface_labels(tmp_path / "val" / "labels.txt", records)
    (tmp_path / "image_sizes.csv").write_text("name,width,height\n0--a/x,1000,500\n0--a/y,640,640\n")
    faces = stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="val")
    assert faces["images"] == 2 and [len(b) for b in faces["per_image"]] == [1, 0]
    np.testing.assert_allclose(faces["boxes"], [[64, 128, 128, 384]])
    with pytest.raises(FileNotFoundError, match="no label file found"):
        stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="train")
    (tmp_path / "image_sizes.csv").unlink()
    with pytest.raises(ValueError, match="original image size is unknown"):  # never guessed for dataset labels
        stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="val")


def test_match_detections_tp_fp_miss_ignored():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], dtype=np.float64)
    preds = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 61], [100, 100, 110, 110]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    match = stats.match_detections(preds, scores, gt, gt_ignore=np.array([False, False, True]))
    assert match["tp"].tolist() == [True, False, False, False]
    assert match["ignored"].tolist() == [False, False, True, False]
    assert match["fp"].tolist() == [False, True, False, True]  # duplicate of face 0, and a box on nothing
    assert match["gt_matched"].tolist() == [True, False, True]
    empty = stats.match_detections(np.zeros((0, 4)), np.zeros(0), gt)
    assert empty["gt_matched"].sum() == 0 and len(empty["tp"]) == 0


def test_latent_statistics_and_energy_map():
    rng = np.random.default_rng(0)
    latents = [
        rng.normal(loc=np.arange(4)[:, None, None], scale=1.0, size=(4, 5, 6)).astype(np.float32) for _ in range(3)
    ]
    result = stats.latent_statistics(latents, bins=20)
    np.testing.assert_allclose(result["mean"], np.arange(4), atol=0.4)
    assert result["hist"].sum() == 3 * 4 * 5 * 6 and len(result["edges"]) == 21 and result["count"] == 3
    energy = stats.energy_map(latents[0][None])
    assert energy.shape == (5, 6)
    np.testing.assert_allclose(energy, np.sqrt((latents[0].astype(np.float64) ** 2).mean(axis=0)), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        stats.energy_map(np.zeros((5, 6)))
    with pytest.raises(ValueError, match="one C"):
        stats.latent_statistics([np.zeros((4, 2, 2)), np.zeros((3, 2, 2))])


def test_dataset_summary():
    per_image = [np.array([[0, 0, 10, 10], [0, 0, 40, 40]]), np.zeros((0, 4)), np.array([[0, 0, 100, 100]])]
    (row,) = stats.dataset_summary({"val": per_image}, {"val": {75: 3, 12: 2}})
    assert row["images"] == 3 and row["faces"] == 3 and row["images without faces"] == 1
    assert row["faces/image"] == pytest.approx(1.0) and row["faces < 16 px"] == 1
    assert row["median size (px)"] == pytest.approx(40.0)
    assert row["latent_12"] == 2 and row["latent_75"] == 3
