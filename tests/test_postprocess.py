"""Post-processing: decoding to pixels, thresholds, per-class NMS, top-k limits, empty results; scores follow
the class loss: softmax over (background, face[, person]) for softmax CE (the published, bit-for-bit unchanged
path), sigmoid of the foreground logits for focal loss (whose background logit is never trained)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import nms

from nbsrc.boxes import decode_boxes, encode_boxes, encode_landmarks
from nbsrc.postprocess import class_scores, postprocess

H, W = 100, 200
ANCHORS = torch.tensor(
    [
        [0.25, 0.5, 0.1, 0.2],
        [0.26, 0.5, 0.1, 0.2],  # overlaps anchor 0 heavily
        [0.75, 0.5, 0.1, 0.2],
        [0.5, 0.2, 0.05, 0.1],
    ]
)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probs))  # softmax(log p) == p when rows sum to 1


def _outputs(conf: torch.Tensor, landmarks: bool = True) -> dict:
    batch, anchors = conf.shape[:2]
    return {
        "loc": torch.zeros(batch, anchors, 4),
        "conf": conf,
        "landm": torch.zeros(batch, anchors, 10) if landmarks else None,
    }


def _run(outputs, **kw):
    args = {"conf_thresh": 0.5, "nms_thresh": 0.4, "top_k": 100, "keep_top_k": 100, **kw}
    return postprocess(outputs, ANCHORS, (H, W), **args)


def _score_all(conf: torch.Tensor, **kw) -> list[dict]:
    """Every detection of the apart-lying anchors 0, 2 and 3 (no score threshold)."""
    args = {"conf_thresh": 0.0, "nms_thresh": 0.4, "top_k": 100, "keep_top_k": 100, **kw}
    return postprocess(_outputs(conf), ANCHORS[[0, 2, 3]], (H, W), **args)


# background logits far above the face logits: softmax scores small, sigmoid(face) scores large
FOCAL_CONF = torch.tensor([[[3.0, 1.0], [4.0, 0.5], [2.5, -0.25]]])  # (1, 3, 2)


def test_no_detections_is_normal():
    conf = _logits([[0.9, 0.1]] * 4)[None].repeat(3, 1, 1)  # (3, 4, 2)
    results = _run(_outputs(conf))
    assert len(results) == 3
    for r in results:
        assert r["boxes"].shape == (0, 4) and r["scores"].shape == (0,) and r["labels"].dtype == torch.int64
        assert r["landmarks"].shape == (0, 5, 2)
    assert _run(_outputs(conf, landmarks=False))[0]["landmarks"] is None


def test_decode_to_network_pixels_and_sorted():
    conf = _logits([[0.4, 0.6], [0.2, 0.8], [0.05, 0.95], [0.3, 0.7]])[None]
    out = _outputs(conf)
    target = torch.tensor([[0.7, 0.45, 0.8, 0.6]])  # xyxy normalized, matched to anchor 2
    out["loc"][0, 2] = encode_boxes(target, ANCHORS[2:3])[0]
    points = torch.rand(1, 5, 2)
    out["landm"][0, 2] = encode_landmarks(points, ANCHORS[2:3])[0]
    result = _run(out)[0]
    assert torch.all(result["scores"][:-1] >= result["scores"][1:])
    assert math.isclose(float(result["scores"][0]), 0.95, rel_tol=1e-5)
    scale = torch.tensor([W, H, W, H])
    assert torch.allclose(result["boxes"][0], target[0] * scale, atol=1e-3)
    assert torch.allclose(result["landmarks"][0], points[0] * torch.tensor([W, H]), atol=1e-3)
    # anchors 0 and 1 overlap: NMS keeps the better one (0.8); anchor 3 stays
    assert len(result["scores"]) == 3
    assert torch.allclose(result["scores"], torch.tensor([0.95, 0.8, 0.7]), atol=1e-5)


def test_threshold_is_strict_and_batched_images_are_independent():
    conf = torch.stack([_logits([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]]), _logits([[0.9, 0.1]] * 4)])
    results = _run(_outputs(conf), conf_thresh=0.5)
    assert len(results[0]["scores"]) == 1 and len(results[1]["scores"]) == 0


def test_nms_is_per_class():
    # 3 classes (bg, face, person): anchors 0 and 1 overlap; different classes survive together
    conf = _logits([[0.1, 0.85, 0.05], [0.1, 0.05, 0.85], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])[None]
    result = _run(_outputs(conf, landmarks=False))[0]
    assert sorted(result["labels"].tolist()) == [1, 2]
    conf_same = _logits([[0.1, 0.85, 0.05], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])[None]
    result = _run(_outputs(conf_same, landmarks=False))[0]
    assert result["labels"].tolist() == [1]


def test_one_anchor_can_yield_two_classes():
    conf = _logits([[0.0001, 0.49995, 0.49995]] + [[0.98, 0.01, 0.01]] * 3)[None]
    result = _run(_outputs(conf, landmarks=False), conf_thresh=0.3)[0]
    assert sorted(result["labels"].tolist()) == [1, 2]
    assert torch.allclose(result["boxes"][0], result["boxes"][1])


def test_top_k_and_keep_top_k():
    conf = _logits([[0.4, 0.6], [0.2, 0.8], [0.05, 0.95], [0.3, 0.7]])[None]
    assert len(_run(_outputs(conf), keep_top_k=1)[0]["scores"]) == 1
    # top_k = 2 keeps anchors 2 (0.95) and 1 (0.8) before NMS
    result = _run(_outputs(conf), top_k=2)[0]
    assert torch.allclose(result["scores"], torch.tensor([0.95, 0.8]), atol=1e-5)


def test_bad_shapes_raise():
    conf = _logits([[0.5, 0.5]] * 4)[None]
    with pytest.raises(ValueError, match="anchors"):
        postprocess(_outputs(conf), ANCHORS[:3], (H, W), conf_thresh=0.5, nms_thresh=0.4, top_k=10, keep_top_k=10)


def _full_nms_reference(outputs, anchors, size, conf_thresh, nms_thresh, top_k, keep_top_k):
    """The straightforward post-processing: NMS over every candidate of every (image, class), then keep-top-k."""
    height, width = size
    boxes = decode_boxes(outputs["loc"], anchors) * torch.tensor([width, height] * 2)  # (B, A, 4)
    scores = torch.softmax(outputs["conf"], dim=-1)[..., 1:]  # (B, A, C-1)
    results = []
    for b in range(boxes.shape[0]):
        flat = scores[b].reshape(-1)
        top, index = flat.topk(min(top_k, flat.numel()))
        index = index[top > conf_thresh]
        anchor, cls = index // scores.shape[-1], index % scores.shape[-1] + 1
        kept = []
        for c in cls.unique():
            members = torch.nonzero(cls == c).squeeze(1)
            for i in nms(boxes[b, anchor[members]], flat[index[members]], nms_thresh):
                kept.append(
                    (float(flat[index[members[i]]]), int(anchor[members[i]]), int(c), boxes[b, anchor[members[i]]])
                )
        kept.sort(key=lambda t: -t[0])
        results.append(kept[:keep_top_k])
    return results


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("num_classes", "keep_top_k"), [(2, 750), (2, 25), (3, 40), (2, 3000)])
def test_early_stopping_nms_equals_nms_over_every_candidate(num_classes, keep_top_k, threads, monkeypatch):
    # many overlapping candidates above the threshold (an untrained network's case): NMS may stop early per image
    torch.manual_seed(num_classes * 1000 + keep_top_k)
    side, cells = 320, 40
    centres = (torch.arange(cells) + 0.5) / cells
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    anchors = torch.stack(
        [cx.reshape(-1), cy.reshape(-1), torch.full((cells * cells,), 0.06), torch.full((cells * cells,), 0.08)], 1
    ).repeat(2, 1)  # (3200, 4): every place twice
    batch = 3
    outputs = {
        "loc": torch.randn(batch, len(anchors), 4) * 0.5,
        "conf": torch.randn(batch, len(anchors), num_classes),
        "landm": torch.randn(batch, len(anchors), 10),
    }
    outputs["conf"][2, :, 1:] -= 12.0  # the last image has (almost) no candidates
    settings = {"conf_thresh": 0.02, "nms_thresh": 0.4, "top_k": 5000, "keep_top_k": keep_top_k}
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # 1: one batched NMS; 2: groups in threads
    ours = postprocess(outputs, anchors, (side, side), **settings)
    reference = _full_nms_reference(outputs, anchors, (side, side), **settings)
    for got, want in zip(ours, reference):
        assert len(got["scores"]) == len(want)
        assert got["scores"].tolist() == pytest.approx([w[0] for w in want], abs=0)
        assert got["labels"].tolist() == [w[2] for w in want]
        if want:
            assert torch.equal(got["boxes"], torch.stack([w[3] for w in want]))
    every = _full_nms_reference(outputs, anchors, (side, side), **{**settings, "keep_top_k": 10**9})
    assert len(every[0]) > 100 and len(every[2]) < 5  # many detections to cut from, and an (almost) empty image
    if keep_top_k < 100:
        assert len(ours[0]["scores"]) == keep_top_k  # NMS stopped early for this image


def _detect_in_child(outputs, anchors, queue):
    torch.set_num_threads(1)  # as a DataLoader worker does (OpenMP does not survive fork); NMS still sees 2
    queue.put([d["scores"].tolist() for d in postprocess(outputs, anchors, (320, 320))])


def test_threaded_nms_works_in_a_forked_child(monkeypatch):
    # the parent's NMS threads do not survive fork: a child (DataLoader worker) must get its own, not hang
    mp = pytest.importorskip("multiprocessing")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    torch.manual_seed(0)
    anchors = torch.rand(3000, 4) * 0.2 + torch.tensor([0.4, 0.4, 0.05, 0.05])  # (3000, 4) overlapping
    outputs = {"loc": torch.randn(2, 3000, 4) * 0.3, "conf": torch.randn(2, 3000, 2), "landm": None}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    parent = [d["scores"].tolist() for d in postprocess(outputs, anchors, (320, 320))]  # starts the threads
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_detect_in_child, args=(outputs, anchors, queue))
    child.start()
    try:
        got = queue.get(timeout=30)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert got == parent and len(parent[0]) > 10


def test_class_scores_per_loss():
    conf = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))  # (B, A, C) 3-class
    assert torch.equal(class_scores(conf), torch.softmax(conf, dim=-1)[..., 1:])
    assert torch.equal(class_scores(conf, "ohem"), class_scores(conf))
    assert torch.equal(class_scores(conf, "focal"), torch.sigmoid(conf[..., 1:]))
    assert class_scores(conf.half(), "focal").dtype == torch.float32
    with pytest.raises(ValueError, match="cls_loss"):
        class_scores(conf, "softmax")


def test_postprocess_focal_scores_are_sigmoid_of_the_face_logit():
    result = _score_all(FOCAL_CONF, cls_loss="focal")[0]
    expected = torch.sigmoid(FOCAL_CONF[0, :, 1]).sort(descending=True).values  # (3,)
    assert torch.equal(result["scores"], expected)
    assert not torch.allclose(result["scores"], torch.softmax(FOCAL_CONF[0], -1)[:, 1].sort(descending=True).values)
    # the background logit plays no part
    shifted = FOCAL_CONF.clone()
    shifted[..., 0] = -10.0
    assert torch.equal(_score_all(shifted, cls_loss="focal")[0]["scores"], result["scores"])


def test_published_softmax_path_is_unchanged():
    conf = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1))  # (B, A, 2)
    default = _score_all(conf)
    explicit = _score_all(conf, cls_loss="ohem")
    reference = torch.softmax(conf.float(), dim=-1)[..., 1]  # (B, A) the published score
    for b in range(2):
        assert torch.equal(default[b]["scores"], explicit[b]["scores"])
        assert torch.equal(default[b]["boxes"], explicit[b]["boxes"])
        assert torch.equal(default[b]["scores"], reference[b].sort(descending=True).values)
