"""Where things are: datasets, run folders, checkpoints, and the artifacts notebooks hand to each other.

The only module that knows about Kaggle: there (``KAGGLE_KERNEL_RUN_TYPE`` set) datasets are searched in the
read-only input mount (``<input>/<slug>`` or ``<input>/datasets/<owner>/<slug>``) and outputs go under the working
folder. Locally ``dataset_root=None`` means the demo dataset and outputs go under ``runs/`` of the checkout.

Notebooks pass artifacts through their run folder: ``<run_dir>/metrics/<notebook>.json`` (`save_metrics`, read
by the runner) and ``<run_dir>/artifacts.json`` (named paths: `save_artifact`, `load_artifact`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from nbsrc.folder_search import find_folders
from nbsrc.utils import atomic_write_text

__all__ = [
    "DEMO",
    "KAGGLE_INPUT",
    "KAGGLE_WORKING",
    "DATASET_SLUG",
    "CODE_DATASET_SLUG",
    "cache_dir",
    "find_dataset_root",
    "find_kaggle_dataset",
    "find_kaggle_file",
    "kaggle_input",
    "kaggle_working",
    "load_artifact",
    "load_metrics",
    "on_kaggle",
    "project_root",
    "resolve_checkpoint",
    "resolve_images_root",
    "data_settings",
    "resolve_optional_path",
    "run_folder",
    "save_artifact",
    "save_metrics",
]

logger = logging.getLogger(__name__)

KAGGLE_INPUT = Path("/kaggle/input")  # read-only mounts of attached datasets and kernel outputs
KAGGLE_WORKING = Path("/kaggle/working")  # writable, kept as kernel output (20 GB)
INPUT_ENV = "NBSRC_KAGGLE_INPUT"  # redirects the input mount (a simulated Kaggle run); default KAGGLE_INPUT
WORKING_ENV = "NBSRC_KAGGLE_WORKING"  # redirects the working folder; default KAGGLE_WORKING
DATASET_SLUG = "retina-modify"  # the JPEG AI latent WIDER FACE dataset
CODE_DATASET_SLUG = "nbsrc-code"  # the dataset carrying this package's source on Kaggle
TRAINING_KERNEL_SLUG = "nbsrc-03-training"  # the training notebook's kernel: its output holds the checkpoints
DEMO = "demo"  # dataset_root value that always means the demo dataset
_SPLIT_NAMES = ("train", "val")


def on_kaggle() -> bool:
    """True inside a Kaggle kernel (interactive or batch)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_input() -> Path:
    """Kaggle's read-only input mount: ``$NBSRC_KAGGLE_INPUT``, else ``/kaggle/input``."""
    return Path(os.environ.get(INPUT_ENV) or KAGGLE_INPUT)


def kaggle_working() -> Path:
    """Kaggle's writable working folder (kept as kernel output): ``$NBSRC_KAGGLE_WORKING``, else ``/kaggle/working``."""
    return Path(os.environ.get(WORKING_ENV) or KAGGLE_WORKING)


