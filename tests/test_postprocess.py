"""Post-processing: decoding to pixels, thresholds, per-class NMS, top-k limits, empty results."""

from __future__ import annotations

import math

import pytest
import torch

from nbsrc.boxes import encode_boxes, encode_landmarks
from nbsrc.postprocess import postprocess

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
