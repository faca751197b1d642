"""Plots, galleries and tables for the notebooks (matplotlib, any backend).

Every plotting function returns its `matplotlib.figure.Figure`; ``save=path`` also writes a PNG. A notebook cell
should assign it (``fig = viz.plot_...``): ending with it would show it twice.

Boxes are ``[N, 4]`` xyxy in the frame of the picture they are drawn on; a latent's energy map is stretched over
the network frame (``extent``) so that network-frame boxes line up with it. `nbsrc.draw` draws into image pixels
instead. `Table` renders row dicts as HTML in a notebook and as aligned text elsewhere.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nbsrc.config import get_preset, list_presets
from nbsrc.data.rgb_dataset import read_rgb
from nbsrc.evaluation.detection_matching import match_detections
from nbsrc.pictures import input_picture
from nbsrc.utils import atomic_path

__all__ = [
    "COLORS",
    "Table",
    "config_table",
    "detection_items",
    "epoch_rows",
    "gallery_samples",
    "detection_gallery",
    "plot_anchor_shapes",
    "plot_ap_vs_rate",
    "plot_best_iou",
    "plot_latent_statistics",
    "plot_pr_curves",
    "plot_recall_by_size",
    "plot_size_histograms",
    "plot_training_curves",
    "read_metrics_tolerant",
    "sample_gallery",
    "save_figure",
    "TrainingMonitor",
]

logger = logging.getLogger(__name__)

COLORS = {
    "gt": "#00e676",  # ground truth faces
    "tp": "#00e676",  # detections matching a face
    "fp": "#ff1744",  # detections matching nothing
    "miss": "#ffea00",  # faces no detection matched
    "ignored": "#9e9e9e",  # faces outside the evaluation setting / detections on them
    "pred": "#40c4ff",  # detections without ground truth to compare with
    "landmarks": ("#ff1744", "#ffea00", "#00e5ff", "#d500f9", "#76ff03"),  # left eye, right eye, nose, mouth l/r
}


# ---- tables ------------------------------------------------------------------------------------
def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return str(value)


class Table:
    """Rows (dicts with the same keys) shown as an HTML table in notebooks and as text elsewhere."""

    def __init__(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], title: str = "") -> None:
        self.rows = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
        self.title = title
        self.columns = list(dict.fromkeys(key for row in self.rows for key in row))  # in order of appearance

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in self.columns) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __str__(self) -> str:
        cells = [[_format(row.get(c)) for c in self.columns] for row in self.rows]
        widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(self.columns, widths)))
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(lines)

    __repr__ = __str__

    def __len__(self) -> int:
        return len(self.rows)


# ---- figure helpers ------------------------------------------------------------------------------
def _figure(ncols: int = 1, nrows: int = 1, width: float = 4.0, height: float = 3.2, **kwargs: Any) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    return fig, axes


def _grid(count: int, ncols: int, size: float) -> tuple[Any, list[Any]]:
    """A figure of `count` square panels in rows of at most `ncols`, and the panels' axes in order."""
    ncols = min(ncols, count)
    fig, axes = _figure(ncols, math.ceil(count / ncols), size, size)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat[:count])


def save_figure(fig: Any, path: str | Path | None, dpi: int = 110) -> Path | None:
    """Write `fig` as PNG to `path` (atomic; parent folders created). None does nothing."""
    if path is None:
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def _finish(fig: Any, save: str | Path | None) -> Any:
    fig.tight_layout()
    save_figure(fig, save)
    return fig


def _draw_boxes(ax: Any, boxes: Any, color: str, *, linestyle: str = "-", linewidth: float = 1.4, labels=None) -> None:
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth, linestyle=linestyle)
        )
        if labels is not None and i < len(labels) and labels[i]:
            ax.text(x1, y1 - 2, labels[i], color=color, fontsize=6, va="bottom")