def project_root() -> Path | None:
    """The source checkout this package runs from (the folder with ``pyproject.toml``), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "nbsrc").is_dir() else None


def _runs_root() -> Path:
    if on_kaggle():
        return kaggle_working()
    root = project_root()
    return (root if root is not None else Path.cwd()) / "runs"


def cache_dir() -> Path:
    """Folder for derived data (the demo dataset): ``$NBSRC_CACHE``, else ``runs/cache`` (Kaggle: working)."""
    env = os.environ.get("NBSRC_CACHE")
    if env:
        return Path(env)
    return (kaggle_working() / "cache") if on_kaggle() else _runs_root() / "cache"


def run_folder(run_dir: str | Path | None, default_name: str = "notebooks") -> Path:
    """The run folder a notebook writes into (created): `run_dir`, else ``runs/<default_name>`` (Kaggle: under the
    working folder); notebooks share ``notebooks`` so that an interactive session passes artifacts along."""
    path = Path(run_dir) if run_dir is not None else _runs_root() / default_name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


# ---- datasets ------------------------------------------------------------------------------------
def _looks_like_dataset(path: Path) -> bool:
    return any((path / split).is_dir() for split in _SPLIT_NAMES)


def _dataset_inside(mount: Path, max_depth: int = 2) -> Path:
    """The folder holding ``train/`` or ``val/`` at or below a mount (Kaggle keeps an uploaded top folder)."""
    found = find_folders(mount, _looks_like_dataset, max_depth=max_depth, shallowest=True)
    return found[0] if found else mount


def find_kaggle_dataset(slug: str, input_root: str | Path | None = None) -> Path | None:
    """Mount of an attached dataset ``slug`` or ``owner/slug``: ``<input>/<slug>`` or
    ``<input>/datasets/<owner>/<slug>`` (the owner must match when given); None when not attached."""
    root = Path(input_root) if input_root is not None else kaggle_input()
    owner, _, name = slug.rpartition("/")
    candidates = [root / name]
    candidates += sorted(root.glob(f"datasets/{owner or '*'}/{name}"))
    candidates += sorted(root.glob(f"*/{owner or '*'}/{name}"))  # other nested mount kinds (models, kernels)
    return next((candidate for candidate in candidates if candidate.is_dir()), None)


def find_kaggle_file(pattern: str, input_root: str | Path | None = None, max_depth: int = 5) -> list[Path]:
    """Files matching a glob `pattern` (``"best.pth"``) at most `max_depth` folders below the input mount, at the
    shallowest depth that has any (large datasets are not walked needlessly)."""
    root = Path(input_root) if input_root is not None else kaggle_input()
    for depth in range(max_depth + 1):
        found = sorted(root.glob("/".join(["*"] * depth + [pattern])))
        if found:
            return found
    return []


def _kaggle_listing(root: Path) -> str:
    if not root.is_dir():
        return f"{root} does not exist"
    entries = sorted(p.name for p in root.iterdir())
    nested = sorted(str(p.relative_to(root)) for p in root.glob("datasets/*/*"))
    return f"{root} holds {entries + nested or 'nothing'}"


def find_dataset_root(
    dataset_root: str | Path | None, *, slug: str = DATASET_SLUG, input_root: str | Path | None = None
) -> Path | None:
    """The dataset folder a notebook's ``dataset_root`` parameter names, or None where it means the demo dataset.

    - an existing folder: itself, or the folder holding ``train/`` / ``val/`` at most two levels inside it;
    - ``"demo"``: None (the demo dataset);
    - None on Kaggle: the attached `slug` dataset, found by searching the input mount;
    - None elsewhere: None (the demo dataset);
    - a name like ``retina-modify`` or ``owner/retina-modify`` on Kaggle: that attached dataset.

    Raises:
        FileNotFoundError: the folder does not exist, or the dataset is not attached, naming what was searched.
    """
    if str(dataset_root) == DEMO:
        return None
    if dataset_root is not None:
        path = Path(dataset_root).expanduser()
        if path.is_dir():
            return _dataset_inside(path).resolve()
        if on_kaggle() and not path.is_absolute():
            found = find_kaggle_dataset(str(dataset_root), input_root)
            if found is not None:
                return _dataset_inside(found)
        raise FileNotFoundError(f"dataset_root {str(dataset_root)!r}: no such folder (expected train/ and val/ inside)")
    if not on_kaggle():
        return None
    found = find_kaggle_dataset(slug, input_root)
    if found is not None:
        return _dataset_inside(found)
    root = Path(input_root) if input_root is not None else kaggle_input()
    attached = _attached_datasets(root)
    if len(attached) == 1:
        logger.info("dataset %r is not attached; using the attached dataset %s", slug, attached[0])
        return attached[0]
    what = (
        f"several attached datasets hold train/ or val/ ({', '.join(map(str, attached))})"
        if attached
        else (f"dataset {slug!r} is not attached: {_kaggle_listing(root)}")
    )
    raise FileNotFoundError(
        f"{what}; attach the dataset to the notebook, or set dataset_root to its name, to a folder or to "
        f"{DEMO!r} for the demo dataset"
    )


def _attached_datasets(root: Path) -> list[Path]:
    """Folders holding ``train/`` or ``val/`` in the attached datasets (``<input>/<slug>`` and
    ``<input>/datasets/<owner>/<slug>``), leaving out this package's code dataset and kernel outputs."""
    if not root.is_dir():
        return []
    mounts = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in ("datasets", "notebooks", "kernels")]
    mounts += [p for p in sorted(root.glob("datasets/*/*")) if p.is_dir()]
    found = []
    for mount in mounts:
        if mount.name in (CODE_DATASET_SLUG, TRAINING_KERNEL_SLUG):
            continue
        inside = _dataset_inside(mount)
        if _looks_like_dataset(inside):
            found.append(inside)
    return found


