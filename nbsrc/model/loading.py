"""Models from checkpoints: strict loading that says what does not fit, the preset of a published state dict,
`load_model` and `load_start_weights`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nbsrc.checkpoint import check_resumable, load_checkpoint, strip_prefixes, unwrap_model
from nbsrc.config import Config, get_preset, list_presets
from nbsrc.model.build import build_model

__all__ = [
    "infer_preset",
    "is_classifier_state_dict",
    "load_model",
    "load_start_weights",
    "load_state_dict_strict",
    "state_dict_mismatches",
]

logger = logging.getLogger(__name__)

_LIST_MAX = 8


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

    The config comes from our checkpoint; for a published state dict from `preset`, or else from the preset whose
    key / shape schema it matches. A checkpoint of another preset than `preset` raises `ValueError` naming both.
    """
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


def load_start_weights(model: nn.Module, cfg: Config) -> dict[str, Any] | None:
    """Load what a run starts from into `model`, strictly: ``train.resume`` (which must hold the training state;
    returned, for the optimizer, scaler and schedule) or else ``train.weight``. Returns None without a resume."""
    t = cfg.train
    if t.resume is not None:
        checkpoint = load_checkpoint(t.resume)
        check_resumable(checkpoint, t.resume)
        load_state_dict_strict(model, checkpoint["model"], str(t.resume))
        return checkpoint
    if t.weight is not None:
        load_state_dict_strict(model, load_checkpoint(t.weight)["model"], str(t.weight))
    return None
