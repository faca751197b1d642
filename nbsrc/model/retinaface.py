"""RetinaFace assembled from injected parts: backbone -> FPN -> SSH context -> heads.

Conventions (input frame, boxes, anchors, coding) are in `nbsrc.boxes`. Registered names follow the published
checkpoints: ``body``, ``fpn``, ``ssh1..sshL`` (one SSH per level) or ``ssh`` (one shared SSH), ``ClassHead``,
``BboxHead``, ``LandmarkHead``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nbsrc.anchors import AnchorGenerator
from nbsrc.config import InputKind

__all__ = ["RetinaFace"]


class RetinaFace(nn.Module):
    """Single-shot face detector.

    Args:
        backbone: module returning a list of maps; exposes ``out_channels``, ``strides`` and ``trunk()``.
        fpn: module mapping the backbone maps to ``L`` maps; exposes ``out_channels`` and ``strides``.
        context: one SSH per level (registered ``ssh1`` ... ``sshL``) or one module shared by all levels (``ssh``).
        class_head, bbox_head, landmark_head: per-level heads with ``num_classes``, 4 and 10 outputs per anchor
            (landmark_head may be None).
        anchor_generator: anchors for the FPN strides, in the heads' (level, y, x, k) order.
        input_kind: ``rgb`` (``[B, 3, H, W]``) or ``latent`` (``[B, in_channels, h, w]``).
        latent_stride: image pixels per input cell for latents (1 for RGB).

    ``forward(x)`` returns ``{"loc": Tensor[B, A, 4], "conf": Tensor[B, A, num_classes]`` (raw logits),
    ``"landm": Tensor[B, A, 10] | None}``, A = ``anchor_generator.num_anchors(image_size(x))``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        fpn: nn.Module,
        context: nn.Module | list[nn.Module],
        class_head: nn.ModuleList,
        bbox_head: nn.ModuleList,
        landmark_head: nn.ModuleList | None,
        anchor_generator: AnchorGenerator,
        num_classes: int,
        input_kind: InputKind = "rgb",
        in_channels: int = 3,
        latent_stride: int = 1,
    ) -> None:
        super().__init__()
        strides = list(fpn.strides)
        if list(anchor_generator.strides) != strides:
            raise ValueError(f"anchor strides {anchor_generator.strides} differ from the feature strides {strides}")
        num_levels = len(strides)
        for name, head in (("class", class_head), ("bbox", bbox_head), ("landmark", landmark_head)):
            if head is not None and len(head) != num_levels:
                raise ValueError(f"{name} head has {len(head)} levels, the FPN {num_levels}")
        self.body = backbone
        self.fpn = fpn
        if isinstance(context, (list, tuple, nn.ModuleList)):
            if len(context) != num_levels:
                raise ValueError(f"{len(context)} context modules for {num_levels} levels")
            self.shared_context = False
            for index, module in enumerate(context, 1):
                setattr(self, f"ssh{index}", module)
        else:
            self.shared_context = True
            self.ssh = context
        self.ClassHead = class_head
        self.BboxHead = bbox_head
        self.LandmarkHead = landmark_head
        self.anchor_generator = anchor_generator
        self.num_classes = num_classes
        self.has_landmarks = landmark_head is not None
        self.input_kind = input_kind
        self.in_channels = in_channels
        self.latent_stride = latent_stride if input_kind == "latent" else 1
        self.strides = strides
        self.num_levels = num_levels
        self._frozen = False

    # ---- parts ------------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The feature extractor (registered as ``body``)."""
        return self.body

    def _context(self, level: int) -> nn.Module:
        return self.ssh if self.shared_context else getattr(self, f"ssh{level + 1}")

    # ---- frames and anchors ---------------------------------------------------------------------
    def image_size(self, x: Tensor) -> tuple[int, int]:
        """Network-frame ``(H, W)`` in pixels of an input ``[B, C, H, W]`` (latent: ``h * latent_stride``)."""
        return int(x.shape[-2]) * self.latent_stride, int(x.shape[-1]) * self.latent_stride

    def anchors(self, x: Tensor) -> Tensor:
        """``Tensor[A, 4]`` cxcywh normalized anchors for input `x`, on ``x.device`` (cached per size)."""
        return self.anchor_generator(self.image_size(x), x.device)

    # ---- training helpers ------------------------------------------------------------------------
    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) training the backbone trunk (`trunk()`: a latent model's bridge keeps training): its
        parameters get ``requires_grad = not freeze`` and its BatchNorms stay in eval mode."""
        self._frozen = freeze
        for module in self.body.trunk():
            for param in module.parameters():
                param.requires_grad_(not freeze)
        self.train(self.training)

    def train(self, mode: bool = True) -> RetinaFace:
        super().train(mode)
        if self._frozen:
            for module in self.body.trunk():
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
        return self

    # ---- forward --------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise `ValueError` (expected vs got) unless `x` is a float ``[B, in_channels, H, W]`` tensor: the one
        check of the input, on its metadata only (type, shape, dtype: no wait for the device)."""
        what = "latent [B, C, h, w]" if self.input_kind == "latent" else "image batch [B, 3, H, W]"
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a {what} tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"expected a 4-D {what} tensor with C = {self.in_channels}, got shape {tuple(x.shape)}"
                + (" (add a batch dimension with x[None])" if x.dim() == 3 else "")
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels ({self.input_kind} model), got {x.shape[1]} "
                f"in shape {tuple(x.shape)}"
            )
        if not torch.is_floating_point(x):
            raise ValueError(f"expected a floating-point input, got dtype {x.dtype}")
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f"expected a non-empty input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        self.check_input(x)
        features = self.fpn(self.body(x))
        context = [self._context(level)(feature) for level, feature in enumerate(features)]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, context)], dim=1)  # (B, A, 4)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, context)], dim=1)  # (B, A, C)
        landm = None
        if self.LandmarkHead is not None:
            landm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, context)], dim=1)  # (B, A, 10)
        return {"loc": loc, "conf": conf, "landm": landm}
