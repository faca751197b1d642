"""`WiderFaceRGB`: images + labels of any supported format, with the RetinaFace augmentation.

Images live in ``<split>/images/<event>/<basename>.jpg`` (or flat); the split is indexed by
`nbsrc.data.split_index.index_split`. Normalized labels are scaled by the image size, ``label_frame`` labels mapped
back to the image with the resize policy. Samples go through one of `nbsrc.data.transforms`:

- ``train_transform`` (``train=True`` with ``augment``): the sample's ``frame`` is None (a random crop has no fixed
  map to the original);
- ``eval_transform`` (resize with the policy), or ``scale_transform`` with ``test_scale`` ``original`` / ``mxnet``
  (inputs then differ in size from image to image; ``frame`` is a `nbsrc.frame.ScaleMap`).

An image that cannot be read when it is loaded raises under ``on_error=raise``; under ``skip`` the item is None,
left out of its batch by `nbsrc.data.collate.detection_collate`, and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from nbsrc.data.defects import DefectLog, check_boxes, check_image
from nbsrc.data.image_sizes import ImageSizes
from nbsrc.data.records import ImageRecord
from nbsrc.data.seeding import item_with_seed
from nbsrc.data.split_index import SizeSources, index_split, keep_classes
from nbsrc.data.transforms import Annotations, eval_transform, scale_transform, train_transform
from nbsrc.frame import FrameMap
from nbsrc.preprocess import eval_resize_factor, normalize_image, resize_to_frame

__all__ = ["WiderFaceRGB", "read_rgb"]

logger = logging.getLogger(__name__)

_READ_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # labels refer to the stored pixel grid


def read_rgb(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of an image file (EXIF orientation ignored, as the labels are); ValueError
    when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    image = cv2.imread(str(path), _READ_FLAGS)
    if image is None:
        raise ValueError(f"{path}: unreadable image (cv2 could not decode it)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _latent_hint(split: Path) -> str:
    """What to do when an RGB model is given a split of latents (empty when the split has none)."""
    if not (split / "latent").is_dir():
        return ""
    return (
        f"; {split / 'latent'} holds latents: train on them with a latent preset "
        "(model.input_kind=latent; train --use_latent or --preset latent-r50)"
    )


@dataclass(frozen=True)
class RGBSample:
    name: str
    path: Path
    size: tuple[int, int]  # (width, height) from the header
    annotations: Annotations  # original-image pixels


class WiderFaceRGB(Dataset):
    """RGB images + labels (see the module docstring).

    Args:
        labels: label file or folder (default: `nbsrc.data.layout.find_labels`), or records.
        channel_order, pixel_mean, pixel_std: input normalization (`nbsrc.preprocess.normalize_image`).
        label_frame: labels are in a square frame of this side (None: original pixels).
        num_classes: boxes of class ``>= num_classes`` are left out.
        test_scale: evaluation input size: ``square`` (`image_size`, with `resize_policy`) | ``original`` |
            ``mxnet`` (`nbsrc.preprocess.eval_resize_factor`); training mode ignores it.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        labels: str | Path | Sequence[ImageRecord] | None = None,
        images_dir: str | Path | None = None,
        image_size: int = 640,
        train: bool = True,
        augment: bool = True,
        channel_order: str = "bgr",
        pixel_mean: Sequence[float] = (104.0, 117.0, 123.0),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        resize_policy: str = "stretch",
        label_frame: int | None = None,
        num_classes: int = 2,
        on_error: str = "raise",
        max_images: int | None = None,
        test_scale: str = "square",
    ) -> None:
        self.test_scale = test_scale
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"split folder {self.root} not found")
        self.images_dir = Path(images_dir) if images_dir is not None else self.root / "images"
        if not self.images_dir.is_dir():
            raise FileNotFoundError(
                f"image folder {self.images_dir} not found (expected <split>/images/<event>/<name>.jpg)"
                + _latent_hint(self.root)
            )
        self.image_size = int(image_size)
        self.train = train
        self.augment = augment
        self.channel_order = channel_order
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.resize_policy = resize_policy
        self.on_error = on_error
        means = self.pixel_mean[::-1] if channel_order == "bgr" else self.pixel_mean
        self.fill_rgb = tuple(float(v) for v in means)  # padding becomes 0 after normalization
        self.log = DefectLog(on_error, context=f"images of {self.root}")
        index = index_split(
            self.root,
            self.log,
            labels=labels,
            twoclass=num_classes > 2,
            max_images=max_images,
            sizes=SizeSources(images_dir=self.images_dir),
            label_frame=label_frame,
            resize_policy=resize_policy,
        )
        self.label_path = index.label_path
        self.labelled_images = index.labelled_images  # before max_images
        self.max_images = max_images
        self.samples: list[RGBSample] = []
        for record in index.records:
            sample = self._index_sample(record, index.sizes.sizes, label_frame, num_classes)
            if sample is not None:
                self.samples.append(sample)
        self.log.log_summary(logger)
        logger.info(
            "%s: %d images, %d boxes (%s)",
            self.root,
            len(self.samples),
            sum(len(s.annotations.boxes) for s in self.samples),
            "augmented" if train and augment else "resized",
        )

    def _index_sample(
        self, record: ImageRecord, sizes: ImageSizes, label_frame: int | None, num_classes: int
    ) -> RGBSample | None:
        """The sample of `record`: its image checked (None after a defect), its labels in original pixels, classes
        ``>= num_classes`` left out, boxes checked and clipped to the image."""
        found = check_image(record, sizes, self.log)
        if found is None:
            return None
        path, size = found
        record = self._to_original(record, size, label_frame)
        record, _ = keep_classes(record, num_classes)
        record = check_boxes(record, self.log, size)
        boxes = record.boxes.copy()
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, size[0])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, size[1])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        ann = Annotations(boxes, record.labels, record.landmarks, record.landmarks_valid).select(keep)
        return RGBSample(record.name, path, size, ann.zero_invalid())

    def _to_original(self, record: ImageRecord, size: tuple[int, int], label_frame: int | None) -> ImageRecord:
        """Labels in original-image pixels (from normalized or `label_frame` labels)."""
        if record.normalized:
            scale = np.asarray(size, np.float32)
            return replace(
                record, boxes=record.boxes * np.tile(scale, 2), landmarks=record.landmarks * scale, normalized=False
            )
        if label_frame is not None:
            frame = FrameMap(size, (label_frame, label_frame), self.resize_policy)
            boxes = frame.to_original(record.boxes) if record.num_boxes else record.boxes
            landmarks = frame.to_original(record.landmarks) if record.num_boxes else record.landmarks
            return replace(record, boxes=boxes, landmarks=landmarks)
        return replace(record, image_size=size)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`, or for an ``(index, seed)`` key sample `index` augmented from that seed
        (`nbsrc.data.seeding.SeededSampler`)."""
        return item_with_seed(key, self._item)

    def _item(self, index: int) -> dict | None:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"sample {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        sample = self.samples[index]
        try:
            image = read_rgb(sample.path)
            if (image.shape[1], image.shape[0]) != sample.size:
                raise ValueError(
                    f"{sample.path}: decoded {image.shape[1]}x{image.shape[0]}, the header said "
                    f"{sample.size[0]}x{sample.size[1]} when the split was indexed"
                )
        except (ValueError, FileNotFoundError) as exc:
            if self.on_error == "raise":
                raise
            kind = "missing_image" if isinstance(exc, FileNotFoundError) else "unreadable_image"
            self.log.left_out_at_load(kind, sample.path, str(exc).removeprefix(f"{sample.path}: "), sample.name)
            return None
        return self._transform(sample, image)

    def _transform(self, sample: RGBSample, image: np.ndarray) -> dict:
        ann = sample.annotations
        frame = None
        if self.train and self.augment:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            image, ann = train_transform(image, ann, rng, self.image_size, self.fill_rgb)
        elif self.test_scale == "square":
            image, ann, frame = eval_transform(image, ann, self.image_size, self.resize_policy, self.fill_rgb)
        else:
            factor = eval_resize_factor(image.shape[0], image.shape[1], self.test_scale)
            image, ann, frame = scale_transform(image, ann, factor)
        boxes = np.ascontiguousarray(ann.boxes, np.float32).reshape(-1, 4)  # (N, 4)
        landmarks = np.ascontiguousarray(ann.landmarks, np.float32).reshape(-1, 5, 2)  # (N, 5, 2)
        return {
            "input": normalize_image(image, self.channel_order, self.pixel_mean, self.pixel_std),
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(np.asarray(ann.labels, np.int64)),
            "landmarks": torch.from_numpy(landmarks),
            "landmarks_valid": torch.from_numpy(np.asarray(ann.landmarks_valid, bool)),
            "name": sample.name,
            "rate": None,
            "frame": frame,
        }

    def image(self, index: int) -> np.ndarray:
        """The original RGB image of sample `index` (for drawing)."""
        return read_rgb(self.samples[index].path)

    def network_image(self, index: int) -> np.ndarray:
        """The un-normalized ``uint8`` network-frame image of sample `index` (evaluation resize)."""
        sample = self.samples[index]
        if self.test_scale != "square":
            image = read_rgb(sample.path)
            factor = eval_resize_factor(image.shape[0], image.shape[1], self.test_scale)
            resized = scale_transform(image, sample.annotations, factor)[0]
            return np.clip(np.round(resized), 0, 255).astype(np.uint8)
        frame = FrameMap(sample.size, (self.image_size, self.image_size), self.resize_policy)
        return resize_to_frame(read_rgb(sample.path), frame, self.fill_rgb)
