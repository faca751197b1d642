"""``python -m nbsrc export``: write a checkpoint (default: the published MobileNet-0.25 detector) as an ONNX or
TorchScript file with its config inside (`nbsrc.export`). ``detect --weight FILE.onnx`` runs it with onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nbsrc.commands import check_output_file
from nbsrc.export import FORMATS, export_checkpoint, format_of
from nbsrc.weights import PUBLISHED_DETECTOR, PUBLISHED_PRESET

HELP = "export a checkpoint to ONNX or TorchScript (config inside the file)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weight",
        "-m",
        default=None,
        help="checkpoint: ours, or a published state dict (mobilenet0.25_Final.pth, 2-class .pth); default: the "
        "published MobileNet-0.25 detector shipped with nbsrc (preset mnet-biubug6)",
    )
    parser.add_argument(
        "--preset", default=None, help="preset of a published state dict (inferred from its keys when omitted)"
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        default=None,
        help="onnx | torchscript (default: told by the --out suffix: .onnx, or .pt / .ts / .torchscript)",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write, e.g. retinaface.onnx")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="input size the graph is traced at (pixels; latent cells for latent models); the file takes any size",
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip running the written file against the PyTorch model (done by default, at two input sizes)",
    )


def run(args: argparse.Namespace) -> int:
    # Bad options stop here, before the checkpoint is read.
    if args.fmt is not None and args.fmt not in FORMATS:
        raise ValueError(f"--format {args.fmt}: unknown export format (expected one of {', '.join(FORMATS)})")
    fmt = format_of(args.out, args.fmt)
    check_output_file(args.out, "--out")
    if args.size is not None and min(args.size) < 1:
        raise ValueError(f"--size {args.size[0]} {args.size[1]}: expected two sizes >= 1")
    weight, preset = args.weight, args.preset
    if weight is None:
        if preset not in (None, PUBLISHED_PRESET):
            raise ValueError(f"--preset {preset} needs --weight (without it: the published {PUBLISHED_PRESET})")
        weight, preset = PUBLISHED_DETECTOR, PUBLISHED_PRESET
        logger.info("no --weight: exporting the published RetinaFace MobileNet-0.25 detector shipped with nbsrc")
    out = export_checkpoint(
        weight, args.out, fmt, preset=preset, size=tuple(args.size) if args.size else None, check=args.check
    )
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0
