"""Which WIDER FACE val ground truth an evaluation uses: one resolver for the notebooks and the commands.

The ground truth is a folder holding the four official files (`nbsrc.data.readers.wider_mat.GT_FILES`).
`resolve_gt_dir` looks, in this order, at

1. the folder given (config ``eval.gt_dir``, the notebooks' ``gt_dir``, the commands' ``--gt``);
2. ``<dataset_root>/<split>/ground_truth`` when it exists (the demo dataset carries its own);
3. folders holding the four files among the Kaggle inputs (on Kaggle) and beside the dataset (its parent, or
   the one above when the parent wraps the dataset alone), e.g. a WIDER FACE copy's
   ``eval_tools/ground_truth/``; several found must hold identical files, else an error lists them;
4. the official files shipped with nbsrc (`SHIPPED_GT_DIR`).

A folder of rule 1 or 2 must hold the four files. The str of the returned `GroundTruthSource` is the line the
notebooks and commands print: ``ground truth: <folder> (<where it came from>)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nbsrc import paths
from nbsrc.data.readers.wider_mat import GT_FILES
from nbsrc.folder_search import find_folders

__all__ = [
    "SHIPPED_GT_DIR",
    "GroundTruthSource",
    "check_gt_folder",
    "find_gt_folders",
    "resolve_gt_dir",
]

logger = logging.getLogger(__name__)

SHIPPED_GT_DIR = Path(__file__).resolve().with_name("wider_val_gt")  # the official WIDER FACE val files
SKIPPED_FOLDERS = ("images", "latent", "latents", "__pycache__", "node_modules")  # per-image trees hold no ground truth
INPUT_DEPTH = 6  # <input>/datasets/<owner>/<slug>/<top>/eval_tools/ground_truth: 6 levels below the input mount
BESIDE_DEPTH = 4  # <parent>/<sibling>/<top>/eval_tools/ground_truth: 4 levels below the folder beside the dataset
MAX_FOLDERS = 5000  # folders listed per search at most (bounds the time on large trees)
HOW_TO_CHOOSE = "set gt_dir (config eval.gt_dir, the notebooks' gt_dir parameter, the commands' --gt)"


@dataclass(frozen=True)
class GroundTruthSource:
    """A resolved ground-truth folder."""

    folder: Path
    kind: str  # the rule that chose it: given | dataset | found | shipped
    description: str  # where it came from, in words ("gt_dir", "the dataset's val/ground_truth", ...)

    def __str__(self) -> str:
        return f"ground truth: {self.folder} ({self.description})"


def check_gt_folder(folder: str | Path, what: str = "ground-truth folder") -> Path:
    """`folder` when it holds the four files, else `FileNotFoundError` naming the folder and the missing files."""
    folder = Path(folder)
    expected = f"expected a folder holding {', '.join(GT_FILES)}"
    if not folder.exists():
        raise FileNotFoundError(f"{what} {folder}: no such folder ({expected})")
    if not folder.is_dir():
        hint = f"; its folder {folder.parent}?" if folder.name in GT_FILES else ""
        raise FileNotFoundError(f"{what} {folder}: not a folder ({expected}{hint})")
    missing = [name for name in GT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{what} {folder} lacks {', '.join(missing)} ({expected})")
    return folder


def _holds_gt_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in GT_FILES)


def find_gt_folders(root: str | Path, max_depth: int, max_folders: int = MAX_FOLDERS) -> list[Path]:
    """Folders at most `max_depth` levels below `root` (itself included) holding the four files, sorted.

    Not entered: hidden folders, `SKIPPED_FOLDERS`, folders below a match. Copies of nbsrc's own files (the
    package's source attached as a Kaggle input) are left out.
    """
    found = find_folders(root, _holds_gt_files, max_depth=max_depth, skip=SKIPPED_FOLDERS, max_folders=max_folders)
    shipped_copy = ("nbsrc", "evaluation", SHIPPED_GT_DIR.name)
    return sorted(folder for folder in found if folder.parts[-3:] != shipped_copy)


def _digest(folder: Path) -> str:
    """SHA-1 over the four files' bytes."""
    digest = hashlib.sha1()
    for name in GT_FILES:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def _search(dataset_root: Path | None, input_root: Path | None) -> list[tuple[Path, str]]:
    """(folder, where) of every folder found among the inputs and beside the dataset (rule 3)."""
    found: dict[Path, str] = {}
    if input_root is not None and input_root.is_dir():
        for folder in find_gt_folders(input_root, INPUT_DEPTH):
            found.setdefault(folder.resolve(), "found among the Kaggle inputs")
    if dataset_root is not None:
        base = _beside(dataset_root)
        if base is not None:
            for folder in find_gt_folders(base, BESIDE_DEPTH):
                found.setdefault(folder.resolve(), "found beside the dataset")
    return sorted(found.items())


