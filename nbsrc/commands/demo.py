"""``python -m nbsrc demo [--out runs/demo]``: the main job.

Builds the demo dataset (`nbsrc.data.demo`) and runs the four notebooks on it headless (`nbsrc.nbrun`), in a few
minutes on 2 CPU cores with the defaults (24 + 8 images). It trains ``latent-mnet`` 160 epochs on 12x12-cell latent
crops with AdamW, its backbone from biubug6's ImageNet MobileNet x0.25 (``./weights``, the torch hub cache, else the
copy shipped in `nbsrc.weights`: no download); ``--preset latent-r18`` trains the pruned ResNet-18 instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from nbsrc import nbrun
from nbsrc.commands.run_notebooks import format_summary
from nbsrc.config import get_preset
from nbsrc.data.demo import demo_dataset
from nbsrc.pretrained import resolve_pretrained
from nbsrc.weights import IMAGENET_MOBILENET

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
DEMO_PRESET = "latent-mnet"
DEMO_SETUPS = {  # preset -> (epochs, batch size, peak lr, config settings)
    "latent-mnet": (160, 8, 4e-3, {**_SHARED, "train.eval_every": 40}),  # from the ImageNet MobileNet
    "latent-r18": (80, 4, 2e-3, {**_SHARED, "train.eval_every": 20}),  # from scratch (or a cached torchvision file)
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
        default=DEMO_PRESET,
        help=f"latent preset to train (default {DEMO_PRESET}; latent-r18: the pruned ResNet-18, 80 epochs)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="MobileNet backbone: a file (e.g. mobilenetV1X0.25_pretrain.tar) or 'none' to train from scratch "
        "(default: ./weights or the torch hub cache, else the ImageNet copy shipped with nbsrc)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 160; 80 for latent-r18)")
    parser.add_argument(
        "--max-images", type=int, default=0, help="train on the first N images of each split (default 0: all)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch size (default 8; 4 for latent-r18)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 0.004; 0.002 for latent-r18)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long notebooks (a check that all of it runs)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the log")


def choose_training(args: argparse.Namespace) -> tuple[str, str, int, int, float, dict]:
    """``(preset, pretrained, epochs, batch size, peak lr, config settings)`` of the demo's training run: a MobileNet
    preset gets an absolute backbone path or ``none``, a ResNet preset ``auto`` (torchvision's cached weights) or
    ``none``."""
    preset = args.preset or DEMO_PRESET
    backbone = get_preset(preset).model.backbone
    pretrained = args.pretrained
    if pretrained is not None and pretrained != "none" and not Path(pretrained).is_file():
        raise FileNotFoundError(f"{pretrained}: --pretrained file not found (a MobileNet x0.25 backbone, or 'none')")
    if pretrained == "none":
        weights = "from scratch (--pretrained none)"
    elif backbone != "mobilenet0.25":
        pretrained = "auto"  # a ResNet never receives a MobileNet file
        weights = f"with torchvision's ImageNet {backbone} if it is in the torch hub cache, else from scratch"
    else:
        if pretrained is None:
            pretrained = resolve_pretrained("auto", backbone)
        pretrained = str(Path(pretrained).resolve())  # absolute: the notebooks run in the run folder
        shipped = " (the ImageNet copy shipped with nbsrc)" if Path(pretrained) == IMAGENET_MOBILENET else ""
        weights = f"from the backbone {pretrained}{shipped}"
    logger.info("the demo trains %s %s", preset, weights)
    epochs, batch_size, lr, settings = DEMO_SETUPS.get(preset, DEMO_SETUPS["latent-r18"])
    return preset, pretrained, args.epochs or epochs, args.batch_size or batch_size, args.lr or lr, settings


def demo_parameters(args: argparse.Namespace, dataset_root: Path) -> dict:
    """Parameters for the four notebooks (top level: shared; per notebook: its own)."""
    preset, pretrained, epochs, batch_size, lr, settings = choose_training(args)
    return {
        "dataset_root": str(dataset_root),
        "smoke": bool(args.smoke),
        "02_anchor_statistics": {"preset": preset},  # the WIDER FACE val faces (the shipped ground truth)
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
    started = time.perf_counter()
    out = Path(args.out).resolve()  # notebooks run with the run folder as working directory
    dataset_root = demo_dataset(args.images, seed=0, root=out / "data")
    sys.stdout.write(f"demo dataset: {dataset_root} ({time.perf_counter() - started:.0f} s)\n")
    summary = nbrun.run_notebooks(None, demo_parameters(args, dataset_root), out, log_output=args.log_output)
    sys.stdout.write(format_summary(summary))
    sys.stdout.write(f"demo finished in {time.perf_counter() - started:.0f} s; open {out}/NN_name.html to read it\n")
    return 0
