"""Anchor (prior) generation, vectorized, in the order the heads flatten to: (level, y, x, k).

Anchors are ``Tensor[A, 4]`` (cx, cy, w, h) normalized by the network-frame size (see `nbsrc.boxes`).
Level ``l`` has stride ``s_l`` (read from the backbone), a feature map of ``ceil(H / s_l) x ceil(W / s_l)``
cells, and ``K`` anchor shapes per cell centred at ``((x + 0.5) * s_l, (y + 0.5) * s_l)``.

The K shapes per level (`AnchorConfig.style`):

- ``min_sizes`` (biubug6 / 2-class): for each size ``m`` of the level, for each aspect ratio ``r = h/w``:
  ``w = m / sqrt(r)``, ``h = m * sqrt(r)`` (r = 1 gives the square).
- ``octave`` (P2-P6 design): level ``l`` has base ``b * 2^l``; for each ratio, for each scale ``c``:
  ``size = b * 2^l * c``, ``w = size / sqrt(r)``, ``h = size * sqrt(r)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nbsrc.config import AnchorConfig

__all__ = ["AnchorGenerator", "anchor_shapes", "feature_sizes", "generate_anchors"]


def anchor_shapes(cfg: AnchorConfig, num_levels: int) -> list[Tensor]:
    """Anchor (w, h) in pixels per level: a list of ``Tensor[K, 2]`` float64."""
    shapes = []
    for level in range(num_levels):
        if cfg.style == "min_sizes":
            if len(cfg.min_sizes) != num_levels:
                raise ValueError(f"anchors.min_sizes has {len(cfg.min_sizes)} levels, the backbone has {num_levels}")
            sizes_ratios = [(m, r) for m in cfg.min_sizes[level] for r in cfg.aspect_ratios]
        else:
            base = cfg.base_size * 2**level
            sizes_ratios = [(base * c, r) for r in cfg.aspect_ratios for c in cfg.scales]
        shapes.append(
            torch.tensor([(m / math.sqrt(r), m * math.sqrt(r)) for m, r in sizes_ratios], dtype=torch.float64)
        )
    return shapes


def feature_sizes(image_size: tuple[int, int], strides: list[int]) -> list[tuple[int, int]]:
    """``(ceil(H / s), ceil(W / s))`` per stride; `image_size` is (H, W)."""
    height, width = image_size
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def generate_anchors(
    image_size: tuple[int, int], strides: list[int], shapes: list[Tensor], clip: bool = False
) -> Tensor:
    """All anchors of an image of ``(H, W)`` pixels: ``Tensor[A, 4]`` cxcywh normalized, float32, in (level, y, x, k)
    order, ``A = sum_l ceil(H/s_l) * ceil(W/s_l) * K_l``."""
    height, width = image_size
    per_level = []
    for (fh, fw), stride, wh in zip(feature_sizes(image_size, strides), strides, shapes):
        ys = (torch.arange(fh, dtype=torch.float64) + 0.5) * stride / height  # (fh,)
        xs = (torch.arange(fw, dtype=torch.float64) + 0.5) * stride / width  # (fw,)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (fh, fw) each
        k = wh.shape[0]
        centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(fh, fw, k, 2)  # (fh, fw, K, 2)
        sizes = (wh / torch.tensor([width, height], dtype=torch.float64)).expand(fh, fw, k, 2)  # (fh, fw, K, 2)
        per_level.append(torch.cat([centres, sizes], dim=-1).reshape(-1, 4))  # (fh*fw*K, 4)
    anchors = torch.cat(per_level, dim=0)  # (A, 4)
    if clip:
        anchors = anchors.clamp(0.0, 1.0)
    return anchors.to(torch.float32)


class AnchorGenerator:
    """Anchors for a network with the given strides; cached per (H, W) and device."""

    def __init__(self, strides: list[int], shapes: list[Tensor], clip: bool = False) -> None:
        if len(strides) != len(shapes):
            raise ValueError(f"{len(strides)} strides but {len(shapes)} levels of anchor shapes")
        self.strides = list(strides)
        self.shapes = shapes
        self.clip = clip
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    @classmethod
    def from_config(cls, cfg: AnchorConfig, strides: list[int]) -> AnchorGenerator:
        return cls(strides, anchor_shapes(cfg, len(strides)), clip=cfg.clip)

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [int(s.shape[0]) for s in self.shapes]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        return sum(self.per_level_counts(image_size))

    def per_level_counts(self, image_size: tuple[int, int]) -> list[int]:
        return [h * w * k for (h, w), k in zip(feature_sizes(image_size, self.strides), self.num_anchors_per_location)]

    def __call__(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """``Tensor[A, 4]`` cxcywh normalized for an image of `image_size` = (H, W) pixels."""
        key = (int(image_size[0]), int(image_size[1]), str(device))
        if key not in self._cache:
            self._cache[key] = generate_anchors(key[:2], self.strides, self.shapes, self.clip).to(device)
        return self._cache[key]
