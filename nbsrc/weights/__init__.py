"""Weights shipped inside the package, so that a first run needs no download and no file to find.

- `IMAGENET_MOBILENET` (0.9 MB): biubug6's ImageNet-pretrained MobileNetV1 x0.25 backbone as a plain state dict
  of `nbsrc.model.backbones.MobileNetV1` (``python bench/make_shipped_weights.py`` converts
  ``mobilenetV1X0.25_pretrain.tar``); ``model.pretrained=auto`` falls back to it.
- `PUBLISHED_DETECTOR` (1.8 MB): the published RetinaFace MobileNet-0.25 ``mobilenet0.25_Final.pth``, byte for
  byte (preset `PUBLISHED_PRESET`; published WIDER val AP 90.70 / 88.16 / 73.82 at original scale), used by
  `nbsrc.detector.Detector.published` and ``python -m nbsrc detect`` without ``--weight``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGENET_MOBILENET", "PUBLISHED_DETECTOR", "PUBLISHED_PRESET"]

FOLDER = Path(__file__).resolve().parent
IMAGENET_MOBILENET = FOLDER / "mobilenetV1X0.25_imagenet.pth"
PUBLISHED_DETECTOR = FOLDER / "mobilenet0.25_Final.pth"
PUBLISHED_PRESET = "mnet-biubug6"
