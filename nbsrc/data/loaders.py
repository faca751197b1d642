"""Dataset and DataLoader factories: the only data code that reads `nbsrc.config.Config`.

``cfg.model.input_kind`` picks the dataset: ``latent`` -> `LatentWiderFace`, ``rgb`` -> `WiderFaceRGB`. The split
folders are ``<cfg.data.dataset_root>/<cfg.data.train_split>`` and ``.../<cfg.data.val_split>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from nbsrc.config import Config
from nbsrc.data.collate import detection_collate
from nbsrc.data.latent_dataset import LatentWiderFace
from nbsrc.data.rgb_dataset import WiderFaceRGB

__all__ = ["SeededSamples", "SeededSampler", "build_dataloaders", "build_dataset", "dataset_root", "sample_seed"]

logger = logging.getLogger(__name__)


def dataset_root(cfg: Config) -> Path:
    """``cfg.data.dataset_root`` as a path.

    Raises:
        ValueError: it is not set (the engine and notebooks resolve the demo dataset first, see
            `nbsrc.paths.resolve_dataset_root`).
        FileNotFoundError: the folder does not exist.
    """
    if cfg.data.dataset_root is None:
        raise ValueError(
            "data.dataset_root is not set: give the dataset folder (train/ and val/ inside), or resolve the demo "
            "dataset with nbsrc.paths.resolve_dataset_root(None)"
        )
    root = Path(cfg.data.dataset_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset_root {root} not found")
    return root


def _run_dir(cfg: Config) -> Path | None:
    if cfg.train.run_name:
        return Path(cfg.train.out) / cfg.train.run_name
    return None


def build_dataset(cfg: Config, split: str, train: bool, **overrides: Any) -> Dataset:
    """The dataset of one split for `cfg`.

    Args:
        cfg: configuration (``model.input_kind`` and the ``data`` group).
        split: split folder name under ``data.dataset_root`` (``cfg.data.train_split`` / ``val_split``).
        train: training mode (RGB augmentation; latent flip when ``data.latent_flip``).
        **overrides: keyword arguments passed on to the dataset class (e.g. ``stats=`` for latents).
    Returns:
        `LatentWiderFace` or `WiderFaceRGB`.
    """
    d, m = cfg.data, cfg.model
    root = dataset_root(cfg) / split
    if m.input_kind == "latent":
        image_side = d.image_size // m.latent_stride
        kwargs: dict[str, Any] = dict(
            latent_suffix=d.latent_suffix,
            all_rates=d.all_rates,
            channels=m.latent_channels,
            latent_stride=m.latent_stride,
            spatial=(image_side, image_side),
            label_frame=d.label_frame,
            resize_policy=d.resize_policy,
            sizes_csv=d.sizes_csv,
            normalize=d.normalize_latents,
            stats_dir=_run_dir(cfg),
            flip=d.latent_flip and train,
            crop=d.latent_crop if train else None,
            num_classes=m.num_classes,
            on_error=d.on_error,
            max_images=d.max_images,
        )
        kwargs.update(overrides)
        return LatentWiderFace(root, **kwargs)
    kwargs = dict(
        image_size=d.image_size,
        train=train,
        augment=d.augment,
        channel_order=m.channel_order,
        pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std,
        resize_policy=d.resize_policy,
        label_frame=d.label_frame,
        num_classes=m.num_classes,
        on_error=d.on_error,
        max_images=d.max_images,
    )
    kwargs.update(overrides)
    return WiderFaceRGB(root, **kwargs)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random seed of dataset item `index` in `epoch` of a run seeded with `seed`."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63


class SeededSampler(Sampler):
    """Yields ``(index, seed)`` for the indices of `inner`, in its order, with ``seed = sample_seed(seed, epoch,
    index)``: a sample's augmentation depends on the run's seed, the epoch and the sample only, not on which
    worker process or rank reads it, nor on whether the run was resumed. `set_epoch` also reorders `inner`
    (a `DistributedSampler`'s epoch, or a `RandomSampler` generator reseeded from seed and epoch)."""

    def __init__(self, inner: Sampler, seed: int) -> None:
        self.inner, self.seed, self.epoch = inner, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(self.epoch)
        elif isinstance(self.inner, RandomSampler) and self.inner.generator is not None:
            self.inner.generator.manual_seed(self.seed * 100003 + self.epoch)

    def __iter__(self):
        for index in self.inner:
            yield int(index), sample_seed(self.seed, self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.inner)


class SeededSamples(Dataset):
    """A dataset read with `SeededSampler` keys: item ``(index, seed)`` is ``dataset[index]`` computed with
    torch's CPU generator seeded with `seed` (and restored afterwards). Other attributes are the dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a spawned worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _loader(dataset: Dataset, cfg: Config, *, train: bool, batch_size: int, distributed: bool) -> DataLoader:
    workers = cfg.data.num_workers
    seed = cfg.train.seed
    sampler: Sampler | None = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    if train:  # augmentation seeded per sample (see SeededSampler), order from (seed, epoch)
        inner = (
            sampler if sampler is not None else RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        )
        sampler, dataset = SeededSampler(inner, seed), SeededSamples(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=detection_collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=False,
    )


def build_dataloaders(cfg: Config, distributed: bool = False) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders for `cfg`.

    Workers ``data.num_workers`` (persistent), pinned memory when CUDA is available, a `DistributedSampler`
    per process when `distributed`. Latent normalization statistics come from the training split and are reused
    for validation. The validation loader is None when the split folder does not exist.

    Returns:
        ``(train_loader, val_loader | None)``; batches are `nbsrc.data.collate.detection_collate` dicts.
    """
    root = dataset_root(cfg)
    train_set = build_dataset(cfg, cfg.data.train_split, train=True)
    if len(train_set) == 0:
        raise ValueError(f"{root / cfg.data.train_split}: the training split has no usable sample")
    train_loader = _loader(train_set, cfg, train=True, batch_size=cfg.train.batch_size, distributed=distributed)
    val_loader = None
    if (root / cfg.data.val_split).is_dir():
        extra: dict[str, Any] = {}
        if isinstance(train_set, LatentWiderFace) and train_set.stats is not None:
            extra["stats"] = train_set.stats
        val_set = build_dataset(cfg, cfg.data.val_split, train=False, **extra)
        if len(val_set):
            val_loader = _loader(val_set, cfg, train=False, batch_size=cfg.eval.batch_size, distributed=distributed)
        else:
            logger.warning(
                "%s: the validation split has no usable sample; no validation loader", root / cfg.data.val_split
            )
    else:
        logger.info("no validation split %s", root / cfg.data.val_split)
    return train_loader, val_loader