def resolve_images_root(value: str | Path | None) -> Path | None:
    """A notebook's ``images_root`` (the WIDER FACE image tree giving original sizes): a given path must exist
    (`resolve_optional_path`); None on Kaggle is the whole input mount (searched for ``WIDER_<split>/images``)."""
    if value is not None and str(value) != "":
        return resolve_optional_path(value, "images_root")
    return kaggle_input() if on_kaggle() and kaggle_input().is_dir() else None


def data_settings(
    dataset_root: str | Path | None,
    *,
    images_root: str | Path | None = None,
    sizes_csv: str | Path | None = None,
    label_frame: int | None = None,
) -> dict[str, Any]:
    """Config overrides (``data.*``) for where a notebook's data is: the dataset, the original sizes (sizes CSV,
    image tree or ``label_frame``) and the size cache. Every notebook's data-location parameters pass through it."""
    csv_path = resolve_optional_path(sizes_csv, "sizes_csv")
    images = resolve_images_root(images_root)
    return {
        "data.dataset_root": str(dataset_root) if dataset_root is not None else None,
        "data.images_root": str(images) if images is not None else None,
        "data.sizes_csv": str(csv_path) if csv_path is not None else None,
        "data.label_frame": label_frame,
        "data.cache_dir": str(cache_dir()),
    }


def resolve_optional_path(value: str | Path | None, what: str) -> Path | None:
    """An optional path parameter: None stays None; anything else must exist (relative names are also
    looked up under the Kaggle input mount on Kaggle)."""
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path.resolve()
    if on_kaggle() and not path.is_absolute():
        found = find_kaggle_dataset(str(value))
        if found is not None:
            return found
        matches = find_kaggle_file(str(value))
        if matches:
            return matches[0]
    raise FileNotFoundError(f"{what} {str(value)!r}: no such file or folder")


def _newest(files: list[Path]) -> Path:
    """The latest written of `files` (ties: the last by path; run folders end in their start time)."""
    return max(files, key=lambda path: (path.stat().st_mtime, str(path)))


def resolve_resume(
    value: str | Path | None,
    run_dir: str | Path | None = None,
    *,
    run_name: str | None = None,
    preset: str | None = None,
) -> Path | None:
    """The checkpoint a training notebook continues from.

    None or "" starts a new run; a path must exist; ``auto`` takes the newest ``last.pth`` of an earlier run of
    `preset` (named `run_name` when given): on Kaggle in the training kernel's own output attached as input (a
    version stopped at the time limit), and under ``<run_dir>/train``. Nothing found with ``auto`` starts a new run.
    """
    if value is None or str(value) == "":
        return None
    if str(value) != "auto":
        return resolve_optional_path(value, "resume")
    found: list[Path] = []
    kernel = find_kaggle_dataset(TRAINING_KERNEL_SLUG) if on_kaggle() else None
    if kernel is not None:
        found += kernel.rglob("last.pth")
    if run_dir is not None:
        found += Path(run_dir).glob("train/*/last.pth")
    found = [p for p in found if _is_run_of(p.parent, run_name, preset)]
    if not found:
        message = "resume=auto: no earlier run%s%s to continue, starting a new one"
        named = f" named {run_name!r}" if run_name else ""
        of = f" of preset {preset!r}" if preset else ""
        if on_kaggle() and kernel is None:  # the usual cause on Kaggle: the kernel's own output is not attached
            hint = " (attach this notebook's own output, %s, as an input to continue it)"
            logger.warning(message + hint, named, of, TRAINING_KERNEL_SLUG)
        else:
            logger.info(message, named, of)
        return None
    latest = _newest(found)
    logger.info("resume=auto: continuing %s", latest)
    return latest.resolve()


