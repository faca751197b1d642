"""``python -m nbsrc predict --weight W --dataset_root ROOT --split val [--latent_suffix S | --all-rates] --out DIR``.

Runs a checkpoint over every labelled image of a split (``--max_images N``: the first N) and writes WIDER result
files in original-image pixels (``<out>/<event>/<basename>.txt``; ``<out>/latent_<rate>/...`` per rate with
``--all-rates``), skipping those that exist. Defaults are the published evaluation settings (confidence 0.02,
NMS 0.4); ``eval.*`` and ``data.*`` ``key=value`` overrides may stand anywhere among the options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nbsrc.commands import check_output_dir, check_output_file
from nbsrc.detector import Detector, check_thresholds
from nbsrc.evaluation.predict import predict_split
from nbsrc.utils import atomic_write_text

HELP = "run a checkpoint over a dataset split and write WIDER result files"
INTERMIXED = True  # key=value overrides anywhere among the options (`nbsrc.cli` parses with parse_intermixed_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", "-m", required=True, type=Path, help="checkpoint (ours or a published state dict)")
    parser.add_argument("--preset", default=None, help="preset of a published state dict (inferred when omitted)")
    parser.add_argument("--dataset_root", "--dataset-root", required=True, type=Path, help="folder with the split")
    parser.add_argument("--split", default="val", help="split folder (default val)")
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument(
        "--latent_suffix",
        "--latent-suffix",
        default=None,
        help="rate file of a latent model (default: the checkpoint's, e.g. latent_75.npy)",
    )
    rates.add_argument(
        "--all-rates", "--all_rates", action="store_true", help="every available rate, into <out>/latent_<rate>/"
    )
    parser.add_argument("--out", required=True, type=Path, help="result folder")
    parser.add_argument(
        "--conf", "--confidence_threshold", dest="conf", type=float, default=0.02, help="score threshold"
    )
    parser.add_argument("--nms", "--nms_threshold", dest="nms", type=float, default=0.4, help="NMS IoU threshold")
    parser.add_argument("--top_k", type=int, default=None, help="candidates before NMS (default: config, 5000)")
    parser.add_argument("--keep_top_k", type=int, default=None, help="detections kept per image (default: config, 750)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--num_workers", "--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    parser.add_argument("--no-resume", action="store_true", help="rewrite files that exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", type=Path, default=None, help="write the run statistics as JSON")
    parser.add_argument(
        "--test_scale",
        "--test-scale",
        choices=("square", "original", "mxnet"),
        default=None,
        help="RGB input size: square (data.image_size) | original (own size) | mxnet (short side 1600, long <= 2150);"
        " default: the checkpoint config's eval.test_scale (square)",
    )
    parser.add_argument(
        "--max_images",
        "--max-images",
        type=int,
        default=None,
        help="predict only the first N labelled images (default: all; the checkpoint's training cap is not used)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="eval.* and data.* config overrides, e.g. eval.test_scale=original data.on_error=skip",
    )


# data settings that predict's own options decide
_FLAG_KEYS = {"data.dataset_root": "--dataset_root", "data.all_rates": "--all-rates"}


def prediction_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` config overrides of a predict command line: its ``eval.*`` / ``data.*`` pairs (others,
    and those a predict option decides, raise `ValueError`), then ``--test_scale`` and ``--max_images``."""
    pairs = list(args.overrides or [])
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        key = key.strip()
        if not sep or not key.startswith(("eval.", "data.")):
            raise ValueError(
                f"predict takes eval.* and data.* config overrides (key=value) only, got {pair!r}; the model and "
                "its anchors come from the checkpoint"
            )
        if key in _FLAG_KEYS:
            raise ValueError(f"override {pair!r}: give {_FLAG_KEYS[key]} instead")
    if args.test_scale is not None:
        pairs.append(f"eval.test_scale={args.test_scale}")
    if args.max_images is not None:
        if args.max_images < 1:
            raise ValueError(f"--max_images must be >= 1, got {args.max_images}")
        pairs.append(f"data.max_images={args.max_images}")
    return pairs


def run(args: argparse.Namespace) -> int:
    check_thresholds(
        {"conf": "--conf", "nms": "--nms", "top_k": "--top_k", "keep_top_k": "--keep_top_k"},
        conf=args.conf,
        nms=args.nms,
        top_k=args.top_k,
        keep_top_k=args.keep_top_k,
    )
    check_output_dir(args.out, "--out")
    check_output_file(args.json, "--json")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if not args.weight.is_file():
        raise FileNotFoundError(f"checkpoint {args.weight} not found")
    pairs = prediction_overrides(args)
    detector = Detector.from_checkpoint(args.weight, preset=args.preset, device=args.device)
    detector.cfg = detector.cfg.override_pairs(pairs)
    if (args.latent_suffix or args.all_rates) and detector.model.input_kind != "latent":
        raise ValueError(f"{args.weight}: --latent_suffix / --all-rates need a latent model, this one takes RGB images")
    results = predict_split(
        detector,
        args.dataset_root,
        args.out,
        split=args.split,
        latent_suffix=args.latent_suffix,
        all_rates=args.all_rates,
        conf=args.conf,
        nms=args.nms,
        top_k=args.top_k,
        keep_top_k=args.keep_top_k,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        amp=not args.no_amp,
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    for stats in results.values():
        sys.stdout.write(stats.summary() + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps({k or "all": v.to_dict() for k, v in results.items()}, indent=2) + "\n")
    return 0
