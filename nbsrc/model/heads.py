"""Prediction heads: one 1x1 conv (with bias) per level, flattened in anchor order (level, y, x, k).

Channel layout is anchor-major, as in the published checkpoints: channel ``k * C + c`` of a head is component
``c`` of anchor ``k`` (a 2-anchor class head is ``[a0_bg, a0_face, a1_bg, a1_face]``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FOCAL_PRIOR", "Head", "flatten_head", "init_focal_prior", "make_heads"]

FOCAL_PRIOR = 0.01  # initial foreground probability of a focal-loss class head (Lin et al. 2017, pi)


def flatten_head(x: Tensor, num_outputs: int) -> Tensor:
    """``Tensor[B, K*C, H, W]`` -> ``Tensor[B, H*W*K, C]`` in (y, x, k) order, the anchor order of `nbsrc.anchors`."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, num_outputs)  # (B, H, W, K*C) -> (B, H*W*K, C)


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
    return nn.ModuleList(Head(c, k, num_outputs) for c, k in zip(in_channels, num_anchors))


@torch.no_grad()
def init_focal_prior(class_heads: nn.ModuleList, prior: float = FOCAL_PRIOR) -> None:
    """Initialise class heads for sigmoid focal loss as RetinaNet does (Lin et al. 2017, torchvision).

    Weights ~ N(0, 0.01), foreground biases ``-log((1 - prior) / prior)`` so every anchor starts at foreground
    probability ~`prior` (the many easy negatives do not swamp the first steps), background bias 0 (unused).
    """
    for head in class_heads:
        conv = head.conv1x1
        nn.init.normal_(conv.weight, std=0.01)
        bias = conv.bias.view(-1, head.num_outputs)  # (K, C)
        bias[:, 0] = 0.0
        bias[:, 1:] = -math.log((1 - prior) / prior)
