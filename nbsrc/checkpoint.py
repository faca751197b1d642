"""Checkpoints: ours (model + config + training state) and the published biubug6 / 2-class state dicts.

Our checkpoint is ``dict(format="nbsrc", model=state_dict, config=Config.to_dict(), epoch, optimizer, scaler,
scheduler, metrics, **extra)``, written atomically. `load_checkpoint` reads it, a bare state dict (the published
``mobilenet0.25_Final.pth`` in the pre-1.6 pickle format, the 2-class zip files, a ``Resnet50_Final.pth`` saved
from DataParallel), or a ``{"state_dict": ...}`` file, and always returns the same dict shape with clean keys
(``module.`` and ``_orig_mod.`` prefixes removed). `load_model` infers the preset of a published file from its
key and shape schema and loads strictly.
"""

from __future__ import annotations

import logging
import pickle
import struct
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nbsrc.config import Config, get_preset, list_presets
from nbsrc.utils import atomic_path

__all__ = [
    "check_resumable",
    "infer_preset",
    "load_checkpoint",
    "load_model",
    "load_state_dict_strict",
    "read_state_dict",
    "save_checkpoint",
    "strip_prefixes",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

FORMAT = "nbsrc"
_PREFIXES = ("module.", "_orig_mod.")
_LIST_MAX = 8


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
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
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
    """Write our checkpoint atomically (temp file + rename); returns `path`.

    Args:
        path: destination ``.pth``.
        model: the model (wrappers are unwrapped; keys are saved without prefixes).
        config: the run's `Config`, stored as a plain dict.
        epoch: epochs completed.
        optimizer, scaler, scheduler: objects with ``state_dict()`` (stored as their state dicts) or None.
        metrics: JSON-able numbers of the epoch.
        **extra: more picklable entries (e.g. RNG states, best score).
    """
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


# What unpickling a file that is not a checkpoint (text, a truncated, corrupted or foreign file) raises: the pickle
# machinery reports garbage as whatever its first wrong step hits (a memo KeyError, a short struct, a bad opcode, an
# unknown global, a huge length, ...).
_UNREADABLE = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ImportError,
    AssertionError,
    OverflowError,
    MemoryError,
    struct.error,
    pickle.UnpicklingError,
)


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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Our own checkpoints may hold NumPy RNG state, which the safe unpickler rejects; a local file
        # the user points at is trusted like any other training artefact.
        logger.debug("%s: safe unpickling failed, loading with weights_only=False", path)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU.

    Returns ``dict(format, model, config, epoch, optimizer, scaler, scheduler, metrics, ...)``: for our files the
    stored entries, for a published state dict ``format="state_dict"``, ``config=None``, ``epoch=None`` and
    empty training state. ``model`` keys never carry ``module.`` / ``_orig_mod.`` prefixes.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: unreadable file, or no model state dict inside (names `path`).
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        checkpoint = dict(obj)
        checkpoint["model"] = strip_prefixes(obj["model"])
        checkpoint.setdefault("format", FORMAT)
        for key in ("config", "epoch", "optimizer", "scaler", "scheduler"):
            checkpoint.setdefault(key, None)
        checkpoint.setdefault("metrics", {})
        return checkpoint
    if isinstance(obj, Mapping) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        state_dict = obj["state_dict"]
    elif _is_state_dict(obj):
        state_dict = obj
    else:
        raise ValueError(
            f"{path}: expected a state dict of tensors, a dict with 'state_dict', or a nbsrc checkpoint "
            f"(dict with 'model' and 'config'); got {type(obj).__name__}"
            + (f" with keys {list(obj)[:_LIST_MAX]}" if isinstance(obj, Mapping) else "")
        )
    return {
        "format": "state_dict",
        "model": strip_prefixes(state_dict),
        "config": None,
        "epoch": obj.get("epoch") if isinstance(obj, Mapping) and "state_dict" in obj else None,
        "optimizer": None,
        "scaler": None,
        "scheduler": None,
        "metrics": {},
    }


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


def _describe(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _LIST_MAX} more)" if len(keys) > _LIST_MAX else ""
    return ", ".join(keys[:_LIST_MAX]) + more


