"""``python -m nbsrc evaluate --pred DIR [--gt DIR | --dataset_root ROOT [--split val]] [--subset] [--iou 0.5]
[--json OUT] [--plot PR.png] [--allow-missing]``: the WIDER FACE Easy / Medium / Hard AP as the official
evaluation prints it, then the ground truth used (``--gt``, else found by `nbsrc.evaluation.ground_truth`).
``--subset`` evaluates only the images of the prediction folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbsrc.commands import check_output_file
from nbsrc.evaluation.ground_truth import resolve_gt_dir
from nbsrc.evaluation.results import predicted_images
from nbsrc.evaluation.widerface import evaluate_curves, format_table, plot_pr_curves, save_json

HELP = "WIDER FACE Easy/Medium/Hard AP of a prediction folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred", "-p", required=True, type=Path, help="result folder: <event>/<basename>.txt per image"
    )
    parser.add_argument(
        "--gt",
        "-g",
        type=Path,
        default=None,
        help="folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat (default: <dataset_root>/<split>/"
        "ground_truth, a folder found among the Kaggle inputs or beside the dataset, else the shipped official files)",
    )
    parser.add_argument(
        "--dataset_root", "--dataset-root", type=Path, default=None, help="dataset the predictions are of"
    )
    parser.add_argument("--split", default="val", help="split folder (default val)")
    parser.add_argument(
        "--subset",
        action="store_true",
        help="evaluate only the images of the prediction folder (listed in its predictions.json, else those with a "
        "result file): a partial val split, not comparable with published full-set numbers",
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5, the protocol's)")
    parser.add_argument("--json", type=Path, default=None, help="write AP, counts and PR curves as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="save the PR curves (e.g. pr.png)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="count images without a result file as images without detections (warning) instead of failing",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.iou <= 1:
        raise ValueError(f"--iou must be in (0, 1], got {args.iou}")
    check_output_file(args.json, "--json")
    check_output_file(args.plot, "--plot")
    gt = resolve_gt_dir(args.gt, args.dataset_root, args.split)
    result = evaluate_curves(
        args.pred,
        gt.folder,
        iou_thresh=args.iou,
        missing="empty" if args.allow_missing else "error",
        images=predicted_images(args.pred) if args.subset else None,
    )
    sys.stdout.write(format_table(result))
    if result.missing:
        sys.stdout.write(f"({len(result.missing)} image(s) without a result file counted as without detections)\n")
    sys.stdout.write(f"{gt}\n")
    if args.json:
        save_json(result, args.json, curves=True)
        sys.stdout.write(f"wrote {args.json}\n")
    if args.plot:
        plot_pr_curves(result, args.plot)
        sys.stdout.write(f"wrote {args.plot}\n")
    return 0
