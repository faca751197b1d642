"""MultiBoxLoss: equals the classic per-image MultiBox loss (tests/multibox_oracle.py), edge cases, options."""

from __future__ import annotations

import math

import pytest
import torch
from multibox_oracle import oracle_multibox_loss, random_outputs, random_targets

from nbsrc.anchors import AnchorGenerator
from nbsrc.boxes import encode_boxes, encode_landmarks
from nbsrc.config import get_preset
from nbsrc.loss import MultiBoxLoss, build_loss, normalize_targets, select_top_per_row
from nbsrc.matching import match_anchors

PARTS = ("loss", "loss_box", "loss_cls", "loss_landm")


def make_anchors(preset: str, size: int) -> torch.Tensor:
    cfg = get_preset(preset)
    strides = [4, 8, 16, 32, 64] if cfg.model.neck == "p2p6" else [8, 16, 32]
    return AnchorGenerator.from_config(cfg.anchors, strides)((size, size))


def assert_parts_close(ours: dict, ref: dict) -> None:
    for key in PARTS:
        assert ours[key].dtype == torch.float32, key
        torch.testing.assert_close(ours[key].detach(), ref[key].detach(), rtol=1e-4, atol=1e-6, msg=key)
    assert torch.equal(ours["num_pos"], ref["num_pos"])


CASES = {
    # name: (preset, image side, per-image box counts, loss kwargs, person fraction)
    "mnet-mixed": ("mnet-biubug6", 640, [0, 1, 5, 30, 60, 0], {}, 0.0),
    "mnet-crowded": ("mnet-biubug6", 640, [2, 150, 0, 12], {}, 0.0),
    "p2p6-small": ("mnet-p2p6", 160, [4, 0, 9, 20, 1], {}, 0.0),
    "2cls": ("mnet-2cls", 640, [6, 0, 20, 3], {"num_classes": 3, "pos_iou": 0.45, "landmarks": False}, 0.4),
}


