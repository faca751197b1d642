"""Raw head outputs -> detections: decode, score threshold, top-k, per-class NMS, keep-top-k.

Batched on the outputs' device: NMS covers every (image, class) group at once (on CPU one `torchvision.ops.nms`
per group, spread over torch's intra-op threads). Conventions are in `nbsrc.boxes`; logits become scores in
`class_scores` only.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from nbsrc.boxes import decode_boxes, decode_landmarks

__all__ = ["class_scores", "empty_detections", "postprocess"]


def class_scores(conf: Tensor, cls_loss: str = "ohem") -> Tensor:
    """``Tensor[..., C]`` logits (column 0 background) -> ``Tensor[..., C-1]`` float32 scores of classes 1..C-1.

    `cls_loss` is the config's ``loss.cls_loss``: ``ohem`` scores with a softmax over all C columns, ``focal`` with a
    sigmoid of each foreground logit (its background logit is never trained); ``probabilities``: `conf` holds
    scores already (an exported model's ``conf`` output, `nbsrc.export`).
    """
    if cls_loss == "ohem":
        return torch.softmax(conf.float(), dim=-1)[..., 1:]  # (..., C-1)
    if cls_loss == "focal":
        return torch.sigmoid(conf[..., 1:].float())  # (..., C-1)
    if cls_loss == "probabilities":
        return conf[..., 1:].float()  # (..., C-1)
    raise ValueError(f"cls_loss must be 'ohem', 'focal' or 'probabilities', got {cls_loss!r}")


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
    cls_loss: str = "ohem",
) -> list[dict[str, Tensor | None]]:
    """Detections per image from a model output dict.

    Args:
        outputs: ``{"loc": Tensor[B, A, 4], "conf": Tensor[B, A, C]`` raw logits, ``"landm": Tensor[B, A, 10] | None}``.
        anchors: ``Tensor[A, 4]`` cxcywh normalized.
        image_size_hw: network-frame ``(H, W)`` pixels the anchors are normalized by.
        conf_thresh: keep (anchor, class) pairs whose score (`class_scores` with `cls_loss`) is > this.
        nms_thresh: IoU threshold of NMS, applied per image and per class.
        top_k: highest-scoring candidates per image kept before NMS; keep_top_k: detections kept after it.

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
    scores = class_scores(conf, cls_loss)  # (B, A, C-1)

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
    cand_boxes = decode_boxes(loc[image_idx, anchor_idx].float(), anchors[anchor_idx], variances) * scale.repeat(2)
    groups = image_idx * num_classes + class_idx  # (P,) one NMS group per (image, class)
    rank = torch.arange(k, device=device)[None].expand(batch, k)[keep]  # (P,) place in its image's top-k
    kept = _nms_until_enough(cand_boxes, groups, image_idx, rank, batch, nms_thresh, keep_top_k)  # (Q,)

    results = []
    kept_image = image_idx[kept]  # (Q,)
    for b in range(batch):
        sel = kept[kept_image == b][:keep_top_k]  # (N,) still by descending score
        if sel.numel() == 0:
            results.append(empty_detections(device, landmarks=landm is not None))
            continue
        points = None
        if landm is not None:
            chosen = anchor_idx[sel]  # (N,)
            points = decode_landmarks(landm[b, chosen].float(), anchors[chosen], variances) * scale  # (N, 5, 2)
        results.append(
            {
                "boxes": cand_boxes[sel],  # (N, 4)
                "scores": cand_scores[sel],
                "labels": class_idx[sel].to(torch.int64),
                "landmarks": points,
            }
        )
    return results


def _nms_until_enough(
    boxes: Tensor,
    groups: Tensor,
    image_idx: Tensor,
    rank: Tensor,
    batch: int,
    nms_thresh: float,
    keep_top_k: int,
) -> Tensor:
    """Greedy NMS of the candidates, rank window by rank window, stopping once every image has `keep_top_k` boxes.

    Greedy NMS keeps a box when no kept box ranked above it overlaps it by more than `nms_thresh`; a suppressed box
    suppresses nothing. So once the candidates ranked below ``L`` are settled, those ranked in ``[L, L + W)`` are
    settled by NMS over them together with the boxes kept so far (which never suppress each other), and an image is
    done as soon as it has `keep_top_k` kept boxes or no candidates left. Each round costs about
    ``kept x W + W x W`` box comparisons instead of NMS's quadratic cost over thousands of candidates (an untrained
    network). NMS runs in rank order, so the result is that of NMS over every candidate, truncated to `keep_top_k`.

    `boxes` ``[P, 4]``, `groups` ``[P]``, `image_idx` ``[P]``, `rank` ``[P]`` (place in its image's score order, 0 =
    best); returns the kept candidate indices ``[Q]``, per image in descending score order.
    """
    order = -rank.to(boxes.dtype)  # (P,) NMS priority (float32: exact below 2**24 candidates per image)
    counts = torch.bincount(image_idx, minlength=batch)  # (B,) candidates per image
    settled = counts == 0  # (B,)
    low = torch.zeros(batch, dtype=torch.long, device=boxes.device)  # (B,) ranks below are settled
    high = torch.full_like(low, 2 * keep_top_k)  # (B,) this round's window is [low, high)
    kept = image_idx.new_zeros(0)  # (K,) kept so far by unsettled images, in rank order per image
    parts = []
    while not bool(settled.all()):
        new = torch.nonzero(~settled[image_idx] & (rank >= low[image_idx]) & (rank < high[image_idx])).squeeze(1)
        chosen = torch.cat([kept, new])  # (K + W,)
        kept = chosen[_grouped_nms(boxes[chosen], order[chosen], groups[chosen], nms_thresh)]  # by rank per image
        low = high
        have = torch.bincount(image_idx[kept], minlength=batch)  # (B,)
        now = ~settled & ((have >= keep_top_k) | (counts <= low))  # (B,) images settled in this round
        parts.append(kept[now[image_idx[kept]]])
        kept = kept[~now[image_idx[kept]]]
        settled |= now
        # next window: the candidates still needed at the keep rate seen so far, with a margin
        rate = have.clamp(min=1).double() / low.double()  # (B,)
        need = ((keep_top_k - have).clamp(min=1).double() / rate * 1.25).ceil().long() + 16  # (B,)
        high = low + need
    return torch.cat(parts) if parts else image_idx.new_zeros(0)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    """In a forked child (a DataLoader worker, a multiprocessing pool): the parent's threads are not there."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _nms_pool(threads: int) -> ThreadPoolExecutor:
    """Threads for per-group CPU NMS (torchvision's kernel releases the GIL), created once per size."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="nbsrc-nms")
        return _POOLS[threads]


def _grouped_nms(boxes: Tensor, priority: Tensor, groups: Tensor, nms_thresh: float) -> Tensor:
    """`torchvision.ops.batched_nms` (``[N, 4]`` xyxy, ``[N]`` priority and groups -> kept ``[K]`` by descending
    priority), with the groups of a CPU call run in parallel threads."""
    threads = torch.get_num_threads()
    if boxes.device.type != "cpu" or threads < 2 or len(boxes) < 1000:
        return batched_nms(boxes, priority, groups, nms_thresh)
    sorted_groups, perm = groups.sort(stable=True)  # (N,) each
    sizes = torch.unique_consecutive(sorted_groups, return_counts=True)[1].tolist()
    members = sorted(perm.split(sizes), key=len, reverse=True)  # one index tensor per group, biggest first
    kept = torch.cat(list(_nms_pool(threads).map(lambda m: m[nms(boxes[m], priority[m], nms_thresh)], members)))  # (K,)
    return kept[priority[kept].argsort(descending=True, stable=True)]