def state_dict_mismatches(model: nn.Module, state_dict: Mapping[str, Tensor]) -> tuple[list, list, list]:
    """``(missing, unexpected, shape mismatches)`` of `state_dict` against `model`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load every tensor strictly, or raise `ValueError` listing missing / unexpected keys and shape mismatches.

    ``module.`` / ``_orig_mod.`` prefixes are stripped first; when the keys fit another preset, the message says so.
    """
    state_dict = strip_prefixes(state_dict)
    target = unwrap_model(model)
    missing, unexpected, shapes = state_dict_mismatches(target, state_dict)
    if missing or unexpected or shapes:
        lines = [f"{source}: the checkpoint does not fit the model"]
        guess = infer_preset(state_dict)
        if guess is not None:
            lines[0] += f" (it is a checkpoint of preset '{guess}')"
        elif is_classifier_state_dict(state_dict):
            lines[0] += f": it holds {_CLASSIFIER}"
        if missing:
            lines.append(f"  {len(missing)} missing keys: {_describe(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {_describe(unexpected)}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatches: {_describe(shapes)}")
        raise ValueError("\n".join(lines))
    target.load_state_dict(dict(state_dict), strict=True)


_CLASSIFIER = (
    "an ImageNet classifier (a backbone and its fc layer, no detection heads), the file to start training from: "
    "pass it as model.pretrained (--pretrained), not as detector weights"
)


def is_classifier_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """True for an ImageNet classification network (``fc.weight`` and no detection head): the MobileNet pretrain
    tar, torchvision's ResNet files."""
    keys = set(strip_prefixes(state_dict))
    return "fc.weight" in keys and not any(k.split(".")[0] in ("ClassHead", "BboxHead", "LandmarkHead") for k in keys)


@cache
def _preset_schema(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Key and shape schema of a preset's model, built on the meta device (no memory, no init cost)."""
    from nbsrc.model import build_model

    with torch.device("meta"):
        model = build_model(get_preset(name, **{"model.pretrained": "none"}))
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def infer_preset(state_dict: Mapping[str, Tensor]) -> str | None:
    """The preset whose model has exactly these keys and shapes (order ignored), or None."""
    schema = {(k, tuple(v.shape)) for k, v in strip_prefixes(state_dict).items()}
    for name in list_presets():
        if set(_preset_schema(name)) == schema:
            return name
    return None


def load_model(
    path: str | Path, preset: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """Build the model a checkpoint describes and load it strictly; returns ``(model in eval mode, config)``.

    The config comes from our checkpoint; for a published state dict from `preset`, or, when None, from the
    preset whose key / shape schema the file matches. A checkpoint of another preset than `preset` raises
    `ValueError` naming both.
    """
    from nbsrc.model import build_model

    path = Path(path)
    checkpoint = load_checkpoint(path)
    state_dict = checkpoint["model"]
    if checkpoint.get("config") is not None:
        try:
            cfg = Config.from_dict(checkpoint["config"])
        except ValueError as exc:
            raise ValueError(f"{path}: stored config is invalid: {exc}") from None
        if preset is not None and preset != cfg.preset:
            raise ValueError(f"{path}: this is a checkpoint of preset '{cfg.preset}', not '{preset}'")
    else:
        guess = infer_preset(state_dict)
        if preset is None:
            if guess is None and is_classifier_state_dict(state_dict):
                raise ValueError(f"{path}: {_CLASSIFIER}")
            if guess is None:
                raise ValueError(
                    f"{path}: a bare state dict that fits no preset ({len(state_dict)} tensors, first keys "
                    f"{list(state_dict)[:3]}); pass the preset explicitly (presets: {', '.join(list_presets())})"
                )
            preset = guess
            logger.debug("%s: published state dict recognised as preset '%s'", path, preset)
        elif guess is not None and guess != preset:
            raise ValueError(f"{path}: this is a checkpoint of preset '{guess}', not '{preset}'")
        cfg = get_preset(preset)
    model = build_model(cfg.replace(**{"model.pretrained": "none"}))
    load_state_dict_strict(model, state_dict, str(path))
    return model.to(device).eval(), cfg
