"""Prediction heads: one 1x1 conv (with bias) per level, flattened in anchor order (level, y, x, k).

Channel layout is anchor-major, as in the published checkpoints: channel ``k * C + c`` of a head is component
``c`` of anchor ``k`` (a 2-anchor class head is ``[a0_bg, a0_face, a1_bg, a1_face]``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Head", "flatten_head", "make_heads"]


def flatten_head(x: Tensor, num_outputs: int) -> Tensor:
    """``Tensor[B, K*C, H, W]`` -> ``Tensor[B, H*W*K, C]`` in (y, x, k) order, the anchor order of `nbsrc.anchors`."""
    assert x.dim() == 4 and x.shape[1] % num_outputs == 0, (tuple(x.shape), num_outputs)
    batch = x.shape[0]
    x = x.permute(0, 2, 3, 1)  # (B, H, W, K*C)
    return x.reshape(batch, -1, num_outputs)  # (B, H*W*K, C)


class Head(nn.Module):
    """``conv1x1``: ``in_channels -> num_anchors * num_outputs``; output ``Tensor[B, H*W*K, num_outputs]``."""

    def __init__(self, in_channels: int, num_anchors: int, num_outputs: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * num_outputs, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return flatten_head(self.conv1x1(x), self.num_outputs)


def make_heads(in_channels: list[int], num_anchors: list[int], num_outputs: int) -> nn.ModuleList:
    """One `Head` per level (``ClassHead.{i}.conv1x1`` in the published key layout)."""
    if len(in_channels) != len(num_anchors):
        raise ValueError(f"{len(in_channels)} levels of features but {len(num_anchors)} levels of anchors")
    return nn.ModuleList(Head(c, k, num_outputs) for c, k in zip(in_channels, num_anchors))
