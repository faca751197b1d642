"""RGB transforms of an image and its annotations: the RetinaFace training augmentation and the evaluation resize.

Training (`train_transform`) follows the published ``preproc``: `random_crop`, `photometric_distort`,
`pad_to_square` (only when the crop failed), `mirror` (p = 0.5), resize with a random interpolation. Evaluation
resizes into the network input (`nbsrc.preprocess`) and returns the map of predictions back to original pixels.

Boxes are ``[N, 4]`` xyxy pixels and landmarks ``[N, 5, 2]`` (`nbsrc.boxes`); invalid landmarks stay zero.
Images are ``uint8 [H, W, 3]`` RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nbsrc.frame import FrameMap, ScaleMap
from nbsrc.preprocess import resize_by_factor, resize_to_frame

__all__ = [
    "CROP_SCALES",
    "Annotations",
    "eval_transform",
    "mirror",
    "pad_to_square",
    "photometric_distort",
    "random_crop",
    "scale_transform",
    "train_transform",
]

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIES = 250
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
MIRROR_ORDER = np.array([1, 0, 2, 4, 3])  # landmark order after a horizontal flip


@dataclass
class Annotations:
    """The labels of one image during a transform (pixels of the current image)."""

    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float32 [N, 5, 2]
    landmarks_valid: np.ndarray  # bool [N]

    def select(self, keep: np.ndarray) -> Annotations:
        return Annotations(self.boxes[keep], self.labels[keep], self.landmarks[keep], self.landmarks_valid[keep])

    def zero_invalid(self) -> Annotations:
        self.landmarks = np.where(self.landmarks_valid[:, None, None], self.landmarks, 0.0).astype(np.float32)
        return self


def random_crop(
    image: np.ndarray, ann: Annotations, rng: np.random.Generator, scales: tuple[float, ...] = CROP_SCALES
) -> tuple[np.ndarray, Annotations, bool]:
    """Up to `CROP_TRIES` squares of side ``scale * short_side`` at random positions, until one holds a whole
    face; faces whose centre falls inside are kept, clipped to it. An image without faces gets a random crop.

    Returns:
        ``(image, annotations, pad)``; ``pad`` is True when no crop fitted and the image is returned whole.
    """
    height, width = image.shape[:2]
    short = min(width, height)
    n = len(ann.boxes)
    for _ in range(CROP_TRIES):
        side = max(1, int(scales[rng.integers(len(scales))] * short))
        left = 0 if width == side else int(rng.integers(width - side))
        top = 0 if height == side else int(rng.integers(height - side))
        roi = np.array([left, top, left + side, top + side], np.float32)
        if n == 0:
            return image[top : top + side, left : left + side].copy(), ann, False
        whole = ((ann.boxes[:, :2] >= roi[:2]) & (ann.boxes[:, 2:] <= roi[2:])).all(axis=1)  # (N,) inside roi
        if not whole.any():
            continue
        centres = (ann.boxes[:, :2] + ann.boxes[:, 2:]) / 2  # (N, 2)
        inside = ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)
        if not inside.any():
            continue
        kept = ann.select(inside)
        boxes = kept.boxes.copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], roi[:2]) - roi[:2]
        boxes[:, 2:] = np.minimum(boxes[:, 2:], roi[2:]) - roi[:2]
        landmarks = np.clip(kept.landmarks - roi[:2], 0.0, float(side))  # (K, 5, 2)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not nonempty.any():
            continue
        out = Annotations(boxes, kept.labels, landmarks.astype(np.float32), kept.landmarks_valid).select(nonempty)
        return image[top : top + side, left : left + side].copy(), out.zero_invalid(), False
    return image, ann, True


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    channel[:] = np.clip(channel.astype(np.float32) * alpha + beta, 0, 255)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness (+-32), contrast (x0.5..1.5), saturation (x0.5..1.5) and hue (+-18 of 180), each p = 0.5;
    contrast comes before the HSV steps or after them with p = 0.5 each. ``uint8 [H, W, 3]`` RGB in and out."""
    image = image.copy()
    contrast_first = bool(rng.integers(2))
    if rng.integers(2):
        _convert(image, beta=float(rng.uniform(-32, 32)))
    if contrast_first and rng.integers(2):
        _convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    if rng.integers(2):
        _convert(hsv[:, :, 1], alpha=float(rng.uniform(0.5, 1.5)))
    if rng.integers(2):
        hue = hsv[:, :, 0].astype(np.int32) + int(rng.integers(-18, 19))
        hsv[:, :, 0] = np.mod(hue, 180).astype(np.uint8)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        _convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    return image


