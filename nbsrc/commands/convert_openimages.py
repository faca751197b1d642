"""``python -m nbsrc convert-openimages CSV OUT.txt [--dedup-iou X] [--no-clip] [--keep-degenerate]``."""

from __future__ import annotations

import argparse
import sys

from nbsrc.commands import check_output_file
from nbsrc.data.readers.openimages import ConversionReport, convert_openimages
from nbsrc.data.records import CLASS_NAMES

HELP = "Open Images CSV -> 2-class label file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", help="Open Images box CSV (ImageID, XMin, XMax, YMin, YMax, ClassName or LabelName)")
    parser.add_argument("out", help="output 2-class label file ('# <ImageID>.jpg' then 'cls x y w h' normalized)")
    parser.add_argument(
        "--dedup-iou",
        type=float,
        default=None,
        metavar="X",
        help="drop a box overlapping an earlier box of the same class with IoU >= X (default: keep duplicates)",
    )
    parser.add_argument("--no-clip", action="store_true", help="do not clip boxes to [0, 1]")
    parser.add_argument("--keep-degenerate", action="store_true", help="keep boxes with width or height <= 0")


def format_report(report: ConversionReport, csv_path: str, out_path: str) -> str:
    """A few lines for the terminal summarising a `ConversionReport`."""
    per_class = ", ".join(f"{n} {CLASS_NAMES.get(c, f'class {c}')}" for c, n in report.boxes.items()) or "none"
    lines = [
        f"{csv_path} -> {out_path}",
        f"  images: {report.images}  boxes: {report.total_boxes} ({per_class})",
        f"  clipped: {report.clipped}  dropped degenerate: {report.degenerate}  dropped duplicates: "
        f"{report.duplicates}  images emptied by cleaning: {report.emptied_images}",
    ]
    if report.unmapped:
        other = ", ".join(f"{name}: {n}" for name, n in sorted(report.unmapped.items(), key=lambda kv: -kv[1]))
        lines.append(f"  rows of other classes left out: {other} ({report.unmapped_images} image(s) had only those)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.dedup_iou is not None and not 0.0 < args.dedup_iou <= 1.0:
        raise ValueError(f"--dedup-iou must be in (0, 1], got {args.dedup_iou}")
    check_output_file(args.out, "output file")
    report = convert_openimages(
        args.csv,
        args.out,
        clip=not args.no_clip,
        drop_degenerate_boxes=not args.keep_degenerate,
        dedup_iou=args.dedup_iou,
    )
    sys.stdout.write(format_report(report, args.csv, args.out))
    return 0
