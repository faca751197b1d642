"""Face + person evaluation: per-class VOC AP and mAP at IoU 0.5 and 0.3.

Ground truth: the 2-class label file (`nbsrc.data.readers.twoclass.read_twoclass_labels`); exact duplicate boxes
of one class in one image (the real file repeats image headers) are counted once.

Predictions: result files with a ``cls`` column (1 face, 2 person; `nbsrc.evaluation.results`), flat
``<pred_dir>/<id>.txt`` or ``<pred_dir>/<event>/<id>.txt`` (matched to the ground truth by basename).
``x y w h`` is either normalized to the image size or in pixels (then ``image_sizes`` gives each image's
``(width, height)``); ``coords="auto"`` takes normalized when every value lies in `NORMALIZED_RANGE`.

Metric: per class, the VOC all-point AP of that class's detections against that class's ground truth
(`nbsrc.evaluation.detection_ap`, plain IoU on normalized coordinates). Unlike the ancestor's 2-class script, the
other class is not an ignore region and scores are used as they are.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbsrc.data.readers.twoclass import read_twoclass_labels
from nbsrc.data.records import CLASS_NAMES, FACE, PERSON
from nbsrc.evaluation.detection_ap import PRCurve, detection_pr
from nbsrc.evaluation.results import list_result_files, read_result_folder
from nbsrc.utils import atomic_write_text

__all__ = [
    "IOU_THRESHOLDS",
    "TwoClassResult",
    "evaluate_twoclass",
    "evaluate_twoclass_predictions",
    "format_twoclass_table",
    "read_image_sizes",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = (0.5, 0.3)
CLASSES = (FACE, PERSON)
NORMALIZED_RANGE = (-0.5, 1.5)


@dataclass
class TwoClassResult:
    """Per-class AP and mAP; per-class dicts are keyed by class name."""

    ap: dict[str, dict[float, float]]  # {"face": {0.5: ap, 0.3: ap}, ...}; NaN for a class without ground truth
    map: dict[float, float]  # {0.5: mAP, 0.3: mAP} over the classes with ground truth
    curves: dict[tuple[str, float], PRCurve] = field(repr=False)  # (class name, iou) -> curve
    num_gt: dict[str, int]
    num_predictions: dict[str, int]
    num_images: int
    missing: list[str] = field(default_factory=list)  # images without a result file (counted as empty)
    coords: str = "normalized"  # or "pixels"

    def to_dict(self) -> dict:
        def clean(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        return {
            "ap": {c: {str(t): clean(v) for t, v in per.items()} for c, per in self.ap.items()},
            "mAP": {str(t): clean(v) for t, v in self.map.items()},
            "num_gt": dict(self.num_gt),
            "num_predictions": dict(self.num_predictions),
            "num_images": self.num_images,
            "missing": list(self.missing),
            "coords": self.coords,
        }


def read_image_sizes(path: str | Path) -> dict[str, tuple[int, int]]:
    """``name,width,height`` CSV (header optional) -> ``{name: (w, h)}``; names are also keyed without folder and
    extension so ``0--Parade/x.jpg`` and ``x`` both resolve."""
    path = Path(path)
    sizes: dict[str, tuple[int, int]] = {}
    with path.open(newline="") as fh:
        for number, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if number == 1 and len(row) >= 2 and not row[1].strip().lstrip("-").isdigit():
                continue  # header
            if len(row) < 3:
                raise ValueError(f"{path}:{number}: expected name,width,height, got {row!r}")
            try:
                w, h = int(row[1]), int(row[2])
            except ValueError:
                raise ValueError(f"{path}:{number}: width and height must be integers, got {row[1:3]!r}") from None
            if w <= 0 or h <= 0:
                raise ValueError(f"{path}:{number}: image size must be positive, got {w}x{h}")
            name = row[0].strip()
            stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            sizes[name] = sizes[stem] = (w, h)
            sizes[name.rsplit(".", 1)[0]] = (w, h)
    return sizes


def _gt_per_class(records) -> tuple[list[str], dict[int, list[np.ndarray]]]:
    names = [r.name for r in records]
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in CLASSES}
    duplicates = 0
    for record in records:
        unknown = ~np.isin(record.labels, CLASSES)  # (N,)
        if unknown.any():
            k = int(np.flatnonzero(unknown)[0])
            raise ValueError(
                f"{record.source or record.name}: ground-truth box {k} of image {record.name!r} has class "
                f"{record.labels[k]}; expected 1 (face) or 2 (person)"
            )
        boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)  # (N, 4) xyxy normalized
        for c in CLASSES:
            b = boxes[record.labels == c]
            _, first = np.unique(b, axis=0, return_index=True)
            duplicates += len(b) - len(first)
            per_class[c].append(b[np.sort(first)])  # first copies, in file order
    if duplicates:
        logger.info("%d exact duplicate ground-truth boxes counted once", duplicates)
    return names, per_class


def _resolve_files(pred_dir: Path, names: Sequence[str]) -> list[str]:
    """Result-file names (relative to `pred_dir`, without ``.txt``) of the ground-truth images `names`: the name
    itself when that file exists (flat layout), else the unique ``<folder>/<name>`` file (WIDER layout)."""
    if not pred_dir.is_dir():
        return list(names)
    found = list_result_files(pred_dir)
    nested = [f for f in found if "/" in f]
    if not nested:
        return list(names)
    by_base: dict[str, str] = {}
    for rel in sorted(nested):
        base = rel.rsplit("/", 1)[-1]
        if base in by_base:
            raise ValueError(
                f"{pred_dir}: result files {by_base[base]}.txt and {rel}.txt have the same basename; "
                "the 2-class ground truth names images by basename only"
            )
        by_base[base] = rel
    return [n if n in found else by_base.get(n.rsplit("/", 1)[-1], n) for n in names]


def _where(pred_dir: Path, files: list[str], results, image: np.ndarray, i: int) -> str:
    """``path:line`` of row `i` of `results` (a `nbsrc.evaluation.results.ResultSet`)."""
    path = pred_dir / f"{files[image[i]]}.txt"
    row = i - int(results.offsets[image[i]])  # among the file's box lines
    box_lines = [number for number, line in enumerate(path.read_text().split("\n")[2:], 3) if line.split()]
    return f"{path}:{box_lines[row] if row < len(box_lines) else 0}"


def evaluate_twoclass_predictions(
    gt_records,
    boxes_xyxy: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> TwoClassResult:
    """Per-class AP / mAP of in-memory predictions, one entry per ground-truth record (normalized boxes, labels
    1 / 2): per image `boxes_xyxy` ``[n, 4]`` normalized xyxy, `scores` ``[n]``, `labels` ``[n]`` class ids."""
    names, gt = _gt_per_class(gt_records)
    if not len(boxes_xyxy) == len(scores) == len(labels) == len(names):
        raise ValueError(f"predictions for {len(boxes_xyxy)} images, ground truth for {len(names)}")
    ap: dict[str, dict[float, float]] = {}
    curves: dict[tuple[str, float], PRCurve] = {}
    num_gt, num_pred = {}, {}
    for c in CLASSES:
        cls_name = CLASS_NAMES[c]
        keep = [np.asarray(lab).reshape(-1) == c for lab in labels]  # (n,) per image
        pb = [np.asarray(b, np.float64).reshape(-1, 4)[k] for b, k in zip(boxes_xyxy, keep)]  # (n_c, 4) per image
        ps = [np.asarray(s, np.float64).reshape(-1)[k] for s, k in zip(scores, keep)]  # (n_c,) per image
        num_gt[cls_name] = int(sum(len(g) for g in gt[c]))
        num_pred[cls_name] = int(sum(len(s) for s in ps))
        ap[cls_name] = {}
        for t in iou_thresholds:
            curve = detection_pr(pb, ps, gt[c], iou_thresh=t)
            curves[(cls_name, t)] = curve
            ap[cls_name][t] = curve.ap
    mean = {}
    for t in iou_thresholds:
        values = [ap[CLASS_NAMES[c]][t] for c in CLASSES if np.isfinite(ap[CLASS_NAMES[c]][t])]
        mean[t] = float(np.mean(values)) if values else float("nan")
    return TwoClassResult(
        ap=ap, map=mean, curves=curves, num_gt=num_gt, num_predictions=num_pred, num_images=len(names)
    )


def evaluate_twoclass(
    pred_dir: str | Path,
    gt: str | Path | Sequence,
    coords: str = "auto",
    image_sizes: Mapping[str, tuple[int, int]] | str | Path | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    missing: str = "error",
) -> TwoClassResult:
    """Evaluate a folder of 2-class result files against a 2-class label file (or its records).

    `coords` is ``"normalized"``, ``"pixels"`` or ``"auto"``; `image_sizes` (image name -> ``(width, height)``, or
    a ``name,width,height`` CSV) is needed for pixels. `missing`: as `nbsrc.evaluation.results.read_result_folder`.
    """
    if coords not in ("auto", "normalized", "pixels"):
        raise ValueError(f"coords must be 'auto', 'normalized' or 'pixels', got {coords!r}")
    records = list(read_twoclass_labels(gt) if isinstance(gt, (str, Path)) else gt)
    names = [r.name for r in records]
    pred_dir = Path(pred_dir)
    files = _resolve_files(pred_dir, names)
    results = read_result_folder(pred_dir, files, columns=(6,), missing=missing)
    rows = results.rows.reshape(-1, 6)  # (R, 6) x y w h score cls
    image = np.repeat(np.arange(len(names)), results.counts)  # (R,)
    bad_class = ~np.isin(rows[:, 5], CLASSES)
    if bad_class.any():
        i = int(np.flatnonzero(bad_class)[0])
        where = _where(pred_dir, files, results, image, i)
        raise ValueError(f"{where}: class must be 1 (face) or 2 (person), got {rows[i, 5]:g}")
    xyxy = rows[:, :4].copy()
    xyxy[:, 2:] += xyxy[:, :2]  # (R, 4) xywh -> xyxy
    in_range = (xyxy >= NORMALIZED_RANGE[0]) & (xyxy <= NORMALIZED_RANGE[1])
    if coords == "auto":
        coords = "normalized" if in_range.all() else "pixels"
        logger.info("%s: coordinates read as %s", pred_dir, coords)
    if coords == "normalized" and not in_range.all():
        i = int(np.flatnonzero(~in_range.all(1))[0])
        raise ValueError(
            f"{_where(pred_dir, files, results, image, i)}: box {rows[i, :4].tolist()} is outside the normalized "
            f"range {list(NORMALIZED_RANGE)}; pixel coordinates need coords='pixels' and the image sizes"
        )
    if coords == "pixels":
        if image_sizes is None:
            raise ValueError(f"{pred_dir}: pixel coordinates need the image sizes (a name,width,height CSV)")
        sizes = read_image_sizes(image_sizes) if isinstance(image_sizes, (str, Path)) else dict(image_sizes)
        absent = [n for n in names if n not in sizes]
        if absent:
            raise ValueError(f"image sizes lack {len(absent)} image(s), e.g. {absent[:5]}")
        wh = np.array([sizes[n] for n in names], np.float64)  # (I, 2)
        xyxy /= np.tile(wh, 2)[image]  # (R, 4) normalized
    offsets = results.offsets
    per_image = [slice(int(offsets[i]), int(offsets[i + 1])) for i in range(len(names))]
    result = evaluate_twoclass_predictions(
        records,
        [xyxy[s] for s in per_image],
        [rows[s, 4] for s in per_image],
        [rows[s, 5].astype(np.int64) for s in per_image],
        iou_thresholds=iou_thresholds,
    )
    file_to_name = dict(zip(files, names))
    result.missing = [file_to_name[f] for f in results.missing]
    result.coords = coords
    return result


def format_twoclass_table(result: TwoClassResult) -> str:
    """Per-class AP and mAP, one column per IoU threshold."""
    thresholds = list(result.map)
    header = f"{'':<8}" + "".join(f"{'IoU ' + format(t, 'g'):>10}" for t in thresholds)
    lines = [header]
    for c in CLASSES:
        name = CLASS_NAMES[c]
        lines.append(f"{name.capitalize():<8}" + "".join(f"{result.ap[name][t]:>10.4f}" for t in thresholds))
    lines.append(f"{'mAP':<8}" + "".join(f"{result.map[t]:>10.4f}" for t in thresholds))
    return "\n".join(lines) + "\n"


def save_twoclass_json(result: TwoClassResult, path: str | Path) -> Path:
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return Path(path)
