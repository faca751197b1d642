"""Box and landmark coding round trips, converters, and the original <-> network frame map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbsrc.boxes import (
    cxcywh_to_xyxy,
    decode_boxes,
    decode_landmarks,
    encode_boxes,
    encode_landmarks,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from nbsrc.frame import FrameMap


def _random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 0.8
    wh = torch.rand(n, 2, generator=g) * 0.19 + 0.01
    return torch.cat([xy, xy + wh], dim=1)  # (N, 4) xyxy normalized


def _random_anchors(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) * 0.3 + 0.02], dim=1)


def test_box_round_trip():
    boxes, anchors = _random_boxes(500), _random_anchors(500)
    encoded = encode_boxes(boxes, anchors)
    assert encoded.shape == (500, 4)
    assert torch.allclose(decode_boxes(encoded, anchors), boxes, atol=1e-6)
    # batched leading dims broadcast against [A, 4] anchors
    batched = torch.stack([boxes, boxes.flip(0)])  # (2, A, 4)
    assert torch.allclose(decode_boxes(encode_boxes(batched, anchors), anchors), batched, atol=1e-6)


def test_box_encoding_values():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    box = torch.tensor([[0.42, 0.3, 0.62, 0.7]])  # centre (0.52, 0.5), size (0.2, 0.4)
    expected = torch.tensor([[(0.52 - 0.5) / (0.1 * 0.2), 0.0, 0.0, 0.0]])
    assert torch.allclose(encode_boxes(box, anchors), expected, atol=1e-6)
    double = torch.tensor([[0.3, 0.1, 0.7, 0.9]])  # twice the anchor size
    assert torch.allclose(encode_boxes(double, anchors)[0, 2:], torch.log(torch.tensor(2.0)) / 0.2 * torch.ones(2))


def test_landmark_round_trip_and_layout():
    g = torch.Generator().manual_seed(3)
    points = torch.rand(300, 5, 2, generator=g)
    anchors = _random_anchors(300)
    encoded = encode_landmarks(points, anchors)
    assert encoded.shape == (300, 10)
    assert torch.allclose(decode_landmarks(encoded, anchors), points, atol=1e-5)
    # flattened as x0, y0, ..., x4, y4
    assert torch.allclose(encoded[:, 2], (points[:, 1, 0] - anchors[:, 0]) / (0.1 * anchors[:, 2]))
    assert torch.allclose(encoded[:, 3], (points[:, 1, 1] - anchors[:, 1]) / (0.1 * anchors[:, 3]))


def test_custom_variances_round_trip():
    boxes, anchors = _random_boxes(50), _random_anchors(50)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, anchors, (0.2, 0.5)), anchors, (0.2, 0.5)), boxes, atol=1e-6)


def test_converters_round_trip_and_do_not_modify_inputs():
    boxes = _random_boxes(20) * 640
    before = boxes.clone()
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-4)
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes, atol=1e-4)
    assert torch.equal(boxes, before)
    assert torch.equal(xywh_to_xyxy(torch.tensor([[10.0, 20.0, 5.0, 8.0]])), torch.tensor([[10.0, 20.0, 15.0, 28.0]]))


@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
@pytest.mark.parametrize(
    ("orig", "net"), [((1024, 768), (640, 640)), ((300, 500), (640, 640)), ((640, 640), (640, 640))]
)
def test_frame_map_round_trip(policy, orig, net):
    frame = FrameMap(orig_size=orig, net_size=net, policy=policy)
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, min(orig), size=(30, 4)).astype(np.float32)
    points = rng.uniform(0, min(orig), size=(30, 5, 2)).astype(np.float32)
    assert np.allclose(frame.to_original(frame.to_net(boxes)), boxes, atol=1e-3)
    assert np.allclose(frame.to_original(frame.to_net(points)), points, atol=1e-3)


def test_frame_map_values():
    stretch = FrameMap(orig_size=(1280, 320), net_size=(640, 640))
    assert np.allclose(stretch.to_net(np.array([[1280.0, 320.0, 640.0, 160.0]])), [[640, 640, 320, 320]])
    letter = FrameMap(orig_size=(1280, 320), net_size=(640, 640), policy="letterbox")
    # scale 0.5, image 640x160 centred vertically: pad y = (640 - 160) / 2 = 240
    assert np.allclose(letter.to_net(np.array([[0.0, 0.0, 1280.0, 320.0]])), [[0, 240, 640, 400]])
    with pytest.raises(ValueError, match="policy"):
        FrameMap(orig_size=(1, 1), net_size=(1, 1), policy="crop")
