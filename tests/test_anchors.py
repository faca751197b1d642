"""Anchor generation: the pinned counts of every design, a hand-computed golden tensor, order and clipping."""

from __future__ import annotations

import math

import pytest
import torch

from nbsrc.anchors import AnchorGenerator, anchor_shapes, feature_sizes, generate_anchors
from nbsrc.config import AnchorConfig, get_preset
from nbsrc.model import build_model


def _generator(preset: str) -> AnchorGenerator:
    with torch.device("meta"):
        model = build_model(get_preset(preset, **{"model.pretrained": "none"}))
    gen = model.anchor_generator
    # the generator of the model is built from the config and the backbone strides
    cfg = get_preset(preset)
    return AnchorGenerator.from_config(cfg.anchors, gen.strides)


@pytest.mark.parametrize(
    ("preset", "size", "count"),
    [
        ("mnet-biubug6", 640, 16_800),
        ("r50-biubug6", 640, 16_800),
        ("r50-biubug6", 840, 29_126),
        ("mnet-2cls", 640, 50_400),
        ("r18-p2p6", 640, 204_600),
        ("mnet-p2p6", 640, 204_600),
        ("latent-r50", 640, 204_600),
    ],
)
def test_pinned_anchor_counts(preset, size, count):
    gen = _generator(preset)
    assert gen.num_anchors((size, size)) == count
    assert gen((size, size)).shape == (count, 4)


def test_p2p6_per_level_counts_at_480():
    gen = _generator("r50-p2p6")
    assert gen.strides == [4, 8, 16, 32, 64]
    assert gen.per_level_counts((480, 480)) == [86_400, 21_600, 5_400, 1_350, 384]
    assert gen.num_anchors((480, 480)) == 115_134


def test_2cls_count_at_onnx_size():
    assert _generator("mnet-2cls").num_anchors((320, 576)) == 22_680


def test_octave_shapes_match_the_published_table():
    shapes = anchor_shapes(get_preset("r18-p2p6").anchors, 5)
    # ratio w/h 0.5 (h/w 2) first, then square; scales 1, 2^(1/3), 2^(2/3); base 8 * 2^level
    square = shapes[0][3:, 0]
    assert torch.allclose(square, torch.tensor([8.0, 10.0794, 12.6992], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(shapes[4][3:, 0], torch.tensor([128.0, 161.2699, 203.1873], dtype=torch.float64), atol=1e-3)
    tall = shapes[0][0]
    assert math.isclose(float(tall[0] * tall[1]), 64.0, rel_tol=1e-9)  # area kept
    assert math.isclose(float(tall[1] / tall[0]), 2.0, rel_tol=1e-9)


def test_2cls_shapes_match_the_published_sizes():
    shapes = anchor_shapes(get_preset("mnet-2cls").anchors, 3)
    first = shapes[0][:3]  # min size 16: square, h/w 2.5, h/w 3.33
    expected = torch.tensor([[16.0, 16.0], [10.12, 25.30], [8.77, 29.20]], dtype=torch.float64)
    assert torch.allclose(first, expected, atol=0.01)
    last = shapes[2][3:]  # min size 512
    assert torch.allclose(
        last, torch.tensor([[512.0, 512.0], [323.8, 809.5], [280.6, 934.3]], dtype=torch.float64), atol=0.1
    )


def test_golden_tiny_image():
    # image H=16, W=24; level 0: stride 8, 2x3 cells, one 8-px square; level 1: stride 16, 1x2 cells, one 16-px
    # square. Normalized by (W, H) = (24, 16).
    cfg = AnchorConfig(min_sizes=((8,), (16,)), aspect_ratios=(1.0,))
    anchors = generate_anchors((16, 24), [8, 16], anchor_shapes(cfg, 2))
    w8, h8 = 8 / 24, 8 / 16
    w16, h16 = 16 / 24, 16 / 16
    expected = torch.tensor(
        [
            # level 0, y = 0: x = 0, 1, 2 -> cx = 4/24, 12/24, 20/24; cy = 4/16
            [4 / 24, 4 / 16, w8, h8],
            [12 / 24, 4 / 16, w8, h8],
            [20 / 24, 4 / 16, w8, h8],
            # level 0, y = 1: cy = 12/16
            [4 / 24, 12 / 16, w8, h8],
            [12 / 24, 12 / 16, w8, h8],
            [20 / 24, 12 / 16, w8, h8],
            # level 1 (stride 16): ceil(16/16) x ceil(24/16) = 1 x 2 cells; cx = 8/24, 24/24
            [8 / 24, 8 / 16, w16, h16],
            [24 / 24, 8 / 16, w16, h16],
        ]
    )
    assert anchors.dtype == torch.float32
    assert torch.allclose(anchors, expected, atol=1e-7)


def test_golden_two_shapes_per_cell_are_innermost():
    cfg = AnchorConfig(min_sizes=((4, 8),), aspect_ratios=(1.0, 4.0))
    anchors = generate_anchors((8, 8), [8], anchor_shapes(cfg, 1))
    # one cell, K = 4 in order (m=4, r=1), (m=4, r=4), (m=8, r=1), (m=8, r=4); r = h/w: w = m/2, h = 2m for r = 4
    expected = torch.tensor(
        [[0.5, 0.5, 4 / 8, 4 / 8], [0.5, 0.5, 2 / 8, 8 / 8], [0.5, 0.5, 8 / 8, 8 / 8], [0.5, 0.5, 4 / 8, 16 / 8]]
    )
    assert torch.allclose(anchors, expected)


def test_order_is_level_y_x_k():
    gen = _generator("mnet-2cls")
    anchors = gen((64, 96))
    counts = gen.per_level_counts((64, 96))
    level1 = anchors[counts[0] : counts[0] + counts[1]].reshape(4, 6, 6, 4)  # (H, W, K, 4)
    assert torch.allclose(level1[2, 3, :, 0], torch.full((6,), 3.5 * 16 / 96))
    assert torch.allclose(level1[2, 3, :, 1], torch.full((6,), 2.5 * 16 / 64))
    assert len(set(level1[0, 0, :, 2].tolist())) == 6


def test_feature_sizes_use_ceil():
    assert feature_sizes((100, 75), [8, 16, 32]) == [(13, 10), (7, 5), (4, 3)]


def test_clip_clamps_to_unit_square():
    gen = _generator("mnet-2cls")
    anchors = gen((640, 640))
    assert anchors.min() >= 0 and anchors.max() <= 1
    last = anchors[-6:]  # last cell of P5: sizes 512 (square, 2.5, 3.33)
    assert torch.allclose(last[4:, 3], torch.ones(2))  # 809.5 and 934.3 px tall -> clamped to h = 1
    assert torch.allclose(last[4:, 2] * 640, torch.tensor([323.8, 280.6]), atol=0.1)  # widths still differ
    unclipped = generate_anchors((640, 640), gen.strides, gen.shapes, clip=False)
    assert unclipped[-1, 3] > 1.4


def test_generator_caches_per_size_and_device():
    gen = _generator("mnet-biubug6")
    a = gen((64, 64))
    assert gen((64, 64)) is a
    assert gen((64, 96)).shape[0] != a.shape[0]


def test_bad_levels_raise():
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator([8, 16], anchor_shapes(AnchorConfig(), 3))
    with pytest.raises(ValueError, match="min_sizes has 3 levels"):
        anchor_shapes(AnchorConfig(), 5)
