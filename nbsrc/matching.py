"""Anchor matching for a whole batch at once (the SSD / RetinaFace rule), on the inputs' device.

Anchors ``Tensor[A, 4]`` cxcywh normalized; ground truth ``Tensor[B, M, 4]`` xyxy normalized, padded with label 0
(conventions in `nbsrc.boxes`). Per image:

1. IoU between every real GT box and every anchor (the anchor in corner form, ``c -/+ wh / 2``).
2. Each GT whose best IoU is ``>= force_iou`` takes its best anchor (first anchor on ties); when several GTs
   share a best anchor, the later GT (higher index) takes it.
3. Every other anchor takes its best GT (first GT on ties) and is positive when that IoU is ``>= pos_iou``.
   Everything else is background: there is no ignore band.

Two exact paths: ``sparse`` (default) indexes the anchors once by shape, row and column and visits, per GT, only
the anchors that can reach IoU ``>= min(pos_iou, force_iou)`` (bit-identical IoUs); ``dense`` computes the full
IoU matrix in chunks (used when that threshold is <= 0 or there are too many anchor shapes to index). Both compute
at most ``64 * chunk`` IoU values at once. Degenerate GT boxes (zero width or height) never match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nbsrc.boxes import cxcywh_to_xyxy

__all__ = ["UNMATCHED", "AnchorMatch", "check_box_values", "match_anchors", "pairwise_iou"]

UNMATCHED = -1  # matched GT index of a background anchor; forced anchor of a GT that was not forced
_BLOCK_FACTOR = 64  # IoU values computed at once = _BLOCK_FACTOR * chunk
_MAX_SHAPES = 1024  # more distinct anchor shapes than this: use the dense path
_KEY_STRIDE = 8.0  # composite sort keys: segment * _KEY_STRIDE + (clamped coordinate + 2), coordinate in [-2, 2]
_SLACK = 1e-6  # widening (normalized units) of every pruning window, far above float32 rounding


@dataclass
class AnchorMatch:
    """Result of `match_anchors`."""

    matched_gt: Tensor  # (B, A) int64 GT index of each positive anchor, UNMATCHED for background
    positive: Tensor  # (B, A) bool
    labels: Tensor  # (B, A) int64 class of the matched GT, 0 for background
    # (B, M) int64 best anchor each GT was forced onto (a later GT sharing it may have taken it);
    # UNMATCHED for padding and for GTs whose best IoU is below force_iou
    forced_anchor: Tensor
    positive_index: tuple[Tensor, Tensor]  # (image, anchor) (P,) each: positive.nonzero(as_tuple=True)

    @property
    def num_pos(self) -> Tensor:
        """``Tensor[B]`` int64 positive anchors per image."""
        return self.positive.sum(dim=1)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: ``[..., N, 4]`` and ``[..., K, 4]`` xyxy -> ``[..., N, K]``, bit-identical to the
    classic ``jaccard``."""
    return _iou_aligned(boxes1[..., :, None, :], boxes2[..., None, :, :])  # (..., N, 1, 4) vs (..., 1, K, 4)