def _is_run_of(folder: Path, run_name: str | None, preset: str | None) -> bool:
    """Whether a run folder is named `run_name` and trains `preset` (each when given)."""
    if run_name and folder.name != run_name:
        return False
    if preset:
        try:
            return json.loads((folder / "config.json").read_text()).get("preset") == preset
        except (OSError, ValueError, AttributeError):
            return False
    return True


# ---- artifacts and metrics of a run folder --------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _jsonable(value: Any) -> Any:
    """Plain JSON types for numpy / torch scalars, paths, tuples."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_metrics(run_dir: str | Path, notebook: str, metrics: dict[str, Any]) -> Path:
    """Write a notebook's key numbers to ``<run_dir>/metrics/<notebook>.json`` (atomic; the runner reads it)."""
    path = Path(run_dir) / "metrics" / f"{notebook}.json"
    atomic_write_text(path, json.dumps(_jsonable(metrics), indent=2, sort_keys=True) + "\n")
    return path


def load_metrics(run_dir: str | Path, notebook: str) -> dict[str, Any] | None:
    """The metrics a notebook saved in `run_dir`, or None when it saved none."""
    path = Path(run_dir) / "metrics" / f"{notebook}.json"
    return _read_json(path) if path.is_file() else None


def save_artifact(run_dir: str | Path, name: str, path: str | Path) -> Path:
    """Record a named artifact path in ``<run_dir>/artifacts.json`` for later notebooks."""
    index = Path(run_dir) / "artifacts.json"
    data = _read_json(index) if index.is_file() else {}
    data[name] = str(Path(path).resolve())
    atomic_write_text(index, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(data[name])


def load_artifact(run_dir: str | Path, name: str) -> Path | None:
    """A named artifact recorded by an earlier notebook in `run_dir` (None when absent)."""
    index = Path(run_dir) / "artifacts.json"
    if not index.is_file():
        return None
    value = _read_json(index).get(name)
    return Path(value) if value else None


_CHECKPOINT_NAMES = ("best.pth", "weight_final.pth", "last.pth")


def resolve_checkpoint(checkpoint: str | Path | None, run_dir: str | Path | None = None) -> Path | None:
    """The checkpoint a notebook should use.

    Order: the explicit `checkpoint` (must exist); the ``checkpoint`` artifact of `run_dir` (written by the
    training notebook); on Kaggle, a ``best.pth`` / ``weight_final.pth`` / ``last.pth`` in the input mount
    (the attached training kernel's output first, the latest run's when it holds several; then any attached
    input, up to 7 folders deep). Returns None when nothing is found.
    """
    if checkpoint is not None and str(checkpoint) != "":
        return resolve_optional_path(checkpoint, "checkpoint")
    if run_dir is not None:
        recorded = load_artifact(run_dir, "checkpoint")
        if recorded is not None:
            if not recorded.is_file():
                raise FileNotFoundError(f"{Path(run_dir) / 'artifacts.json'}: checkpoint {recorded} no longer exists")
            return recorded
    if on_kaggle():
        kernel = find_kaggle_dataset(TRAINING_KERNEL_SLUG)  # /kaggle/input/<slug> or .../notebooks/<owner>/<slug>
        searches = [kernel.rglob] if kernel is not None else []
        searches.append(lambda name: find_kaggle_file(name, max_depth=7))
        for search in searches:
            for name in _CHECKPOINT_NAMES:
                found = list(search(name))
                if found:
                    return _newest(found)
    return None
