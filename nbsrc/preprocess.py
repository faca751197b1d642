"""Turning an image into a network input: resize it (into the network frame of a `nbsrc.frame.FrameMap`, or by a
test-scale factor), then normalize it (channel order, mean, std). Shared by the datasets and the detector.

The test-scale factors are biubug6's ``test_widerface.py`` ``resize`` (``eval.test_scale``): original 1; mxnet
``1600 / min(h, w)``, or ``2150 / max(h, w)`` when ``round(resize * max(h, w)) > 2150``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from nbsrc.config import TEST_SCALES
from nbsrc.frame import FrameMap

__all__ = [
    "MXNET_MAX_SIZE",
    "MXNET_TARGET_SIZE",
    "eval_resize_factor",
    "normalize_image",
    "resize_by_factor",
    "resize_to_frame",
]

MXNET_TARGET_SIZE = 1600  # test_scale mxnet: short side (biubug6 test_widerface.py target_size)
MXNET_MAX_SIZE = 2150  # test_scale mxnet: cap of the long side (max_size)


def resize_to_frame(
    image: np.ndarray,
    frame: FrameMap,
    fill_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0),
    interpolation: int | None = None,
) -> np.ndarray:
    """Resize `image` into the network frame of `frame` exactly as `FrameMap.to_net` maps coordinates.

    ``stretch`` uses `cv2.resize` (area interpolation when shrinking); ``letterbox`` an affine warp with the
    map's scale and (fractional) padding, the border filled with `fill_rgb`.
    """
    net_w, net_h = frame.net_size
    height, width = image.shape[:2]
    if (width, height) != tuple(frame.orig_size):
        raise ValueError(
            f"image is {width}x{height} but the frame map expects {frame.orig_size[0]}x{frame.orig_size[1]}"
        )
    sx, sy = frame.scale
    if interpolation is None:
        interpolation = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
    if frame.policy == "stretch":
        return cv2.resize(image, (net_w, net_h), interpolation=interpolation)
    px, py = frame.pad
    # pixel centres: (i + 0.5) * s + pad = j + 0.5  ->  j = i * s + (pad + 0.5 * s - 0.5)
    matrix = np.array([[sx, 0.0, px + 0.5 * sx - 0.5], [0.0, sy, py + 0.5 * sy - 0.5]], np.float64)
    if interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR
    border = tuple(float(v) for v in fill_rgb)
    return cv2.warpAffine(
        image, matrix, (net_w, net_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )


def eval_resize_factor(height: int, width: int, test_scale: str) -> float:
    """biubug6 ``test_widerface.py``'s ``resize`` for an image of ``height x width`` (module docstring); `ValueError`
    unless `test_scale` is ``original`` or ``mxnet`` (``square`` resizes to a frame, not by a factor)."""
    if test_scale not in TEST_SCALES or test_scale == "square":
        raise ValueError(f"test_scale must be 'original' or 'mxnet' for a resize factor, got {test_scale!r}")
    if test_scale == "original":
        return 1.0
    resize = float(MXNET_TARGET_SIZE) / float(min(height, width))
    if np.round(resize * max(height, width)) > MXNET_MAX_SIZE:
        resize = float(MXNET_MAX_SIZE) / float(max(height, width))
    return resize


def resize_by_factor(image: np.ndarray, factor: float) -> np.ndarray:
    """`image` resized by `factor` as biubug6's ``test_widerface.py`` does: unchanged at 1, else ``float32
    [round(H * f), round(W * f), 3]`` (0..255, not rounded back to uint8, as biubug6 resizes its float image)."""
    if factor == 1.0:
        return image
    return cv2.resize(image.astype(np.float32), None, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)


def normalize_image(
    image_rgb: np.ndarray,
    channel_order: str = "bgr",
    pixel_mean: Sequence[float] = (104.0, 117.0, 123.0),
    pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """``[H, W, 3]`` RGB 0..255 (uint8 or float) -> ``float32 Tensor[3, H, W]`` in `channel_order`, ``(x - mean) /
    std`` per channel (mean and std in `channel_order`; biubug6: BGR minus (104, 117, 123), no scaling)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(image_rgb.shape)}")
    sources = (2, 1, 0) if channel_order == "bgr" else (0, 1, 2)  # input channel of each output channel
    mean = np.asarray(pixel_mean, np.float32)
    std = np.asarray(pixel_std, np.float32)
    out = np.empty((3, *image_rgb.shape[:2]), np.float32)  # (3, H, W)
    # one pass per channel straight into the CHW output, in float32 as (float32(x) - mean) / std: the same bits as
    # converting, reordering, normalizing and transposing whole arrays, about 10x faster on a 1024x768 image
    for channel, source in enumerate(sources):
        np.subtract(image_rgb[:, :, source], mean[channel], out=out[channel], dtype=np.float32)
        if std[channel] != 1:
            np.divide(out[channel], std[channel], out=out[channel])
    return torch.from_numpy(out)
