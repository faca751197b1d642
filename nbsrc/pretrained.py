"""``model.pretrained=auto`` turned into the ImageNet backbone file a run starts from (`resolve_pretrained`)."""

from __future__ import annotations

import logging
from pathlib import Path

from nbsrc import paths
from nbsrc.model.build import MOBILENET_FILE, find_mobilenet_file
from nbsrc.weights import IMAGENET_MOBILENET

__all__ = ["resolve_pretrained"]

logger = logging.getLogger(__name__)


def resolve_pretrained(value: str, backbone: str, input_root: str | Path | None = None) -> str:
    """``model.pretrained`` for a notebook: ``auto`` becomes an ImageNet backbone file found locally or in the
    Kaggle inputs (a kernel without internet still starts from ImageNet): for MobileNet x0.25
    ``mobilenetV1X0.25_pretrain.tar``, else the shipped `nbsrc.weights.IMAGENET_MOBILENET`; for a ResNet
    torchvision's ``resnetNN-<hash>.pth``. Other values, and ``auto`` with nothing found, are returned as given."""
    if value != "auto":
        return value
    if backbone == "mobilenet0.25":
        try:
            return str(find_mobilenet_file(shipped=False).resolve())
        except RuntimeError:
            pass
        pattern = MOBILENET_FILE
    elif backbone.startswith("resnet"):
        pattern = f"{backbone}-*.pth"  # torchvision's file names: resnet50-0676ba61.pth
    else:
        return value
    if paths.on_kaggle() or input_root is not None:
        matches = paths.find_kaggle_file(pattern, input_root)
        if matches:
            logger.info("ImageNet %s weights: %s", backbone, matches[0])
            return str(matches[0])
    if backbone == "mobilenet0.25" and IMAGENET_MOBILENET.is_file():  # missing only from a broken install
        return str(IMAGENET_MOBILENET)
    return value
