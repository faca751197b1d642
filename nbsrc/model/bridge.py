"""Bridges: lift a JPEG AI latent ``[B, C, h, w]`` to the input of ResNet stage 2, ``[B, C2, 4h, 4w]``.

A 40x40 latent of a 640x640 image becomes a 160x160 map (stride 4), what ``layer2`` sees in an RGB ResNet.
"""

from __future__ import annotations

import typing

from torch import nn

from nbsrc.config import Bridge

__all__ = ["make_bridge"]


def make_bridge(variant: Bridge, in_channels: int, out_channels: int) -> nn.Sequential:
    """Lift a latent ``[B, in, h, w]`` to ``[B, out, 4h, 4w]`` (the input of ResNet stage 2).

    - ``deconv``: conv3x3 in->512 + BN + ReLU, ConvTranspose2d(k4, s2, p1) 512->512 + BN + ReLU,
      ConvTranspose2d(k4, s2, p1) 512->out + BN + ReLU (7,474,944 parameters for 256->256).
    - ``bilinear``: x4 bilinear upsample, conv3x3 in->out (no bias) + BN + ReLU (590,336 for 256->256).
    - ``nearest``: x2 nearest, conv3x3 in->in + ReLU, x2 nearest, conv3x3 in->out + ReLU (1,180,160 for 256->256).
    - ``pixelshuffle``: conv1x1 in->16*out (no bias), PixelShuffle(4) + BN + ReLU (1,049,088 for 256->256): each
      latent cell unfolds into its own 4x4 block, the cheapest bridge and the one keeping detail below the cell size.
    """
    if variant == "deconv":
        return nn.Sequential(
            nn.Conv2d(in_channels, 512, 3, 1, 1),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(512, 512, 4, 2, 1),  # h -> 2h
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(512, out_channels, 4, 2, 1),  # 2h -> 4h
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    if variant == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    if variant == "nearest":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, in_channels, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.ReLU(inplace=True),
        )
    if variant == "pixelshuffle":
        return nn.Sequential(
            nn.Conv2d(in_channels, 16 * out_channels, 1, bias=False),  # [B, 16*out, h, w]
            nn.PixelShuffle(4),  # [B, out, 4h, 4w]
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    raise ValueError(f"unknown bridge {variant!r}; expected one of {list(typing.get_args(Bridge))}")
