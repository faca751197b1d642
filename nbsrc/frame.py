"""Mapping between an original image and the network frame (e.g. the 640x640 image a latent describes).

`FrameMap` moves boxes ``[..., 4]`` xyxy and points ``[..., 2]`` both ways under a resize policy:

- ``stretch``: plain resize to ``(net_w, net_h)``; x and y scale independently.
- ``letterbox``: aspect kept, scale ``s = min(net_w / orig_w, net_h / orig_h)``, the resized image centred
  and padded: ``net = orig * s + pad`` with ``pad = ((net_w - orig_w * s) / 2, (net_h - orig_h * s) / 2)``.

`ScaleMap` is the uniform scale of the non-square test protocols (``eval.test_scale`` original / mxnet), mapped
back as ``net / factor`` exactly as biubug6's ``test_widerface.py`` does (not by the rounded resized size).
The pixels follow the same maps in `nbsrc.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameMap", "RESIZE_POLICIES", "ScaleMap"]

RESIZE_POLICIES = ("stretch", "letterbox")


@dataclass(frozen=True)
class FrameMap:
    """Affine map original pixels -> network-frame pixels: ``net = orig * scale + pad`` per axis."""

    orig_size: tuple[int, int]  # (width, height) of the original image
    net_size: tuple[int, int]  # (width, height) of the network frame
    policy: str = "stretch"  # stretch | letterbox

    def __post_init__(self) -> None:
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {self.policy!r}")
        if min(self.orig_size) <= 0 or min(self.net_size) <= 0:
            raise ValueError(f"frame sizes must be positive, got orig={self.orig_size} net={self.net_size}")

    @property
    def scale(self) -> tuple[float, float]:
        (ow, oh), (nw, nh) = self.orig_size, self.net_size
        if self.policy == "stretch":
            return nw / ow, nh / oh
        s = min(nw / ow, nh / oh)
        return s, s

    @property
    def pad(self) -> tuple[float, float]:
        if self.policy == "stretch":
            return 0.0, 0.0
        sx, sy = self.scale
        (ow, oh), (nw, nh) = self.orig_size, self.net_size
        return (nw - ow * sx) / 2, (nh - oh * sy) / 2

    def _coeffs(self, n_coords: int) -> tuple[np.ndarray, np.ndarray]:
        sx, sy = self.scale
        px, py = self.pad
        scale = np.array([sx, sy] * (n_coords // 2), dtype=np.float64)
        pad = np.array([px, py] * (n_coords // 2), dtype=np.float64)
        return scale, pad

    def to_net(self, coords: np.ndarray) -> np.ndarray:
        """Original -> network frame. `coords` is ``[..., 4]`` xyxy or ``[..., 2]`` xy (float32 out)."""
        coords = np.asarray(coords, dtype=np.float64)
        scale, pad = self._coeffs(coords.shape[-1])
        return (coords * scale + pad).astype(np.float32)

    def to_original(self, coords: np.ndarray) -> np.ndarray:
        """Network frame -> original pixels (inverse of `to_net`)."""
        coords = np.asarray(coords, dtype=np.float64)
        scale, pad = self._coeffs(coords.shape[-1])
        return ((coords - pad) / scale).astype(np.float32)


@dataclass(frozen=True)
class ScaleMap:
    """Uniform scale original pixels -> network-frame pixels: ``net = orig * factor`` (no padding)."""

    orig_size: tuple[int, int]  # (width, height) of the original image
    net_size: tuple[int, int]  # (width, height) of the resized image
    factor: float  # resize factor (1.0: the image at its own size)

    def __post_init__(self) -> None:
        if min(self.orig_size) <= 0 or min(self.net_size) <= 0 or not self.factor > 0:
            raise ValueError(f"need positive sizes and factor, got {self.orig_size}, {self.net_size}, {self.factor}")

    @property
    def scale(self) -> tuple[float, float]:
        return self.factor, self.factor

    @property
    def pad(self) -> tuple[float, float]:
        return 0.0, 0.0

    def to_net(self, coords: np.ndarray) -> np.ndarray:
        """Original -> network frame. `coords` is ``[..., 4]`` xyxy or ``[..., 2]`` xy (float32 out)."""
        return (np.asarray(coords, dtype=np.float64) * self.factor).astype(np.float32)

    def to_original(self, coords: np.ndarray) -> np.ndarray:
        """Network frame -> original pixels (``coords / factor``)."""
        return (np.asarray(coords, dtype=np.float64) / self.factor).astype(np.float32)
