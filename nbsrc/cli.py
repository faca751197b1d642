"""``python -m nbsrc <command>``: every subcommand lives in ``nbsrc/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the
command being run, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys

from nbsrc.utils import setup_logging

__all__ = ["COMMANDS", "describe_error", "main"]

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("nbsrc.commands.demo", "build the demo dataset and run the four notebooks on it (the main job)"),
    "detect": ("nbsrc.commands.detect", "detect faces on one image or one latent"),
    "export": ("nbsrc.commands.export", "export a checkpoint to ONNX or TorchScript (config inside the file)"),
    "train": ("nbsrc.commands.train", "train RetinaFace (latent or RGB) on a dataset"),
    "predict": ("nbsrc.commands.predict", "run a checkpoint over a dataset split and write WIDER result files"),
    "evaluate": ("nbsrc.commands.evaluate", "WIDER FACE Easy/Medium/Hard AP of a prediction folder"),
    "evaluate-2cls": ("nbsrc.commands.evaluate_2cls", "face/person AP and mAP of 2-class predictions"),
    "evaluate-rates": ("nbsrc.commands.evaluate_rates", "WIDER AP of a latent model at every JPEG AI rate"),
    "make-demo-data": ("nbsrc.commands.make_demo_data", "build the deterministic demo dataset"),
    "check-data": ("nbsrc.commands.check_data", "validate a dataset and report every defect with file and line"),
    "image-sizes": ("nbsrc.commands.image_sizes", "write name,width,height of every image in a folder (headers only)"),
    "convert-openimages": ("nbsrc.commands.convert_openimages", "Open Images CSV -> 2-class label file"),
    "run-notebooks": ("nbsrc.commands.run_notebooks", "execute notebooks headless with papermill"),
    "kaggle-build": ("nbsrc.commands.kaggle_build", "write push-ready Kaggle kernels and the code dataset"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<20} {help_}" for name, (_, help_) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="python -m nbsrc",
        description="RetinaFace on JPEG AI latents and RGB: data, training, WIDER FACE evaluation, notebooks.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'python -m nbsrc COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("command", nargs="?", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        hint = difflib.get_close_matches(name, list(COMMANDS), n=1)
        top.error(f"unknown command {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m nbsrc {name}", description=help_)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    module.add_arguments(parser)
    # INTERMIXED: the command's positional key=value overrides may stand anywhere among its options
    args = (parser.parse_intermixed_args if getattr(module, "INTERMIXED", False) else parser.parse_args)(argv[1:])
    setup_logging(args.log_level.upper())
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError, RuntimeError, KeyError, FloatingPointError) as exc:
        # bad input or a diverged run: one line naming what is wrong, no stack trace from deep inside a library
        logging.getLogger("nbsrc").debug("error details", exc_info=True)
        sys.stderr.write(f"error: {describe_error(exc)}\n")
        return 2


# What a path error means for the user of a command (the OS message says what the path is, not what was expected).
_OS_HINTS: dict[type, str] = {
    IsADirectoryError: "is a directory (expected a file)",
    NotADirectoryError: "a component of the path is a file (expected a directory)",
}


def describe_error(exc: BaseException) -> str:
    """One line for `exc`: a system `OSError` (with a file name) as ``<path>: <what>``, naming what was expected for
    the common path mix-ups; any other error as its own message."""
    if not isinstance(exc, OSError) or exc.filename is None:
        return str(exc)
    what = _OS_HINTS.get(type(exc)) or exc.strerror or type(exc).__name__
    if isinstance(exc, FileExistsError) and not os.path.isdir(exc.filename):
        what = "exists and is not a directory (expected a directory, or a path that does not exist yet)"
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {what}"


if __name__ == "__main__":
    raise SystemExit(main())
