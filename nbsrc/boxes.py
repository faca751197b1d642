"""Box and landmark conventions, written once. Everything else refers here.

Conventions
-----------
- Network input: ``Tensor[B, C, H, W]``. RGB images are 0..255 pixels minus the config mean (divided by its
  std) in the config's channel order; latents are ``[B, 256, h, w]`` describing an image of
  ``(h * latent_stride, w * latent_stride)`` pixels (a 40x40 latent is a 640x640 image).
- Boxes (ground truth and predictions): ``Tensor[N, 4]`` xyxy, float, absolute pixels in the *network frame*
  (the 640x640 frame for latents), ``x1 <= x2``, ``y1 <= y2``. Matching divides them by (W, H, W, H).
- Anchors: ``Tensor[A, 4]`` (cx, cy, w, h) normalized to [0, 1] by the network-frame width and height,
  ordered (level, y, x, k) - the order the heads flatten to.
- Box coding (SSD / RetinaFace): ``((gt_c - a_c) / (v0 * a_wh), log(gt_wh / a_wh) / v1)`` with
  variances ``(v0, v1) = (0.1, 0.2)``.
- Landmarks: ``Tensor[N, 5, 2]`` xy pixels (left eye, right eye, nose, left mouth, right mouth corner), plus
  ``landmarks_valid: Tensor[N]`` bool. No -1 sentinel inside the package. Landmark coding per point:
  ``(p - a_c) / (v0 * a_wh)``, flattened as x0, y0, ..., x4, y4.
- WIDER result files and ground truth use xywh in original-image pixels; convert at the file boundary.

Dimension glossary: B batch, N boxes per image, M padded boxes per image, A anchors, K anchors per location,
L levels, C classes (with background), H and W feature-map or image size.

All functions here are pure and never modify their inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "cxcywh_to_xyxy",
    "decode_boxes",
    "decode_landmarks",
    "encode_boxes",
    "encode_landmarks",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]

Variances = tuple[float, float]


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xyxy -> cxcywh."""
    return box_convert(boxes, "xyxy", "cxcywh")


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` cxcywh -> xyxy."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xywh (top-left, size) -> xyxy, as WIDER does (``x2 = x + w``, no -1)."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xyxy -> xywh."""
    return box_convert(boxes, "xyxy", "xywh")


def encode_boxes(matched: Tensor, anchors: Tensor, variances: Variances = (0.1, 0.2)) -> Tensor:
    """``Tensor[..., A, 4]`` xyxy normalized -> regression targets ``Tensor[..., A, 4]`` against ``anchors [A, 4]``."""
    centre = (matched[..., :2] + matched[..., 2:]) / 2
    size = matched[..., 2:] - matched[..., :2]
    offset = (centre - anchors[..., :2]) / (variances[0] * anchors[..., 2:])
    scale = torch.log(size / anchors[..., 2:]) / variances[1]
    return torch.cat([offset, scale], dim=-1)


MAX_LOG_SIZE = math.log(1000.0 / 16)  # largest decoded log size ratio box / anchor


def decode_boxes(loc: Tensor, anchors: Tensor, variances: Variances = (0.1, 0.2)) -> Tensor:
    """Inverse of `encode_boxes`: ``Tensor[..., A, 4]`` regressions -> xyxy normalized."""
    centre = anchors[..., :2] + loc[..., :2] * variances[0] * anchors[..., 2:]
    # the log-size is clamped (at 1000/16, as torchvision's BoxCoder does) so an untrained or diverging
    # network yields huge but finite boxes instead of inf; trained networks never come near it
    size = anchors[..., 2:] * torch.exp((loc[..., 2:] * variances[1]).clamp(max=MAX_LOG_SIZE))
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_landmarks(matched: Tensor, anchors: Tensor, variances: Variances = (0.1, 0.2)) -> Tensor:
    """``Tensor[..., A, 5, 2]`` xy normalized -> regression targets ``Tensor[..., A, 10]`` (x0, y0, ..., x4, y4)."""
    centre = anchors[..., None, :2]  # (A, 1, 2)
    size = anchors[..., None, 2:]  # (A, 1, 2)
    encoded = (matched - centre) / (variances[0] * size)  # (..., A, 5, 2)
    return encoded.flatten(-2)  # (..., A, 10)


def decode_landmarks(landm: Tensor, anchors: Tensor, variances: Variances = (0.1, 0.2)) -> Tensor:
    """Inverse of `encode_landmarks`: ``Tensor[..., A, 10]`` -> ``Tensor[..., A, 5, 2]`` xy normalized."""
    points = landm.unflatten(-1, (5, 2))  # (..., A, 5, 2)
    return anchors[..., None, :2] + points * variances[0] * anchors[..., None, 2:]
