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
    """``model.pretrained`` for a notebook: ``auto`` becomes the path of an ImageNet backbone file found
    locally or, on Kaggle, in an attached dataset (so a kernel without internet still starts from ImageNet):
    for MobileNet x0.25 ``mobilenetV1X0.25_pretrain.tar`` (``./weights``, the torch hub cache, the inputs), else
    the copy shipped with the package (`nbsrc.weights.IMAGENET_MOBILENET`), so MobileNet always resolves;
    for a ResNet torchvision's ``resnetNN-<hash>.pth`` in the inputs (the hub cache is read at build time).
    Every other value, and ``auto`` with nothing found, is returned as given."""
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
    if backbone == "mobilenet0.25":
        if IMAGENET_MOBILENET.is_file():  # missing only from a broken install: build_model then says so
            return str(IMAGENET_MOBILENET)
    return value