def _draw_landmarks(ax: Any, landmarks: Any, valid: Any = None) -> None:
    if landmarks is None:
        return
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)  # (N, 5, 2)
    keep = np.ones(len(points), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    for k, color in enumerate(COLORS["landmarks"]):
        ax.scatter(points[keep, k, 0], points[keep, k, 1], s=6, c=color, linewidths=0)


def _background(ax: Any, picture: np.ndarray, frame: tuple[int, int] | None, cmap: str = "magma") -> None:
    """Draw an RGB image or a 2-D map; `frame` = (width, height) stretches it over the network frame."""
    picture = np.asarray(picture)
    extent = None if frame is None else (0, frame[0], frame[1], 0)
    if picture.ndim == 2:
        ax.imshow(picture, cmap=cmap, extent=extent, interpolation="nearest")
    else:
        ax.imshow(picture, extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])


# ---- data inspection ---------------------------------------------------------------------------
def sample_gallery(samples: Sequence[Mapping[str, Any]], *, ncols: int = 4, save: str | Path | None = None) -> Any:
    """Samples with their ground truth overlaid (see `gallery_samples`).

    Each sample has ``boxes [N, 4]`` (network-frame xyxy), optional ``landmarks [N, 5, 2]`` and
    ``landmarks_valid [N]``, ``frame`` = (width, height) of the network frame, ``title``, and one panel each for
    ``energy`` (a latent's map ``[h, w]``, stretched over the frame) and ``image`` (RGB uint8, with
    ``image_boxes`` / ``image_landmarks`` in its own pixels when given, else stretched over the frame).
    """
    panels = []
    for sample in samples:
        frame = tuple(sample.get("frame") or (640, 640))
        if sample.get("energy") is not None:
            panels.append((sample, sample["energy"], "latent energy", frame, sample["boxes"], sample.get("landmarks")))
        if sample.get("image") is not None:
            if sample.get("image_boxes") is not None:
                panels.append(
                    (sample, sample["image"], "image", None, sample["image_boxes"], sample.get("image_landmarks"))
                )
            else:
                panels.append((sample, sample["image"], "image", frame, sample["boxes"], sample.get("landmarks")))
    if not panels:
        raise ValueError("sample gallery: no samples with an 'energy' map or an 'image'")
    fig, axes = _grid(len(panels), ncols, 3.4)
    for ax, (sample, picture, kind, frame, boxes, landmarks) in zip(axes, panels):
        _background(ax, picture, frame)
        _draw_boxes(ax, boxes, COLORS["gt"])
        _draw_landmarks(ax, landmarks, sample.get("landmarks_valid"))
        faces = len(np.asarray(boxes).reshape(-1, 4))
        ax.set_title(f"{sample.get('title', '')}\n{kind}, {faces} faces", fontsize=7)
    return _finish(fig, save)


