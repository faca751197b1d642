"""``python -m nbsrc make-demo-data OUT [--images N] [--val-images M] [--seed S] [--published DIR]``: the demo
dataset, with ``--published`` also laid out as users have the real one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbsrc.commands import check_output_dir
from nbsrc.data.demo import make_demo_data
from nbsrc.data.published_layout import split_as_published

HELP = "build the deterministic demo dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (train/, val/, image_sizes.csv are written there)")
    parser.add_argument("--images", type=int, default=160, help="training images (default 160)")
    parser.add_argument(
        "--val-images",
        "--val_images",
        dest="val_images",
        type=int,
        default=None,
        help="validation images (default max(8, images / 4))",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument(
        "--published",
        type=Path,
        default=None,
        help="also lay it out as users have the real data: DIR/retina-modify (latents and labels only) beside "
        "DIR/wider-face (WIDER_<split>/images, wider_face_split, eval_tools/ground_truth)",
    )


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "output folder")
    check_output_dir(args.published, "--published")
    root = make_demo_data(Path(args.out), images=args.images, seed=args.seed, val_images=args.val_images)
    sys.stdout.write(f"demo dataset written to {root}\n")
    if args.published is not None:
        dataset, wider = split_as_published(root, args.published)
        sys.stdout.write(
            f"laid out as published: {dataset} (latents and labels) beside {wider}; try\n"
            f"  python -m nbsrc check-data {dataset} --images_root {args.published}\n"
        )
    return 0
