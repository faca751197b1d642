"""The one collate function of every dataset: pads the per-image boxes of a batch to a common count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

__all__ = ["detection_collate"]


def detection_collate(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack dataset samples into a batch.

    None items (samples that failed under ``data.on_error=skip``, already counted and logged) are left out; a batch
    of only such items is None, and the loops that read batches skip it.

    Args:
        samples: dicts with ``input [C, H, W]``, ``boxes [N, 4]`` xyxy network-frame pixels, ``labels [N]``,
            ``landmarks [N, 5, 2]``, ``landmarks_valid [N]``, ``name``, ``rate``, ``frame``; or None.
    Returns:
        ``inputs [B, C, H, W]``, ``boxes [B, M, 4]``, ``labels [B, M]`` (0 = padding), ``landmarks [B, M, 5, 2]``,
        ``landmarks_valid [B, M]`` (False on padding), ``num_boxes [B]``, the lists ``names``, ``rates``,
        ``frames``, and ``left_out`` (items left out of this batch). ``M`` is the largest N of the batch (0 when no
        image has a box). None when every item was left out.
    Raises:
        ValueError: an empty batch, or inputs of different shapes (the names are given).
    """
    if not samples:
        raise ValueError("detection_collate: empty batch")
    given = len(samples)
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    shapes = {tuple(s["input"].shape) for s in samples}
    if len(shapes) > 1:
        listing = ", ".join(f"{s['name']} {list(s['input'].shape)}" for s in samples)
        raise ValueError(f"detection_collate: inputs of different shapes cannot be batched: {listing}")
    batch = len(samples)
    counts = [int(s["boxes"].shape[0]) for s in samples]
    m = max(counts)
    boxes = torch.zeros(batch, m, 4, dtype=torch.float32)
    labels = torch.zeros(batch, m, dtype=torch.int64)
    landmarks = torch.zeros(batch, m, 5, 2, dtype=torch.float32)
    valid = torch.zeros(batch, m, dtype=torch.bool)
    for i, (sample, n) in enumerate(zip(samples, counts)):
        if n == 0:
            continue
        boxes[i, :n] = sample["boxes"]
        labels[i, :n] = sample["labels"]
        landmarks[i, :n] = sample["landmarks"]
        valid[i, :n] = sample["landmarks_valid"]
    return {
        # default_collate stacks straight into shared memory inside a DataLoader worker (no second copy)
        "inputs": default_collate([s["input"] for s in samples]),  # (B, C, H, W)
        "boxes": boxes,
        "labels": labels,
        "landmarks": landmarks,
        "landmarks_valid": valid,
        "num_boxes": torch.tensor(counts, dtype=torch.int64),
        "names": [s["name"] for s in samples],
        "rates": [s.get("rate") for s in samples],
        "frames": [s.get("frame") for s in samples],
        "left_out": given - batch,
    }
