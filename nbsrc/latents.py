"""JPEG AI latent files (``[256, h, w]`` or ``[1, 256, h, w]``, float16/float32 ``.npy``): the header, the one
reader, and the checks of shape, dtype and values.

`read_npy_header` reads a file's header without its data (indexing checks every latent of a split that way);
`load_latent` reads a latent into a new ``float32 [C, h, w]`` tensor, checked; `count_file_non_finite` counts the
NaN/Inf values of a file without converting it.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "LATENT_DTYPES",
    "NpyHeader",
    "as_latent",
    "check_latent",
    "count_file_non_finite",
    "count_non_finite",
    "load_latent",
    "open_latent",
    "read_npy_header",
    "read_plain_npy",
]

LATENT_DTYPES = (np.float16, np.float32, np.float64)
# elements converted per call: small enough for torch to stay on the calling thread (DataLoader workers are the
# parallelism; intra-op threads fighting over busy cores made a 40x40 latent ~10x slower to read)
CONVERT_CHUNK = 16384
NPY_MAGIC = b"\x93NUMPY"
NPY_HEAD_BYTES = 256  # read at once: the whole header of a plain array (numpy pads it to 64 or 128 bytes)
_NPY_DICT = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), *\} *\n?"
)
_NPY_DTYPES: dict[str, np.dtype] = {}


# ---- the .npy header ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says, and the size of its file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # byte where the data starts
    file_size: int  # bytes

    @property
    def count(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def promised(self) -> int:
        """Data bytes the header promises."""
        return self.count * self.dtype.itemsize

    @property
    def present(self) -> int:
        """Data bytes the file holds."""
        return self.file_size - self.offset


def _plain_header(head: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int] | None:
    """``(shape, dtype, fortran, data_offset)`` of a ``.npy`` file whose first bytes are `head`, for the header
    numpy writes for plain arrays; None for anything else (then numpy's own reader decides)."""
    if len(head) < 12 or not head.startswith(NPY_MAGIC) or head[6] not in (1, 2, 3):
        return None
    start = 10 if head[6] == 1 else 12
    offset = start + int.from_bytes(head[8:start], "little")
    if offset > len(head):
        return None
    match = _NPY_DICT.fullmatch(head[start:offset].decode("latin1"))
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    dtype = _NPY_DTYPES.get(descr)
    if dtype is None:
        try:
            dtype = _NPY_DTYPES.setdefault(descr, np.dtype(descr))
        except TypeError:
            return None
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return shape, dtype, fortran == "True", offset


def _parse_header(fh: BinaryIO) -> NpyHeader:
    """The header of the open file `fh` (read from its start), leaving `fh` at the data; `ValueError` for a bad magic
    or header. Headers other than numpy's plain-array form go through `numpy.lib.format`."""
    file_size = os.fstat(fh.fileno()).st_size
    plain = _plain_header(fh.read(NPY_HEAD_BYTES))
    if plain is not None:
        shape, dtype, fortran, offset = plain
        fh.seek(offset)
        return NpyHeader(shape, dtype, fortran, offset, file_size)
    fh.seek(0)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TokenError) as exc:  # TokenError: a cut header
        raise ValueError(f"not a .npy file ({exc})") from None
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), fh.tell(), file_size)


def read_npy_header(path: str | Path) -> NpyHeader:
    """The header of a ``.npy`` file, without reading its data (`ValueError`: not a ``.npy`` file)."""
    with open(path, "rb") as fh:
        return _parse_header(fh)


