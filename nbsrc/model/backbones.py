"""Backbones: MobileNetV1 x0.25 (biubug6), torchvision ResNets, and the latent bridge + pruned ResNet or MobileNet.

Each maps its input to a list of feature maps and reports ``out_channels`` and ``strides`` (network-frame pixels
per cell) for it; necks, heads and anchors read those. Module names follow the published checkpoints (biubug6's
``stage1/2/3`` indices, torchvision's ``conv1``, ``bn1``, ``layer1`` ...), so their state dicts load unrenamed.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50

from nbsrc.model.bridge import make_bridge

__all__ = [
    "LatentBackbone",
    "MobileNetV1",
    "ResNetBackbone",
    "conv_bn",
    "conv_bn1x1",
    "conv_bn_no_relu",
    "conv_dw",
    "resnet_channels",
]

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3x3 conv (no bias) + BN + LeakyReLU(`leaky`); ``leaky = 0`` is a plain ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BN, no activation."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """1x1 conv (no bias) + BN + LeakyReLU(`leaky`)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + BN + LeakyReLU, then pointwise 1x1 + BN + LeakyReLU (indices 0, 1, 3, 4 hold weights)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25 of biubug6 (all activations LeakyReLU 0.1), without its classifier.

    ``Tensor[B, 3, H, W]`` -> the maps of stage1 (64 ch, stride 8), stage2 (128, 16) and stage3 (256, 32), preceded
    with `stride4_tap` by the stride-4 map after ``stage1[3]`` (32 ch) for the P2-P6 neck.
    """

    def __init__(self, stride4_tap: bool = False) -> None:
        super().__init__()
        self.stride4_tap = stride4_tap
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),  # stride 2
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),  # stride 4
            conv_dw(32, 32, 1),  # <- stride-4 tap
            conv_dw(32, 64, 2),  # stride 8
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),  # stride 16
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),  # stride 32
            conv_dw(256, 256, 1),
        )
        self.out_channels = ([32] if stride4_tap else []) + [64, 128, 256]
        self.strides = ([4] if stride4_tap else []) + [8, 16, 32]

    def trunk(self) -> list[nn.Module]:
        """Modules holding pretrained (ImageNet) weights."""
        return [self]

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for index, block in enumerate(self.stage1):
            x = block(x)
            if index == 3 and self.stride4_tap:
                features.append(x)
        features.append(x)
        x = self.stage2(x)
        features.append(x)
        features.append(self.stage3(x))
        return features


def resnet_channels(depth_name: str) -> dict[str, int]:
    """Output channels of ``layer1`` ... ``layer4`` of a torchvision ResNet."""
    if depth_name not in _RESNETS:
        raise ValueError(f"unknown resnet {depth_name!r}; expected one of {list(_RESNETS)}")
    expansion = 4 if depth_name == "resnet50" else 1
    return {f"layer{i}": 64 * 2 ** (i - 1) * expansion for i in range(1, 5)}


_LAYER_STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet cut after the last of `return_layers` (biubug6: layer2..4, P2-P6: layer1..4)."""

    def __init__(self, name: str = "resnet50", return_layers: tuple[str, ...] = ("layer2", "layer3", "layer4")):
        super().__init__()
        channels = resnet_channels(name)
        net = _RESNETS[name](weights=None)
        self.name = name
        self.return_layers = tuple(return_layers)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        last = max(int(layer[-1]) for layer in return_layers)
        for index in range(1, last + 1):
            setattr(self, f"layer{index}", getattr(net, f"layer{index}"))
        self._layers = [f"layer{index}" for index in range(1, last + 1)]
        self.out_channels = [channels[layer] for layer in self.return_layers]
        self.strides = [_LAYER_STRIDE[layer] for layer in self.return_layers]

    def trunk(self) -> list[nn.Module]:
        return [self]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in self._layers:
            x = getattr(self, layer)(x)
            if layer in self.return_layers:
                features.append(x)
        return features


class LatentBackbone(nn.Module):
    """Latent ``[B, C, h, w]`` -> bridge (x4) -> the network after its stride-4 point (the earlier layers removed).

    - ResNet: the bridge lifts the latent to the input of ``layer2`` (the stem and ``layer1`` are removed);
      returns ``[bridge output, C2, C3, C4]`` from ``layer2``, ``layer3``, ``layer4``.
    - MobileNetV1 x0.25: the bridge lifts the latent to the input of ``stage1[3]`` (32 channels; the three blocks
      before it are removed); returns ``[stage1[3], stage1, stage2, stage3]`` (32, 64, 128, 256 channels).

    Strides are ``latent_stride / 4 * (1, 2, 4, 8)`` (4/8/16/32 for JPEG AI's 16: a 40x40 latent gives 160, 80, 40
    and 20 cells). Module names follow the RGB networks, so their ImageNet weights load into the kept part.
    """

    def __init__(
        self, name: str = "resnet50", bridge: str = "deconv", latent_channels: int = 256, latent_stride: int = 16
    ) -> None:
        super().__init__()
        self.name = name
        self.latent_channels = latent_channels
        self.latent_stride = latent_stride
        base = latent_stride // 4
        self.strides = [base, base * 2, base * 4, base * 8]
        if name == "mobilenet0.25":
            net = MobileNetV1(stride4_tap=True)
            for index in range(3):  # the layers before stride 4 (keys of the kept blocks stay stage1.3 ...)
                net.stage1[index] = nn.Identity()
            self.bridge = make_bridge(bridge, latent_channels, 32)
            self.stage1, self.stage2, self.stage3 = net.stage1, net.stage2, net.stage3
            self.out_channels = list(net.out_channels)
            return
        channels = resnet_channels(name)
        net = _RESNETS[name](weights=None)
        self.bridge = make_bridge(bridge, latent_channels, channels["layer1"])
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        self.out_channels = [channels["layer1"], channels["layer2"], channels["layer3"], channels["layer4"]]

    def trunk(self) -> list[nn.Module]:
        """The kept part of the network (pretrained weights, frozen by ``freeze_backbone``; the bridge trains)."""
        return [module for name, module in self.named_children() if name != "bridge"]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.bridge(x)  # [B, C1, 4h, 4w]
        if self.name == "mobilenet0.25":
            p2 = self.stage1[3](x)  # [B, 32, 4h, 4w]
            c2 = self.stage1[5](self.stage1[4](p2))  # [B, 64, 2h, 2w]
            c3 = self.stage2(c2)  # [B, 128, h, w]
            return [p2, c2, c3, self.stage3(c3)]  # ... [B, 256, h/2, w/2]
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [x, c2, c3, c4]
