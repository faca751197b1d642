"""Raw head outputs -> detections: decode, score threshold, top-k, per-class NMS, keep-top-k.

Batched on the outputs' device: one `torchvision.ops.batched_nms` call covers every (image, class) group.
Conventions (anchors, coding, frames) are in `nbsrc.boxes`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from nbsrc.boxes import decode_boxes, decode_landmarks

__all__ = ["empty_detections", "postprocess"]


def empty_detections(device: torch.device | str = "cpu", landmarks: bool = True) -> dict[str, Tensor | None]:
    """A no-detection result (``boxes [0, 4]``, ``scores [0]``, ``labels [0]``, ``landmarks [0, 5, 2] | None``)."""
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros((0,), device=device),
        "labels": torch.zeros((0,), dtype=torch.int64, device=device),
        "landmarks": torch.zeros((0, 5, 2), device=device) if landmarks else None,
    }


@torch.no_grad()
def postprocess(
    outputs: dict[str, Tensor | None],
    anchors: Tensor,
    image_size_hw: tuple[int, int],
    *,
    conf_thresh: float = 0.02,
    nms_thresh: float = 0.4,
    top_k: int = 5000,
    keep_top_k: int = 750,
    variances: tuple[float, float] = (0.1, 0.2),
) -> list[dict[str, Tensor | None]]:
    """Detections per image from a model output dict.

    Args:
        outputs: ``{"loc": Tensor[B, A, 4], "conf": Tensor[B, A, C]`` raw logits, ``"landm": Tensor[B, A, 10] | None}``.
        anchors: ``Tensor[A, 4]`` cxcywh normalized.
        image_size_hw: network-frame ``(H, W)`` pixels the anchors are normalized by.
        conf_thresh: keep (anchor, class) pairs whose softmax probability is > this.
        nms_thresh: IoU threshold of NMS, applied per image and per class.
        top_k: highest-scoring candidates per image kept before NMS.
        keep_top_k: detections per image kept after NMS.
        variances: box coding variances.

    Returns:
        One dict per image: ``boxes`` ``Tensor[N, 4]`` xyxy network-frame pixels, ``scores`` ``Tensor[N]``,
        ``labels`` ``Tensor[N]`` int64 (1 face, 2 person), ``landmarks`` ``Tensor[N, 5, 2]`` xy pixels or None;
        sorted by descending score. N = 0 is normal.
    """
    loc, conf, landm = outputs["loc"], outputs["conf"], outputs.get("landm")
    if loc.dim() != 3 or loc.shape[-1] != 4 or conf.dim() != 3 or conf.shape[:2] != loc.shape[:2]:
        raise ValueError(f"expected loc [B, A, 4] and conf [B, A, C], got {tuple(loc.shape)} and {tuple(conf.shape)}")
    if anchors.shape != (loc.shape[1], 4):
        raise ValueError(f"expected anchors [{loc.shape[1]}, 4] (one per prediction), got {tuple(anchors.shape)}")
    batch, num_anchors, num_classes = conf.shape
    device = loc.device
    height, width = image_size_hw
    anchors = anchors.to(device=device, dtype=torch.float32)
    scale = torch.tensor([width, height], dtype=torch.float32, device=device)
    boxes = decode_boxes(loc.float(), anchors, variances) * scale.repeat(2)  # (B, A, 4)
    points = None
    if landm is not None:
        points = decode_landmarks(landm.float(), anchors, variances) * scale  # (B, A, 5, 2)
    scores = torch.softmax(conf.float(), dim=-1)[..., 1:]  # (B, A, C-1)

    # candidates: (image, anchor, class) with score > threshold, then top-k per image
    flat = scores.reshape(batch, -1)  # (B, A*(C-1))
    k = min(top_k, flat.shape[1])
    top_scores, top_index = flat.topk(k, dim=1)  # (B, k) each, descending
    keep = top_scores > conf_thresh  # (B, k)
    image_idx = torch.arange(batch, device=device)[:, None].expand(batch, k)[keep]  # (P,)
    cand_scores = top_scores[keep]  # (P,)
    cand_index = top_index[keep]  # (P,)
    anchor_idx = torch.div(cand_index, num_classes - 1, rounding_mode="floor")  # (P,)
    class_idx = cand_index % (num_classes - 1) + 1  # (P,) 1-based labels
    cand_boxes = boxes[image_idx, anchor_idx]  # (P, 4)
    groups = image_idx * num_classes + class_idx  # (P,) one NMS group per (image, class)
    rank = torch.arange(k, device=device)[None].expand(batch, k)[keep]  # (P,) place in its image's top-k
    kept = _nms_until_enough(cand_boxes, cand_scores, groups, image_idx, rank, batch, nms_thresh, keep_top_k)

    results = []
    kept_image = image_idx[kept]  # (Q,)
    for b in range(batch):
        sel = kept[kept_image == b][:keep_top_k]  # (N,) still by descending score
        if sel.numel() == 0:
            results.append(empty_detections(device, landmarks=points is not None))
            continue
        results.append(
            {
                "boxes": cand_boxes[sel],
                "scores": cand_scores[sel],
                "labels": class_idx[sel].to(torch.int64),
                "landmarks": points[b, anchor_idx[sel]] if points is not None else None,
            }
        )
    return results


def _nms_until_enough(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    image_idx: Tensor,
    rank: Tensor,
    batch: int,
    nms_thresh: float,
    keep_top_k: int,
) -> Tensor:
    """`batched_nms` of the candidates, stopping early once every image has `keep_top_k` detections.

    Greedy NMS keeps a box when no kept box of higher score overlaps it, so NMS over the best-ranked candidates of
    an image keeps exactly what NMS over all of them keeps among those. Each image is therefore settled by NMS over
    its candidates ranked below a limit (``2 * keep_top_k``, then 4x more each round) as soon as that keeps
    `keep_top_k` boxes or covers all its candidates; the kept boxes ranked first are then the same as with NMS over
    everything, at a fraction of its quadratic cost when many candidates pass the threshold.

    Args:
        boxes: ``[P, 4]``, scores ``[P]``, groups ``[P]`` (NMS runs per group), image_idx ``[P]``, rank ``[P]``:
            the candidates, and each one's place in the score order of its image (0 = best).
    Returns:
        Kept candidate indices ``[Q]``, per image in descending score order (as `batched_nms` returns them).
    """
    counts = torch.bincount(image_idx, minlength=batch)  # (B,) candidates per image
    settled = torch.zeros(batch, dtype=torch.bool, device=boxes.device)  # (B,)
    parts = []
    limit = 2 * keep_top_k
    while not bool(settled.all()):
        chosen = torch.nonzero(~settled[image_idx] & (rank < limit)).squeeze(1)  # (P',)
        kept = chosen[batched_nms(boxes[chosen], scores[chosen], groups[chosen], nms_thresh)]  # (Q',)
        enough = (torch.bincount(image_idx[kept], minlength=batch) >= keep_top_k) | (counts <= limit)  # (B,)
        now = ~settled & enough  # (B,) images settled in this round
        parts.append(kept[now[image_idx[kept]]])
        settled |= now
        limit *= 4
    return torch.cat(parts) if parts else image_idx.new_zeros(0)