def _iou_aligned(b1: Tensor, b2: Tensor) -> Tensor:
    """IoU of boxes ``b1[..., 4]`` and ``b2[..., 4]`` (xyxy) with broadcasting."""
    inter_w = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(min=0)
    inter_h = (torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(min=0)
    inter = inter_w * inter_h
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return inter / (area1 + area2 - inter)


def match_anchors(
    anchors: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    pos_iou: float = 0.35,
    force_iou: float = 0.2,
    chunk: int = 65536,
    method: str = "auto",
    validate: bool = True,
) -> AnchorMatch:
    """Match anchors to padded ground truth for a whole batch (rule in the module docstring).

    Args:
        anchors: ``Tensor[A, 4]`` cxcywh normalized.
        boxes: ``Tensor[B, M, 4]`` xyxy normalized (M may be 0).
        labels: ``Tensor[B, M]`` int, class >= 1 for real boxes, 0 for padding.
        chunk: memory bound: anchors per dense IoU block; ``64 * chunk`` IoU values at most at once.
        method: ``auto`` (sparse when possible), ``sparse`` or ``dense``; all give identical results.
        validate: check shapes, method, chunk and the real boxes' values (on an accelerator, a wait for the
            device); `nbsrc.loss.MultiBoxLoss` passes False, having checked them.

    Raises:
        ValueError: on bad shapes, non-finite or inverted boxes, or an unknown method.
    """
    if validate:
        _check_inputs(anchors, boxes, labels, method, chunk)
    B, M = labels.shape
    A = anchors.shape[0]
    device = anchors.device
    with torch.no_grad():
        anchors = anchors.float()
        boxes = boxes.to(device=device, dtype=torch.float32)
        labels = labels.to(device=device, dtype=torch.long)
        real = (labels > 0) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # (B, M)
        lowest = min(pos_iou, force_iou)
        index = None
        if method != "dense" and lowest > 0:
            index = _anchor_index(anchors)
            if index is None and method == "sparse":
                raise ValueError(f"sparse matching needs at most {_MAX_SHAPES} distinct anchor shapes")
        if index is None:
            matched_gt, gt_iou, gt_anchor = _match_dense(anchors, boxes, real, pos_iou, chunk)
        else:
            matched_gt, gt_iou, gt_anchor = _match_sparse(index, boxes, real, lowest, pos_iou, chunk)
        # matched_gt (B, A): best GT of anchors with IoU >= pos_iou; gt_iou, gt_anchor (B, M): best anchor per GT

        forced = real & (gt_iou >= force_iou)  # (B, M)
        forced_anchor = torch.where(forced, gt_anchor, torch.full_like(gt_anchor, UNMATCHED))  # (B, M)
        forced_b, forced_m = forced.nonzero(as_tuple=True)  # (F,)
        # a later GT wins a shared best anchor: amax over GT indices does not depend on the order of writes
        slot, column = _segment_reduce(forced_b * A + gt_anchor[forced_b, forced_m], forced_m, reduce="amax")
        matched_gt.view(-1)[slot] = column
        positive = matched_gt >= 0  # (B, A)
        pos_b, pos_a = positive.nonzero(as_tuple=True)  # (P,)
        anchor_labels = torch.zeros((B, A), dtype=torch.long, device=device)  # (B, A)
        anchor_labels[pos_b, pos_a] = labels[pos_b, matched_gt[pos_b, pos_a]]
    return AnchorMatch(
        matched_gt=matched_gt,
        positive=positive,
        labels=anchor_labels,
        forced_anchor=forced_anchor,
        positive_index=(pos_b, pos_a),
    )


def _segment_reduce(keys: Tensor, values: Tensor, reduce: str) -> tuple[Tensor, Tensor]:
    """Unique `keys` and the `reduce` ("amax" | "amin") of the `values` sharing each key (deterministic)."""
    unique_keys, inverse = torch.unique(keys, return_inverse=True)  # (U,), (K,)
    init = values.new_empty(unique_keys.shape)  # (U,)
    reduced = init.scatter_reduce_(0, inverse, values, reduce=reduce, include_self=False)  # (U,)
    return unique_keys, reduced


def _check_inputs(anchors: Tensor, boxes: Tensor, labels: Tensor, method: str, chunk: int) -> None:
    if method not in ("auto", "sparse", "dense"):
        raise ValueError(f"method must be auto | sparse | dense, got {method!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be Tensor[A, 4], got {tuple(anchors.shape)}")
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be Tensor[B, M, 4], got {tuple(boxes.shape)}")
    if labels.shape != boxes.shape[:2]:
        raise ValueError(f"labels must be Tensor[B, M] = {tuple(boxes.shape[:2])}, got {tuple(labels.shape)}")
    check_box_values(boxes, labels)


def check_box_values(boxes: Tensor, labels: Tensor) -> None:
    """Raise `ValueError` naming the first real box (``labels [B, M]`` > 0) of ``boxes [B, M, 4]`` that is not
    finite xyxy with ``x1 <= x2`` and ``y1 <= y2``. Reads the values: on an accelerator it waits for the device."""
    if boxes.numel() == 0:
        return
    real = labels > 0  # (B, M)
    bad = real & ~torch.isfinite(boxes).all(dim=-1)  # (B, M)
    bad |= real & ((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1]))
    if bool(bad.any()):
        b, m = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"boxes[{b}, {m}] must be finite xyxy with x1 <= x2 and y1 <= y2, got {boxes[b, m].tolist()}")


