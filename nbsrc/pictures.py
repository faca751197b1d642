"""What a network input looks like: the one place that turns an input tensor back into a picture (a latent's
energy map, or the un-normalised RGB image), for the notebooks' galleries and the tracker's previews.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["energy_map", "input_picture", "preview_picture"]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def energy_map(latent: Any) -> np.ndarray:
    """RMS over channels of a latent ``[C, h, w]`` (or ``[1, C, h, w]``): ``float32 [h, w]``."""
    array = np.asarray(_numpy(latent), dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"energy map: expected a latent [C, h, w], got shape {array.shape}")
    return np.sqrt((array.astype(np.float64) ** 2).mean(axis=0)).astype(np.float32)


def input_picture(x: Any, model_cfg: Any) -> np.ndarray:
    """A network input ``[C, H, W]`` as a picture: a latent's energy map (``float32 [h, w]``), or the RGB
    image (``uint8 [H, W, 3]``) recovered with ``model_cfg``'s pixel mean / std and channel order."""
    array = _numpy(x)
    if model_cfg.input_kind == "latent":
        return energy_map(array)
    mean = np.asarray(model_cfg.pixel_mean, np.float32)[:, None, None]  # (3, 1, 1)
    std = np.asarray(model_cfg.pixel_std, np.float32)[:, None, None]  # (3, 1, 1)
    image = (array * std + mean).transpose(1, 2, 0)  # (H, W, 3)
    if model_cfg.channel_order == "bgr":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))


def preview_picture(x: Any, model_cfg: Any, latent_stride: int = 16) -> np.ndarray:
    """`input_picture` as ``uint8 [H, W, 3]`` in the network frame, for image loggers: a latent's energy map
    is scaled to 0..255 and enlarged by `latent_stride` so that network-frame boxes fit on it."""
    picture = input_picture(x, model_cfg)
    if picture.dtype == np.uint8:
        return picture
    low, high = float(picture.min()), float(picture.max())
    gray = np.round((picture - low) / max(high - low, 1e-6) * 255).astype(np.uint8)  # (h, w)
    gray = np.repeat(np.repeat(gray, latent_stride, axis=0), latent_stride, axis=1)  # (H, W)
    return np.stack([gray] * 3, axis=-1)
