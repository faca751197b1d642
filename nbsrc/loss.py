"""RetinaFace MultiBox loss for a whole batch: matching, hard-negative mining, box / class / landmark terms.

Conventions are those of `nbsrc.boxes`, matching is `nbsrc.matching`. With the default settings the value equals
the classic per-image SSD / RetinaFace MultiBox loss:

- class: softmax cross-entropy over the positives and the hardest negatives, ``neg_pos_ratio`` (7)
  negatives per positive per image, ranked by their background loss (``cls_loss="ohem"``); or a sigmoid
  focal loss over the foreground classes of every anchor, without mining (``cls_loss="focal"``);
- box: smooth-L1 (beta 1) on the encoded boxes of the positives;
- landmarks: smooth-L1 (beta 1) on the encoded landmarks of positives matched to a face (label 1) whose
  landmarks are valid;
- box and class are divided by ``max(1, positives in the batch)``, landmarks by ``max(1, landmark
  positives)``; ``loss = loc_weight * box + cls_weight * class + landm_weight * landmark``.

``empty_negatives`` (> 0) lets an image without positives still mine that many negatives; 0 is the published
behaviour (such images contribute nothing).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from nbsrc.boxes import encode_boxes, encode_landmarks
from nbsrc.config import ClsLoss
from nbsrc.matching import AnchorMatch, check_box_values, match_anchors

__all__ = ["MultiBoxLoss", "build_loss", "normalize_targets", "select_top_per_row"]

FACE = 1  # class id of a face (the only class with landmarks)
TARGET_KEYS = ("boxes", "labels", "landmarks", "landmarks_valid")  # padded targets; the first two always needed


class MultiBoxLoss(nn.Module):
    """Batched RetinaFace loss (see the module docstring).

    Args:
        num_classes: classifier outputs including background (2 = bg, face; 3 = bg, face, person).
        landmarks: whether a landmark term is computed (needs ``outputs["landm"]``).
        pos_iou, force_iou: the matching thresholds of `nbsrc.matching` (0.45 / 0.2 in the 2-class design).
        cls_loss: ``ohem`` (softmax CE + hard-negative mining) or ``focal`` (sigmoid focal loss).
        match_chunk: memory bound of matching (see `nbsrc.matching.match_anchors`).

    Example:
        >>> loss_fn = MultiBoxLoss(num_classes=2)
        >>> parts = loss_fn(model(x), model.anchors(x), normalize_targets(batch, model.image_size(x)))
        >>> parts["loss"].backward()
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        landmarks: bool = True,
        pos_iou: float = 0.35,
        force_iou: float = 0.2,
        neg_pos_ratio: float = 7.0,
        empty_negatives: int = 0,
        loc_weight: float = 2.0,
        cls_weight: float = 1.0,
        landm_weight: float = 1.0,
        cls_loss: ClsLoss = "ohem",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        variances: tuple[float, float] = (0.1, 0.2),
        match_chunk: int = 65536,
    ) -> None:
        super().__init__()
        if cls_loss not in typing.get_args(ClsLoss):
            raise ValueError(f"cls_loss must be one of {list(typing.get_args(ClsLoss))}, got {cls_loss!r}")
        self.num_classes = num_classes
        self.landmarks = landmarks
        self.pos_iou = pos_iou
        self.force_iou = force_iou
        self.neg_pos_ratio = neg_pos_ratio
        self.empty_negatives = int(empty_negatives)
        self.loc_weight = loc_weight
        self.cls_weight = cls_weight
        self.landm_weight = landm_weight
        self.cls_loss = cls_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.variances = (float(variances[0]), float(variances[1]))
        self.match_chunk = match_chunk

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, landmarks={self.landmarks}, cls_loss={self.cls_loss}, "
            f"pos_iou={self.pos_iou}, force_iou={self.force_iou}, neg_pos_ratio={self.neg_pos_ratio}, "
            f"empty_negatives={self.empty_negatives}, loc_weight={self.loc_weight}"
        )

    def forward(self, outputs: Mapping[str, Tensor | None], anchors: Tensor, targets: Mapping[str, Tensor]) -> dict:
        """Loss of a batch, in float32 with autocast off.

        Args:
            outputs: model outputs ``loc [B, A, 4]``, ``conf [B, A, C]`` (raw logits), ``landm [B, A, 10]`` or None.
            anchors: ``Tensor[A, 4]`` cxcywh normalized.
            targets: as `normalize_targets` returns them.

        Returns:
            ``{"loss", "loss_box", "loss_cls", "loss_landm"}`` float32 scalars and ``"num_pos"``
            ``Tensor[B]`` int64 positive anchors per image.
        """
        loc, conf, landm = self._check(outputs, anchors, targets)
        with torch.autocast(device_type=loc.device.type, enabled=False):
            return self._loss(loc.float(), conf.float(), landm, anchors.float(), targets)

    def _loss(self, loc: Tensor, conf: Tensor, landm: Tensor | None, anchors: Tensor, targets: Mapping) -> dict:
        B, A, C = conf.shape
        device = loc.device
        boxes = targets["boxes"].to(device=device, dtype=torch.float32)  # (B, M, 4)
        labels = targets["labels"].to(device=device, dtype=torch.long)  # (B, M)
        anchors = anchors.to(device)
        match = match_anchors(  # the targets were checked (`_check`)
            anchors,
            boxes,
            labels,
            pos_iou=self.pos_iou,
            force_iou=self.force_iou,
            chunk=self.match_chunk,
            validate=False,
        )
        pos_b, pos_a = match.positive_index  # (P,)
        num_pos = torch.bincount(pos_b, minlength=B)  # (B,)
        normalizer = num_pos.sum().clamp(min=1).float()

        # box term over positives
        pos_gt = match.matched_gt[pos_b, pos_a]  # (P,)
        box_target = encode_boxes(boxes[pos_b, pos_gt], anchors[pos_a], self.variances)  # (P, 4)
        loss_box = F.smooth_l1_loss(loc[pos_b, pos_a], box_target, reduction="sum", beta=1.0) / normalizer

        # landmark term over positives matched to faces with valid landmarks
        if self.landmarks and landm is not None:
            landm = landm.float()
            valid = targets["landmarks_valid"].to(device=device, dtype=torch.bool)  # (B, M)
            with_landm = (match.labels[pos_b, pos_a] == FACE) & valid[pos_b, pos_gt]  # (P,)
            lm_b, lm_a, lm_gt = pos_b[with_landm], pos_a[with_landm], pos_gt[with_landm]  # (P1,)
            points = targets["landmarks"].to(device=device, dtype=torch.float32)[lm_b, lm_gt]  # (P1, 5, 2)
            landm_target = encode_landmarks(points, anchors[lm_a], self.variances)  # (P1, 10)
            landm_sum = F.smooth_l1_loss(landm[lm_b, lm_a], landm_target, reduction="sum", beta=1.0)
            loss_landm = landm_sum / with_landm.sum().clamp(min=1).float()
        else:
            loss_landm = torch.zeros((), device=device)

        if self.cls_loss == "focal":
            onehot = F.one_hot(match.labels, C)[..., 1:].float()  # (B, A, C-1)
            focal = sigmoid_focal_loss(
                conf[..., 1:], onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
            loss_cls = focal / normalizer
        else:
            loss_cls = self._ohem(conf, match, num_pos) / normalizer

        loss = self.loc_weight * loss_box + self.cls_weight * loss_cls + self.landm_weight * loss_landm
        return {
            "loss": loss,
            "loss_box": loss_box,
            "loss_cls": loss_cls,
            "loss_landm": loss_landm,
            "num_pos": num_pos,
        }

    def _ohem(self, conf: Tensor, match: AnchorMatch, num_pos: Tensor) -> Tensor:
        """Summed softmax CE over the positives and the hardest negatives of each image."""
        B, A, C = conf.shape
        pos_b, pos_a = match.positive_index  # (P,)
        with torch.no_grad():
            # negatives are ranked by their CE against background; positives never compete
            if C == 2:
                rank_key = conf[..., 1] - conf[..., 0]  # (B, A) same order as softplus(.) = the CE
            else:
                rank_key = torch.logsumexp(conf, dim=-1) - conf[..., 0]  # (B, A)
            rank_key = torch.where(match.positive, float("-inf"), rank_key)  # (B, A)
            num_neg = torch.ceil(self.neg_pos_ratio * num_pos.double()).long()  # (B,)
            if self.empty_negatives > 0:
                num_neg = torch.where(num_pos == 0, torch.full_like(num_neg, self.empty_negatives), num_neg)
            num_neg = torch.minimum(num_neg.clamp(max=A - 1), A - num_pos)  # (B,) at most the available negatives
            neg_b, neg_a = select_top_per_row(rank_key, num_neg)  # (Nn,)
        rows_b = torch.cat([pos_b, neg_b])  # (P + Nn,)
        rows_a = torch.cat([pos_a, neg_a])  # (P + Nn,)
        target = torch.cat([match.labels[pos_b, pos_a], torch.zeros_like(neg_a)])  # (P + Nn,)
        return F.cross_entropy(conf[rows_b, rows_a], target, reduction="sum")

    def _check(self, outputs: Mapping, anchors: Tensor, targets: Mapping) -> tuple[Tensor, Tensor, Tensor | None]:
        """Shapes of the outputs, anchors and targets; the targets' values only on the CPU (`_check_values`)."""
        for key in ("loc", "conf"):
            if key not in outputs or outputs[key] is None:
                raise ValueError(f"outputs must contain '{key}', got keys {sorted(outputs)}")
        loc, conf, landm = outputs["loc"], outputs["conf"], outputs.get("landm")
        if conf.dim() != 3 or conf.shape[2] != self.num_classes:
            raise ValueError(f"outputs['conf'] must be Tensor[B, A, {self.num_classes}], got {tuple(conf.shape)}")
        B, A = conf.shape[:2]
        if loc.shape != (B, A, 4):
            raise ValueError(f"outputs['loc'] must be Tensor[{B}, {A}, 4], got {tuple(loc.shape)}")
        if anchors.shape != (A, 4):
            raise ValueError(f"anchors must be Tensor[{A}, 4] (one per output row), got {tuple(anchors.shape)}")
        needs_landm = self.landmarks and landm is not None
        if needs_landm and landm.shape != (B, A, 10):
            raise ValueError(f"outputs['landm'] must be Tensor[{B}, {A}, 10], got {tuple(landm.shape)}")
        _check_targets(targets, "targets", TARGET_KEYS if needs_landm else TARGET_KEYS[:2], B)
        if targets["labels"].device.type == "cpu":
            self._check_values(targets["boxes"], targets["labels"])
        return loc, conf, landm

    def _check_values(self, boxes: Tensor, labels: Tensor) -> None:
        """Labels in ``[0, num_classes)`` and real boxes finite xyxy (`nbsrc.matching.check_box_values`). CPU targets
        only: on an accelerator reading values waits for the device at every step (the datasets guarantee both)."""
        if labels.numel() and (int(labels.max()) >= self.num_classes or int(labels.min()) < 0):
            raise ValueError(
                f"targets['labels'] must be in [0, {self.num_classes - 1}] (0 = padding) for num_classes="
                f"{self.num_classes}, got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        check_box_values(boxes, labels)


def _check_targets(targets: Mapping[str, Any], name: str, keys: tuple[str, ...], batch: int | None = None) -> None:
    """Raise `ValueError` unless `targets` holds `keys` with the padded shapes ``boxes [B, M, 4]``,
    ``labels [B, M]``, ``landmarks [B, M, 5, 2]``, ``landmarks_valid [B, M]`` (B = `batch` when given)."""
    for key in keys:
        if key not in targets:
            raise ValueError(f"{name} must contain '{key}', got keys {sorted(targets)}")
    boxes = targets["boxes"]
    if boxes.dim() != 3 or boxes.shape[2] != 4 or boxes.shape[0] != (batch if batch is not None else boxes.shape[0]):
        raise ValueError(f"{name}['boxes'] must be Tensor[{batch or 'B'}, M, 4], got {tuple(boxes.shape)}")
    B, M = boxes.shape[:2]
    expected = {"labels": (B, M), "landmarks": (B, M, 5, 2), "landmarks_valid": (B, M)}
    for key in keys[1:]:
        if targets[key].shape != expected[key]:
            dims = ", ".join(str(d) for d in expected[key])
            raise ValueError(f"{name}['{key}'] must be Tensor[{dims}], got {tuple(targets[key].shape)}")


def select_top_per_row(key: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Exactly ``count[b]`` largest entries of each row of `key` (a batched top-k with a k per row).

    A radix-style selection: a per-row histogram over the leading bits of the order-preserving integer
    form of the float keys finds the bin holding each row's ``count[b]``-th largest value; every entry
    above that bin is taken, and only the entries inside it are sorted. Cost is a few passes over `key`
    instead of a sort. Ties are broken deterministically by position.

    `key` is ``Tensor[B, A]`` float32 (excluded entries ``-inf``), `count` ``Tensor[B]`` int64 with ``count[b]`` at
    most the entries of row b above ``-inf``; returns ``(row, column)`` int64 ``Tensor[sum(count)]`` each.
    """
    B, A = key.shape
    device = key.device
    nbits = min(16, max(8, A.bit_length() - 3))  # about A / 4 bins per row
    nbins = 1 << nbits
    bits = key.float().contiguous().view(torch.int32)  # (B, A) same memory, reinterpreted
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # (B, A) int32 ordered like the floats
    bins = ordered >> (32 - nbits)  # (B, A) in [-nbins / 2, nbins / 2), monotone in key
    offsets = torch.arange(B, device=device, dtype=torch.int32)[:, None] * nbins + nbins // 2  # (B, 1)
    hist = torch.bincount((bins + offsets).flatten(), minlength=B * nbins).view(B, nbins)  # (B, nbins)
    upto = hist.cumsum(1)  # (B, nbins) entries in bins <= j
    # the boundary bin j holds the count-th largest entry: entries in bins >= j (A - upto[j] + hist[j]) reach
    # count; the highest such j is found on the non-decreasing entries-below count
    below = (upto - hist).contiguous()  # (B, nbins) entries in bins < j
    boundary = torch.searchsorted(below, (A - count)[:, None], right=True) - 1  # (B, 1)
    need = count - A + upto.gather(1, boundary).squeeze(1)  # (B,) still to take from the boundary bin
    boundary = (boundary - nbins // 2).int()  # (B, 1) in the units of `bins`
    above_b, above_a = (bins > boundary).nonzero(as_tuple=True)  # (Na,)
    edge_b, edge_a = (bins == boundary).nonzero(as_tuple=True)  # (Ne,) row-major
    order = torch.argsort(key[edge_b, edge_a], descending=True, stable=True)  # (Ne,)
    order = order[torch.argsort(edge_b[order], stable=True)]  # (Ne,) by row, then key descending
    edge_b, edge_a = edge_b[order], edge_a[order]
    rank = torch.arange(edge_b.numel(), device=device) - torch.searchsorted(edge_b, edge_b)  # (Ne,) rank in row
    take = rank < need[edge_b]  # (Ne,)
    return torch.cat([above_b, edge_b[take]]), torch.cat([above_a, edge_a[take]])


def normalize_targets(
    batch: Mapping[str, Any], image_size_hw: tuple[int, int], device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Collated batch (network-frame pixels) -> loss targets (normalized by the network-frame ``(H, W)``).

    `batch` holds ``boxes [B, M, 4]`` xyxy pixels, ``labels [B, M]`` (0 = padding), ``landmarks [B, M, 5, 2]`` xy
    pixels and ``landmarks_valid [B, M]``; the result has the same keys and shapes, float32 coordinates in [0, 1],
    int64 labels and bool validity, on `device` (default: where they are).
    """
    _check_targets(batch, "batch", TARGET_KEYS)
    height, width = (int(v) for v in image_size_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size_hw must be positive (H, W), got {tuple(image_size_hw)}")
    boxes, landmarks = batch["boxes"], batch["landmarks"]
    device = boxes.device if device is None else torch.device(device)
    scale = torch.tensor([width, height], dtype=torch.float32, device=device)  # (2,)
    return {
        "boxes": (boxes.to(device, torch.float32).unflatten(-1, (2, 2)) / scale).flatten(-2),  # (B, M, 4)
        "labels": batch["labels"].to(device, torch.long),
        "landmarks": landmarks.to(device, torch.float32) / scale,  # (B, M, 5, 2)
        "landmarks_valid": batch["landmarks_valid"].to(device, torch.bool),
    }


def build_loss(cfg: Any) -> MultiBoxLoss:
    """`MultiBoxLoss` from a toolkit `Config` (its ``loss`` group, anchor variances and model classes)."""
    loss_cfg = cfg.loss
    return MultiBoxLoss(
        num_classes=cfg.model.num_classes,
        landmarks=cfg.model.landmarks,
        pos_iou=loss_cfg.pos_iou,
        force_iou=loss_cfg.force_iou,
        neg_pos_ratio=loss_cfg.neg_pos_ratio,
        empty_negatives=loss_cfg.empty_negatives,
        loc_weight=loss_cfg.loc_weight,
        cls_weight=loss_cfg.cls_weight,
        landm_weight=loss_cfg.landm_weight,
        cls_loss=loss_cfg.cls_loss,
        focal_alpha=loss_cfg.focal_alpha,
        focal_gamma=loss_cfg.focal_gamma,
        variances=tuple(cfg.anchors.variances),
        match_chunk=loss_cfg.match_chunk,
    )
