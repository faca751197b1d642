"""``python -m nbsrc run-notebooks [NAMES...] [--params FILE] [-p KEY VALUE ...] --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nbsrc import nbrun

HELP = "execute notebooks headless with papermill"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names", nargs="*", help="notebooks to run (01, data_inspection, 01_data_inspection); default all"
    )
    parser.add_argument("--params", help="YAML file of parameters (top-level keys; a notebook name holds its own)")
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="one parameter, value read as YAML (repeatable; overrides --params)",
    )
    parser.add_argument("--out", default="runs/notebooks", help="run folder (default runs/notebooks)")
    parser.add_argument("--notebooks-dir", help="folder of NN_name.py notebooks (default: the checkout's notebooks/)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument("--cell-timeout", type=int, help="seconds one cell may run")
    parser.add_argument("--log-output", action="store_true", help="stream cell output to the log")


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: one per notebook, then where the files are."""
    lines = []
    for entry in summary["notebooks"]:
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in entry.get("metrics", {}).items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        )
        duration = f"{entry['duration_s']:7.1f} s" if "duration_s" in entry else "        -"
        lines.append(f"  {entry['name']:<28} {entry['status']:<8} {duration}  {metrics}")
    run_dir = Path(summary["run_dir"])
    lines.append(f"executed notebooks + HTML: {run_dir}/NN_name.ipynb, .html")
    if (run_dir / "plots").is_dir():
        lines.append(f"plots: {run_dir / 'plots'}")
    lines.append(f"metrics: {run_dir / 'summary.json'} and {run_dir / 'metrics'}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    params = nbrun.load_params_file(args.params) if args.params else {}
    params = nbrun.merge_parameters(params, nbrun.parse_param_pairs(args.param))  # -p wins, in sections too
    try:
        summary = nbrun.run_notebooks(
            args.names or None,
            params,
            args.out,
            notebooks_dir=args.notebooks_dir,
            html=not args.no_html,
            cell_timeout=args.cell_timeout,
            log_output=args.log_output,
        )
    except nbrun.NotebookExecutionError:
        summary_path = Path(args.out) / "summary.json"
        if summary_path.is_file():
            sys.stdout.write(format_summary(json.loads(summary_path.read_text())))
        raise
    sys.stdout.write(format_summary(summary))
    return 0
