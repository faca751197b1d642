"""nbsrc: RetinaFace on JPEG AI compressed-domain latents and on RGB, notebook first.

Public API (imported lazily so ``import nbsrc`` stays fast)::

    from nbsrc import Config, get_preset, build_model, Detector, fit
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "nbsrc.config",
    "get_preset": "nbsrc.config",
    "list_presets": "nbsrc.config",
    "build_model": "nbsrc.model",
    "Detector": "nbsrc.detector",
    "load_checkpoint": "nbsrc.checkpoint",
    "save_checkpoint": "nbsrc.checkpoint",
    "fit": "nbsrc.engine",
    "setup_logging": "nbsrc.utils",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nbsrc' has no attribute {name!r}")
