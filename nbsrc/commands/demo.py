"""``python -m nbsrc demo [--out runs/demo]``: the main job.

Builds the demo dataset (`nbsrc.data.demo`), then executes the four notebooks on it headless through
`nbsrc.nbrun` (latent preset, training sized for a CPU), and says where the executed notebooks, HTML exports,
plots and metrics are. The defaults (24 + 8 images) finish in a few minutes on 2 CPU cores:

- with the ImageNet MobileNet x0.25 file (``mobilenetV1X0.25_pretrain.tar`` in ``./weights`` or the torch hub
  cache, or ``--pretrained PATH``): ``latent-mnet`` (pixel-shuffle bridge into the pretrained MobileNet blocks)
  trained 160 epochs on random 12x12-cell latent crops with AdamW (peak lr 0.004), a detector that finds most demo faces;
- without it: ``latent-r18`` from scratch, 80 epochs, a detector that has started to find them.

``--preset`` and ``--epochs`` choose otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

HELP = "build the demo dataset and run the four notebooks on it (the main job)"

logger = logging.getLogger(__name__)

DEMO_IMAGES = 24  # demo training images (a third as many validation images)
_SHARED = {  # settings under which a latent model learns in minutes on a CPU
    "model.out_channels": 16,
    "model.bridge": "pixelshuffle",
    "data.latent_crop": 12,
    "loss.landm_weight": 0.25,
    "train.optimizer": "adamw",
    "train.weight_decay": 1e-4,
    "train.schedule": "cosine",
    "train.keep_epochs": 1,
}
DEMO_SETUPS = {  # preset -> (epochs, batch size, peak lr, config settings)
    "latent-mnet": (160, 8, 4e-3, {**_SHARED, "train.eval_every": 40}),  # with ImageNet weights
    "latent-r18": (80, 4, 2e-3, {**_SHARED, "train.eval_every": 20}),  # from scratch
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument(
        "--images",
        type=int,
        default=DEMO_IMAGES,
        help=f"demo training images; validation gets a third as many (default {DEMO_IMAGES})",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="latent preset to train (default: latent-mnet with ImageNet weights, else latent-r18)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="ImageNet MobileNet x0.25 file (mobilenetV1X0.25_pretrain.tar; default: ./weights or the torch hub cache)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 160 / 80, see above)")
    parser.add_argument(
        "--max-images", type=int, default=0, help="train on the first N images of each split (default 0: all)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 8 / 4)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.004 / 0.002)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long notebooks (a check that all of it runs)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the log")


def choose_training(args: argparse.Namespace) -> tuple[str, str, int, int, float, dict]:
    """``(preset, pretrained, epochs, batch size, peak lr, config settings)`` of the demo's training run."""
    from nbsrc import paths
    from nbsrc.model.build import MOBILENET_FILE

    pretrained = args.pretrained
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"{pretrained}: --pretrained file not found ({MOBILENET_FILE} expected)")
    if pretrained is None:
        pretrained = paths.resolve_pretrained("auto", "mobilenet0.25")
        if pretrained == "auto":
            pretrained = None
            if args.preset in (None, "latent-mnet"):
                fallback = "trains latent-r18 from scratch" if args.preset is None else "trains it from scratch"
                logger.warning(
                    "no ImageNet MobileNet weights (%s is neither in the torch hub cache nor in ./weights; pass "
                    "--pretrained PATH); the demo %s",
                    MOBILENET_FILE,
                    fallback,
                )
    preset = args.preset or ("latent-mnet" if pretrained else "latent-r18")
    epochs, batch_size, lr, settings = DEMO_SETUPS.get(preset, DEMO_SETUPS["latent-r18"])
    pretrained = pretrained if pretrained and preset.endswith("mnet") else "auto"
    return preset, pretrained, args.epochs or epochs, args.batch_size or batch_size, args.lr or lr, settings


def demo_parameters(args: argparse.Namespace, dataset_root: Path) -> dict:
    """Parameters for the four notebooks (top level: shared; per notebook: its own)."""
    preset, pretrained, epochs, batch_size, lr, settings = choose_training(args)
    return {
        "dataset_root": str(dataset_root),
        "smoke": bool(args.smoke),
        "02_anchor_statistics": {"preset": preset, "wider_gt_dir": str(dataset_root / "val" / "ground_truth")},
        "03_training": {
            "preset": preset,
            "pretrained": pretrained,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "device": args.device,
            "num_workers": 0,
            "max_images": args.max_images or None,
            "overrides": " ".join(f"{key}={value}" for key, value in settings.items()),
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
