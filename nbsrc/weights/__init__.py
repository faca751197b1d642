"""Weights shipped inside the package, so that a first run needs no download and no file to find.

- `IMAGENET_MOBILENET` (``mobilenetV1X0.25_imagenet.pth``, 0.9 MB): biubug6's ImageNet-pretrained MobileNetV1
  x0.25 backbone, as a plain state dict of the 162 tensors `nbsrc.model.backbones.MobileNetV1` holds (stages 1-3;
  the classifier dropped, the ``module.`` prefixes removed). Made from ``mobilenetV1X0.25_pretrain.tar`` by
  `convert_imagenet_mobilenet` (``python bench/make_shipped_weights.py``). ``model.pretrained=auto`` falls back
  to it when no other MobileNet file is found (`nbsrc.model.build.find_mobilenet_file`).
- `PUBLISHED_DETECTOR` (``mobilenet0.25_Final.pth``, 1.8 MB): the published RetinaFace MobileNet-0.25 face detector,
  byte for byte (preset `PUBLISHED_PRESET`; published WIDER val AP 90.70 / 88.16 / 73.82 at original scale).
  `nbsrc.detector.Detector.published` and ``python -m nbsrc detect`` without ``--weight`` use it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

__all__ = ["IMAGENET_MOBILENET", "PUBLISHED_DETECTOR", "PUBLISHED_PRESET", "convert_imagenet_mobilenet"]

FOLDER = Path(__file__).resolve().parent
IMAGENET_MOBILENET = FOLDER / "mobilenetV1X0.25_imagenet.pth"
PUBLISHED_DETECTOR = FOLDER / "mobilenet0.25_Final.pth"
PUBLISHED_PRESET = "mnet-biubug6"


def convert_imagenet_mobilenet(source: str | Path, target: str | Path = IMAGENET_MOBILENET) -> Path:
    """Write the backbone tensors of biubug6's ``mobilenetV1X0.25_pretrain.tar`` as a plain state dict.

    Keeps exactly the tensors of `MobileNetV1` (``stage1.*`` .. ``stage3.*``), without the ``module.`` prefix and
    without the ImageNet classifier (``fc.*``), the optimizer state or the training bookkeeping; each tensor is
    copied unchanged (``torch.save`` of a ``dict[str, Tensor]``, written atomically). The same source gives the
    same tensors every time.

    Args:
        source: the original checkpoint (``{"state_dict": {"module.stage1.0.0.weight": ...}, ...}``).
        target: where to write (default: the shipped file, `IMAGENET_MOBILENET`).

    Raises:
        ValueError: `source` lacks a backbone tensor or has one of the wrong shape (names them).
    """
    from nbsrc.checkpoint import read_state_dict
    from nbsrc.model.backbones import MobileNetV1
    from nbsrc.utils import atomic_path

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