# ---- shape, dtype and values -------------------------------------------------------------------------------
def check_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Check a latent's shape (``[C, h, w]`` or ``[1, C, h, w]``) and dtype (float16/32/64), raising `ValueError`
    naming `source`; return it as a ``[C, h, w]`` view."""
    shape = list(array.shape)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != channels:
        raise ValueError(
            f"{source}: expected a latent of shape [{channels}, h, w] or [1, {channels}, h, w], got {shape}"
        )
    if array.dtype not in LATENT_DTYPES:
        raise ValueError(f"{source}: expected float16 or float32 values, got dtype {array.dtype}")
    return array


def as_latent(array: np.ndarray, channels: int = 256, source: str = "latent") -> np.ndarray:
    """Validate a latent (`check_latent`, finite values; `ValueError` naming `source`) as ``float32 [C, h, w]``."""
    array = check_latent(np.asarray(array), channels, source).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{source}: {bad} NaN/Inf values in the latent")
    return array


def count_non_finite(array: np.ndarray) -> int:
    """Number of NaN/Inf values of a float array. Native float16 is tested on its bits (a value is finite when
    its magnitude bits are below the all-ones exponent ``0x7C00``), ~10x faster than ``np.isfinite``."""
    if array.dtype == np.float16 and array.dtype.isnative:
        magnitude = np.bitwise_and(array.view(np.uint16), np.uint16(0x7FFF))
        if not magnitude.size or magnitude.max() < 0x7C00:
            return 0
    finite = np.isfinite(array)
    return int(finite.size - np.count_nonzero(finite))


def count_file_non_finite(path: str | Path, header: NpyHeader | None = None) -> int:
    """Number of NaN/Inf values of a ``.npy`` latent (its header already checked, `header` when the caller has it),
    read memory-mapped. `OSError` / `ValueError` when the file cannot be read."""
    header = read_npy_header(path) if header is None else header
    if header.count == 0:
        return 0
    data = np.memmap(path, dtype=header.dtype, mode="r", offset=header.offset, shape=(header.count,))  # (count,)
    try:
        return count_non_finite(data)
    finally:
        del data  # closes the map


# ---- reading -----------------------------------------------------------------------------------------------
def open_latent(path: str | Path) -> np.ndarray:
    """Memory-map a ``.npy`` latent file read-only (nothing checked yet); `ValueError`: unreadable or truncated."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: latent file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable or truncated .npy file ({exc})") from None


def read_plain_npy(path: str | Path) -> np.ndarray | None:
    """Read a C-ordered, native-endian float16 / float32 ``.npy`` file straight into a new array (several times
    faster than memory-mapping and copying); None for any other file, which `open_latent` judges.

    Raises:
        FileNotFoundError: no such file (or a folder).
        ValueError: fewer data bytes than the header promises (checked before allocating anything).
    """
    path = Path(path)
    try:
        handle = open(path, "rb", buffering=0)  # unbuffered: the data goes straight into the array
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{path}: latent file not found") from None
    except OSError:  # no permission: `open_latent` says so
        return None
    with handle:
        try:
            header = _parse_header(handle)
        except (ValueError, OSError):
            return None
        if header.fortran or not header.dtype.isnative or header.dtype not in (np.float16, np.float32):
            return None
        got = header.present
        if got >= header.promised:  # checked before allocating: a corrupt header may promise anything
            array = np.empty(header.shape, header.dtype)
            view = memoryview(array.reshape(-1)).cast("B")
            got = 0
            while got < header.promised:
                step = handle.readinto(view[got:])
                if not step:
                    break
                got += step
    if got < header.promised:
        raise ValueError(
            f"{path}: unreadable or truncated .npy file ({got} data bytes, the header promises {header.promised})"
        )
    return array


def load_latent(path: str | Path, channels: int = 256, *, spatial: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a ``.npy`` latent as a new ``float32 [C, h, w]`` tensor, with the checks of `as_latent` made fast.

    Plain files are read straight into memory (`read_plain_npy`), torch converts float16 in chunks (several times
    faster than numpy), and finiteness is tested on the sum first. `spatial`: the expected ``(h, w)``, or None.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or truncated file, wrong shape or dtype, NaN/Inf values.
    """
    path = Path(path)
    plain = read_plain_npy(path)  # a new array, or None: memory-mapped instead
    array = check_latent(plain if plain is not None else open_latent(path), channels, str(path))  # (C, h, w)
    if spatial is not None and tuple(array.shape[1:]) != tuple(spatial):
        raise ValueError(
            f"{path}: latent is {array.shape[1]}x{array.shape[2]}, expected {spatial[0]}x{spatial[1]} (the size seen "
            "when the dataset was indexed)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: it is copied right away
        source = torch.from_numpy(array).reshape(-1)  # (C*h*w,)
    if plain is not None and source.dtype == torch.float32:
        flat = source  # already a new float32 tensor
    else:
        flat = torch.empty(source.numel(), dtype=torch.float32)
        for start in range(0, source.numel(), CONVERT_CHUNK):
            flat[start : start + CONVERT_CHUNK].copy_(source[start : start + CONVERT_CHUNK])
    if not bool(torch.isfinite(flat.sum())):  # one pass; the full test only when it fails
        bad = int((~torch.isfinite(flat)).sum())
        if bad:
            raise ValueError(f"{path}: {bad} NaN/Inf values in the latent")
    return flat.view(array.shape)  # (C, h, w)
