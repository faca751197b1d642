"""WIDER FACE AP of a latent model at every JPEG AI rate, optionally next to an RGB model on the same images.

For each rate (``latent_<rate>.npy``; bits per pixel ``rate / 100``) the latent model predicts the split into
``<out>/latent_<rate>/``, an RGB model into ``<out>/rgb/``, and each folder is evaluated with the WIDER protocol
(`nbsrc.evaluation.widerface`) on the images of the split; an image without a latent at some rate counts there as
an image without detections. The table (``rates.json``, ``rates.csv``) and ``ap_vs_bpp.png`` go to ``<out>``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nbsrc.data.readers.wider_mat import read_wider_gt
from nbsrc.detector import Detector, check_thresholds
from nbsrc.evaluation.ground_truth import GroundTruthSource, resolve_gt_dir
from nbsrc.evaluation.predict import available_rates, build_predict_dataset, predict_dataset
from nbsrc.evaluation.widerface import coverage_text, evaluate_curves, subset_ground_truth
from nbsrc.utils import atomic_path, atomic_write_text

__all__ = ["RateRow", "RatesTable", "evaluate_rates", "plot_ap_vs_bpp"]

logger = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")


@dataclass
class RateRow:
    """One evaluated model / rate."""

    model: str  # "latent" or "rgb"
    rate: int | None  # latent_<rate>.npy suffix; None for RGB
    bpp: float | None  # rate / 100
    easy: float
    medium: float
    hard: float
    pred_dir: str
    missing: int = 0  # images of the split without a prediction (latent absent at this rate)
    images: int = 0  # images evaluated (the split's)
    images_in_gt: int = 0  # images of the whole ground truth (more than `images`: a subset evaluation)


@dataclass
class RatesTable:
    """AP per rate (and the RGB reference)."""

    rows: list[RateRow] = field(default_factory=list)
    ground_truth: str = ""  # the ground truth used, in words (`nbsrc.evaluation.ground_truth.GroundTruthSource`)

    @property
    def latent_rows(self) -> list[RateRow]:
        return sorted((r for r in self.rows if r.model == "latent"), key=lambda r: r.rate or 0)

    @property
    def rgb_row(self) -> RateRow | None:
        return next((r for r in self.rows if r.model == "rgb"), None)

    def to_dict(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    @property
    def is_subset(self) -> bool:
        """Whether the rows (all on the same images) cover only part of the ground truth's images."""
        return bool(self.rows) and self.rows[0].images < self.rows[0].images_in_gt

    @property
    def coverage(self) -> str:
        return coverage_text(self.rows[0].images, self.rows[0].images_in_gt) if self.rows else ""

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["model", "rate", "bpp", "easy", "medium", "hard", "missing", "images", "images_in_gt"])
        for r in self.rows:
            writer.writerow(
                [
                    r.model,
                    r.rate if r.rate is not None else "",
                    r.bpp if r.bpp is not None else "",
                    f"{r.easy:.6f}",
                    f"{r.medium:.6f}",
                    f"{r.hard:.6f}",
                    r.missing,
                    r.images,
                    r.images_in_gt,
                ]
            )
        return buf.getvalue()

    def to_markdown(self) -> str:
        lines = ["| model | rate (bpp) | Easy | Medium | Hard |", "|---|---|---|---|---|"]
        for r in self.latent_rows + ([self.rgb_row] if self.rgb_row else []):
            rate = f"{r.bpp:.2f}" if r.bpp is not None else "RGB (640)"
            lines.append(f"| {r.model} | {rate} | {r.easy:.4f} | {r.medium:.4f} | {r.hard:.4f} |")
        notes = [note for note in (self.coverage if self.is_subset else "", self.ground_truth) if note]
        return "\n".join(lines) + "\n" + "".join(f"{note}\n" for note in notes)


