"""Drawing detections (`nbsrc.detector.Detector.detect` dicts) into an RGB image with OpenCV, in the published
colours (converted to RGB): what ``detect --save`` writes. Notebook figures are `nbsrc.viz`; this module needs no
matplotlib, so detection starts without importing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np

__all__ = ["LABEL_COLORS", "LANDMARK_COLORS", "draw_detections"]

LABEL_COLORS = {1: (255, 0, 0), 2: (255, 255, 0)}  # face red, person yellow
LANDMARK_COLORS = ((255, 0, 0), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255))  # points 0-4


def draw_detections(
    image_rgb: np.ndarray,
    detections: Iterable[Mapping[str, Any]],
    vis_thresh: float = 0.0,
    thickness: int = 2,
    show_scores: bool = True,
) -> np.ndarray:
    """A copy of `image_rgb` (``[H, W, 3]`` uint8) with every detection whose score >= `vis_thresh` drawn."""
    image = np.asarray(image_rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {list(image.shape)}")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    radius = max(1, thickness)
    for det in detections:
        score = float(det.get("score", 1.0))
        if score < vis_thresh:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        color = LABEL_COLORS.get(int(det.get("label", 1)), (0, 255, 255))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        if show_scores:
            cv2.putText(canvas, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_DUPLEX, 0.5, (255, 255, 255), 1)
        points = det.get("landmarks")
        if points is not None:
            for (px, py), point_color in zip(points, LANDMARK_COLORS):
                cv2.circle(canvas, (int(round(px)), int(round(py))), radius, point_color, -1)
    return canvas
