"""Loading and checking JPEG AI latent arrays (``[256, h, w]`` or ``[1, 256, h, w]``, float16/float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["as_latent", "load_latent"]


def as_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Validate a latent and return it as ``float32 [C, h, w]``.

    Accepts ``[C, h, w]`` and ``[1, C, h, w]``, float16/float32 (float64 is accepted and cast).
    Raises `ValueError` naming `source` for a wrong shape, dtype, or NaN/Inf values.
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != channels:
        raise ValueError(
            f"{source}: expected a latent of shape [{channels}, h, w] or [1, {channels}, h, w], got {list(array.shape)}"
        )
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{source}: expected float16 or float32 values, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{source}: {bad} NaN/Inf values in the latent")
    return array


def load_latent(path: str | Path, channels: int = 256) -> np.ndarray:
    """Read a ``.npy`` latent (memory-mapped) and validate it with `as_latent`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: latent file not found")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated .npy file ({exc})") from None
    return as_latent(np.array(array), channels, str(path))
