"""Loading and checking JPEG AI latent arrays (``[256, h, w]`` or ``[1, 256, h, w]``, float16/float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["as_latent", "check_latent", "check_latent_layout", "load_latent", "open_latent"]


def check_latent_layout(shape: tuple[int, ...], dtype: np.dtype, channels: int = 256, source: str = "latent") -> None:
    """Check a latent's shape (``[C, h, w]`` or ``[1, C, h, w]``) and dtype (float16/32/64); `ValueError` naming `source`."""
    if not (len(shape) == 3 or (len(shape) == 4 and shape[0] == 1)) or shape[-3] != channels:
        raise ValueError(
            f"{source}: expected a latent of shape [{channels}, h, w] or [1, {channels}, h, w], got {list(shape)}"
        )
    if dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{source}: expected float16 or float32 values, got dtype {dtype}")


def check_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Check a latent's shape and dtype; return it as ``[C, h, w]`` (a view: nothing is copied or converted).

    Accepts ``[C, h, w]`` and ``[1, C, h, w]``, float16/float32/float64. Raises `ValueError` naming `source`.
    """
    check_latent_layout(array.shape, array.dtype, channels, source)
    return array[0] if array.ndim == 4 else array


def as_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Validate a latent (`check_latent`, finite values) and return it as ``float32 [C, h, w]``.

    Raises `ValueError` naming `source` for a wrong shape, dtype, or NaN/Inf values.
    """
    array = check_latent(np.asarray(array), channels, source).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{source}: {bad} NaN/Inf values in the latent")
    return array


def open_latent(path: str | Path) -> np.ndarray:
    """Memory-map a ``.npy`` latent file (read-only; nothing is checked or read yet).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or truncated file.
    """
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: latent file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated .npy file ({exc})") from None


def load_latent(path: str | Path, channels: int = 256) -> np.ndarray:
    """Read a ``.npy`` latent (memory-mapped) and validate it with `as_latent`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: latent file not found")
    return as_latent(np.array(open_latent(path)), channels, str(path))
