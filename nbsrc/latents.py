"""Loading and checking JPEG AI latent arrays (``[256, h, w]`` or ``[1, 256, h, w]``, float16/float32)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["as_latent", "check_latent", "load_latent", "open_latent", "read_plain_npy"]


def check_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Check a latent's shape and dtype; return it as ``[C, h, w]`` (a view: nothing is copied or converted).

    Accepts ``[C, h, w]`` and ``[1, C, h, w]``, float16/float32/float64. Raises `ValueError` naming `source`.
    """
    shape = list(array.shape)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != channels:
        raise ValueError(
            f"{source}: expected a latent of shape [{channels}, h, w] or [1, {channels}, h, w], got {shape}"
        )
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{source}: expected float16 or float32 values, got dtype {array.dtype}")
    return array


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


def read_plain_npy(path: str | Path) -> np.ndarray | None:
    """Read a C-ordered, native-endian float16 / float32 ``.npy`` file into a new array, straight from the file.

    Several times faster than memory-mapping and copying (no page faults on a map). None for any other file
    (another dtype or order, a header numpy's reader must judge): `open_latent` handles those and gives the precise
    error for a bad one.

    Raises:
        FileNotFoundError: no such file.
        ValueError: fewer data bytes than the header promises (checked before allocating anything).
    """
    path = Path(path)
    try:
        handle = open(path, "rb", buffering=0)  # unbuffered: the data goes straight into the array
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: latent file not found") from None
    except OSError:  # a folder, no permission: `open_latent` says which
        return None
    with handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return None
        except (ValueError, OSError, EOFError):
            return None
        if fortran or not dtype.isnative or dtype not in (np.float16, np.float32):
            return None
        array = None
        promised = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        got = os.fstat(handle.fileno()).st_size - handle.tell()
        if got >= promised:  # checked before allocating: a corrupt header may promise anything
            array = np.empty(shape, dtype)
            view = memoryview(array.reshape(-1)).cast("B")
            got = 0
            while got < promised:
                step = handle.readinto(view[got:])
                if not step:
                    break
                got += step
    if got < promised:
        raise ValueError(
            f"{path}: unreadable or truncated .npy file ({got} data bytes, the header promises {promised})"
        )
    return array


def load_latent(path: str | Path, channels: int = 256) -> np.ndarray:
    """Read a ``.npy`` latent (`read_plain_npy`, else memory-mapped and copied) and validate it with `as_latent`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: latent file not found")
    array = read_plain_npy(path)
    if array is None:
        array = np.array(open_latent(path))
    return as_latent(array, channels, str(path))
