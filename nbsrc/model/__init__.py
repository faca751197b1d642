"""RetinaFace model family: backbones, bridges, necks, heads, and the `build_model` factory."""

from nbsrc.model.build import build_model
from nbsrc.model.heads import flatten_head
from nbsrc.model.retinaface import RetinaFace

__all__ = ["RetinaFace", "build_model", "flatten_head"]
