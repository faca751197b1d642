"""`build_model(cfg)`: the only model code that reads `Config`.

Designs (``model.neck``):

- ``biubug6``: backbone maps at strides 8/16/32 -> `FPN` P3-P5 -> one `SSH` per level -> heads; with
  ``mobilenet0.25`` / 64 channels or ``resnet50`` / 256 channels the published network, key for key.
- ``p2p6``: maps at strides 4/8/16/32 -> `FPN` P2-P5 plus P6 (3x3 stride-2 conv on C5) -> one shared `SSH` -> heads.

Pretrained backbone weights (``model.pretrained``): ``none``; ``auto`` (MobileNet: `find_mobilenet_file`, which
always finds at least the shipped copy; ResNets: torchvision's ImageNet weights when cached or downloadable, else
one warning and random init); ``imagenet`` (the same, but failing is an error); or a backbone state dict file.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from pathlib import Path

import torch
from torch import nn

from nbsrc.anchors import AnchorGenerator
from nbsrc.checkpoint import read_state_dict
from nbsrc.config import Config
from nbsrc.model.backbones import LatentBackbone, MobileNetV1, ResNetBackbone
from nbsrc.model.heads import init_focal_prior, make_heads
from nbsrc.model.necks import FPN, SSH
from nbsrc.model.retinaface import RetinaFace
from nbsrc.utils import atomic_path
from nbsrc.weights import IMAGENET_MOBILENET

__all__ = [
    "MOBILENET_FILE",
    "build_backbone",
    "build_model",
    "convert_imagenet_mobilenet",
    "find_mobilenet_file",
    "load_backbone_weights",
]

logger = logging.getLogger(__name__)

_TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}
MOBILENET_FILE = "mobilenetV1X0.25_pretrain.tar"
_WARNED: set[str] = set()
_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 60.0


def build_backbone(cfg: Config) -> nn.Module:
    """The backbone module of `cfg` (random init)."""
    m = cfg.model
    if m.input_kind == "latent":
        return LatentBackbone(m.backbone, m.bridge, m.latent_channels, m.latent_stride)
    if m.backbone == "mobilenet0.25":
        return MobileNetV1(stride4_tap=m.neck == "p2p6")
    layers = ("layer2", "layer3", "layer4") if m.neck == "biubug6" else ("layer1", "layer2", "layer3", "layer4")
    return ResNetBackbone(m.backbone, layers)


def build_model(cfg: Config) -> RetinaFace:
    """Build the `RetinaFace` described by `cfg` and load pretrained backbone weights per ``model.pretrained``."""
    m = cfg.model
    backbone = build_backbone(cfg)
    if m.neck == "biubug6":
        fpn = FPN(backbone.out_channels, m.out_channels, backbone.strides, extra_p6=False)
        context: nn.Module | list[nn.Module] = [SSH(m.out_channels, m.out_channels) for _ in fpn.strides]
    else:
        fpn = FPN(backbone.out_channels, m.out_channels, backbone.strides, extra_p6=True)
        context = SSH(m.out_channels, m.out_channels)
    anchor_generator = AnchorGenerator.from_config(cfg.anchors, fpn.strides)
    per_level = anchor_generator.num_anchors_per_location
    model = RetinaFace(
        backbone=backbone,
        fpn=fpn,
        context=context,
        class_head=make_heads(fpn.out_channels, per_level, m.num_classes),
        bbox_head=make_heads(fpn.out_channels, per_level, 4),
        landmark_head=make_heads(fpn.out_channels, per_level, 10) if m.landmarks else None,
        anchor_generator=anchor_generator,
        num_classes=m.num_classes,
        input_kind=m.input_kind,
        in_channels=m.latent_channels if m.input_kind == "latent" else 3,
        latent_stride=m.latent_stride,
    )
    if cfg.loss.cls_loss == "focal":  # sigmoid class logits start at the focal prior (a checkpoint overrides it)
        init_focal_prior(model.ClassHead)
    model.pretrained_source = _load_pretrained(model, cfg)  # where the backbone weights came from; None: random
    return model


# ---- pretrained backbones ------------------------------------------------------------------------
def _warn_once(key: str, message: str) -> None:
    if key in _WARNED:
        logger.debug(message)
    else:
        _WARNED.add(key)
        logger.warning(message)


def _reachable(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to `host` opens within `timeout` s (DNS included; never blocks longer)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of a torchvision ResNet from the hub cache, or downloaded; `RuntimeError` saying why not."""
    import torchvision.models as tvm

    weights = getattr(tvm, _TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        host = weights.url.split("/")[2]  # https://HOST/models/file.pth -> HOST
        if not _reachable(host):
            raise RuntimeError(f"ImageNet weights for {name} are not in {cached.parent} and {host} is unreachable")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise RuntimeError(f"could not load ImageNet weights for {name} ({weights.url}): {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


def load_backbone_weights(backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> int:
    """Copy `state_dict` (backbone layout, ``module.`` / ``body.`` prefixes ignored) into the backbone's trunk.

    Every trunk tensor must be there with its shape; others (``fc``, the pruned stem) are skipped. Returns the count.
    """
    cleaned = {k.removeprefix("module."): v for k, v in state_dict.items()}
    cleaned = {k.removeprefix("body."): v for k, v in cleaned.items()}
    own = backbone.state_dict()
    trunk_tensors = {id(t) for module in backbone.trunk() for t in module.state_dict(keep_vars=True).values()}
    wanted = [k for k, v in backbone.state_dict(keep_vars=True).items() if id(v) in trunk_tensors]
    missing = [k for k in wanted if k not in cleaned]
    bad_shape = [
        f"{k}: file {tuple(cleaned[k].shape)} vs model {tuple(own[k].shape)}"
        for k in wanted
        if k in cleaned and tuple(cleaned[k].shape) != tuple(own[k].shape)
    ]
    if missing or bad_shape:
        raise ValueError(
            f"{source}: not a backbone state dict for this model: {len(missing)} missing tensors "
            f"{missing[:5]}, {len(bad_shape)} shape mismatches {bad_shape[:5]}"
        )
    with torch.no_grad():
        backbone.load_state_dict({**own, **{k: cleaned[k] for k in wanted}}, strict=True)
    return len(wanted)


def _load_pretrained(model: RetinaFace, cfg: Config) -> str | None:
    """Load the backbone weights ``model.pretrained`` asks for; returns their source, None when none were loaded."""
    mode, name = cfg.model.pretrained, cfg.model.backbone
    if mode == "none":
        return None
    if mode not in ("auto", "imagenet"):
        path = Path(mode)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pretrained backbone file not found (model.pretrained)")
        count = load_backbone_weights(model.backbone, read_state_dict(path), str(path))
        logger.info("backbone %s: %d pretrained tensors from %s%s", name, count, path, _shipped_note(path))
        return str(path)
    try:
        if name == "mobilenet0.25":
            path = find_mobilenet_file()
            state_dict, source = read_state_dict(path), str(path)
        else:
            state_dict, source = _torchvision_state_dict(name), f"torchvision {name} ImageNet"
    except RuntimeError as exc:
        if mode == "imagenet":
            raise RuntimeError(f"model.pretrained='imagenet': {exc}") from None
        _warn_once(name, f"no pretrained {name} weights ({exc}); starting the backbone from random init")
        return None
    count = load_backbone_weights(model.backbone, state_dict, source)
    logger.info("backbone %s: %d pretrained tensors from %s%s", name, count, source, _shipped_note(source))
    return source


def _shipped_note(path: str | Path) -> str:
    """`` (the copy shipped with nbsrc)`` when `path` is the packaged ImageNet MobileNet file, else nothing."""
    try:
        return " (the copy shipped with nbsrc)" if Path(path).resolve() == IMAGENET_MOBILENET else ""
    except OSError:
        return ""


def find_mobilenet_file(shipped: bool = True) -> Path:
    """biubug6's ImageNet MobileNetV1 x0.25 file: `MOBILENET_FILE` in the torch hub cache or ``./weights``, else
    (when `shipped`) `nbsrc.weights.IMAGENET_MOBILENET`. `RuntimeError` naming the places searched when none is."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_FILE, Path("weights") / MOBILENET_FILE]
    if shipped:
        candidates.append(IMAGENET_MOBILENET)
    for path in candidates:
        if path.is_file():
            return path
    raise RuntimeError(
        f"{MOBILENET_FILE} is neither in {candidates[0].parent} nor in ./weights"
        + (f", and the shipped {IMAGENET_MOBILENET} is missing (a broken install?)" if shipped else "")
        + " (torchvision has no MobileNetV1 x0.25; pass the file's path as model.pretrained)"
    )


def convert_imagenet_mobilenet(source: str | Path, target: str | Path = IMAGENET_MOBILENET) -> Path:
    """Write the `MobileNetV1` tensors of biubug6's ``mobilenetV1X0.25_pretrain.tar`` unchanged as a plain state
    dict (no ``module.`` prefix, classifier or optimizer state), atomically; `ValueError` naming missing tensors."""
    state_dict = read_state_dict(source)  # ``module.`` prefixes removed
    wanted = MobileNetV1().state_dict()
    missing = [k for k in wanted if k not in state_dict]
    bad_shape = [k for k in wanted if k in state_dict and state_dict[k].shape != wanted[k].shape]
    if missing or bad_shape:
        raise ValueError(
            f"{source}: not biubug6's MobileNetV1 x0.25 checkpoint: {len(missing)} missing tensors {missing[:5]}, "
            f"{len(bad_shape)} of another shape {bad_shape[:5]}"
        )
    plain = {k: state_dict[k].clone() for k in wanted}  # clone: each tensor saved with its own storage only
    buffer = io.BytesIO()  # saved to memory: the archive's inner folder name does not depend on a temp file name
    torch.save(plain, buffer)
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return target
