"""``python -m nbsrc image-sizes DIR --out image_sizes.csv``: the original sizes of every image below DIR.

Sizes are read from the file headers only. The CSV (``name,width,height``, names relative to DIR, e.g.
``0--Parade/0_Parade_marchingband_1_5.jpg``) is what ``data.sizes_csv`` takes, to map labels into a latent's
frame without the images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nbsrc.commands import check_output_file
from nbsrc.data.image_sizes import write_sizes_csv

HELP = "write name,width,height of every image in a folder (headers only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="folder of images, searched recursively (e.g. WIDER_val/images)")
    parser.add_argument(
        "--out", type=Path, default=Path("image_sizes.csv"), help="CSV to write (default image_sizes.csv)"
    )


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    count = write_sizes_csv(args.images, args.out)
    sys.stdout.write(f"{args.out}: sizes of {count:,} images below {args.images}\n")
    return 0
