"""Batched anchor matching: equals the classic per-image, per-GT matching; edge cases; memory bound."""

from __future__ import annotations

import time

import pytest
import torch
from multibox_oracle import random_targets, targets_per_image

from nbsrc import matching
from nbsrc.anchors import AnchorGenerator
from nbsrc.boxes import cxcywh_to_xyxy
from nbsrc.config import get_preset
from nbsrc.matching import UNMATCHED, match_anchors

BIUBUG6_STRIDES = [8, 16, 32]
P2P6_STRIDES = [4, 8, 16, 32, 64]


def make_anchors(preset: str, size: int | tuple[int, int] = 640) -> torch.Tensor:
    cfg = get_preset(preset)
    strides = P2P6_STRIDES if cfg.model.neck == "p2p6" else BIUBUG6_STRIDES
    return AnchorGenerator.from_config(cfg.anchors, strides)(size if isinstance(size, tuple) else (size, size))


def assert_same_match(a, b) -> None:
    for key in ("matched_gt", "positive", "labels", "forced_anchor"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def assert_equals_oracle(result, anchors, targets, pos_iou, force_iou) -> None:
    """Our labels / positives / matched GT equal the per-image, per-GT reference."""
    _, conf_t, _, matched_t = targets_per_image(
        anchors, targets, pos_iou=pos_iou, force_iou=force_iou, variances=(0.1, 0.2)
    )
    assert torch.equal(result.labels, conf_t.abs())  # the reference marks landmark-less faces -1
    assert torch.equal(result.positive, conf_t != 0)
    assert torch.equal(result.matched_gt[result.positive], matched_t[result.positive])


@pytest.mark.parametrize(
    ("preset", "size", "seed", "counts", "pos_iou", "person_fraction"),
    [
        ("mnet-biubug6", 640, 0, [0, 1, 5, 30, 60, 0], 0.35, 0.0),
        ("mnet-biubug6", 640, 1, [3, 0, 150, 12], 0.35, 0.0),  # a crowded image
        ("mnet-p2p6", (96, 160), 2, [4, 0, 9, 20, 1], 0.35, 0.0),  # small P2-P6 anchor set, not square
        ("latent-r50", 320, 3, [8, 25], 0.35, 0.0),
        ("mnet-2cls", 320, 4, [6, 0, 20], 0.45, 0.4),  # 2-class: persons, tall clipped anchors
    ],
)
def test_sparse_dense_and_oracle_agree(preset, size, seed, counts, pos_iou, person_fraction):
    gen = torch.Generator().manual_seed(seed)
    anchors = make_anchors(preset, size)
    image_size = size if isinstance(size, tuple) else (size, size)
    targets = random_targets(
        counts, generator=gen, image_size=image_size, person_fraction=person_fraction, duplicate=True
    )
    sparse = match_anchors(anchors, targets["boxes"], targets["labels"], pos_iou=pos_iou, method="sparse")
    dense = match_anchors(anchors, targets["boxes"], targets["labels"], pos_iou=pos_iou, method="dense", chunk=1024)
    assert_same_match(sparse, dense)
    assert_equals_oracle(sparse, anchors, targets, pos_iou, 0.2)
    assert torch.equal(torch.stack(sparse.positive_index), sparse.positive.nonzero().T)
    assert int(sparse.num_pos.sum()) > 0
    assert (sparse.num_pos[torch.tensor(counts) == 0] == 0).all()


def test_threshold_variants_agree():
    gen = torch.Generator().manual_seed(5)
    anchors = make_anchors("mnet-biubug6")
    targets = random_targets([10, 40], generator=gen)
    for pos_iou, force_iou in ((0.5, 0.2), (0.35, 0.35), (0.3, 0.0)):
        kwargs = {"pos_iou": pos_iou, "force_iou": force_iou}
        sparse = match_anchors(anchors, targets["boxes"], targets["labels"], **kwargs)
        dense = match_anchors(anchors, targets["boxes"], targets["labels"], method="dense", **kwargs)
        assert_same_match(sparse, dense)
        assert_equals_oracle(sparse, anchors, targets, pos_iou, force_iou)


def _anchor_box(anchors: torch.Tensor, index: int) -> torch.Tensor:
    return cxcywh_to_xyxy(anchors[index : index + 1])[0]


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_gt_below_force_iou_is_not_forced(method):
    """A tiny GT inside a well-matched face must not steal that face's anchor (the classic loop's defect)."""
    anchors = make_anchors("mnet-biubug6")
    face = _anchor_box(anchors, 1234)  # a face exactly on one 16 px anchor
    tiny_centre = (face[:2] + face[2:]) / 2
    tiny = torch.cat([tiny_centre - 1 / 640, tiny_centre + 1 / 640])  # 2 px box, best IoU 4/256 < 0.2
    boxes = torch.stack([face, tiny])[None]  # (1, 2, 4)
    labels = torch.tensor([[1, 1]])
    result = match_anchors(anchors, boxes, labels, method=method)
    assert result.forced_anchor.tolist() == [[1234, UNMATCHED]]
    assert int(result.matched_gt[0, 1234]) == 0
    assert not (result.matched_gt == 1).any()


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_forced_anchor_below_pos_iou_is_positive(method):
    anchors = make_anchors("mnet-biubug6")
    anchor = _anchor_box(anchors, 2000)
    centre, side = (anchor[:2] + anchor[2:]) / 2, anchor[2:] - anchor[:2]
    box = torch.cat([centre - side * 0.27, centre + side * 0.27])  # IoU 0.54^2 = 0.29: in [0.2, 0.35)
    result = match_anchors(anchors, box[None, None], torch.tensor([[1]]), method=method)
    assert result.positive.sum() == 1
    assert bool(result.positive[0, 2000])
    assert result.forced_anchor.tolist() == [[2000]]


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_duplicate_best_anchor_goes_to_later_gt(method):
    anchors = make_anchors("mnet-biubug6")
    face = _anchor_box(anchors, 5001)
    boxes = torch.stack([face, face, face + 0.2, face])[None]  # GTs 0, 1, 3 share their best anchor
    labels = torch.tensor([[1, 1, 1, 1]])
    results = [match_anchors(anchors, boxes, labels, method=method) for _ in range(3)]
    for result in results[1:]:
        assert_same_match(results[0], result)
    result = results[0]
    assert result.forced_anchor[0, [0, 1, 3]].tolist() == [5001, 5001, 5001]
    assert int(result.matched_gt[0, 5001]) == 3  # the later GT wins the forced anchor
    # other positives of the identical boxes take the first GT (ties in IoU keep the first)
    others = result.positive[0] & (result.matched_gt[0] != 2)
    others[5001] = False
    assert others.any() and (result.matched_gt[0][others] == 0).all()


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_empty_inputs(method):
    anchors = make_anchors("mnet-p2p6", 64)
    A = anchors.shape[0]
    for boxes, labels in (
        (torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.long)),  # M == 0
        (torch.rand(2, 4, 4).sort(-1).values, torch.zeros(2, 4, dtype=torch.long)),  # all padding
    ):
        result = match_anchors(anchors, boxes, labels, method=method)
        B, M = labels.shape
        assert result.positive.shape == (B, A) and not result.positive.any()
        assert (result.matched_gt == UNMATCHED).all()
        assert (result.labels == 0).all()
        assert result.forced_anchor.shape == (B, M) and (result.forced_anchor == UNMATCHED).all()


