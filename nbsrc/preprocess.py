"""Network input preparation shared by datasets and the detector (conventions in `nbsrc.boxes`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["normalize_image"]


def normalize_image(
    image_rgb: np.ndarray,
    channel_order: str = "bgr",
    pixel_mean: Sequence[float] = (104.0, 117.0, 123.0),
    pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """``[H, W, 3]`` RGB 0..255 (uint8 or float) -> ``float32 Tensor[3, H, W]``.

    Channels are reordered to `channel_order`, then ``(x - mean) / std`` per channel (mean and std given in
    `channel_order`). The biubug6 weights expect BGR minus (104, 117, 123) and no scaling.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(image_rgb.shape)}")
    image = image_rgb.astype(np.float32, copy=False)
    if channel_order == "bgr":
        image = image[:, :, ::-1]
    elif channel_order != "rgb":
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    image = (image - np.asarray(pixel_mean, np.float32)) / np.asarray(pixel_std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
