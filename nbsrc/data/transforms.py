"""RGB transforms: the standard RetinaFace training augmentation and the evaluation resize.

Training (`train_transform`, the order of the published ``preproc``):

1. `random_crop`: up to 250 tries of a square of side ``scale * short_side`` (scale from 0.3 ... 1.0) at a
   random position that holds at least one whole face; faces whose centre falls inside are kept, boxes clipped
   to the crop, landmarks shifted (and clipped to it). When no try works the image is kept whole and padded in
   step 3. An image without faces gets a random crop (zero-face images are valid samples).
2. `photometric_distort`: brightness, contrast, saturation and hue, each with p = 0.5, in one of two orders.
3. `pad_to_square` (only when the crop failed): bottom/right padding with the mean colour.
4. `mirror` (p = 0.5): ``x -> W - x``, and the left/right landmark pairs swapped (0 <-> 1 eyes, 3 <-> 4 mouth).
5. resize to ``image_size`` squared with a random interpolation.

Evaluation (`eval_transform`): resize to the square network frame with the resize policy (`nbsrc.frame`),
returning the `FrameMap` that maps predictions back to original pixels. The other test-scale protocols of
biubug6's ``test_widerface.py`` (``eval.test_scale``): `eval_resize_factor` gives its ``resize`` (original: 1;
mxnet: ``1600 / min(h, w)``, or ``2150 / max(h, w)`` when ``round(resize * max(h, w)) > 2150``) and
`scale_transform` resizes by it as it does (float32 pixels, ``cv2.resize(fx=fy=resize, INTER_LINEAR)``, nothing
at 1), returning the `ScaleMap` that maps back by dividing by the factor.

Boxes are ``[N, 4]`` xyxy pixels and landmarks ``[N, 5, 2]`` (`nbsrc.boxes`); invalid landmarks stay zero.
Images are ``uint8 [H, W, 3]`` RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nbsrc.config import TEST_SCALES
from nbsrc.frame import FrameMap, ScaleMap

__all__ = [
    "CROP_SCALES",
    "MXNET_MAX_SIZE",
    "MXNET_TARGET_SIZE",
    "Annotations",
    "eval_resize_factor",
    "eval_transform",
    "mirror",
    "pad_to_square",
    "photometric_distort",
    "random_crop",
    "resize_to_frame",
    "scale_transform",
    "train_transform",
]

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIES = 250
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
MIRROR_ORDER = np.array([1, 0, 2, 4, 3])  # landmark order after a horizontal flip
MXNET_TARGET_SIZE = 1600  # test_scale mxnet: short side (biubug6 test_widerface.py target_size)
MXNET_MAX_SIZE = 2150  # test_scale mxnet: cap of the long side (max_size)


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


def _iof_whole(boxes: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Whether each box lies entirely inside `roi` (intersection over the box's own area >= 1)."""
    return (boxes[:, 0] >= roi[0]) & (boxes[:, 1] >= roi[1]) & (boxes[:, 2] <= roi[2]) & (boxes[:, 3] <= roi[3])


def random_crop(
    image: np.ndarray, ann: Annotations, rng: np.random.Generator, scales: tuple[float, ...] = CROP_SCALES
) -> tuple[np.ndarray, Annotations, bool]:
    """Square crop keeping >= 1 whole face (see the module docstring).

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
        if not _iof_whole(ann.boxes, roi).any():
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
    """The RetinaFace training augmentation (module docstring): returns an ``image_size`` squared image and
    its annotations in its pixels."""
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


def resize_to_frame(
    image: np.ndarray,
    frame: FrameMap,
    fill_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0),
    interpolation: int | None = None,
) -> np.ndarray:
    """Resize `image` into the network frame of `frame` exactly as `FrameMap.to_net` maps coordinates.

    ``stretch`` uses `cv2.resize` (area interpolation when shrinking); ``letterbox`` an affine warp with the
    map's scale and (fractional) padding, the border filled with `fill_rgb`.
    """
    net_w, net_h = frame.net_size
    height, width = image.shape[:2]
    if (width, height) != tuple(frame.orig_size):
        raise ValueError(
            f"image is {width}x{height} but the frame map expects {frame.orig_size[0]}x{frame.orig_size[1]}"
        )
    sx, sy = frame.scale
    if interpolation is None:
        interpolation = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
    if frame.policy == "stretch":
        return cv2.resize(image, (net_w, net_h), interpolation=interpolation)
    px, py = frame.pad
    # pixel centres: (i + 0.5) * s + pad = j + 0.5  ->  j = i * s + (pad + 0.5 * s - 0.5)
    matrix = np.array([[sx, 0.0, px + 0.5 * sx - 0.5], [0.0, sy, py + 0.5 * sy - 0.5]], np.float64)
    if interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR
    border = tuple(float(v) for v in fill_rgb)
    return cv2.warpAffine(
        image, matrix, (net_w, net_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )


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
    out = resize_to_frame(image, frame, fill_rgb)
    boxes = frame.to_net(ann.boxes) if len(ann.boxes) else ann.boxes.astype(np.float32)
    landmarks = frame.to_net(ann.landmarks) if len(ann.boxes) else ann.landmarks.astype(np.float32)
    return out, Annotations(boxes, ann.labels, landmarks, ann.landmarks_valid).zero_invalid(), frame


def eval_resize_factor(height: int, width: int, test_scale: str) -> float:
    """biubug6 ``test_widerface.py``'s ``resize`` for an image of ``height x width`` (see the module docstring).

    Raises:
        ValueError: `test_scale` is not ``original`` or ``mxnet`` (``square`` resizes to a frame, not by a factor).
    """
    if test_scale not in TEST_SCALES or test_scale == "square":
        raise ValueError(f"test_scale must be 'original' or 'mxnet' for a resize factor, got {test_scale!r}")
    if test_scale == "original":
        return 1.0
    resize = float(MXNET_TARGET_SIZE) / float(min(height, width))
    if np.round(resize * max(height, width)) > MXNET_MAX_SIZE:
        resize = float(MXNET_MAX_SIZE) / float(max(height, width))
    return resize


def scale_transform(image: np.ndarray, ann: Annotations, factor: float) -> tuple[np.ndarray, Annotations, ScaleMap]:
    """Resize by `factor` as biubug6's ``test_widerface.py`` does; annotations scaled alike.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        ann: annotations in its pixels.
        factor: `eval_resize_factor`.
    Returns:
        ``(image, annotations, frame)``: the image unchanged at factor 1, else ``float32 [round(H * f), round(W * f),
        3]`` (0..255, not rounded back to uint8, as biubug6 resizes its float image); ``frame.to_original`` maps
        network-frame predictions back.
    """
    height, width = image.shape[:2]
    out = image
    if factor != 1.0:
        out = cv2.resize(image.astype(np.float32), None, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    frame = ScaleMap((width, height), (out.shape[1], out.shape[0]), factor)
    boxes = frame.to_net(ann.boxes) if len(ann.boxes) else ann.boxes.astype(np.float32)
    landmarks = frame.to_net(ann.landmarks) if len(ann.boxes) else ann.landmarks.astype(np.float32)
    return out, Annotations(boxes, ann.labels, landmarks, ann.landmarks_valid).zero_invalid(), frame