def plot_latent_statistics(stats_by_rate: Mapping[Any, Mapping[str, Any]], *, save: str | Path | None = None) -> Any:
    """Per rate: per-channel mean and std (sorted by std), and the value histogram (`nbsrc.latent_stats.latent_statistics`)."""
    fig, axes = _figure(3, 1, 4.6, 3.2)
    for rate, stats in stats_by_rate.items():
        order = np.argsort(stats["std"])[::-1]
        axes[0, 0].plot(np.asarray(stats["mean"])[order], linewidth=0.8, label=f"{rate}")
        axes[0, 1].plot(np.asarray(stats["std"])[order], linewidth=0.8, label=f"{rate}")
        edges = np.asarray(stats["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        axes[0, 2].plot(centres, np.maximum(stats["hist"], 1), linewidth=0.8, label=f"{rate}")
    axes[0, 0].set(title="per-channel mean", xlabel="channel (sorted by std)")
    axes[0, 1].set(title="per-channel std", xlabel="channel (sorted by std)", yscale="log")
    axes[0, 2].set(title="value histogram", xlabel="value", yscale="log")
    axes[0, 2].legend(fontsize=7, title="rate", title_fontsize=7)
    return _finish(fig, save)


# ---- anchor statistics ---------------------------------------------------------------------------
def plot_size_histograms(hist: Mapping[str, Any], *, title: str = "", save: str | Path | None = None) -> Any:
    """Width, height and aspect (w/h) histograms on log axes (`nbsrc.face_stats.size_histograms`)."""
    fig, axes = _figure(3, 1, 4.2, 3.0)
    for ax, key, xlabel in zip(
        axes.flat, ("width", "height", "aspect"), ("face width (px)", "face height (px)", "aspect w/h")
    ):
        data = hist[key]
        ax.stairs(data["counts"], np.asarray(data["edges"]), fill=True, alpha=0.7)
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="faces")
        median = data["percentiles"].get(50)
        if median:
            ax.axvline(median, color="k", linestyle="--", linewidth=0.8)
            ax.set_title(f"median {median:.3g}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save)


def plot_anchor_shapes(
    face_wh: np.ndarray,
    layout: Any,
    *,
    highlight: np.ndarray | None = None,
    highlight_label: str = "highlighted",
    save: str | Path | None = None,
    max_points: int = 20000,
) -> Any:
    """Faces (w, h) as a log-log scatter with the anchor shapes of each level of `layout` marked; faces where
    `highlight` is true (e.g. no anchor can match them) are drawn in red."""
    fig, axes = _figure(1, 1, 5.0, 4.2)
    ax = axes[0, 0]
    wh = np.asarray(face_wh, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    marked = np.zeros(len(wh), bool) if highlight is None else np.asarray(highlight, bool).reshape(-1)
    if len(wh) > max_points:
        pick = np.random.default_rng(0).choice(len(wh), max_points, replace=False)
        wh, marked = wh[pick], marked[pick]
    ax.scatter(wh[~marked, 0], wh[~marked, 1], s=2, alpha=0.25, c="0.4", linewidths=0, label="faces")
    if marked.any():
        ax.scatter(wh[marked, 0], wh[marked, 1], s=3, alpha=0.5, c=COLORS["fp"], linewidths=0, label=highlight_label)
    for level, (stride, shapes) in enumerate(zip(layout.strides, layout.shapes)):
        shapes = np.asarray(shapes).reshape(-1, 2)  # (K, 2)
        ax.scatter(shapes[:, 0], shapes[:, 1], s=40, marker="x", label=f"level {level} (stride {stride})")
    ax.set(xscale="log", yscale="log", xlabel="width (px)", ylabel="height (px)", title=f"anchor shapes: {layout.name}")
    ax.legend(fontsize=7)
    return _finish(fig, save)


def plot_best_iou(
    best_iou: Mapping[str, np.ndarray], *, thresholds: Sequence[float] = (0.2, 0.35, 0.5), save=None
) -> Any:
    """Histogram of the best-anchor IoU per face, one curve per layout name."""
    fig, axes = _figure(1, 1, 5.0, 3.2)
    ax = axes[0, 0]
    for name, iou in best_iou.items():
        ax.hist(np.asarray(iou), bins=50, range=(0, 1), histtype="step", linewidth=1.2, label=name)
    for t in thresholds:
        ax.axvline(t, color="k", linestyle=":", linewidth=0.8)
    ax.set(xlabel="best anchor IoU", ylabel="faces", title="best-anchor IoU per face")
    ax.legend(fontsize=7)
    return _finish(fig, save)


def plot_recall_by_size(rows_by_name: Mapping[str, Sequence[Mapping[str, Any]]], *, save=None) -> Any:
    """Recall at each IoU threshold per face-size bin (`nbsrc.anchor_stats.recall_by_size`), one line per layout."""
    fig, axes = _figure(2, 1, 4.6, 3.2)
    for name, rows in rows_by_name.items():
        rows = [r for r in rows if r["size (px)"] != "all"]
        labels = [r["size (px)"] for r in rows]
        keys = [k for k in rows[0] if k.startswith("recall@")]
        for ax, key in zip(axes.flat, keys):
            ax.plot(labels, [r[key] for r in rows], marker="o", label=name)
            ax.set(title=key, xlabel="face size sqrt(w*h) (px)", ylim=(0, 1.02))
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0, 0].legend(fontsize=7)
    return _finish(fig, save)


# ---- training ----------------------------------------------------------------------------------
def _series(records: Sequence[Mapping[str, Any]], key: str, x_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(next((record[k] for k in x_keys if isinstance(record.get(k), (int, float))), i))
            ys.append(value)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _numeric_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _draw_training_curves(axes: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> None:
    """Four panels: losses, positives per image, learning rate, validation AP."""
    steps = [r for r in records if r.get("kind", "step") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    x_keys = ("step", "global_step", "iteration", "epoch")
    step_keys = [k for k in _numeric_keys(steps) if k not in x_keys and k != "time"]
    val_keys = [k for k in _numeric_keys(epochs) if k.startswith("val")]
    panels = (
        (axes[0], [k for k in step_keys if "loss" in k], [k for k in val_keys if "loss" in k], "loss"),
        (axes[1], [k for k in step_keys if "pos" in k], [], "positive anchors / image"),
        (axes[2], [k for k in step_keys if k.startswith("lr")], [], "learning rate"),
        (axes[3], [], [k for k in val_keys if "ap" in k.split("_")], "validation AP"),
    )
    for ax, line_keys, marker_keys, title in panels:
        for key in line_keys:
            xs, ys = _series(steps, key, x_keys)
            if len(xs):
                ax.plot(xs, ys, label=key, linewidth=1.0)
        for key in marker_keys:
            xs, ys = _series(epochs, key, x_keys)
            if len(xs):
                ax.plot(xs, ys, label=key, marker="o", linestyle="--")
        ax.set(title=title, xlabel="step")
        if ax.get_lines():
            ax.legend(fontsize=6)
    lines = axes[0].get_lines()
    if lines and all(len(line.get_ydata()) and min(line.get_ydata()) > 0 for line in lines):
        axes[0].set_yscale("log")


def plot_training_curves(records: Sequence[Mapping[str, Any]], *, save: str | Path | None = None) -> Any:
    """Losses, positive anchors per image, learning rate and validation AP from ``metrics.jsonl`` records: step
    records as lines, epoch records (``kind`` "epoch") as markers, against ``step`` (else the record index)."""
    fig, axes = _figure(4, 1, 3.6, 3.0)
    _draw_training_curves(list(axes.flat), records)
    return _finish(fig, save)


def read_metrics_tolerant(path: str | Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` records while a writer may be appending: a partial last line is left for later."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class TrainingMonitor:
    """Context manager redrawing the training curves of a ``metrics.jsonl`` in one notebook output, updated in
    place by a thread every `every` seconds (matplotlib's object API: no pyplot state); on exit the final curves,
    written to `save`. Outside IPython it only saves."""

    def __init__(self, metrics_path: str | Path, *, every: float = 20.0, save: str | Path | None = None) -> None:
        self.metrics_path = Path(metrics_path)
        self.every = every
        self.save = save
        self._stop = threading.Event()
        self._thread: Any = None
        self._handle: Any = None
        self._last_count = -1

    @staticmethod
    def _figure(records: Sequence[Mapping[str, Any]]) -> Any:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(14.4, 3.0))
        _draw_training_curves(list(fig.subplots(1, 4)), records)
        return fig

    def _render(self, final: bool = False) -> bytes | None:
        records = read_metrics_tolerant(self.metrics_path)
        if not records or (len(records) == self._last_count and not final):
            return None
        self._last_count = len(records)
        fig = self._figure(records)
        fig.suptitle(f"{self.metrics_path.parent.name}: {len(records)} records", fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def _update(self, final: bool = False) -> None:
        png = self._render(final)
        if png is None or self._handle is None:
            return
        from IPython.display import Image

        self._handle.update(Image(data=png))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._update()
            except Exception as exc:  # drawing must never break training
                logger.debug("training monitor: %s", exc)

    def __enter__(self) -> TrainingMonitor:
        try:
            from IPython import get_ipython
            from IPython.display import Markdown, display
        except ImportError:
            return self
        if get_ipython() is None:
            return self
        self._handle = display(Markdown(f"_waiting for {self.metrics_path} ..._"), display_id=True)
        self._thread = threading.Thread(target=self._loop, name="nbsrc-training-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._update(final=True)
        if self.save is not None and self.metrics_path.is_file():
            fig = self._figure(read_metrics_tolerant(self.metrics_path))
            fig.tight_layout()
            save_figure(fig, self.save)


# ---- evaluation --------------------------------------------------------------------------------
def plot_pr_curves(curves: Mapping[str, Any], ap: Mapping[str, float] | None = None, *, save=None) -> Any:
    """Precision-recall curves: `curves` maps a setting to ``(precision, recall)`` or a mapping with those keys;
    `ap` adds the AP to the legend."""
    fig, axes = _figure(1, 1, 4.8, 4.0)
    ax = axes[0, 0]
    for name, curve in curves.items():
        if isinstance(curve, Mapping):
            precision, recall = curve["precision"], curve["recall"]
        else:
            precision, recall = curve
        label = f"{name} ({ap[name]:.3f})" if ap and name in ap else str(name)
        ax.plot(np.asarray(recall), np.asarray(precision), label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall")
    ax.legend(fontsize=8)
    return _finish(fig, save)


def plot_ap_vs_rate(
    rows: Sequence[Mapping[str, Any]], *, x: str = "bpp", settings=("easy", "medium", "hard"), save=None
) -> Any:
    """AP against bits per pixel, one line per setting; rows without a numeric `x` (an RGB reference) are
    drawn as horizontal dashed lines."""
    fig, axes = _figure(1, 1, 5.0, 3.6)
    ax = axes[0, 0]

    def value(row: Mapping[str, Any], key: str) -> Any:
        return next((row[k] for k in row if k.lower() == key.lower()), None)

    latent = [r for r in rows if isinstance(value(r, x), (int, float))]
    reference = [r for r in rows if not isinstance(value(r, x), (int, float))]
    for setting in settings:
        points = sorted((float(value(r, x)), value(r, setting)) for r in latent if value(r, setting) is not None)
        if points:
            line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=setting)[0]
            for r in reference:
                if value(r, setting) is not None:
                    ax.axhline(value(r, setting), color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set(xlabel="bits per pixel", ylabel="AP", ylim=(0, 1.02), title="AP per JPEG AI rate (dashed: RGB)")
    ax.legend(fontsize=8)
    return _finish(fig, save)


def detection_gallery(items: Sequence[Mapping[str, Any]], *, ncols: int = 3, save: str | Path | None = None) -> Any:
    """Detections against ground truth (see `detection_items`): TP solid green, FP solid red, misses dashed yellow,
    ignored faces dotted grey.

    Each item: ``picture`` (RGB image or 2-D energy map), optional ``frame`` (width, height) to stretch it over,
    ``gt_boxes [G, 4]``, ``pred_boxes [P, 4]``, ``scores [P]``, ``match`` (`match_detections` output), optional
    ``landmarks [P, 5, 2]`` and ``title``.
    """
    if not items:
        raise ValueError("detection gallery: no items")
    fig, axes = _grid(len(items), ncols, 3.8)
    for ax, item in zip(axes, items):
        _background(ax, item["picture"], item.get("frame"), cmap="gray")
        preds = np.asarray(item["pred_boxes"]).reshape(-1, 4)  # (P, 4)
        gts = np.asarray(item["gt_boxes"]).reshape(-1, 4)  # (G, 4)
        scores = np.asarray(item.get("scores", np.zeros(len(preds)))).reshape(-1)
        match = item["match"]
        misses = ~match["gt_matched"] & ~match["gt_ignore"]
        _draw_boxes(ax, gts[match["gt_ignore"]], COLORS["ignored"], linestyle=":")
        _draw_boxes(ax, gts[misses], COLORS["miss"], linestyle="--", linewidth=1.6)
        for kind in ("tp", "fp", "ignored"):
            mask = match[kind]
            labels = [f"{s:.2f}" for s in scores[mask]] if len(preds) <= 20 else None
            _draw_boxes(ax, preds[mask], COLORS[kind], labels=labels)
        if item.get("landmarks") is not None:
            _draw_landmarks(ax, np.asarray(item["landmarks"])[match["tp"]])
        ax.set_title(
            f"{item.get('title', '')}\nTP {int(match['tp'].sum())}  FP {int(match['fp'].sum())}  miss {int(misses.sum())}",
            fontsize=7,
        )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=COLORS["tp"], label="true positive"),
        Line2D([], [], color=COLORS["fp"], label="false positive"),
        Line2D([], [], color=COLORS["miss"], linestyle="--", label="missed face"),
        Line2D([], [], color=COLORS["ignored"], linestyle=":", label="ignored face"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, save)
    return fig


# ---- helpers that turn nbsrc objects into plot inputs ---------------------------------------------
def gallery_samples(dataset: Any, indices: Sequence[int], cfg: Any) -> list[dict[str, Any]]:
    """Dataset samples for `sample_gallery`: a latent's energy map next to its original image when the split has
    it (ground truth mapped back with the sample's frame), or the network image of an RGB dataset."""
    out = []
    for index in indices:
        sample = dataset[index]
        if sample is None:  # failed to load under data.on_error=skip (counted in the dataset's log)
            continue
        height, width = sample["input"].shape[-2:]
        latent = cfg.model.input_kind == "latent"
        if latent:
            height, width = height * cfg.model.latent_stride, width * cfg.model.latent_stride
        rate = sample.get("rate")
        entry: dict[str, Any] = {
            "boxes": sample["boxes"].numpy(),
            "landmarks": sample["landmarks"].numpy(),
            "landmarks_valid": sample["landmarks_valid"].numpy(),
            "frame": (width, height),
            "title": sample["name"] + (f" (latent_{rate})" if rate else ""),
        }
        if not latent:
            entry["image"] = input_picture(sample["input"], cfg.model)
            out.append(entry)
            continue
        entry["energy"] = input_picture(sample["input"], cfg.model)
        sizes = getattr(getattr(dataset, "label_frame", None), "sizes", None)
        image_path = sizes.image_path(sample["name"]) if sizes is not None else None
        frame = sample.get("frame")
        if image_path is not None and frame is not None:
            entry["image"] = read_rgb(image_path)
            entry["image_boxes"] = frame.to_original(entry["boxes"])
            entry["image_landmarks"] = frame.to_original(entry["landmarks"])
        out.append(entry)
    return out


def detection_items(
    detector: Any,
    samples: Sequence[Mapping[str, Any]],
    *,
    conf: float = 0.5,
    iou_thresh: float = 0.5,
    max_detections: int = 50,
) -> list[dict[str, Any]]:
    """Run a `nbsrc.detector.Detector` on dataset samples (network frame) and match its face detections (at most
    `max_detections` over the score threshold `conf`) to their faces at `iou_thresh`, for `detection_gallery`."""
    if not samples:
        return []
    inputs = torch.stack([s["input"] for s in samples])  # (B, C, H, W)
    height, width = detector.model.image_size(inputs)
    predictions = detector.predict_batch(inputs, conf=conf, keep_top_k=max_detections)
    items = []
    for sample, prediction in zip(samples, predictions):
        faces = (prediction["labels"] == 1).cpu().numpy()
        boxes = prediction["boxes"].float().cpu().numpy()[faces]
        scores = prediction["scores"].float().cpu().numpy()[faces]
        landmarks = prediction["landmarks"]
        landmarks = landmarks.float().cpu().numpy()[faces] if landmarks is not None else None
        gt = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)[np.asarray(sample["labels"]).reshape(-1) == 1]
        items.append(
            {
                "picture": input_picture(sample["input"], detector.cfg.model),
                "frame": (width, height),
                "gt_boxes": gt,
                "pred_boxes": boxes,
                "scores": scores,
                "landmarks": landmarks,
                "match": match_detections(boxes, scores, gt, iou_thresh=iou_thresh),
                "title": str(sample.get("name", "")),
            }
        )
    return items


def epoch_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch table rows from ``metrics.jsonl`` epoch records: epoch, step, training and validation numbers."""
    rows = []
    for record in records:
        row = {k: record[k] for k in ("epoch", "step") if k in record}
        for key, value in record.items():
            if key.startswith(("train_", "val_")) and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = value
        if "best" in record:
            row["best"] = "*" if record["best"] else ""
        rows.append(row)
    return rows


def config_table(cfg: Any) -> Table:
    """The settings of `cfg` that differ from its preset (dotted keys), with the preset's value."""
    current = cfg.to_dict()
    base = get_preset(cfg.preset).to_dict() if cfg.preset in list_presets() else {}
    rows = [{"key": "preset", "value": cfg.preset, "preset default": ""}]
    for group, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            default = base.get(group, {}).get(key)
            if value != default:
                rows.append({"key": f"{group}.{key}", "value": value, "preset default": default})
    return Table(rows, f"configuration: preset {cfg.preset} with {len(rows) - 1} changes")
