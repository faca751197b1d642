"""`LatentWiderFace`: JPEG AI latents of WIDER FACE with labels mapped into the latent's frame.

The split is indexed once (`nbsrc.data.split_index.index_split`; layouts in `nbsrc.data.layout`). One rate is read
(``latent_suffix``) or every rate (``all_rates``: one sample per rate, same boxes). Latents ``[1, 256, h, w]`` or
``[256, h, w]``, float16 or float32, are returned as ``float32 [256, h, w]``; they describe an image of
``(w * 16, h * 16)`` pixels (640x640 for 40x40), into which `nbsrc.data.label_frame.LabelFrame` maps the labels.

Defects follow ``on_error`` (`nbsrc.data.defects`). With ``check_values`` every latent is checked for NaN/Inf when
the split is indexed (`nbsrc.data.latent_values`), so a bad validation latent stops a run before it starts. A
latent that fails when loaded raises under ``raise``; under ``skip`` the item is None, left out of its batch by
`nbsrc.data.collate.detection_collate`, and counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nbsrc.data.defects import DefectLog, check_boxes, check_latent_file
from nbsrc.data.image_sizes import missing_error
from nbsrc.data.label_frame import LabelFrameError
from nbsrc.data.latent_values import find_non_finite
from nbsrc.data.layout import parse_rate
from nbsrc.data.readers import select_boxes
from nbsrc.data.records import ImageRecord
from nbsrc.data.seeding import item_with_seed
from nbsrc.data.split_index import SizeSources, SplitIndex, frame_extent, index_split, keep_classes
from nbsrc.data.transforms import MIRROR_ORDER
from nbsrc.frame import FrameMap
from nbsrc.latents import CONVERT_CHUNK, load_latent
from nbsrc.utils import atomic_path

__all__ = ["LatentStats", "LatentWiderFace", "compute_latent_stats", "latent_stats"]

logger = logging.getLogger(__name__)

STATS_MAX_FILES = 500  # latents read (evenly spread over the split) to estimate the channel statistics


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean and standard deviation of the latents of one rate."""

    mean: np.ndarray  # float32 [C]
    std: np.ndarray  # float32 [C]
    rate: int | None  # None for unrated files
    files: int  # latents the statistics were computed from
    fingerprint: str  # hash of the file list they describe (a cache with another one is recomputed)

    def apply(self, latent: np.ndarray) -> np.ndarray:
        """``(latent - mean) / std`` per channel, in place on a ``float32 [C, h, w]`` array."""
        latent -= self.mean[:, None, None]
        latent /= self.std[:, None, None]
        return latent

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    mean=self.mean,
                    std=self.std,
                    rate=np.int64(-1 if self.rate is None else self.rate),
                    files=np.int64(self.files),
                    fingerprint=np.array(self.fingerprint),
                )
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentStats:
        with np.load(path, allow_pickle=False) as data:
            rate = int(data["rate"])
            return cls(
                mean=data["mean"].astype(np.float32),
                std=data["std"].astype(np.float32),
                rate=None if rate < 0 else rate,
                files=int(data["files"]),
                fingerprint=str(data["fingerprint"]),
            )


def _fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha1()
    for path in sorted(str(p) for p in paths):
        digest.update(Path(path).parent.name.encode() + b"/" + Path(path).name.encode() + b"\n")
    return digest.hexdigest()[:16]


