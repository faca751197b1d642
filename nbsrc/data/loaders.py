"""Dataset and DataLoader factories: the only data code that reads `nbsrc.config.Config`.

``model.input_kind`` picks the dataset (``latent``: `LatentWiderFace`, ``rgb``: `WiderFaceRGB`) of the split
folders under ``data.dataset_root``.
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
from nbsrc.data.seeding import SeededSampler

__all__ = ["build_dataloaders", "build_dataset", "dataset_root", "split_labels"]

logger = logging.getLogger(__name__)


def dataset_root(cfg: Config) -> Path:
    """``cfg.data.dataset_root`` as a path; `ValueError` when unset, `FileNotFoundError` when missing."""
    if cfg.data.dataset_root is None:
        raise ValueError(
            "data.dataset_root is not set: give the dataset folder (train/ and val/ inside), or resolve the demo "
            "dataset with nbsrc.data.demo.resolve_dataset_root(None)"
        )
    root = Path(cfg.data.dataset_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset_root {root} not found")
    return root


def split_labels(cfg: Config, split: str, train: bool = True) -> Path | None:
    """The label file ``data.train_labels`` / ``data.val_labels`` gives for `split` (`train` decides when both
    splits are the same), or None when the split's labels are to be found in its folder.

    Raises:
        FileNotFoundError: the given file does not exist (names the config key and the path).
    """
    d = cfg.data
    given = [("data.train_labels", d.train_labels, d.train_split), ("data.val_labels", d.val_labels, d.val_split)]
    for key, value, name in given if train else given[::-1]:
        if value is not None and split == name:
            path = Path(value).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"config key '{key}': label file {path} not found")
            return path
    return None


def build_dataset(cfg: Config, split: str, train: bool, **overrides: Any) -> Dataset:
    """The dataset of split folder `split` under ``data.dataset_root``; `train` turns augmentation on and
    `overrides` go to the dataset class (e.g. ``stats=`` for latents).

    Raises:
        FileNotFoundError: a missing dataset root, split folder or label file.
    """
    d, m = cfg.data, cfg.model
    run_dir = Path(cfg.train.out) / cfg.train.run_name if cfg.train.run_name else None
    root = dataset_root(cfg) / split
    labels = split_labels(cfg, split, train)
    if labels is not None:
        overrides = {"labels": labels, **overrides}
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
            images_root=d.images_root,
            sizes_cache=d.cache_dir or run_dir,
            normalize=d.normalize_latents,
            stats_dir=run_dir,
            flip=d.latent_flip and train,
            crop=d.latent_crop if train else None,
            num_classes=m.num_classes,
            on_error=d.on_error,
            max_images=d.max_images,
            check_values=d.check_values == "all" or (d.check_values == "eval" and not train),
            values_cache=d.cache_dir,
        )
        return LatentWiderFace(root, **(kwargs | overrides))
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
    return WiderFaceRGB(root, **(kwargs | overrides))


def _loader(dataset: Dataset, cfg: Config, *, train: bool, batch_size: int, distributed: bool) -> DataLoader:
    workers, seed = cfg.data.num_workers, cfg.train.seed
    sampler: Sampler | None = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    if train:  # augmentation seeded per sample, order from (seed, epoch): `nbsrc.data.seeding`
        sampler = SeededSampler(sampler, seed)
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
    """``(train_loader, val_loader | None)`` for `cfg`, batches of `nbsrc.data.collate.detection_collate`.

    Latent normalization statistics come from the training split and are reused for validation. The validation
    loader is None when its split folder is missing or holds no usable sample.
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