def _beside(dataset_root: Path) -> Path | None:
    """The folder searched beside a dataset: its parent, or the parent's parent when the parent wraps the dataset
    alone (an uploaded top folder, ``<input>/retina-modify/retina-modify``)."""
    parent = dataset_root.parent
    if parent == dataset_root or not parent.is_dir():
        return None
    try:
        entries = [e.name for e in os.scandir(parent) if not e.name.startswith(".")]
    except OSError:
        return parent
    if entries == [dataset_root.name] and parent.parent != parent:
        return parent.parent
    return parent


def resolve_gt_dir(
    gt_dir: str | Path | None = None,
    dataset_root: str | Path | None = None,
    split: str = "val",
    *,
    search_inputs: bool | None = None,
    input_root: str | Path | None = None,
) -> GroundTruthSource:
    """The WIDER val ground-truth folder to evaluate with (the order is in the module docstring).

    Args:
        gt_dir: an explicit folder (relative names are also looked up among the Kaggle inputs on Kaggle).
        dataset_root: the dataset evaluated (None: the inputs, then the shipped files).
        search_inputs: search the Kaggle inputs (default: when on Kaggle, or when `input_root` is given).
        input_root: the input mount searched (default `nbsrc.paths.kaggle_input`).
    Raises:
        FileNotFoundError: a folder of rule 1 or 2, or the shipped one, lacks some of the four files (named).
        ValueError: several folders found hold different files (listed).
    """
    source = _resolve(gt_dir, dataset_root, split, search_inputs, input_root)
    logger.debug("%s", source)
    return source


def _resolve(gt_dir, dataset_root, split: str, search_inputs: bool | None, input_root) -> GroundTruthSource:
    if gt_dir is not None and str(gt_dir) != "":
        try:
            folder = paths.resolve_optional_path(gt_dir, "gt_dir")
        except FileNotFoundError:
            folder = Path(gt_dir).expanduser()  # the check below names what is expected
        return GroundTruthSource(check_gt_folder(folder, "gt_dir"), "given", "gt_dir")

    root = Path(dataset_root).expanduser().resolve() if dataset_root is not None else None
    if root is not None and (root / split / "ground_truth").is_dir():
        own = check_gt_folder(root / split / "ground_truth", "ground-truth folder")
        return GroundTruthSource(own, "dataset", f"the dataset's {split}/ground_truth")

    if search_inputs is None:
        search_inputs = input_root is not None or paths.on_kaggle()
    inputs = (Path(input_root) if input_root is not None else paths.kaggle_input()) if search_inputs else None
    candidates = _search(root, inputs)
    if candidates:
        if len({_digest(folder) for folder, _ in candidates}) > 1:
            listed = "; ".join(f"{folder} ({where})" for folder, where in candidates)
            raise ValueError(
                f"{len(candidates)} WIDER ground-truth folders with different files were found: {listed}; "
                f"{HOW_TO_CHOOSE} to the one to use"
            )
        folder, where = candidates[0]
        if len(candidates) > 1:
            where += f"; identical to {', '.join(str(f) for f, _ in candidates[1:])}"
        return GroundTruthSource(folder, "found", where)

    shipped = check_gt_folder(SHIPPED_GT_DIR, "shipped ground-truth folder")
    return GroundTruthSource(shipped, "shipped", "the official WIDER FACE val files shipped with nbsrc")