def pad_to_square(image: np.ndarray, fill_rgb: tuple[float, float, float]) -> np.ndarray:
    """Pad bottom/right to a square of the long side, filled with `fill_rgb` (boxes are unchanged)."""
    height, width = image.shape[:2]
    side = max(height, width)
    if height == width:
        return image
    out = np.empty((side, side, 3), image.dtype)
    out[:] = np.asarray(np.round(fill_rgb), image.dtype)
    out[:height, :width] = image
    return out


def mirror(image: np.ndarray, ann: Annotations) -> tuple[np.ndarray, Annotations]:
    """Horizontal flip: ``x -> W - x``; landmark pairs (0, 1) and (3, 4) swap so that point 0 stays the
    image-left eye."""
    width = image.shape[1]
    boxes = ann.boxes.copy()
    boxes[:, 0], boxes[:, 2] = width - ann.boxes[:, 2], width - ann.boxes[:, 0]
    landmarks = ann.landmarks.copy()
    landmarks[:, :, 0] = width - landmarks[:, :, 0]
    landmarks = landmarks[:, MIRROR_ORDER]  # (N, 5, 2)
    out = Annotations(boxes, ann.labels, landmarks, ann.landmarks_valid).zero_invalid()
    return image[:, ::-1].copy(), out


def train_transform(
    image: np.ndarray,
    ann: Annotations,
    rng: np.random.Generator,
    image_size: int,
    fill_rgb: tuple[float, float, float],
) -> tuple[np.ndarray, Annotations]:
    """The RetinaFace training augmentation: an ``image_size`` squared image and its annotations in its pixels."""
    image, ann, pad = random_crop(image, ann, rng)
    image = photometric_distort(image, rng)
    if pad:
        image = pad_to_square(image, fill_rgb)
    if rng.random() < 0.5:
        image, ann = mirror(image, ann)
    height, width = image.shape[:2]
    interpolation = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    image = cv2.resize(image, (image_size, image_size), interpolation=interpolation)
    scale = np.array([image_size / width, image_size / height], np.float32)
    boxes = ann.boxes * np.tile(scale, 2)
    landmarks = ann.landmarks * scale
    return image, Annotations(boxes, ann.labels, landmarks, ann.landmarks_valid).zero_invalid()


def eval_transform(
    image: np.ndarray,
    ann: Annotations,
    image_size: int,
    policy: str = "stretch",
    fill_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, Annotations, FrameMap]:
    """Resize to the ``image_size`` squared network frame with `policy`; annotations mapped alike.

    Returns:
        ``(image, annotations, frame)``; ``frame.to_original`` maps network-frame predictions back.
    """
    height, width = image.shape[:2]
    frame = FrameMap((width, height), (image_size, image_size), policy)
    return resize_to_frame(image, frame, fill_rgb), _to_net(ann, frame), frame


def scale_transform(image: np.ndarray, ann: Annotations, factor: float) -> tuple[np.ndarray, Annotations, ScaleMap]:
    """Resize by `factor` (`nbsrc.preprocess.eval_resize_factor`) as biubug6's ``test_widerface.py`` does;
    annotations scaled alike.

    Returns:
        ``(image, annotations, frame)``: the image as `nbsrc.preprocess.resize_by_factor` makes it (``float32``
        unless the factor is 1); ``frame.to_original`` maps network-frame predictions back.
    """
    height, width = image.shape[:2]
    out = resize_by_factor(image, factor)
    frame = ScaleMap((width, height), (out.shape[1], out.shape[0]), factor)
    return out, _to_net(ann, frame), frame


def _to_net(ann: Annotations, frame: FrameMap | ScaleMap) -> Annotations:
    """`ann` mapped into the network frame of `frame`."""
    boxes = frame.to_net(ann.boxes) if len(ann.boxes) else ann.boxes.astype(np.float32)
    landmarks = frame.to_net(ann.landmarks) if len(ann.boxes) else ann.landmarks.astype(np.float32)
    return Annotations(boxes, ann.labels, landmarks, ann.landmarks_valid).zero_invalid()
