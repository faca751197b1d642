"""``python -m nbsrc demo [--out runs/demo]``: the main job.

Builds the demo dataset (`nbsrc.data.demo`), then executes the four notebooks on it headless through
`nbsrc.nbrun` (latent preset, training sized for a CPU), and says where the executed notebooks, HTML exports,
plots and metrics are. The defaults (24 + 8 images; a narrow latent-r18 trained 80 epochs on random 12x12-cell
latent crops with AdamW) finish in about 6 minutes on 2 CPU cores and give a detector that has started to find
the demo faces; ``--epochs`` trains longer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "build the demo dataset and run the four notebooks on it (the main job)"

DEMO_PRESET = "latent-r18"  # the lightest latent preset
DEMO_IMAGES = 24  # demo training images (a third as many validation images)
DEMO_TRAINING = {  # settings under which a latent model learns in minutes on a CPU
    "model.out_channels": 16,
    "model.bridge": "bilinear",
    "data.latent_crop": 12,
    "loss.landm_weight": 0.25,
    "train.optimizer": "adamw",
    "train.weight_decay": 1e-4,
    "train.schedule": "cosine",
    "train.eval_every": 20,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument(
        "--images",
        type=int,
        default=DEMO_IMAGES,
        help=f"demo training images; validation gets a third as many (default {DEMO_IMAGES})",
    )
    parser.add_argument("--preset", default=DEMO_PRESET, help=f"latent preset to train (default {DEMO_PRESET})")
    parser.add_argument("--epochs", type=int, default=80, help="training epochs (default 80)")
    parser.add_argument(
        "--max-images", type=int, default=0, help="train on the first N images of each split (default 0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--lr", type=float, default=0.002, help="peak learning rate (default 0.002)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long notebooks (a check that all of it runs)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the log")


def demo_parameters(args: argparse.Namespace, dataset_root: Path) -> dict:
    """Parameters for the four notebooks (top level: shared; per notebook: its own)."""
    return {
        "dataset_root": str(dataset_root),
        "smoke": bool(args.smoke),
        "02_anchor_statistics": {"preset": args.preset, "wider_gt_dir": str(dataset_root / "val" / "ground_truth")},
        "03_training": {
            "preset": args.preset,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "device": args.device,
            "num_workers": 0,
            "max_images": args.max_images or None,
            "overrides": " ".join(f"{key}={value}" for key, value in DEMO_TRAINING.items()),
        },
        "04_widerface_evaluation": {"device": args.device},
    }


def run(args: argparse.Namespace) -> int:
    from nbsrc import nbrun, paths
    from nbsrc.commands.run_notebooks import format_summary

    started = time.perf_counter()
    out = Path(args.out).resolve()  # notebooks run with the run folder as working directory
    dataset_root = paths.demo_dataset(args.images, seed=0, root=out / "data")
    sys.stdout.write(f"demo dataset: {dataset_root} ({time.perf_counter() - started:.0f} s)\n")
    summary = nbrun.run_notebooks(None, demo_parameters(args, dataset_root), out, log_output=args.log_output)
    sys.stdout.write(format_summary(summary))
    sys.stdout.write(f"demo finished in {time.perf_counter() - started:.0f} s; open {out}/NN_name.html to read it\n")
    return 0
