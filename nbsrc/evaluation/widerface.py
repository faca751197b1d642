"""WIDER FACE Easy / Medium / Hard AP: the official protocol, exactly, vectorized.

1. One result file per ground-truth image (`nbsrc.evaluation.results`); boxes are taken in file order.
2. Scores are min-max normalized over the whole prediction set: ``s' = (s - lo) / (hi - lo)`` with
   ``lo = min(1, min s)`` and ``hi = max(0, max s)``.
3. Per setting and image, the kept faces are the setting's 1-based ``gt_list`` indices; the other faces are
   "ignore" regions. Boxes are ``x y w h`` -> ``x2 = x + w``; the IoU uses the +1-pixel convention.
4. Each prediction, in file order, takes the face of highest IoU (the first on ties). If the IoU is
   ``>= iou_thresh``: an ignored face drops the prediction (neither TP nor FP); a kept face not yet recalled
   becomes recalled; a recalled one leaves the prediction a false positive. ``pred_recall[h]`` is the number of
   recalled kept faces after prediction ``h``.
5. 1,000 thresholds ``thr_t = 1 - (t + 1) / 1000``. Per image, ``r`` = the last prediction (file order) with
   ``s' >= thr_t``; the image adds (non-dropped predictions up to ``r``, ``pred_recall[r]``) to the curve.
   Images without faces or without predictions add nothing; every kept face counts in the recall denominator.
6. precision = recalled / proposals, recall = recalled / kept faces; AP = all-point VOC integral of the
   precision envelope (`nbsrc.evaluation.detection_ap.voc_ap`).

A subset evaluation (`evaluate_curves` with ``images``) cuts the ground truth to those images
(`subset_ground_truth`): recall denominators and score normalization see only them, and
`WiderResult.coverage` says so. The threshold sweep is a difference array over the 1,000 thresholds (no loop per
image or threshold). Deviation: when every score is equal, the reference divides by zero and reports 0; here all
predictions pass every threshold (with a warning).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nbsrc.data.readers.wider_mat import SETTINGS, WiderGroundTruth, read_wider_gt
from nbsrc.evaluation.detection_ap import max_iou_match, voc_ap
from nbsrc.evaluation.results import read_result_folder, strip_image_extension
from nbsrc.utils import atomic_path, atomic_write_text

__all__ = [
    "NUM_THRESHOLDS",
    "WiderResult",
    "coverage_text",
    "evaluate",
    "evaluate_curves",
    "evaluate_predictions",
    "format_table",
    "plot_pr_curves",
    "subset_ground_truth",
    "thresholds",
]

logger = logging.getLogger(__name__)

NUM_THRESHOLDS = 1000


def thresholds(num: int = NUM_THRESHOLDS) -> np.ndarray:
    """``thr_t = 1 - (t + 1) / num`` for ``t = 0 .. num - 1`` (0.999 down to 0), computed as the reference does."""
    return 1 - (np.arange(num, dtype=np.float64) + 1) / num


@dataclass
class WiderResult:
    """AP and PR curves per setting."""

    ap: dict[str, float]  # NaN when the setting keeps no face
    precision: dict[str, np.ndarray]  # [1000] per threshold (0 where no prediction passes)
    recall: dict[str, np.ndarray]  # [1000] per threshold
    thresholds: np.ndarray  # [1000] normalized-score thresholds, descending
    num_faces: dict[str, int]  # kept faces per setting
    num_images: int  # images evaluated
    num_predictions: int
    missing: list[str] = field(default_factory=list)  # images without a result file (counted as empty)
    images_in_gt: int | None = None  # images of the whole ground truth; None: num_images

    def __post_init__(self) -> None:
        if self.images_in_gt is None:
            self.images_in_gt = self.num_images

    @property
    def images_evaluated(self) -> int:
        return self.num_images

    @property
    def is_subset(self) -> bool:
        return self.num_images < self.images_in_gt

    @property
    def coverage(self) -> str:
        return coverage_text(self.num_images, self.images_in_gt)

    def to_dict(self, curves: bool = False) -> dict:
        """JSON-ready dict (NaN -> None); with `curves`, the PR curves too."""

        def clean(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        out: dict = {s: clean(self.ap[s]) for s in SETTINGS}
        out.update(
            num_faces=dict(self.num_faces),
            num_images=self.num_images,
            num_predictions=self.num_predictions,
            missing=list(self.missing),
            images_evaluated=self.num_images,
            images_in_gt=self.images_in_gt,
        )
        if curves:
            out["thresholds"] = self.thresholds.tolist()
            out["precision"] = {s: self.precision[s].tolist() for s in SETTINGS}
            out["recall"] = {s: self.recall[s].tolist() for s in SETTINGS}
        return out


def coverage_text(images: int, images_in_gt: int) -> str:
    """``"12 of 3,226 images; not comparable with published full-set numbers"`` for a subset, else
    ``"all 3,226 images"``."""
    if images < images_in_gt:
        return f"{images:,} of {images_in_gt:,} images; not comparable with published full-set numbers"
    return f"all {images:,} images"


def _gt_arrays(gt: WiderGroundTruth) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Ground truth of all images concatenated: ``(xyxy float64 [G, 4], offsets [I + 1], setting -> kept [G])``."""
    per_image = [b for per_event in gt.boxes for b in per_event]
    counts = np.array([len(b) for b in per_image], np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    boxes = np.concatenate(per_image).astype(np.float64) if per_image else np.zeros((0, 4))
    boxes = boxes.reshape(-1, 4)  # (G, 4) xywh
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy, x2 = x + w as the protocol does
    kept = {}
    for setting in SETTINGS:
        mask = np.zeros(len(boxes), bool)
        image_keep = [k for per_event in gt.keep[setting] for k in per_event]
        if image_keep:
            lengths = [len(k) for k in image_keep]
            index = np.concatenate(image_keep).astype(np.int64) - 1 + np.repeat(offsets[:-1], lengths)  # (K,)
            mask[index] = True
        kept[setting] = mask
    return boxes, offsets, kept


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Global min-max normalization with the reference's initial bounds (min starts at 1, max at 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores.copy()
    lo = min(1.0, float(scores.min()))
    hi = max(0.0, float(scores.max()))
    if hi - lo <= 0:
        logger.warning(
            "all %d scores equal %.6g: min-max normalization is undefined; every prediction passes every threshold",
            len(scores),
            lo,
        )
        return np.ones_like(scores)
    return (scores - np.float64(lo)) / np.float64(hi - lo)


def evaluate_predictions(
    gt: WiderGroundTruth,
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    counts: np.ndarray,
    iou_thresh: float = 0.5,
    missing: list[str] | None = None,
    images_in_gt: int | None = None,
) -> WiderResult:
    """The protocol on in-memory predictions.

    `boxes_xywh` ``[N, 4]`` and raw `scores` ``[N]`` of all images, concatenated in `gt.image_names()` order (each
    image's boxes in file order); `counts` ``int [I]`` predictions per image. `missing` and `images_in_gt` are
    bookkeeping only.
    """
    if not 0 < iou_thresh <= 1:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    gt_boxes, gt_offsets, kept = _gt_arrays(gt)
    num_images = len(gt_offsets) - 1
    boxes, scores, counts = _checked_predictions(boxes_xywh, scores, counts, num_images)
    num_predictions = len(scores)
    norm = normalize_scores(scores)

    # Images without faces are skipped by the protocol: drop their predictions.
    image = np.repeat(np.arange(num_images), counts)  # (N,)
    gt_counts = np.diff(gt_offsets)
    if (gt_counts == 0).any():
        keep = gt_counts[image] > 0
        boxes, norm, image = boxes[keep], norm[keep], image[keep]
    hit, face, first_hit = _match(boxes, image, gt_boxes, gt_offsets, iou_thresh)
    thr = thresholds()
    sweep = _sweep(norm, image, num_images, thr)

    ap, precision, recall, num_faces = {}, {}, {}, {}
    for setting in SETTINGS:
        kept_face = kept[setting][face]  # (N,) whether the matched face (where hit) is kept
        proposal = ~(hit & ~kept_face)  # predictions on ignored faces are dropped
        recalled = first_hit & kept_face  # first hits are hits
        prec, rec = _curves(proposal, recalled, sweep)
        count_face = int(kept[setting].sum())
        if count_face:
            rec = rec / count_face
            ap[setting] = voc_ap(rec, prec)
        else:
            logger.warning("setting %s keeps no face: AP undefined (NaN)", setting)
            rec = np.zeros(NUM_THRESHOLDS)
            ap[setting] = float("nan")
        precision[setting], recall[setting], num_faces[setting] = prec, rec, count_face
    return WiderResult(
        ap=ap,
        precision=precision,
        recall=recall,
        thresholds=thr,
        num_faces=num_faces,
        num_images=num_images,
        num_predictions=num_predictions,
        missing=list(missing or []),
        images_in_gt=images_in_gt,
    )


def _checked_predictions(
    boxes_xywh: np.ndarray, scores: np.ndarray, counts: np.ndarray, num_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(float64 [N, 4] xywh, float64 [N] scores, int64 [I] counts)``; raises for counts that do not match the
    ground truth's images or the predictions, NaN or infinite values, a negative width or height."""
    counts = np.asarray(counts, np.int64).reshape(-1)  # (I,)
    if len(counts) != num_images:
        raise ValueError(f"counts has {len(counts)} entries for {num_images} ground-truth images")
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)  # (N, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)  # (N,)
    if not len(boxes) == len(scores) == int(counts.sum()):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores, counts sum to {int(counts.sum())}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("predictions hold NaN or infinite boxes or scores")
    if (boxes[:, 2:] < 0).any():
        raise ValueError(f"{int((boxes[:, 2:] < 0).any(1).sum())} predictions have a negative width or height (xywh)")
    return boxes, scores, counts


def _match(
    boxes: np.ndarray, image: np.ndarray, gt_boxes: np.ndarray, gt_offsets: np.ndarray, iou_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best face of each prediction (xywh `boxes` of images `image`), setting-independent.

    Returns ``(hit [N], face [N], first_hit [N])``: IoU >= `iou_thresh` with the best face, that face's global
    index (valid where hit), whether the prediction is the first hit of its face in file order.
    """
    xyxy = boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]  # (N, 4)
    best_iou, best_local = max_iou_match(xyxy, image, gt_boxes, gt_offsets, min_iou=iou_thresh, plus_one=True)
    hit = (best_iou >= iou_thresh) & (best_local >= 0)
    face = np.where(hit, gt_offsets[image] + best_local, 0)  # (N,) global face index (valid where hit)
    first_hit = np.zeros(len(boxes), bool)
    hit_index = np.flatnonzero(hit)
    _, first = np.unique(face[hit_index], return_index=True)
    first_hit[hit_index[first]] = True
    return hit, face, first_hit


class _Sweep(NamedTuple):
    """Where each image's last passing prediction ``r`` moves along the thresholds (setting-independent)."""

    r_at: np.ndarray  # [E] the last passing prediction at each event
    bin_at: np.ndarray  # [E] the threshold index of each event
    new_image: np.ndarray  # [E] whether the event is its image's first
    pred_start: np.ndarray  # [N] index of the first prediction of each prediction's image


def _sweep(norm: np.ndarray, image: np.ndarray, num_images: int, thr: np.ndarray) -> _Sweep:
    """The threshold sweep: t_h = first threshold a prediction passes; per (image, t_h) group the last prediction
    r passing it; a running max over t gives r_t. Group ends are where r_t can change."""
    t_pass = NUM_THRESHOLDS - np.searchsorted(thr[::-1], norm, side="right")  # (N,) in [0, 1000]
    passes = t_pass < NUM_THRESHOLDS
    key = image * (NUM_THRESHOLDS + 1) + t_pass  # (N,) image, then threshold bin
    if len(key) < 2 or (key[1:] >= key[:-1]).all():
        order = np.arange(len(norm))  # files sorted by score (our writer, the published scripts): already in order
    else:
        order = np.argsort(key, kind="stable")  # stable: ties keep file order
    order = order[passes[order]]
    run_max = np.maximum.accumulate(order) if len(order) else order  # last passing prediction so far, per image
    sorted_image, sorted_bin = image[order], t_pass[order]
    group_end = np.ones(len(order), bool)
    group_end[:-1] = (sorted_image[1:] != sorted_image[:-1]) | (sorted_bin[1:] != sorted_bin[:-1])
    image_at = sorted_image[group_end]  # (E,)
    new_image = np.ones(len(image_at), bool)
    new_image[1:] = image_at[1:] != image_at[:-1]
    pred_start = np.concatenate(([0], np.cumsum(np.bincount(image, minlength=num_images))))[image]  # (N,)
    return _Sweep(run_max[group_end], sorted_bin[group_end], new_image, pred_start)


def _curves(proposal: np.ndarray, recalled: np.ndarray, sweep: _Sweep) -> tuple[np.ndarray, np.ndarray]:
    """``(precision [1000], recalled faces [1000])`` per threshold from the per-prediction flags `proposal`
    (counted) and `recalled` (recalls a kept face)."""
    r_at, new_image, pred_start = sweep.r_at, sweep.new_image, sweep.pred_start
    cum_prop = np.cumsum(proposal)  # (N,) global running counts ...
    cum_rec = np.cumsum(recalled)
    base_prop = np.where(pred_start > 0, cum_prop[pred_start - 1], 0)  # ... minus the image's start
    base_rec = np.where(pred_start > 0, cum_rec[pred_start - 1], 0)
    prop_at = (cum_prop - base_prop)[r_at].astype(np.float64)  # (E,)
    rec_at = (cum_rec - base_rec)[r_at].astype(np.float64)
    d_prop = np.diff(prop_at, prepend=0.0)
    d_rec = np.diff(rec_at, prepend=0.0)
    d_prop[new_image] = prop_at[new_image]
    d_rec[new_image] = rec_at[new_image]
    curve_prop = np.cumsum(np.bincount(sweep.bin_at, weights=d_prop, minlength=NUM_THRESHOLDS))  # (1000,)
    curve_rec = np.cumsum(np.bincount(sweep.bin_at, weights=d_rec, minlength=NUM_THRESHOLDS))
    prec = np.divide(curve_rec, curve_prop, out=np.zeros(NUM_THRESHOLDS), where=curve_prop > 0)
    return prec, curve_rec


def subset_ground_truth(gt: WiderGroundTruth, images: Iterable[str]) -> WiderGroundTruth:
    """The ground truth of `images` (``"<event>/<basename>"``, extension ignored) only, in the ground truth's
    order; `gt` itself when they are all its images. `ValueError` for no names or names it does not hold."""
    wanted = {strip_image_extension(str(name).strip().replace("\\", "/").strip("/")) for name in images}
    if not wanted:
        raise ValueError("no images to evaluate: the image list is empty (a split without images?)")
    known = gt.image_names()
    unknown = sorted(wanted.difference(known))
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"{len(unknown)} image(s) unknown to the ground truth ({gt.num_images:,} images): {shown}; expected "
            "'<event>/<basename>' names of its images (is it the ground truth of this split?)"
        )
    if len(wanted) == len(known):
        return gt
    events, names, boxes = [], [], []
    attributes = {key: [] for key in gt.attributes}
    keep = {key: [] for key in gt.keep}
    for e, event in enumerate(gt.events):
        chosen = [j for j, name in enumerate(gt.names[e]) if f"{event}/{name}" in wanted]
        if not chosen:
            continue
        events.append(event)
        names.append([gt.names[e][j] for j in chosen])
        boxes.append([gt.boxes[e][j] for j in chosen])
        for key, per_event in gt.attributes.items():
            attributes[key].append([per_event[e][j] for j in chosen])
        for key, per_event in gt.keep.items():
            keep[key].append([per_event[e][j] for j in chosen])
    return WiderGroundTruth(events=events, names=names, boxes=boxes, attributes=attributes, keep=keep)


def evaluate_curves(
    pred_dir: str | Path,
    gt_dir: str | Path | WiderGroundTruth,
    iou_thresh: float = 0.5,
    missing: str = "error",
    images: Iterable[str] | None = None,
) -> WiderResult:
    """Evaluate a result folder against WIDER ground truth; AP and PR curves per setting.

    Args:
        gt_dir: folder of the four ``.mat`` files, or an already read `WiderGroundTruth`.
        missing: ``"error"`` (a missing result file raises, listing the images) or ``"empty"`` (counted as
            images without detections, with a warning).
        images: the images to evaluate, ``"<event>/<basename>"``; None: every image of the ground truth (the
            full protocol), else a subset evaluation (other images' result files are left unread).
    """
    gt_all = gt_dir if isinstance(gt_dir, WiderGroundTruth) else read_wider_gt(gt_dir, attributes=False)
    gt = gt_all if images is None else subset_ground_truth(gt_all, images)
    names = gt.image_names()
    others = set(gt_all.image_names()).difference(names) if gt is not gt_all else ()
    hint = None if images is not None else "or evaluate only the images of a partial split (CLI evaluate --subset)"
    results = read_result_folder(pred_dir, names, columns=(5, 6), missing=missing, ignore=others, missing_hint=hint)
    rows, counts = results.rows, results.counts
    if rows.shape[1] == 6:  # class column: the face class (1) is evaluated
        face = rows[:, 5] == 1
        image = np.repeat(np.arange(len(counts)), counts)
        counts = np.bincount(image[face], minlength=len(counts))
        rows = rows[face]
    result = evaluate_predictions(
        gt,
        rows[:, :4],
        rows[:, 4],
        counts,
        iou_thresh=iou_thresh,
        missing=results.missing,
        images_in_gt=gt_all.num_images,
    )
    if result.is_subset:
        logger.debug("WIDER evaluation on %s", result.coverage)
    return result


def evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path | WiderGroundTruth,
    iou_thresh: float = 0.5,
    missing: str = "error",
    images: Iterable[str] | None = None,
) -> dict[str, float]:
    """``{"easy": ap, "medium": ap, "hard": ap}`` (fractions in [0, 1]) of `evaluate_curves`."""
    return dict(evaluate_curves(pred_dir, gt_dir, iou_thresh=iou_thresh, missing=missing, images=images).ap)


def format_table(ap: dict[str, float] | WiderResult) -> str:
    """The three lines the reference prints (``Easy   Val AP: 0.9482`` ...), and the coverage of a subset."""
    result = ap if isinstance(ap, WiderResult) else None
    values = result.ap if result is not None else ap
    table = "".join(f"{s.capitalize():<7}Val AP: {values[s]:.4f}\n" for s in SETTINGS)
    if result is not None and result.is_subset:
        table += f"({result.coverage})\n"
    return table


def plot_pr_curves(result: WiderResult, path: str | Path, title: str = "WIDER FACE val") -> Path:
    """Save the three PR curves as an image (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for setting in SETTINGS:
        rec, prec = result.recall[setting], result.precision[setting]
        passed = rec > 0
        ax.plot(rec[passed], prec[passed], label=f"{setting} (AP {result.ap[setting]:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


def save_json(result: WiderResult, path: str | Path, curves: bool = False) -> Path:
    """Write `WiderResult.to_dict` as JSON, atomically."""
    atomic_write_text(path, json.dumps(result.to_dict(curves=curves), indent=2) + "\n")
    return Path(path)
