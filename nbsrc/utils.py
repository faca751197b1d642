"""Small shared helpers: logging, seeding, device selection, atomic writes, JSON lines."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "append_jsonl",
    "atomic_copy",
    "atomic_path",
    "atomic_write_text",
    "read_jsonl",
    "seed_everything",
    "select_device",
    "setup_logging",
    "tqdm_kwargs",
]

logger = logging.getLogger(__name__)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (notebooks and test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configure the ``nbsrc`` logger once: its records go to the root logger when the application configured
    one (a test runner, a host program), else to a stdout handler of its own."""
    package_logger = logging.getLogger("nbsrc")
    package_logger.setLevel(level)
    if logging.getLogger().handlers:
        return
    if not any(isinstance(h, _StdoutHandler) for h in package_logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        package_logger.addHandler(handler)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cuda_arch_supported(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a GPU of compute `capability` runs kernels built for `arch_list` (``torch.cuda.get_arch_list()``).

    A cubin ``sm_XY`` runs on X.Y' with Y' >= Y; PTX ``compute_XY`` is compiled for any later capability;
    arch-specific builds (``sm_90a``) run on their own GPU only.
    """
    major, minor = capability
    for arch in arch_list:
        kind, _, name = arch.partition("_")
        digits = name.rstrip("abcdefghijklmnopqrstuvwxyz")
        if not digits.isdigit() or len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if digits != name:  # sm_90a, sm_100f: that GPU only
            if built == (major, minor):
                return True
        elif (kind == "sm" and built[0] == major and built[1] <= minor) or (
            kind == "compute" and built <= (major, minor)
        ):
            return True
    return False


def select_device(device: str = "auto"):
    """``auto`` picks CUDA when present, else CPU. Asking for CUDA without one raises a clear error, and so does a
    GPU this torch build has no kernels for (Kaggle's P100 on a recent image: choose the T4 accelerator)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (use --device cpu or auto)")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        capability, arch_list = torch.cuda.get_device_capability(index), torch.cuda.get_arch_list()
        if arch_list and not cuda_arch_supported(capability, arch_list):
            raise RuntimeError(
                f"GPU {torch.cuda.get_device_name(index)} (compute capability {capability[0]}.{capability[1]}) is not "
                f"supported by torch {torch.__version__}, built for {' '.join(arch_list)}: on Kaggle choose the "
                "T4 accelerator (GPU T4 x2), or train with device=cpu"
            )
    return chosen


_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _new_temp_file(path: Path) -> Path:
    """Create an empty ``.<name>.<pid>-<random>.tmp`` next to `path` with the umask's mode (`tempfile.mkstemp`
    would make it private), its random part not drawn from the seeded `random` module."""
    for _ in range(100):
        token = "".join(secrets.choice(_TEMP_CHARS) for _ in range(8))
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{token}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


# What torch.save's zip writer raises when the file system takes fewer bytes than it wrote (a full disk or quota).
_SHORT_WRITE = ("unexpected pos", "file write failed")


def _disk_full(path: Path) -> OSError:
    return OSError(
        errno.ENOSPC,
        "not written: the disk is full (no space left on device, or quota used up); free some space",
        str(path),
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`, renamed onto `path` on success and removed on error.

    A process killed while writing leaves the temporary file behind (`nbsrc.runs.remove_stale_temp_files` clears
    it). A full disk (``ENOSPC``, or torch's ``... unexpected pos`` short write) raises ``OSError(ENOSPC)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise _disk_full(path) from exc
        raise
    except RuntimeError as exc:
        if any(sign in str(exc) for sign in _SHORT_WRITE):
            raise _disk_full(path) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy `source` to `destination` atomically (temp file + rename)."""
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("a") as fh:  # closed at once: a killed run keeps every finished line
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise _disk_full(path) from exc
        raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a truncated last line (killed writer) is skipped with a warning."""
    path = Path(path)
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("%s:%d: truncated last line skipped", path, number)
            else:
                raise ValueError(f"{path}:{number}: not valid JSON") from None
    return records


def tqdm_kwargs(enabled: bool = True) -> dict[str, Any]:
    """tqdm settings that stay readable in papermill / CI logs: a terminal gets a live bar; anything else
    gets at most one update every 30 s."""
    interactive = sys.stderr.isatty()
    return {"disable": not enabled, "mininterval": 0.1 if interactive else 30.0, "dynamic_ncols": interactive}