def test_degenerate_box_never_matches_and_bad_boxes_raise():
    anchors = make_anchors("mnet-biubug6")
    flat = torch.tensor([[[0.2, 0.2, 0.2, 0.3]]])  # zero width
    assert not match_anchors(anchors, flat, torch.tensor([[1]])).positive.any()
    inverted = torch.tensor([[[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.4, 0.6]]])
    with pytest.raises(ValueError, match=r"boxes\[0, 1\]"):
        match_anchors(anchors, inverted, torch.tensor([[1, 1]]))
    # padding rows are not inspected
    assert match_anchors(anchors, inverted, torch.tensor([[1, 0]])).positive.any()
    with pytest.raises(ValueError, match="labels"):
        match_anchors(anchors, inverted, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="method"):
        match_anchors(anchors, inverted, torch.tensor([[1, 1]]), method="fast")


def test_anchor_index_follows_in_place_changes():
    anchors = make_anchors("mnet-biubug6").clone()
    box = _anchor_box(anchors, 100)[None, None]
    assert bool(match_anchors(anchors, box, torch.tensor([[1]])).positive[0, 100])
    anchors[:, :2] += 0.25  # every anchor moves: the cached index must not be reused
    moved = match_anchors(anchors, box, torch.tensor([[1]]))
    dense = match_anchors(anchors, box, torch.tensor([[1]]), method="dense")
    assert_same_match(moved, dense)
    assert not bool(moved.positive[0, 100])


def test_memory_bound_2000_faces_x_204600_anchors(monkeypatch):
    """~2,000 faces against 204,600 anchors: never more than one block of IoU values, and fast."""
    anchors = make_anchors("latent-r50")
    assert anchors.shape[0] == 204_600
    gen = torch.Generator().manual_seed(7)
    targets = random_targets([2000], generator=gen, min_side=4, max_side=60)
    sizes = []
    original = matching._iou_aligned

    def recording(b1, b2):
        out = original(b1, b2)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(matching, "_iou_aligned", recording)
    chunk = 1024
    start = time.perf_counter()
    result = match_anchors(anchors, targets["boxes"], targets["labels"], chunk=chunk)
    elapsed = time.perf_counter() - start
    assert sizes and max(sizes) <= 64 * chunk
    assert sum(sizes) < 0.01 * 2000 * 204_600  # the reachable pairs are a tiny part of the full matrix
    forced = result.forced_anchor[0][result.forced_anchor[0] >= 0]
    assert forced.numel() > 1500
    assert result.positive[0, forced].all()
    assert elapsed < 20, elapsed
    # the dense path honours the same bound (checked on a slice of the anchors to stay fast)
    sizes.clear()
    match_anchors(anchors[:4000], targets["boxes"], targets["labels"], chunk=chunk, method="dense")
    assert max(sizes) <= 64 * chunk


@pytest.mark.slow
def test_crowded_full_anchor_set_sparse_equals_dense():
    anchors = make_anchors("latent-r50")
    gen = torch.Generator().manual_seed(8)
    targets = random_targets([250], generator=gen, min_side=3, max_side=300, duplicate=True)
    sparse = match_anchors(anchors, targets["boxes"], targets["labels"])
    dense = match_anchors(anchors, targets["boxes"], targets["labels"], method="dense")
    assert_same_match(sparse, dense)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    anchors = make_anchors("latent-r50")
    gen = torch.Generator().manual_seed(9)
    targets = random_targets([0, 7, 60, 300], generator=gen, duplicate=True)
    cpu = match_anchors(anchors, targets["boxes"], targets["labels"])
    for method in ("sparse", "dense"):
        gpu = match_anchors(anchors.cuda(), targets["boxes"].cuda(), targets["labels"].cuda(), method=method)
        assert gpu.positive.is_cuda
        for key in ("matched_gt", "positive", "labels", "forced_anchor"):
            assert torch.equal(getattr(gpu, key).cpu(), getattr(cpu, key)), (method, key)
