"""``python -m nbsrc kaggle-build --owner USER ...``: push-ready Kaggle kernels (usage: `nbsrc.kaggle`)."""

from __future__ import annotations

import argparse
import sys

from nbsrc import kaggle, nbrun
from nbsrc.commands import check_output_dir

HELP = "write push-ready Kaggle kernels and the code dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", required=True, help="Kaggle user name owning the kernels and the code dataset")
    parser.add_argument(
        "--dataset",
        help="the latent dataset as OWNER/SLUG (default: --owner's retina-modify); another SLUG becomes dataset_root",
    )
    parser.add_argument(
        "--wider",
        help="a WIDER FACE copy on Kaggle as OWNER/SLUG, attached to every kernel (original sizes, ground truth)",
    )
    parser.add_argument("--params", help="YAML file of notebook parameters to bake in")
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="one parameter to bake in, value read as YAML (repeatable; overrides --params)",
    )
    parser.add_argument("--notebooks", nargs="*", help="only these notebooks (default: all)")
    parser.add_argument("--out", default="kaggle/build", help="build folder (default kaggle/build)")
    parser.add_argument("--public", action="store_true", help="make the kernels public (default private)")


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")
    params = nbrun.load_params_file(args.params) if args.params else {}
    params = nbrun.merge_parameters(params, nbrun.parse_param_pairs(args.param))  # -p wins, in sections too
    result = kaggle.build(
        args.owner,
        args.out,
        dataset=args.dataset,
        wider=args.wider,
        parameters=params,
        notebooks=args.notebooks or None,
        private=not args.public,
    )
    lines = [f"code dataset: {result['code_dataset']}"]
    lines += [f"kernel {name}: {folder}" for name, folder in result["kernels"].items()]
    lines += [f"push with ({result['push']}):"] + [f"  {command}" for command in result["commands"]]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
