"""``python -m nbsrc evaluate-rates --weight LATENT.pth --dataset_root ROOT [--rgb-weight RGB.pth] --out DIR``.

Evaluates a latent model at every available JPEG AI rate (and an RGB model when given), prints the table (bpp =
suffix / 100, Easy, Medium, Hard) and the ground truth used, and writes ``rates.json``, ``rates.csv`` and
``ap_vs_bpp.png`` to the output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbsrc.commands import check_output_dir
from nbsrc.detector import Detector, check_thresholds
from nbsrc.evaluation.rates import evaluate_rates

HELP = "WIDER AP of a latent model at every JPEG AI rate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", "-m", required=True, type=Path, help="latent checkpoint")
    parser.add_argument("--preset", default=None, help="preset of a published latent state dict")
    parser.add_argument("--rgb-weight", "--rgb_weight", type=Path, default=None, help="RGB checkpoint to compare")
    parser.add_argument("--rgb-preset", "--rgb_preset", default=None, help="preset of a published RGB state dict")
    parser.add_argument("--dataset_root", "--dataset-root", required=True, type=Path, help="folder with the split")
    parser.add_argument("--split", default="val", help="split folder (default val)")
    parser.add_argument(
        "--gt",
        type=Path,
        default=None,
        help="WIDER ground truth (default: <root>/<split>/ground_truth, a folder found among the Kaggle inputs or "
        "beside the dataset, else the shipped official files)",
    )
    parser.add_argument("--rates", type=int, nargs="+", default=None, help="rates to evaluate (default: all present)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--conf", type=float, default=0.02, help="score threshold")
    parser.add_argument("--nms", type=float, default=0.4, help="NMS IoU threshold")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--max_images",
        "--max-images",
        type=int,
        default=None,
        help="predict only the first N labelled images (default: all; a checkpoint's training cap is not used)",
    )


def run(args: argparse.Namespace) -> int:
    check_thresholds({"conf": "--conf", "nms": "--nms"}, conf=args.conf, nms=args.nms)
    check_output_dir(args.out, "--out")
    for path in (args.weight, args.rgb_weight):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
    weight, rgb_weight = args.weight, args.rgb_weight
    if args.max_images is not None:  # asked for explicitly: the detectors' configs carry the cap
        if args.max_images < 1:
            raise ValueError(f"--max_images must be >= 1, got {args.max_images}")
        capped = []
        for path, preset in ((weight, args.preset), (rgb_weight, args.rgb_preset)):
            detector = Detector.from_checkpoint(path, preset=preset, device=args.device) if path is not None else None
            if detector is not None:
                detector.cfg = detector.cfg.replace(**{"data.max_images": args.max_images})
            capped.append(detector)
        weight, rgb_weight = capped
    table = evaluate_rates(
        weight,
        args.dataset_root,
        args.out,
        split=args.split,
        gt_dir=args.gt,
        rgb_weight=rgb_weight,
        rates=args.rates,
        preset=args.preset,
        rgb_preset=args.rgb_preset,
        device=args.device,
        conf=args.conf,
        nms=args.nms,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        amp=not args.no_amp,
        progress=not args.no_progress,
    )
    sys.stdout.write(table.to_markdown())
    sys.stdout.write(f"wrote {args.out / 'rates.json'}, {args.out / 'rates.csv'}, {args.out / 'ap_vs_bpp.png'}\n")
    return 0