# ---- dense path ----------------------------------------------------------------------------------


def _match_dense(
    anchors: Tensor, boxes: Tensor, real: Tensor, pos_iou: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Best GT per anchor (kept when IoU >= `pos_iou`) and best anchor per GT, chunked over anchors."""
    B, M = real.shape
    A = anchors.shape[0]
    device = anchors.device
    matched_gt = torch.full((B, A), UNMATCHED, dtype=torch.long, device=device)  # (B, A)
    gt_iou = torch.full((B, M), -1.0, dtype=torch.float32, device=device)  # (B, M)
    gt_anchor = torch.zeros((B, M), dtype=torch.long, device=device)  # (B, M)
    if M == 0:
        return matched_gt, gt_iou, gt_anchor
    corners = cxcywh_to_xyxy(anchors)  # (A, 4)
    step = max(1, min(chunk, (_BLOCK_FACTOR * chunk) // (B * M)))
    for start in range(0, A, step):
        block = pairwise_iou(boxes, corners[start : start + step])  # (B, M, C)
        block = block.masked_fill(~real[:, :, None], -1.0)  # (B, M, C)
        value, arg = block.max(dim=1)  # (B, C) first GT on ties
        matched_gt[:, start : start + step] = torch.where(value >= pos_iou, arg, UNMATCHED)
        value, arg = block.max(dim=2)  # (B, M) first anchor of the block on ties
        better = value > gt_iou  # strict: an earlier block keeps a tie
        gt_iou = torch.where(better, value, gt_iou)
        gt_anchor = torch.where(better, arg + start, gt_anchor)
    return matched_gt, gt_iou, gt_anchor


# ---- sparse path ---------------------------------------------------------------------------------


@dataclass
class _AnchorIndex:
    corners: Tensor  # (A, 4) float32 xyxy
    order: Tensor  # (A,) anchor index in (shape, cy, cx) order
    anchor_key: Tensor  # (A,) float64 row * _KEY_STRIDE + cx + 2, ascending
    row_key: Tensor  # (R,) float64 shape * _KEY_STRIDE + cy + 2, ascending
    row_cy: Tensor  # (R,) float64 centre y of each row
    shape_wh: Tensor  # (S, 2) float64 anchor width and height per shape


# (anchors tensor, its version counter, index): holding the tensor keeps its identity unique
_INDEX_CACHE: list[tuple[Tensor, int, _AnchorIndex | None]] = []


def _anchor_index(anchors: Tensor) -> _AnchorIndex | None:
    """Anchors grouped by shape and sorted into rows; cached per tensor (None: too many shapes)."""
    for source, version, cached in _INDEX_CACHE:
        if source is anchors and version == anchors._version:
            return cached
    shapes, shape_id = torch.unique(anchors[:, 2:], dim=0, return_inverse=True)  # (S, 2), (A,)
    if shapes.shape[0] > _MAX_SHAPES:
        index = None
    else:
        cx, cy = anchors[:, 0], anchors[:, 1]
        order = torch.argsort(cx, stable=True)  # lexicographic (shape, cy, cx) by three stable sorts
        order = order[torch.argsort(cy[order], stable=True)]
        order = order[torch.argsort(shape_id[order], stable=True)]
        s_sorted, cy_sorted, cx_sorted = shape_id[order], cy[order], cx[order]
        new_row = torch.ones_like(s_sorted, dtype=torch.bool)  # (A,)
        new_row[1:] = (s_sorted[1:] != s_sorted[:-1]) | (cy_sorted[1:] != cy_sorted[:-1])
        row_of = torch.cumsum(new_row.long(), 0) - 1  # (A,)
        starts = new_row.nonzero().squeeze(1)  # (R,)
        index = _AnchorIndex(
            corners=cxcywh_to_xyxy(anchors),
            order=order,
            anchor_key=_composite(row_of, cx_sorted),
            row_key=_composite(s_sorted[starts], cy_sorted[starts]),
            row_cy=cy_sorted[starts].double(),
            shape_wh=shapes.double(),
        )
    _INDEX_CACHE.insert(0, (anchors, anchors._version, index))
    del _INDEX_CACHE[8:]
    return index


def _composite(segment: Tensor, coord: Tensor) -> Tensor:
    """Sort key of a coordinate inside a segment: float64 ``segment * 8 + clamp(coord, -2, 2) + 2``."""
    return segment.double() * _KEY_STRIDE + coord.double().clamp(-2.0, 2.0) + 2.0


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For ranges of `counts` items: the range of each item and its offset inside that range."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)  # (total,)
    first = torch.cumsum(counts, 0) - counts  # (n,)
    offset = torch.arange(total, device=counts.device) - first[owner]  # (total,)
    return owner, offset


def _match_sparse(
    index: _AnchorIndex, boxes: Tensor, real: Tensor, lowest: float, pos_iou: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Same outputs as `_match_dense` wherever they matter (IoU >= `lowest`), visiting only reachable pairs."""
    B, M = real.shape
    A = index.order.shape[0]
    device = boxes.device
    matched_gt = torch.full((B, A), UNMATCHED, dtype=torch.long, device=device)  # (B, A)
    gt_iou = torch.full((B * M,), -1.0, dtype=torch.float32, device=device)  # (B*M,)
    gt_anchor = torch.zeros((B * M,), dtype=torch.long, device=device)  # (B*M,)
    gt_flat = real.flatten().nonzero().squeeze(1)  # (G,) index into B*M
    if gt_flat.numel() > 0:
        gt_boxes = boxes.reshape(B * M, 4)[gt_flat]  # (G, 4)
        pair_gt, pair_anchor, pair_iou = _candidate_pairs(index, gt_boxes, lowest, chunk)  # (K,) each
        # best anchor per GT: max IoU, then the smallest anchor index among equals
        owner, best = _segment_reduce(pair_gt, pair_iou, reduce="amax")  # (G',)
        top = pair_iou == best[torch.searchsorted(owner, pair_gt)]  # (K,)
        owner, first = _segment_reduce(pair_gt[top], pair_anchor[top], reduce="amin")  # (G',)
        gt_iou[gt_flat[owner]] = best
        gt_anchor[gt_flat[owner]] = first
        # best GT per anchor among IoU >= pos_iou: max IoU, then the smallest GT index among equals
        keep = pair_iou >= pos_iou  # (K',)
        column = gt_flat[pair_gt[keep]] % M  # (K',)
        slot = (gt_flat[pair_gt[keep]] // M) * A + pair_anchor[keep]  # (K',) index into B*A
        values = pair_iou[keep]  # (K',)
        slots, best = _segment_reduce(slot, values, reduce="amax")  # (U,)
        top = values == best[torch.searchsorted(slots, slot)]  # (K',)
        slots, first = _segment_reduce(slot[top], column[top], reduce="amin")  # (U,)
        matched_gt.view(-1)[slots] = first
    return matched_gt, gt_iou.view(B, M), gt_anchor.view(B, M)  # (B, A), (B, M), (B, M)


def _candidate_pairs(index: _AnchorIndex, gt_boxes: Tensor, lowest: float, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """All (GT, anchor) pairs with IoU >= `lowest`: ``(gt, anchor, iou)`` flat tensors.

    IoU >= t needs ``min(w) * min(h) >= t * max(area)`` (shape filter) and, per axis, an overlap of at
    least ``t * max(w_a, w_g)``, i.e. ``|c_a - c_g| <= (w_a + w_g) / 2 - t * max(w_a, w_g)`` (window, which
    gives the rows). On a row, where the vertical overlap is at most ``oh``, the horizontal overlap must
    reach ``t * max(area) / oh`` (tighter columns). Bounds use t lowered by 1e-5 relative and are widened
    by 1e-6 (normalized units); the exact float32 IoU then decides.
    """
    threshold = lowest  # the exact IoU test below uses it as is
    lowest = lowest * (1 - 1e-5)  # the pruning bounds use a lower one: float32 IoU rounding is far smaller
    g = gt_boxes.double()
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]  # (G,)
    gcx, gcy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2  # (G,)
    sw, sh = index.shape_wh[:, 0], index.shape_wh[:, 1]  # (S,)
    reach_x = (sw[None] + gw[:, None]) / 2 - lowest * torch.maximum(sw[None], gw[:, None]) + _SLACK  # (G, S)
    reach_y = (sh[None] + gh[:, None]) / 2 - lowest * torch.maximum(sh[None], gh[:, None]) + _SLACK  # (G, S)
    overlap_bound = torch.minimum(sw[None], gw[:, None]) * torch.minimum(sh[None], gh[:, None])  # (G, S)
    area_max = torch.maximum((sw * sh)[None], (gw * gh)[:, None])  # (G, S)
    ok = (overlap_bound >= lowest * area_max) & (reach_x > 0) & (reach_y > 0)  # (G, S)
    pair_g, pair_s = ok.nonzero(as_tuple=True)  # (P,)
    pair_rx = reach_x[pair_g, pair_s]  # (P,)
    pair_ry = reach_y[pair_g, pair_s]  # (P,)

    # rows of the shape inside the vertical window
    row_lo = torch.searchsorted(index.row_key, _composite(pair_s, gcy[pair_g] - pair_ry), side="left")  # (P,)
    row_hi = torch.searchsorted(index.row_key, _composite(pair_s, gcy[pair_g] + pair_ry), side="right")  # (P,)
    owner, offset = _expand((row_hi - row_lo).clamp(min=0))  # (Q,)
    row = row_lo[owner] + offset  # (Q,)
    row_g = pair_g[owner]  # (Q,)
    # on a known row the vertical overlap is at most oh; IoU >= t then needs ow >= t * max(area) / oh
    row_s = pair_s[owner]  # (Q,)
    row_h, gt_h = sh[row_s], gh[row_g]  # (Q,)
    dy = (index.row_cy[row] - gcy[row_g]).abs()  # (Q,)
    oh = torch.minimum(torch.minimum(row_h, gt_h), (row_h + gt_h) / 2 - dy).clamp(min=0) + _SLACK  # (Q,)
    area_max_row = torch.maximum(sw[row_s] * row_h, gw[row_g] * gt_h)  # (Q,)
    row_rx = (sw[row_s] + gw[row_g]) / 2 - lowest * area_max_row / oh + _SLACK  # (Q,)
    row_rx = torch.minimum(row_rx, pair_rx[owner])  # (Q,)
    # anchors of each row inside the horizontal window (positions in sorted order)
    pos_lo = torch.searchsorted(index.anchor_key, _composite(row, gcx[row_g] - row_rx), side="left")  # (Q,)
    pos_hi = torch.searchsorted(index.anchor_key, _composite(row, gcx[row_g] + row_rx), side="right")  # (Q,)
    counts = (pos_hi - pos_lo).clamp(min=0)  # (Q,)

    return _exact_pairs(index, gt_boxes, row_g, pos_lo, counts, threshold, chunk)


def _exact_pairs(
    index: _AnchorIndex, gt_boxes: Tensor, row_g: Tensor, pos_lo: Tensor, counts: Tensor, threshold: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The candidates of each (GT, row) window, ``counts[q]`` anchors from sorted position ``pos_lo[q]`` for GT
    ``row_g[q]``, whose exact float32 IoU is >= `threshold`, computed ``64 * chunk`` at most at once."""
    device = gt_boxes.device
    block = _BLOCK_FACTOR * chunk
    ends = torch.cumsum(counts, 0)  # (Q,)
    out_g, out_a, out_iou = [], [], []
    start_row, done = 0, 0
    total = int(ends[-1]) if ends.numel() else 0
    while done < total:
        # rows [start_row, stop_row) hold at most `block` candidates (at least one row)
        stop_row = int(torch.searchsorted(ends, torch.tensor(done + block, device=device), side="right"))
        stop_row = max(stop_row, start_row + 1)
        owner, offset = _expand(counts[start_row:stop_row])  # (C,)
        owner = owner + start_row
        anchor = index.order[pos_lo[owner] + offset]  # (C,)
        gt = row_g[owner]  # (C,)
        iou = _iou_aligned(gt_boxes[gt], index.corners[anchor])  # (C,)
        keep = iou >= threshold
        out_g.append(gt[keep])
        out_a.append(anchor[keep])
        out_iou.append(iou[keep])
        done = int(ends[stop_row - 1])
        start_row = stop_row
    if not out_g:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    return torch.cat(out_g), torch.cat(out_a), torch.cat(out_iou)