def plot_ap_vs_bpp(table: RatesTable, path: str | Path, title: str = "WIDER FACE val AP per JPEG AI rate") -> Path:
    """AP (Easy / Medium / Hard) against bits per pixel; the RGB model as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = table.latent_rows
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = {"easy": "tab:green", "medium": "tab:orange", "hard": "tab:red"}
    for s in SETTINGS:
        ax.plot([r.bpp for r in rows], [getattr(r, s) for r in rows], "o-", color=colors[s], label=f"latent {s}")
        if table.rgb_row is not None:
            ax.axhline(getattr(table.rgb_row, s), color=colors[s], linestyle="--", alpha=0.7, label=f"RGB {s}")
    ax.set(xlabel="bits per pixel", ylabel="AP", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


_MODELS = {"latent": "a latent model", "rgb": "an RGB model"}


def _detector(weight, preset: str | None, device: str, kind: str, label: str = "") -> Detector:
    """The `Detector` of a checkpoint path (or `weight` itself); `ValueError` unless its input is `kind`."""
    detector = weight
    if not isinstance(weight, Detector):
        detector = Detector.from_checkpoint(weight, preset=preset, device=device)
    if detector.model.input_kind != kind:
        name = str(weight) if isinstance(weight, (str, Path)) else "the given detector"
        other = _MODELS["latent" if kind == "rgb" else "rgb"]
        raise ValueError(
            f"evaluate_rates: {label}{name} must be {_MODELS[kind]}, got {other} (preset '{detector.cfg.preset}')"
        )
    return detector


def evaluate_rates(
    latent_weight,
    dataset_root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val",
    gt_dir: str | Path | GroundTruthSource | None = None,
    rgb_weight=None,
    rates: Sequence[int] | None = None,
    preset: str | None = None,
    rgb_preset: str | None = None,
    device: str = "auto",
    conf: float = 0.02,
    nms: float = 0.4,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: bool = True,
    resume: bool = True,
    progress: bool = True,
    plot: bool = True,
) -> RatesTable:
    """AP of a latent model at every available rate (and of an RGB model when given).

    Args:
        latent_weight, rgb_weight: checkpoint paths or `nbsrc.detector.Detector` objects (``rgb_weight`` None:
            latent only); ``preset``, ``rgb_preset``: presets of published state dicts.
        dataset_root: dataset folder (``<root>/<split>/latent/<image>/latent_<rate>.npy``).
        gt_dir: WIDER ground-truth folder, or a `GroundTruthSource`; None: `resolve_gt_dir` chooses.
        rates: rates to evaluate (default: every rate present).
        conf, nms, batch_size, num_workers, amp, resume, progress: see `nbsrc.evaluation.predict.predict_dataset`.
    """
    dataset_root, out_dir = Path(dataset_root), Path(out_dir)
    check_thresholds(conf=conf, nms=nms)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory (expected the output folder)")
    source = gt_dir if isinstance(gt_dir, GroundTruthSource) else resolve_gt_dir(gt_dir, dataset_root, split)
    logger.info("%s", source)
    gt = read_wider_gt(source.folder, attributes=False)
    latent = _detector(latent_weight, preset, device, "latent")
    # Both models are checked before any prediction runs.
    rgb = _detector(rgb_weight, rgb_preset, device, "rgb", "rgb_weight ") if rgb_weight is not None else None
    present = available_rates(dataset_root, split)
    if not present:
        raise FileNotFoundError(f"{dataset_root / split / 'latent'}: no latent_<rate>.npy files")
    chosen = sorted(set(rates)) if rates else present
    absent = [r for r in chosen if r not in present]
    if absent:
        raise ValueError(
            f"{dataset_root / split / 'latent'}: no latent_{absent[0]}.npy files; available rates: "
            f"{', '.join(map(str, present))}"
        )
    kwargs = dict(
        conf=conf, nms=nms, batch_size=batch_size, num_workers=num_workers, amp=amp, resume=resume, progress=progress
    )
    table = RatesTable(ground_truth=str(source))
    # Every dataset first: the images of the split are those of any rate (and of the RGB model's dataset).
    runs = [
        ("latent", rate, latent, build_predict_dataset(latent.cfg, dataset_root, split, f"latent_{rate}.npy"))
        for rate in chosen
    ]
    if rgb is not None:
        runs.append(("rgb", None, rgb, build_predict_dataset(rgb.cfg, dataset_root, split)))
    images = list(dict.fromkeys(str(name) for *_, dataset in runs for name in dataset.names))
    subset_ground_truth(gt, images)  # images the ground truth does not know: an error before any prediction

    for model, rate, detector, dataset in runs:
        folder = out_dir / (f"latent_{rate}" if model == "latent" else "rgb")
        predict_dataset(detector, dataset, folder, **kwargs)
        result = evaluate_curves(folder, gt, missing="empty", images=images)
        ap = result.ap
        table.rows.append(
            RateRow(
                model,
                rate,
                None if rate is None else rate / 100,
                ap["easy"],
                ap["medium"],
                ap["hard"],
                str(folder),
                len(result.missing),
                result.images_evaluated,
                result.images_in_gt,
            )
        )
        scores = " ".join(f"{s} {ap[s]:.4f}" for s in SETTINGS)
        logger.info("%s%s: %s (%s)", model, "" if rate is None else f" rate {rate}", scores, result.coverage)

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
        for row in table.to_dict()
    ]
    atomic_write_text(out_dir / "rates.json", json.dumps(clean, indent=2) + "\n")
    atomic_write_text(out_dir / "rates.csv", table.to_csv())
    if plot:
        plot_ap_vs_bpp(table, out_dir / "ap_vs_bpp.png")
    return table