@pytest.mark.parametrize("empty_negatives", [0, 200])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_classic_multibox_loss(case, seed, empty_negatives):
    preset, size, counts, kwargs, person_fraction = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    anchors = make_anchors(preset, size)
    targets = random_targets(
        counts, generator=gen, image_size=(size, size), person_fraction=person_fraction, duplicate=seed == 1
    )
    num_classes = kwargs.get("num_classes", 2)
    landmarks = kwargs.get("landmarks", True)
    outputs = random_outputs(len(counts), anchors.shape[0], num_classes, generator=gen, landmarks=landmarks)
    loss_fn = MultiBoxLoss(empty_negatives=empty_negatives, **kwargs)
    ours = loss_fn(outputs, anchors, targets)
    ref = oracle_multibox_loss(
        outputs,
        anchors,
        targets,
        num_classes=num_classes,
        pos_iou=kwargs.get("pos_iou", 0.35),
        empty_negatives=empty_negatives,
    )
    assert_parts_close(ours, ref)
    assert float(ours["loss_landm"]) > 0 or not landmarks
    assert (ours["num_pos"][torch.tensor(counts) == 0] == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_equals_per_image_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = make_anchors("mnet-biubug6", 640)
    counts = [0, 3, 40]
    targets = random_targets(counts, generator=gen)
    outputs = random_outputs(len(counts), anchors.shape[0], generator=gen)
    ours = MultiBoxLoss(cls_loss="focal", focal_alpha=0.3, focal_gamma=1.5)(outputs, anchors, targets)
    ref = oracle_multibox_loss(outputs, anchors, targets, cls_loss="focal", focal_alpha=0.3, focal_gamma=1.5)
    assert_parts_close(ours, ref)


def test_gradients_equal_the_reference():
    gen = torch.Generator().manual_seed(3)
    anchors = make_anchors("mnet-p2p6", 64)  # few anchors: no near-ties in the negative ranking
    targets = random_targets([3, 0, 6], generator=gen, image_size=(64, 64), min_side=4, max_side=40)
    outputs = random_outputs(3, anchors.shape[0], generator=gen)
    ours_in = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    ref_in = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    MultiBoxLoss(empty_negatives=50)(ours_in, anchors, targets)["loss"].backward()
    oracle_multibox_loss(ref_in, anchors, targets, empty_negatives=50)["loss"].backward()
    for key in ("loc", "conf", "landm"):
        assert torch.isfinite(ours_in[key].grad).all()
        torch.testing.assert_close(ours_in[key].grad, ref_in[key].grad, rtol=1e-4, atol=1e-7, msg=key)


@pytest.mark.parametrize("empty_negatives", [0, 200])
def test_loss_empty_targets(empty_negatives):
    """All-empty batches (M == 0, or only padding): finite loss, zero box and landmark terms."""
    anchors = make_anchors("mnet-biubug6", 320)
    A = anchors.shape[0]
    gen = torch.Generator().manual_seed(0)
    loss_fn = MultiBoxLoss(empty_negatives=empty_negatives)
    for M in (0, 3):
        targets = {
            "boxes": torch.rand(2, M, 4),
            "labels": torch.zeros(2, M, dtype=torch.long),
            "landmarks": torch.rand(2, M, 5, 2),
            "landmarks_valid": torch.ones(2, M, dtype=torch.bool),
        }
        outputs = {k: v.requires_grad_(True) for k, v in random_outputs(2, A, generator=gen).items()}
        parts = loss_fn(outputs, anchors, targets)
        ref = oracle_multibox_loss(outputs, anchors, targets, empty_negatives=empty_negatives)
        assert_parts_close(parts, ref)
        assert all(torch.isfinite(parts[k]) for k in PARTS)
        values = {k: float(parts[k].detach()) for k in PARTS}
        assert values["loss_box"] == 0 and values["loss_landm"] == 0
        assert parts["num_pos"].tolist() == [0, 0]
        assert (values["loss_cls"] > 0) == (empty_negatives > 0)
        parts["loss"].backward()
        for key in ("loc", "conf", "landm"):  # the graph reaches every head, even with nothing to match
            assert outputs[key].grad is not None and torch.isfinite(outputs[key].grad).all()
        assert (outputs["conf"].grad != 0).any() == (empty_negatives > 0)


def test_loss_half_empty_batch_mines_fixed_negatives():
    """Known CE per anchor (all logits 0 -> log 2): counts of positives and mined negatives are exact."""
    anchors = make_anchors("mnet-biubug6", 320)
    A = anchors.shape[0]
    gen = torch.Generator().manual_seed(1)
    targets = random_targets([0, 4], generator=gen, image_size=(320, 320), min_side=16, max_side=100)
    outputs = {"loc": torch.zeros(2, A, 4), "conf": torch.zeros(2, A, 2), "landm": torch.zeros(2, A, 10)}
    for empty_negatives in (0, 200):
        parts = MultiBoxLoss(empty_negatives=empty_negatives)(outputs, anchors, targets)
        num_pos = int(parts["num_pos"][1])
        assert int(parts["num_pos"][0]) == 0 and num_pos > 0
        selected = num_pos + 7 * num_pos + empty_negatives
        assert float(parts["loss_cls"]) == pytest.approx(selected * math.log(2) / num_pos, rel=1e-5)
    zero_ratio = MultiBoxLoss(neg_pos_ratio=0)(outputs, anchors, targets)
    assert float(zero_ratio["loss_cls"]) == pytest.approx(math.log(2), rel=1e-5)


def test_perfect_predictions_have_zero_box_and_landmark_loss():
    anchors = make_anchors("mnet-biubug6", 320)
    A = anchors.shape[0]
    gen = torch.Generator().manual_seed(2)
    targets = random_targets([5, 9], generator=gen, image_size=(320, 320), min_side=10, landmark_fraction=0.5)
    match = match_anchors(anchors, targets["boxes"], targets["labels"])
    gt = match.matched_gt.clamp(min=0)  # (B, A)
    boxes = torch.gather(targets["boxes"], 1, gt[..., None].expand(-1, -1, 4))  # (B, A, 4)
    points = targets["landmarks"][torch.arange(2)[:, None], gt]  # (B, A, 5, 2)
    outputs = {
        "loc": encode_boxes(boxes, anchors),
        "conf": torch.zeros(2, A, 2),
        "landm": encode_landmarks(points, anchors),
    }
    parts = MultiBoxLoss()(outputs, anchors, targets)
    assert int(parts["num_pos"].sum()) > 0
    assert float(parts["loss_box"]) < 1e-10 and float(parts["loss_landm"]) < 1e-10
    shifted = dict(outputs, landm=outputs["landm"] + 1.0)  # 0.5 per coordinate per landmark positive
    assert float(MultiBoxLoss()(shifted, anchors, targets)["loss_landm"]) == pytest.approx(5.0, rel=1e-5)


def test_landmark_term_only_for_faces_with_valid_landmarks():
    anchors = make_anchors("mnet-2cls", 320)
    A = anchors.shape[0]
    gen = torch.Generator().manual_seed(4)
    targets = random_targets([8, 8], generator=gen, image_size=(320, 320), person_fraction=0.5, min_side=20)
    outputs = random_outputs(2, A, 3, generator=gen)
    loss_fn = MultiBoxLoss(num_classes=3, pos_iou=0.45)
    parts = loss_fn(outputs, anchors, targets)
    ref = oracle_multibox_loss(outputs, anchors, targets, num_classes=3, pos_iou=0.45)
    assert_parts_close(parts, ref)
    no_landmarks = dict(targets, landmarks_valid=torch.zeros_like(targets["landmarks_valid"]))
    parts = loss_fn(outputs, anchors, no_landmarks)
    assert float(parts["loss_landm"]) == 0
    faces_only = dict(targets, labels=targets["labels"].clamp(max=1))
    persons_only = dict(targets, labels=targets["labels"] * 2 // targets["labels"].clamp(min=1))
    assert float(loss_fn(outputs, anchors, faces_only)["loss_landm"]) > 0
    assert float(loss_fn(outputs, anchors, persons_only)["loss_landm"]) == 0


def test_autocast_outputs_give_float32_loss():
    anchors = make_anchors("mnet-biubug6", 320)
    gen = torch.Generator().manual_seed(5)
    targets = random_targets([3, 7], generator=gen, image_size=(320, 320))
    outputs = {k: v.bfloat16() for k, v in random_outputs(2, anchors.shape[0], generator=gen).items()}
    loss_fn = MultiBoxLoss(empty_negatives=200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = loss_fn(outputs, anchors, targets)
    reference = loss_fn({k: v.float() for k, v in outputs.items()}, anchors, targets)
    for key in PARTS:
        assert parts[key].dtype == torch.float32
        torch.testing.assert_close(parts[key], reference[key], rtol=1e-6, atol=0)


def test_normalize_targets():
    batch = {
        "boxes": torch.tensor([[[64.0, 32.0, 128.0, 96.0], [0, 0, 0, 0]]]),
        "labels": torch.tensor([[1, 0]]),
        "landmarks": torch.full((1, 2, 5, 2), 64.0),
        "landmarks_valid": torch.tensor([[1, 0]]),
        "num_boxes": torch.tensor([1]),
    }
    targets = normalize_targets(batch, (320, 640))  # H = 320, W = 640
    assert set(targets) == {"boxes", "labels", "landmarks", "landmarks_valid"}
    torch.testing.assert_close(targets["boxes"][0, 0], torch.tensor([0.1, 0.1, 0.2, 0.3]))
    torch.testing.assert_close(targets["landmarks"][0, 0, 0], torch.tensor([0.1, 0.2]))
    assert targets["labels"].dtype == torch.long and targets["landmarks_valid"].dtype == torch.bool
    empty = {
        "boxes": torch.zeros(2, 0, 4),
        "labels": torch.zeros(2, 0, dtype=torch.long),
        "landmarks": torch.zeros(2, 0, 5, 2),
        "landmarks_valid": torch.zeros(2, 0, dtype=torch.bool),
    }
    assert normalize_targets(empty, (640, 640))["boxes"].shape == (2, 0, 4)
    with pytest.raises(ValueError, match="landmarks_valid"):
        normalize_targets({k: v for k, v in batch.items() if k != "landmarks_valid"}, (640, 640))
    with pytest.raises(ValueError, match="landmarks"):
        normalize_targets(dict(batch, landmarks=torch.zeros(1, 2, 10)), (640, 640))


@pytest.mark.parametrize(("B", "A"), [(6, 16_800), (2, 204_600), (3, 40), (1, 1)])
def test_select_top_per_row_equals_topk(B, A):
    gen = torch.Generator().manual_seed(A)
    key = 3 * torch.randn(B, A, generator=gen)
    key[torch.rand(B, A, generator=gen) < 0.1] = float("-inf")  # excluded entries (positives)
    key[:, : A // 4] = key[:, : A // 4].round()  # many exact ties and both signs, -0.0 included
    available = torch.isfinite(key).sum(1)
    count = (torch.rand(B, generator=gen) * (available + 1)).long().clamp(max=available)
    count[0] = available[0] if B > 1 else count[0]
    if B > 2:
        count[1] = 0
    rows, cols = select_top_per_row(key, count)
    assert torch.equal(torch.bincount(rows, minlength=B), count)
    for b in range(B):
        chosen = cols[rows == b]
        n = int(count[b])
        assert chosen.unique().numel() == n
        assert torch.equal(key[b, chosen].sort(descending=True).values, key[b].topk(n).values)


def test_build_loss_reads_the_config():
    loss_fn = build_loss(get_preset("mnet-biubug6"))
    assert (loss_fn.num_classes, loss_fn.landmarks, loss_fn.pos_iou, loss_fn.force_iou) == (2, True, 0.35, 0.2)
    assert (loss_fn.neg_pos_ratio, loss_fn.empty_negatives, loss_fn.loc_weight) == (7.0, 200, 2.0)
    two_class = build_loss(get_preset("mnet-2cls"))
    assert (two_class.num_classes, two_class.landmarks, two_class.pos_iou) == (3, False, 0.45)
    focal = build_loss(get_preset("latent-r50", **{"loss.cls_loss": "focal", "anchors.variances": (0.2, 0.3)}))
    assert focal.cls_loss == "focal" and focal.variances == (0.2, 0.3)


def test_bad_inputs_raise():
    anchors = make_anchors("mnet-biubug6", 320)
    A = anchors.shape[0]
    gen = torch.Generator().manual_seed(6)
    targets = random_targets([2], generator=gen, image_size=(320, 320))
    outputs = random_outputs(1, A, generator=gen)
    loss_fn = MultiBoxLoss()
    with pytest.raises(ValueError, match=r"outputs\['conf'\]"):
        loss_fn(dict(outputs, conf=torch.zeros(1, A, 3)), anchors, targets)
    with pytest.raises(ValueError, match="anchors"):
        loss_fn(outputs, anchors[:-1], targets)
    with pytest.raises(ValueError, match=r"targets\['labels'\]"):
        loss_fn(outputs, anchors, dict(targets, labels=targets["labels"] * 2))  # person in a face-only model
    with pytest.raises(ValueError, match="landmarks_valid"):
        loss_fn(outputs, anchors, {k: v for k, v in targets.items() if k != "landmarks_valid"})
    with pytest.raises(ValueError, match="cls_loss"):
        MultiBoxLoss(cls_loss="softmax")
