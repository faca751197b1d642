"""Feature pyramid (FPN) and the SSH context module, with the biubug6 numerics and module names.

- `FPN`: one 1x1 lateral per input (``output1`` ... ``outputN``), top-down nearest upsampling to the lateral's
  size, a 3x3 merge per level except the top (``merge1`` ... ``merge{N-1}``); the top level has no merge.
  With ``extra_p6`` a 3x3 stride-2 conv on the raw top input (``p6``) adds one coarser level.
  Three inputs without P6 is exactly the published biubug6 FPN (P3-P5).
- `SSH`: conv3X3 (out/2) | conv5X5 (out/4) | conv7X7 (out/4) branches, concat, then ReLU.

Activations follow the published rule: LeakyReLU(0.1) when ``out_channels <= 64``, else ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbsrc.model.backbones import conv_bn, conv_bn1x1, conv_bn_no_relu

__all__ = ["FPN", "SSH", "leaky_slope"]


def leaky_slope(out_channels: int) -> float:
    """The published activation rule: LeakyReLU 0.1 for narrow (<= 64 channel) necks, plain ReLU otherwise."""
    return 0.1 if out_channels <= 64 else 0.0


class FPN(nn.Module):
    """Top-down feature pyramid: ``Tensor[B, in_channels[i], H_i, W_i]`` (finest first) -> ``Tensor[B, out_channels,
    H_i, W_i]``, plus P6 (``ceil(H_top / 2) x ceil(W_top / 2)``) with `extra_p6`. `in_strides` is only recorded."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        in_strides: list[int] | None = None,
        extra_p6: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"FPN needs at least 2 input levels, got {len(in_channels)}")
        leaky = leaky_slope(out_channels)
        self.num_inputs = len(in_channels)
        for index, channels in enumerate(in_channels, 1):
            setattr(self, f"output{index}", conv_bn1x1(channels, out_channels, stride=1, leaky=leaky))
        for index in range(1, self.num_inputs):
            setattr(self, f"merge{index}", conv_bn(out_channels, out_channels, leaky=leaky))
        self.p6 = conv_bn(in_channels[-1], out_channels, stride=2, leaky=leaky) if extra_p6 else None
        strides = list(in_strides) if in_strides is not None else [2**i for i in range(len(in_channels))]
        if len(strides) != len(in_channels):
            raise ValueError(f"{len(in_channels)} input channel counts but {len(strides)} strides")
        self.strides = strides + ([strides[-1] * 2] if extra_p6 else [])
        self.out_channels = [out_channels] * len(self.strides)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [getattr(self, f"output{i}")(f) for i, f in enumerate(features, 1)]
        outputs = [laterals[-1]]  # the top level has no merge conv
        for index in range(self.num_inputs - 1, 0, -1):
            lateral = laterals[index - 1]
            up = F.interpolate(outputs[0], size=[lateral.size(2), lateral.size(3)], mode="nearest")
            outputs.insert(0, getattr(self, f"merge{index}")(lateral + up))
        if self.p6 is not None:
            outputs.append(self.p6(features[-1]))
        return outputs


class SSH(nn.Module):
    """SSH context module (in -> out channels, spatial size kept).

    ``ReLU(concat[conv3X3(x), conv5X5_2(c), conv7x7_3(conv7X7_2(c))])`` with ``c = conv5X5_1(x)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 4 != 0:
            raise ValueError(f"SSH out_channels must be a multiple of 4, got {out_channels}")
        leaky = leaky_slope(out_channels)
        self.conv3X3 = conv_bn_no_relu(in_channels, out_channels // 2)
        self.conv5X5_1 = conv_bn(in_channels, out_channels // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channels // 4, out_channels // 4)
        self.conv7X7_2 = conv_bn(out_channels // 4, out_channels // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channels // 4, out_channels // 4)

    def forward(self, x: Tensor) -> Tensor:
        conv3x3 = self.conv3X3(x)
        conv5x5_1 = self.conv5X5_1(x)
        conv5x5 = self.conv5X5_2(conv5x5_1)
        conv7x7 = self.conv7x7_3(self.conv7X7_2(conv5x5_1))
        return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))
