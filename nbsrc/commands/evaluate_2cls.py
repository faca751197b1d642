"""``python -m nbsrc evaluate-2cls --pred DIR --gt LABELS.txt [--coords auto|normalized|pixels]
[--image-sizes CSV] [--iou 0.5 0.3] [--json OUT] [--allow-missing]``: per-class AP and mAP for face and person,
one column per IoU threshold (`nbsrc.evaluation.twoclass.format_twoclass_table`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbsrc.commands import check_output_file
from nbsrc.evaluation.twoclass import evaluate_twoclass, format_twoclass_table, save_twoclass_json

HELP = "face/person AP and mAP of 2-class predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred",
        "-p",
        required=True,
        type=Path,
        help="result files with a class column: <id>.txt or <event>/<id>.txt (name, count, 'x y w h score cls' lines)",
    )
    parser.add_argument("--gt", "-g", required=True, type=Path, help="2-class label file ('# <id>.jpg', 'cls x y w h')")
    parser.add_argument(
        "--coords",
        choices=("auto", "normalized", "pixels"),
        default="auto",
        help="coordinates of the predictions (auto: normalized when all lie in [-0.5, 1.5])",
    )
    parser.add_argument(
        "--image-sizes", type=Path, default=None, help="name,width,height CSV (needed for pixel coordinates)"
    )
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.3], help="IoU thresholds (default 0.5 0.3)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="count images without a result file as images without detections (warning)",
    )


def run(args: argparse.Namespace) -> int:
    for t in args.iou:
        if not 0 < t <= 1:
            raise ValueError(f"--iou values must be in (0, 1], got {t}")
    check_output_file(args.json, "--json")
    result = evaluate_twoclass(
        args.pred,
        args.gt,
        coords=args.coords,
        image_sizes=args.image_sizes,
        iou_thresholds=tuple(args.iou),
        missing="empty" if args.allow_missing else "error",
    )
    sys.stdout.write(format_twoclass_table(result))
    counts = ", ".join(f"{name} {n}" for name, n in result.num_gt.items())
    sys.stdout.write(f"{result.num_images} images; ground truth: {counts}; coordinates: {result.coords}\n")
    if result.missing:
        sys.stdout.write(f"({len(result.missing)} image(s) without a result file counted as without detections)\n")
    if args.json:
        save_twoclass_json(result, args.json)
        sys.stdout.write(f"wrote {args.json}\n")
    return 0
