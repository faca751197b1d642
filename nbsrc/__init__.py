"""nbsrc: RetinaFace on JPEG AI compressed-domain latents and on RGB, notebook first.

The package namespace holds the light names only (no torch import, so ``python -m nbsrc`` starts fast)::

    from nbsrc import Config, get_preset, notebook_config

Everything else is imported from its module: ``nbsrc.model.build_model``, ``nbsrc.detector.Detector``,
``nbsrc.engine.fit``, ``nbsrc.checkpoint.save_checkpoint``, ...
"""

from __future__ import annotations

from nbsrc.config import Config, get_preset, list_presets
from nbsrc.notebook import notebook_config

__version__ = "0.1.0"

__all__ = ["Config", "__version__", "get_preset", "list_presets", "notebook_config"]
