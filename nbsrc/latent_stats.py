"""Latent statistics: per-channel mean / std and value histograms of JPEG AI latents ``[C, h, w]``, per rate
of a split, and how many images of a split have each latent rate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nbsrc.data.layout import scan_latents
from nbsrc.latents import load_latent

__all__ = ["latent_statistics", "latent_statistics_by_rate", "latent_statistics_rows", "rate_counts"]


def latent_statistics(latents: Iterable[np.ndarray], bins: int = 80) -> dict[str, Any]:
    """Per-channel mean / std and a value histogram of a set of latents ``[C, h, w]`` (same C): ``mean [C]``,
    ``std [C]``, ``hist [bins]``, ``edges [bins+1]``, ``min``, ``max``, ``zero_fraction``, ``count``."""
    stack = [np.asarray(x, dtype=np.float32) for x in latents]
    if not stack:
        raise ValueError("latent statistics: no latents given")
    channels = {x.shape[0] for x in stack}
    if len(channels) != 1 or any(x.ndim != 3 for x in stack):
        raise ValueError(
            f"latent statistics: expected [C, h, w] latents with one C, got {sorted({x.shape for x in stack})}"
        )
    per_channel = np.concatenate([x.reshape(x.shape[0], -1) for x in stack], axis=1)  # (C, n*h*w)
    values = per_channel.reshape(-1)  # (C*n*h*w,)
    lo, hi = np.percentile(values, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(values.min()) - 0.5, float(values.max()) + 0.5
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return {
        "mean": per_channel.mean(axis=1, dtype=np.float64),
        "std": per_channel.std(axis=1, dtype=np.float64),
        "hist": hist,
        "edges": edges,
        "min": float(values.min()),
        "max": float(values.max()),
        "zero_fraction": float((values == 0).mean()),
        "count": len(stack),
    }


def _files_by_rate(latent_dir: Path) -> dict[int, list[Path]]:
    """The latent files of a ``latent/`` folder by rate, rates sorted (flat unrated files under 0)."""
    by_rate: dict[int, list[Path]] = {}
    for per_image in scan_latents(latent_dir, suffix=None).files.values():
        for rate, path in per_image.items():
            by_rate.setdefault(rate or 0, []).append(path)
    return dict(sorted(by_rate.items()))


def rate_counts(split_dir: str | Path) -> dict[int, int]:
    """Images of a split that have each latent rate (``{12: n, 25: n, ...}``; flat unrated files count as 0)."""
    latent_dir = Path(split_dir) / "latent"
    if not latent_dir.is_dir():
        return {}
    return {rate: len(files) for rate, files in _files_by_rate(latent_dir).items()}


def latent_statistics_by_rate(
    split_dir: str | Path, *, max_files: int = 32, channels: int = 256, bins: int = 80
) -> dict[int, dict[str, Any]]:
    """`latent_statistics` per rate of a split, from up to `max_files` latents per rate spread over the split."""
    latent_dir = Path(split_dir) / "latent"
    if not latent_dir.is_dir():
        raise FileNotFoundError(f"{latent_dir}: no latent folder")
    result = {}
    for rate, files in _files_by_rate(latent_dir).items():
        pick = np.unique(np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int))
        result[rate] = latent_statistics([load_latent(files[i], channels) for i in pick], bins=bins)
    return result


def latent_statistics_rows(by_rate: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of `latent_statistics_by_rate`: one per rate."""
    rows = []
    for rate, st in by_rate.items():
        rows.append(
            {
                "rate": f"latent_{rate}" if rate else "latent",
                "bpp": rate / 100 if rate else float("nan"),
                "files": st["count"],
                "min": st["min"],
                "max": st["max"],
                "channel mean (avg)": float(np.mean(st["mean"])),
                "channel std (min)": float(np.min(st["std"])),
                "channel std (max)": float(np.max(st["std"])),
                "zeros": st["zero_fraction"],
            }
        )
    return rows
