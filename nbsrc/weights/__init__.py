"""Weights shipped inside the package, so that a first run needs no download and no file to find.

- `IMAGENET_MOBILENET` (``mobilenetV1X0.25_imagenet.pth``, 0.9 MB): biubug6's ImageNet-pretrained MobileNetV1
  x0.25 backbone, as a plain state dict of the 162 tensors `nbsrc.model.backbones.MobileNetV1` holds (stages 1-3;
  the classifier dropped, the ``module.`` prefixes removed). Made from ``mobilenetV1X0.25_pretrain.tar`` by
  `nbsrc.model.build.convert_imagenet_mobilenet` (``python bench/make_shipped_weights.py``).
  ``model.pretrained=auto`` falls back to it when no other MobileNet file is found
  (`nbsrc.model.build.find_mobilenet_file`).
- `PUBLISHED_DETECTOR` (``mobilenet0.25_Final.pth``, 1.8 MB): the published RetinaFace MobileNet-0.25 face detector,
  byte for byte (preset `PUBLISHED_PRESET`; published WIDER val AP 90.70 / 88.16 / 73.82 at original scale).
  `nbsrc.detector.Detector.published` and ``python -m nbsrc detect`` without ``--weight`` use it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGENET_MOBILENET", "PUBLISHED_DETECTOR", "PUBLISHED_PRESET"]

FOLDER = Path(__file__).resolve().parent
IMAGENET_MOBILENET = FOLDER / "mobilenetV1X0.25_imagenet.pth"
PUBLISHED_DETECTOR = FOLDER / "mobilenet0.25_Final.pth"
PUBLISHED_PRESET = "mnet-biubug6"
