"""Data: label readers (`nbsrc.data.readers`), the label frame, datasets, loaders, validation, the demo dataset.

========================  ===================================================================
module                    contents
========================  ===================================================================
`records`                 `ImageRecord`, the typed per-image labels every reader returns
`readers`                 one reader per annotation format, `read_labels(path, format="auto")`
`label_frame`             original pixels -> network frame (`LabelFrame`, `ImageSizes`)
`image_sizes`             original sizes of a split: sizes CSV, ``images/``, a WIDER FACE tree (cached)
`layout`                  where labels, latents and images sit in a split folder
`latent_dataset`          `LatentWiderFace`
`rgb_dataset`             `WiderFaceRGB`
`transforms`              the RetinaFace augmentation and the evaluation resize
`collate`                 `detection_collate`
`loaders`                 `build_dataset`, `build_dataloaders` (the only data code reading `Config`)
`validate`                defects with file and line, ``on_error`` policy, `validate_dataset`, `check_label_frame`
`latent_values`           NaN/Inf check of latent files at indexing, cached by size and mtime
`demo`                    `make_demo_data`
`published_layout`        the demo laid out as ``retina-modify`` beside a WIDER FACE copy
========================  ===================================================================

Names are imported lazily so that ``import nbsrc.data.records`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ImageRecord",
    "LatentWiderFace",
    "WiderFaceRGB",
    "build_dataloaders",
    "build_dataset",
    "check_label_frame",
    "detection_collate",
    "make_demo_data",
    "read_labels",
    "validate_dataset",
]

_LAZY = {
    "ImageRecord": "nbsrc.data.records",
    "LatentWiderFace": "nbsrc.data.latent_dataset",
    "WiderFaceRGB": "nbsrc.data.rgb_dataset",
    "build_dataloaders": "nbsrc.data.loaders",
    "build_dataset": "nbsrc.data.loaders",
    "check_label_frame": "nbsrc.data.validate",
    "detection_collate": "nbsrc.data.collate",
    "make_demo_data": "nbsrc.data.demo",
    "read_labels": "nbsrc.data.readers",
    "validate_dataset": "nbsrc.data.validate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nbsrc.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