def compute_latent_stats(
    paths: Sequence[str | Path], *, channels: int = 256, rate: int | None = None, max_files: int = STATS_MAX_FILES
) -> LatentStats:
    """Per-channel mean / std over (an evenly spaced subset of at most `max_files` of) `paths`, in float64."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        raise ValueError("no latent files to compute statistics from")
    step = max(1, len(paths) // max_files)
    chosen = paths[::step][:max_files]
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    count = 0
    for path in chosen:
        latent = load_latent(path, channels).numpy().astype(np.float64)  # (C, h, w)
        total += latent.sum(axis=(1, 2))
        squares += np.square(latent).sum(axis=(1, 2))
        count += latent.shape[1] * latent.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # constant channels: leave the scale alone
    return LatentStats(mean.astype(np.float32), std.astype(np.float32), rate, len(chosen), _fingerprint(paths))


def latent_stats(
    paths: Sequence[str | Path],
    cache_dir: str | Path,
    *,
    rate: int | None,
    channels: int = 256,
    fallback_dir: str | Path | None = None,
) -> LatentStats:
    """Cached `compute_latent_stats`: ``<cache_dir>/latent_stats_<rate>.npz`` (next to the data), or in
    `fallback_dir` (a run folder) when `cache_dir` is read-only; recomputed when the file list changed."""
    name = f"latent_stats_{rate}.npz" if rate is not None else "latent_stats.npz"
    fingerprint = _fingerprint([Path(p) for p in paths])
    candidates = [Path(cache_dir) / name] + ([Path(fallback_dir) / name] if fallback_dir is not None else [])
    for candidate in candidates:
        if candidate.is_file():
            try:
                stats = LatentStats.load(candidate)
            except (ValueError, OSError, KeyError) as exc:
                logger.warning("%s: unreadable latent statistics (%s); recomputing", candidate, exc)
                continue
            if stats.fingerprint == fingerprint and stats.mean.shape == (channels,):
                logger.debug("latent statistics from %s", candidate)
                return stats
    logger.info("computing per-channel latent statistics (rate %s) from %d files", rate, len(paths))
    stats = compute_latent_stats(paths, channels=channels, rate=rate)
    for candidate in candidates:
        try:
            stats.save(candidate)
        except OSError as exc:
            logger.info("cannot write %s (%s)", candidate, exc)
            continue
        logger.info("latent statistics cached in %s", candidate)
        return stats
    logger.warning(
        "latent statistics could not be cached (%s read-only and no run folder given); they are kept in memory",
        cache_dir,
    )
    return stats


@dataclass(frozen=True)
class LatentSample:
    """One indexed sample: a latent file and its labels in network-frame pixels."""

    name: str
    path: Path
    rate: int | None
    boxes: np.ndarray  # float32 [N, 4] xyxy network-frame pixels
    labels: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float32 [N, 5, 2]
    landmarks_valid: np.ndarray  # bool [N]
    frame: FrameMap | None
    spatial: tuple[int, int]  # latent (h, w)


class LatentWiderFace(Dataset):
    """JPEG AI latents + labels in the latent's frame (see the module docstring).

    Args:
        root: the split folder (``<root>/train``).
        labels: label file or folder (default: `nbsrc.data.layout.find_labels`), or records.
        latent_stride: network-frame pixels per latent cell (16: 40x40 -> 640x640).
        spatial: expected latent ``(h, w)`` (None: any; all must then agree for batching).
        label_frame: labels are already in this square frame (640), or None for original pixels.
        sizes_csv, images_dir, images_root, sizes_cache: where the original sizes come from
            (`nbsrc.data.image_sizes.split_sizes`).
        stats: rate -> `LatentStats` to normalize with (e.g. the training split's for validation); computed and
            cached (in ``root``, else `stats_dir`) when None and `normalize`.
        flip: random horizontal flip (p = `flip_prob`); off by default, as a flipped latent is not the latent of
            the flipped image.
        crop: random square crops of this many latent cells, aligned to the grid, preferring windows holding a
            face centre; the faces whose centre lies inside are kept, shifted and clipped into the crop.
        num_classes: boxes of class ``>= num_classes`` (persons for a face-only model) are left out.
        check_values: check every latent for NaN/Inf while indexing (cached in `values_cache`, the split folder or
            `stats_dir`); False reads headers only (huge datasets).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        labels: str | Path | Sequence[ImageRecord] | None = None,
        latent_suffix: str = "latent_75.npy",
        all_rates: bool = False,
        channels: int = 256,
        latent_stride: int = 16,
        spatial: tuple[int, int] | None = None,
        label_frame: int | None = None,
        resize_policy: str = "stretch",
        sizes_csv: str | Path | None = None,
        images_dir: str | Path | None = None,
        images_root: str | Path | None = None,
        sizes_cache: str | Path | None = None,
        normalize: bool = False,
        stats: Mapping[int | None, LatentStats] | None = None,
        stats_dir: str | Path | None = None,
        flip: bool = False,
        flip_prob: float = 0.5,
        crop: int | None = None,
        num_classes: int = 2,
        on_error: str = "raise",
        max_images: int | None = None,
        check_values: bool = True,
        values_cache: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"split folder {self.root} not found")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be None or >= 1 latent cells, got {crop}")
        self.channels = channels
        self.latent_stride = latent_stride
        self.flip = flip
        self.flip_prob = flip_prob
        self.crop = crop
        self.on_error = on_error
        self.log = DefectLog(on_error, context=f"latents of {self.root}")
        index = index_split(
            self.root,
            self.log,
            labels=labels,
            twoclass=num_classes > 2,
            max_images=max_images,
            latents="required",
            latent_suffix=None if all_rates else latent_suffix,
            sizes=SizeSources(
                sizes_csv=sizes_csv, images_dir=images_dir, images_root=images_root, cache_dir=sizes_cache
            ),
            label_frame=label_frame,
            resize_policy=resize_policy,
        )
        if images_dir is None and label_frame is None and on_error == "raise":
            _require_sizes(index)
        self.label_path = index.label_path
        self.labelled_images = index.labelled_images  # before max_images
        self.max_images = max_images
        self.layout = index.latents.layout
        self.label_frame = index.frame
        self.samples, dropped_classes = self._index_samples(index, num_classes, spatial)
        if check_values and self.samples:
            self._check_values([values_cache, self.root, stats_dir])
        if dropped_classes:
            logger.info(
                "%s: %d boxes of classes >= %d left out (not learned by this model)",
                self.root,
                dropped_classes,
                num_classes,
            )
        self.log.log_summary(logger)
        if not self.samples:
            logger.warning("%s: no usable latent sample", self.root)

        self.stats: dict[int | None, LatentStats] | None = None
        self._stats_cache: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = {}
        if normalize:
            self.stats = dict(stats) if stats is not None else self._compute_stats(stats_dir)
        logger.info(
            "%s: %d samples (%s layout, %s), %d faces",
            self.root,
            len(self.samples),
            self.layout,
            "all rates" if all_rates else latent_suffix,
            sum(len(s.boxes) for s in self.samples),
        )

    # ---- indexing -------------------------------------------------------------------------------------
    def _index_samples(
        self, index: SplitIndex, num_classes: int, spatial: tuple[int, int] | None
    ) -> tuple[list[LatentSample], int]:
        """The samples of every record having latents (classes ``>= num_classes`` left out, boxes checked), and
        how many boxes the class filter left out."""
        samples: list[LatentSample] = []
        dropped = 0
        for record, files in index.matched:
            record, left_out = keep_classes(record, num_classes)
            dropped += left_out
            record = check_boxes(record, self.log, frame_extent(record, self.label_frame))
            samples += self._record_samples(record, files, spatial)
        return samples, dropped

    def _record_samples(
        self, record: ImageRecord, files: Mapping[int | None, Path], spatial: tuple[int, int] | None
    ) -> list[LatentSample]:
        """One sample per good latent file of `record` (each rate), its labels mapped into that latent's frame;
        none once the labels cannot be mapped."""
        samples = []
        mapped: dict[tuple[int, int], tuple[ImageRecord, FrameMap | None] | None] = {}
        for rate, path in sorted(files.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            hw = check_latent_file(path, self.log, channels=self.channels, spatial=spatial)
            if hw is None:
                continue
            if hw not in mapped:
                mapped[hw] = self._map(record, (hw[1] * self.latent_stride, hw[0] * self.latent_stride))
            if mapped[hw] is None:
                break
            net_record, frame = mapped[hw]
            samples.append(
                LatentSample(
                    name=record.name,
                    path=path,
                    rate=rate if rate is not None else parse_rate(path.name),
                    boxes=net_record.boxes,
                    labels=net_record.labels,
                    landmarks=net_record.landmarks,
                    landmarks_valid=net_record.landmarks_valid,
                    frame=frame,
                    spatial=hw,
                )
            )
        return samples

    def _check_values(self, cache_folders: Sequence[str | Path | None]) -> None:
        """NaN/Inf check of every sample's latent (`find_non_finite`); bad ones are defects, their samples left
        out (under ``skip``)."""
        paths = list(dict.fromkeys(sample.path for sample in self.samples))
        non_finite, unreadable = find_non_finite(paths, root=self.root, cache_folders=cache_folders)
        if not non_finite and not unreadable:
            return
        for path in paths:  # in sample order: under raise the first bad file is named
            if path in unreadable:
                self.log.add("unreadable_latent", path, 0, f"unreadable .npy file: {unreadable[path]}")
            elif path in non_finite:
                self.log.add("non_finite", path, 0, f"{non_finite[path]} NaN/Inf values in the latent")
        bad = unreadable.keys() | non_finite.keys()
        self.samples = [sample for sample in self.samples if sample.path not in bad]

    def _map(self, record: ImageRecord, net_size: tuple[int, int]) -> tuple[ImageRecord, FrameMap | None] | None:
        try:
            net_record, frame = self.label_frame.to_net(record, net_size)
        except LabelFrameError as exc:
            if self.on_error == "raise":
                raise
            message = str(exc).split("\n", 1)[0]
            if record.source:
                message = message.removeprefix(f"{record.source}: ")
            self.log.add_source("unknown_frame", record.source, message)
            return None
        return _clip_to_frame(net_record, net_size, self.log), frame

    def _compute_stats(self, stats_dir: str | Path | None) -> dict[int | None, LatentStats]:
        by_rate: dict[int | None, list[Path]] = {}
        for sample in self.samples:
            by_rate.setdefault(sample.rate, []).append(sample.path)
        return {
            rate: latent_stats(paths, self.root, rate=rate, channels=self.channels, fallback_dir=stats_dir)
            for rate, paths in by_rate.items()
        }

    @property
    def rates(self) -> list[int | None]:
        return sorted({s.rate for s in self.samples}, key=lambda r: -1 if r is None else r)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    # ---- loading --------------------------------------------------------------------------------------
    def load_tensor(self, index: int) -> torch.Tensor:
        """The latent of sample `index` as ``float32 [C, h, w]`` (normalized when configured; never flipped).

        Raises:
            FileNotFoundError: the file is gone.
            ValueError: unreadable / truncated file, wrong shape or dtype, NaN/Inf values (the file is named).
        """
        sample = self.samples[index]
        latent = load_latent(sample.path, self.channels, spatial=sample.spatial)
        if self.stats is not None:
            mean, std = self._stats_tensors(sample.rate)
            rows = latent.view(latent.shape[0], -1)  # (C, h*w)
            step = max(1, CONVERT_CHUNK // rows.shape[1])
            for start in range(0, rows.shape[0], step):
                stop = start + step
                rows[start:stop].sub_(mean[start:stop]).div_(std[start:stop])
        return latent

    def _stats_tensors(self, rate: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._stats_cache.get(rate)
        if cached is None:
            stats = self.stats.get(rate)
            if stats is None:
                raise ValueError(f"no latent statistics for rate {rate} (have rates {list(self.stats)})")
            cached = (
                torch.from_numpy(np.array(stats.mean, np.float32)).view(-1, 1),  # (C, 1)
                torch.from_numpy(np.array(stats.std, np.float32)).view(-1, 1),  # (C, 1)
            )
            self._stats_cache[rate] = cached
        return cached

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`, or for an ``(index, seed)`` key sample `index` augmented from that seed
        (`nbsrc.data.seeding.SeededSampler`)."""
        return item_with_seed(key, self._item)

    def _item(self, index: int) -> dict | None:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"sample {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        try:
            latent = self.load_tensor(index)
        except (ValueError, FileNotFoundError) as exc:
            if self.on_error == "raise":
                raise type(exc)(
                    f"{exc} (data.on_error=skip leaves such latents out, counted; `python -m nbsrc check-data` lists "
                    "every defect of the dataset)"
                ) from None
            path = self.samples[index].path
            kind = "non_finite" if "NaN/Inf" in str(exc) else "unreadable_latent"
            self.log.left_out_at_load(kind, path, str(exc).removeprefix(f"{path}: "), self.samples[index].name)
            return None
        return self._sample(index, latent)

    def _sample(self, index: int, latent: torch.Tensor) -> dict:
        sample = self.samples[index]
        boxes, landmarks = sample.boxes, sample.landmarks
        labels, landmarks_valid, frame = sample.labels, sample.landmarks_valid, sample.frame
        if self.crop is not None and (self.crop < latent.shape[1] or self.crop < latent.shape[2]):
            latent, boxes, landmarks, keep = _random_latent_crop(
                latent, boxes, landmarks, self.crop, self.latent_stride
            )
            labels, landmarks_valid, frame = labels[keep], landmarks_valid[keep], None  # crops have no original frame
        if self.flip and float(torch.rand(()).item()) < self.flip_prob:  # torch's generator: seeded per worker
            width = latent.shape[2] * self.latent_stride
            latent = latent.flip(-1)  # (C, h, w) mirrored along w (a new tensor)
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)  # (N, 4)
            landmarks = landmarks.copy()
            landmarks[:, :, 0] = width - landmarks[:, :, 0]
            landmarks = np.where(landmarks_valid[:, None, None], landmarks[:, MIRROR_ORDER], 0.0)  # (N, 5, 2)
        return {
            "input": latent,
            "boxes": torch.from_numpy(np.array(boxes, np.float32).reshape(-1, 4)),  # (N, 4)
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "landmarks": torch.from_numpy(np.array(landmarks, np.float32).reshape(-1, 5, 2)),  # (N, 5, 2)
            "landmarks_valid": torch.from_numpy(landmarks_valid.astype(bool)),
            "name": sample.name,
            "rate": sample.rate,
            "frame": frame,
        }


def _require_sizes(index: SplitIndex) -> None:
    """LabelFrameError naming every labelled image whose original size the image tree of `index` lacks."""
    if index.sizes.tree is None:
        return
    names = [record.name for record, _ in index.matched if not record.normalized]  # faceless ones too
    problem = missing_error(index.sizes, names, index.label_path)
    if problem:
        raise LabelFrameError(problem)


def _random_latent_crop(
    latent: torch.Tensor, boxes: np.ndarray, landmarks: np.ndarray, side: int, stride: int, tries: int = 50
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """A random ``side x side``-cell window of `latent` (see `LatentWiderFace`'s ``crop``): ``(latent [C, side,
    side], boxes [K, 4], landmarks [K, 5, 2], keep [N] bool)`` in the crop's frame."""
    _, h, w = latent.shape
    ch, cw = min(side, h), min(side, w)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2) frame pixels
    for attempt in range(tries):
        y0 = int(torch.randint(0, h - ch + 1, ()).item())
        x0 = int(torch.randint(0, w - cw + 1, ()).item())
        lo = np.array([x0, y0], np.float32) * stride
        hi = lo + np.array([cw, ch], np.float32) * stride
        keep = ((centres >= lo) & (centres < hi)).all(axis=1)  # (N,)
        if keep.any() or len(boxes) == 0 or attempt == tries - 1:
            break
    size = hi - lo
    crop_boxes = np.clip(boxes[keep] - np.tile(lo, 2), 0, np.tile(size, 2))  # (K, 4)
    crop_landmarks = np.clip(landmarks[keep] - lo, 0, size)  # (K, 5, 2)
    window = latent[:, y0 : y0 + ch, x0 : x0 + cw].contiguous()  # (C, ch, cw)
    return window, crop_boxes.astype(np.float32), crop_landmarks.astype(np.float32), keep


def _clip_to_frame(record: ImageRecord, net_size: tuple[int, int], log: DefectLog) -> ImageRecord:
    """Clip boxes to the network frame (they were checked against their image with a small tolerance);
    boxes left without area are dropped as degenerate."""
    if record.num_boxes == 0:
        return record
    w, h = net_size
    boxes = record.boxes.copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    record = replace(record, boxes=boxes)
    if keep.all():
        return record
    for i in np.flatnonzero(~keep):
        log.add_source(
            "degenerate_box",
            record.box_source(i),
            f"face {i} of {record.name!r} has no area inside the frame",
            fatal=False,
        )
    return select_boxes(record, keep)
