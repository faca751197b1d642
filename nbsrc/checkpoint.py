"""Checkpoint files: ours (model + config + training state, `save_checkpoint`) and the published biubug6 / 2-class
state dicts, all read by `load_checkpoint` into one dict shape with prefix-free keys; the RNG states a checkpoint
stores, and the files a resumed run carries over from its checkpoint's folder. Building a model from a checkpoint is
`nbsrc.model.loading`.
"""

from __future__ import annotations

import filecmp
import logging
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nbsrc.config import Config
from nbsrc.utils import atomic_copy, atomic_path

__all__ = [
    "check_resumable",
    "complete_best",
    "continue_run_folder",
    "get_rng_state",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
    "set_rng_state",
    "strip_prefixes",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

FORMAT = "nbsrc"
_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` / ``_orig_mod.`` (in any combination) from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: Config,
    epoch: int = 0,
    optimizer: Any = None,
    scaler: Any = None,
    scheduler: Any = None,
    metrics: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``dict(format="nbsrc", model, config, epoch, optimizer, scaler, scheduler, metrics, **extra)``
    atomically; returns `path`. `epoch` counts the epochs completed; `optimizer`, `scaler` and `scheduler` are stored
    as their state dicts, `model` unwrapped and without key prefixes."""
    if not isinstance(config, Config):
        raise ValueError(f"config must be a nbsrc Config, got {type(config).__name__}")
    checkpoint = {
        "format": FORMAT,
        "model": strip_prefixes(unwrap_model(model).state_dict()),
        "config": config.to_dict(),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "metrics": dict(metrics) if metrics is not None else {},
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    if isinstance(exc, EOFError):
        detail = "the file ends early: empty or truncated"
    elif isinstance(exc, (RuntimeError, ValueError, OSError)) and str(exc):
        detail = str(exc)
    else:
        detail = f"not PyTorch pickle data: {type(exc).__name__}: {exc}"
    return ValueError(f"{path}: not a readable PyTorch checkpoint ({detail})")


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # objects beyond tensors and containers (an older NumPy RNG state, a script's extra entries): a local
            # file the user points at is trusted like any other training artefact
            logger.debug("%s: safe unpickling failed, loading with weights_only=False", path)
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a foreign or broken file fails wherever unpickling first goes wrong
        raise _unreadable(path, exc) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU: ours, a bare state dict (the published files, old pickle format and
    DataParallel keys included) or a ``{"state_dict": ...}`` file.

    Returns ``dict(format, model, config, epoch, optimizer, scaler, scheduler, metrics, ...)``, for a state dict
    ``format="state_dict"`` without config and training state. Raises `FileNotFoundError`, or `ValueError` naming
    `path` for an unreadable file or one without a model state dict.
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        checkpoint = {"format": FORMAT, **obj}
    elif isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        checkpoint = {"format": "state_dict", "model": obj["state_dict"], "epoch": obj.get("epoch")}
    elif _is_state_dict(obj):
        checkpoint = {"format": "state_dict", "model": obj}
    else:
        raise ValueError(
            f"{path}: expected a state dict of tensors, a dict with 'state_dict', or a nbsrc checkpoint "
            f"(dict with 'model' and 'config'); got {type(obj).__name__}"
            + (f" with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else "")
        )
    checkpoint["model"] = strip_prefixes(checkpoint["model"])
    for key in ("config", "epoch", "optimizer", "scaler", "scheduler"):
        checkpoint.setdefault(key, None)
    checkpoint.setdefault("metrics", {})
    return checkpoint


def check_resumable(checkpoint: Mapping[str, Any], source: str | Path = "checkpoint") -> None:
    """Raise `ValueError` naming `source` unless `checkpoint` (a `load_checkpoint` result) holds what resuming a
    run needs: the optimizer state and the number of epochs completed (a non-negative integer)."""
    if checkpoint.get("optimizer") is None:
        raise ValueError(
            f"{source}: holds no training state to resume from (no optimizer state); start from its weights with "
            "--weight (train.weight) instead"
        )
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(
            f"{source}: cannot resume: key 'epoch' (epochs completed) must be an integer >= 0, got {epoch!r}; "
            "start from its weights with --weight (train.weight) instead"
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Just the (prefix-free) model state dict of any file `load_checkpoint` reads."""
    return load_checkpoint(path)["model"]


# ---- resuming ------------------------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states, in types that load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy(), dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"])[: torch.cuda.device_count()])


def continue_run_folder(run_dir: Path, resume: str | Path) -> None:
    """Start a resumed run's folder with the metrics and best checkpoint of its checkpoint's folder (files it has
    already are kept: a run continuing in its checkpoint's own folder copies nothing)."""
    earlier = Path(resume).resolve().parent
    for name in ("metrics.jsonl", "best.pth"):
        if (earlier / name).is_file() and not (run_dir / name).exists():
            atomic_copy(earlier / name, run_dir / name)
            logger.info("continuing from %s", earlier / name)


def complete_best(run_dir: Path, resume: Path, history: Mapping[str, Any]) -> None:
    """Make ``best.pth`` the resumed checkpoint when its epoch was the best so far (a run killed after writing
    ``last.pth`` had not written ``best.pth`` yet)."""
    best = run_dir / "best.pth"
    if not history.get("best") or (best.is_file() and filecmp.cmp(resume, best, shallow=False)):
        return
    atomic_copy(resume, best)
    logger.info("%s: epoch %s, the best so far, from %s", best, history.get("epoch"), resume)
