"""``python -m nbsrc check-data ROOT``: validate a dataset and report every defect with file and line
(`nbsrc.data.validate`). Exit status 0 when nothing would stop training, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from nbsrc import paths
from nbsrc.data.demo import resolve_dataset_root
from nbsrc.data.validate import validate_dataset

HELP = "validate a dataset and report every defect with file and line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", nargs="?", help="dataset root (holding train/, val/) or one split folder")
    parser.add_argument(
        "--dataset_root", "--dataset-root", dest="dataset_root", default=None, help="the same as ROOT (either spelling)"
    )
    parser.add_argument(
        "--split", action="append", default=None, help="split folder to check (repeatable; default all)"
    )
    parser.add_argument(
        "--latent_suffix",
        "--latent-suffix",
        dest="latent_suffix",
        default="latent_75.npy",
        help="rate file of nested latents (default latent_75.npy); 'all' checks every rate",
    )
    parser.add_argument("--labels", default=None, help="label file or folder (default: found in each split)")
    parser.add_argument("--sizes_csv", "--sizes-csv", dest="sizes_csv", default=None, help="CSV name,width,height")
    parser.add_argument(
        "--images_root",
        "--images-root",
        dest="images_root",
        default=None,
        help="WIDER FACE images for the original sizes (a folder holding WIDER_<split>/images; on Kaggle: found)",
    )
    parser.add_argument(
        "--label_frame",
        "--label-frame",
        dest="label_frame",
        type=int,
        default=None,
        help="labels are already in this square frame (e.g. 640)",
    )
    parser.add_argument(
        "--resize_policy",
        "--resize-policy",
        dest="resize_policy",
        choices=("stretch", "letterbox"),
        default="stretch",
        help="how originals became the network frame",
    )
    parser.add_argument("--channels", type=int, default=256, help="latent channels (default 256)")
    parser.add_argument("--quick", action="store_true", help="read only .npy headers (skip the NaN/Inf scan)")
    parser.add_argument(
        "--max-per-kind",
        dest="max_per_kind",
        type=int,
        default=50,
        help="defect lines shown per kind (default 50; 0 = all)",
    )


def run(args: argparse.Namespace) -> int:
    if args.root is not None and args.dataset_root is not None and args.root != args.dataset_root:
        raise ValueError(f"two dataset roots given: ROOT {args.root!r} and --dataset_root {args.dataset_root!r}")
    root = args.root if args.root is not None else args.dataset_root
    if root is None:
        raise ValueError("no dataset root: give it as ROOT or --dataset_root ROOT")
    root = resolve_dataset_root(root)  # an uploaded top folder inside is entered
    images_root = paths.resolve_images_root(args.images_root)
    report = validate_dataset(
        root,
        args.split,
        labels=args.labels,
        latent_suffix=None if args.latent_suffix == "all" else args.latent_suffix,
        channels=args.channels,
        label_frame=args.label_frame,
        resize_policy=args.resize_policy,
        sizes_csv=args.sizes_csv,
        images_root=images_root,
        sizes_cache=paths.cache_dir(),
        check_values=not args.quick,
    )
    sys.stdout.write(report.to_text(max_per_kind=args.max_per_kind or None) + "\n")
    return 0 if report.ok else 1
