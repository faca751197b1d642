"""Kaggle kernels: metadata for each notebook kernel, and a push-ready build folder.

``python -m nbsrc kaggle-build --owner USER [--dataset OWNER/retina-modify] [--params FILE | -p KEY VALUE]
[--out DIR]`` writes::

    DIR/
      nbsrc-01-data-inspection/kernel-metadata.json + 01_data_inspection.ipynb
      ... one folder per notebook kernel ...
      nbsrc-code/dataset-metadata.json + nbsrc/ (this package's source) + pyproject.toml, requirements.txt
      PUSH.md (the kaggle commands, in order)

Everything is checked first and built in a temporary folder inside DIR, whose finished folders then replace
those of an older build: a failed build leaves DIR as it was. Each notebook has its parameters baked in as
``papermill --prepare-only`` does, no outputs, and stays under Kaggle's 1 MB. GPU kernels run on the T4 x2 machine
with internet, the data and code datasets attached; the evaluation kernel also attaches the training kernel's
output, where it finds the checkpoint. The committed ``kaggle/<kernel>/kernel-metadata.json`` files have a
placeholder owner (`write_committed_metadata`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbsrc import nbrun, paths
from nbsrc.utils import atomic_write_text

__all__ = [
    "CODE_DATASET_SLUG",
    "KERNELS",
    "MACHINE_SHAPE",
    "MAX_KERNEL_BYTES",
    "PLACEHOLDER_OWNER",
    "POLL_SECONDS",
    "KernelSpec",
    "build",
    "code_dataset_metadata",
    "kernel_metadata",
    "prepare_notebook",
    "slugify",
    "validate_dataset_metadata",
    "validate_kernel_metadata",
    "write_committed_metadata",
]

logger = logging.getLogger(__name__)

MACHINE_SHAPE = "NvidiaTeslaT4"  # GPU T4 x2; P100 no longer runs the default image's PyTorch
MAX_KERNEL_BYTES = 1_000_000  # Kaggle: "The kernel source must be less than 1 megabytes in size"
PLACEHOLDER_OWNER = "your-kaggle-username"  # owner in the committed metadata; kaggle-build --owner replaces it
CODE_DATASET_SLUG = paths.CODE_DATASET_SLUG
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,}[a-z0-9]$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+/[a-z0-9][a-z0-9-]*[a-z0-9]$")
POLL_SECONDS = 60  # PUSH.md: how often the wait loop asks for a kernel's status
_DONE_RE = 'has status "[^"]*(complete|error|cancel)'  # `kaggle kernels status` output of a finished run
_COMPLETE_RE = 'has status "[^"]*complete'


@dataclass(frozen=True)
class KernelSpec:
    """One notebook kernel."""

    notebook: str  # notebook stem, e.g. "03_training"
    title: str  # Kaggle title; the slug is derived from it
    kernel_sources: tuple[str, ...] = ()  # notebooks whose kernel output this kernel attaches
    gpu: bool = True  # runs on the T4 machine (data inspection and anchor statistics need no GPU quota)

    @property
    def slug(self) -> str:
        return slugify(self.title)


KERNELS: dict[str, KernelSpec] = {
    spec.notebook: spec
    for spec in (
        KernelSpec("01_data_inspection", "nbsrc 01 data inspection", gpu=False),
        KernelSpec("02_anchor_statistics", "nbsrc 02 anchor statistics", gpu=False),
        KernelSpec("03_training", "nbsrc 03 training"),
        KernelSpec("04_widerface_evaluation", "nbsrc 04 widerface evaluation", kernel_sources=("03_training",)),
    )
}


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _check_owner(owner: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", owner or ""):
        raise ValueError(f"Kaggle owner {owner!r}: expected a user name (letters, digits, '-', '_')")
    return owner


def _check_dataset(dataset: str | None, owner: str) -> str:
    """The latent dataset reference, ``OWNER/SLUG`` (default: `owner`'s ``retina-modify``)."""
    if not dataset:
        return f"{owner}/{paths.DATASET_SLUG}"
    if not _ID_RE.fullmatch(dataset):
        raise ValueError(f"dataset {dataset!r}: expected OWNER/SLUG, e.g. {owner}/{paths.DATASET_SLUG}")
    return dataset


def kernel_metadata(
    notebook: str,
    owner: str,
    *,
    code_file: str,
    dataset: str | None = None,
    wider: str | None = None,
    private: bool = True,
) -> dict[str, Any]:
    """``kernel-metadata.json`` content for the kernel of `notebook` (a key of `KERNELS`), `code_file` relative to
    it. `dataset`: the latent dataset ``OWNER/SLUG`` (default: `owner`'s ``retina-modify``); `wider`: a WIDER FACE
    copy attached too (original sizes, ground truth). A CPU kernel has no ``machine_shape``."""
    if notebook not in KERNELS:
        raise ValueError(f"no Kaggle kernel for notebook {notebook!r} (kernels: {', '.join(KERNELS)})")
    spec = KERNELS[notebook]
    owner = _check_owner(owner)
    dataset = _check_dataset(dataset, owner)
    if wider is not None and not _ID_RE.fullmatch(wider):
        raise ValueError(f"WIDER FACE dataset {wider!r}: expected OWNER/SLUG")
    meta: dict[str, Any] = {
        "id": f"{owner}/{spec.slug}",
        "title": spec.title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": private,
        "enable_gpu": spec.gpu,
        "enable_tpu": False,
        "enable_internet": True,
        "machine_shape": MACHINE_SHAPE,
        "dataset_sources": [dataset, *([wider] if wider else []), f"{owner}/{CODE_DATASET_SLUG}"],
        "competition_sources": [],
        "kernel_sources": [f"{owner}/{KERNELS[n].slug}" for n in spec.kernel_sources],
        "model_sources": [],
    }
    if not spec.gpu:
        del meta["machine_shape"]
    return meta


def code_dataset_metadata(owner: str) -> dict[str, Any]:
    """``dataset-metadata.json`` of the dataset carrying this package's source."""
    owner = _check_owner(owner)
    return {
        "title": "nbsrc code",
        "id": f"{owner}/{CODE_DATASET_SLUG}",
        "subtitle": "Source of the nbsrc RetinaFace toolkit, attached to its Kaggle notebooks",
        "licenses": [{"name": "other"}],
    }


_KERNEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "title": str,
    "code_file": str,
    "language": str,
    "kernel_type": str,
    "is_private": bool,
    "enable_gpu": bool,
    "enable_tpu": bool,
    "enable_internet": bool,
    "machine_shape": str,
    "dataset_sources": list,
    "competition_sources": list,
    "kernel_sources": list,
    "model_sources": list,
}


def validate_kernel_metadata(path: str | Path) -> dict[str, Any]:
    """Check a ``kernel-metadata.json`` (fields and types, id against title, kernel settings, sources, code file)
    and return it; a `ValueError` names the file and every problem found."""
    path = Path(path)
    meta = _read_json(path)
    problems = _field_problems(meta)
    if not problems:
        problems = _value_problems(meta) + _source_problems(meta) + _code_file_problems(path.parent, meta["code_file"])
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return meta


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None


def _field_problems(meta: Mapping[str, Any]) -> list[str]:
    """Missing, mistyped and unknown fields (a CPU kernel has no ``machine_shape``)."""
    problems = []
    for key, kind in _KERNEL_FIELDS.items():
        if key == "machine_shape" and key not in meta and meta.get("enable_gpu") is False:
            continue  # a CPU kernel
        if key not in meta:
            problems.append(f"missing {key!r}")
        elif not isinstance(meta[key], kind):
            problems.append(f"{key!r} must be {kind.__name__}, got {type(meta[key]).__name__}")
    unknown = sorted(set(meta) - set(_KERNEL_FIELDS) - {"id_no", "docker_image", "keywords"})
    if unknown:
        problems.append(f"unknown fields {unknown}")
    return problems


def _value_problems(meta: Mapping[str, Any]) -> list[str]:
    """The id against the title; language, kind, internet, and the GPU (on the T4 machine) as the notebook needs."""
    problems = []
    if not _ID_RE.fullmatch(meta["id"]):
        problems.append(f"id {meta['id']!r} is not OWNER/SLUG")
    elif meta["id"].split("/", 1)[1] != slugify(meta["title"]):
        problems.append(f"id slug {meta['id']!r} does not match the title's slug {slugify(meta['title'])!r}")
    expected_values: list[tuple[str, Any]] = [("language", "python"), ("kernel_type", "notebook")]
    expected_values.append(("enable_internet", True))
    spec = next((k for k in KERNELS.values() if k.slug == meta["id"].split("/", 1)[1]), None)
    if spec is not None:
        expected_values.append(("enable_gpu", spec.gpu))
    if meta["enable_gpu"]:
        expected_values.append(("machine_shape", MACHINE_SHAPE))  # without it an API push may get a P100
    return problems + [
        f"{key!r} must be {expected!r}, got {meta[key]!r}" for key, expected in expected_values if meta[key] != expected
    ]


def _source_problems(meta: Mapping[str, Any]) -> list[str]:
    """Sources are ``OWNER/SLUG`` strings; the datasets hold a data dataset and the code dataset."""
    problems = []
    for key in ("dataset_sources", "kernel_sources"):
        bad = [s for s in meta[key] if not isinstance(s, str) or not _ID_RE.fullmatch(s)]
        if bad:
            problems.append(f"{key!r} entries must be OWNER/SLUG strings, got {bad}")
    if not any(not s.endswith("/" + CODE_DATASET_SLUG) for s in meta["dataset_sources"]):
        problems.append(f"dataset_sources lacks the latent dataset (e.g. OWNER/{paths.DATASET_SLUG})")
    if not any(s.endswith("/" + CODE_DATASET_SLUG) for s in meta["dataset_sources"]):
        problems.append(f"dataset_sources lacks the {CODE_DATASET_SLUG} code dataset")
    return problems


def _code_file_problems(folder: Path, code_file: str) -> list[str]:
    """The notebook exists, is an ``.ipynb`` under Kaggle's size limit and has the kernelspec papermill needs."""
    code = folder / code_file
    if not code.is_file():
        return [f"code_file {code_file!r} does not exist ({code})"]
    if code.suffix != ".ipynb":
        return [f"code_file {code_file!r} must be an .ipynb notebook"]
    problems = []
    size = code.stat().st_size
    if size >= MAX_KERNEL_BYTES:
        problems.append(f"code_file {code} is {size:,} bytes; Kaggle needs < {MAX_KERNEL_BYTES:,}")
    kernelspec = json.loads(code.read_text()).get("metadata", {}).get("kernelspec", {})
    if kernelspec.get("name") != nbrun.KERNEL_NAME:
        problems.append(f"code_file {code} has no {nbrun.KERNEL_NAME!r} kernelspec (papermill needs one)")
    return problems


def validate_dataset_metadata(path: str | Path) -> dict[str, Any]:
    """Check a ``dataset-metadata.json`` (title >= 6 characters, ``owner/slug`` id, licenses)."""
    path = Path(path)
    meta = _read_json(path)
    problems = []
    if not isinstance(meta.get("title"), str) or not 6 <= len(meta["title"]) <= 50:
        problems.append("'title' must be a string of 6-50 characters")
    if not isinstance(meta.get("id"), str) or not _ID_RE.fullmatch(meta["id"]):
        problems.append(f"'id' must be OWNER/SLUG, got {meta.get('id')!r}")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or not licenses or not all(isinstance(x, dict) and "name" in x for x in licenses):
        problems.append("'licenses' must be a non-empty list of {'name': ...}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return meta


# ---- notebooks ----------------------------------------------------------------------------------
def prepare_notebook(nb: Any, parameters: Mapping[str, Any]) -> Any:
    """Bake `parameters` into a notebook like ``papermill --prepare-only`` and strip every output."""
    import nbformat
    import papermill.parameterize

    nb = nbformat.from_dict(copy.deepcopy(nb))
    nb.metadata["papermill"] = {"parameters": {}}  # what papermill's notebook loader provides
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    if parameters:
        nb = papermill.parameterize.parameterize_notebook(
            nb, dict(parameters), kernel_name=nbrun.KERNEL_NAME, language="python"
        )
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("jupytext", None)  # the pairing is a property of the checkout, not of the kernel
    nb.metadata["kernelspec"] = dict(nbrun.KERNELSPEC)
    for cell in nb.cells:
        if not cell.metadata.get("tags"):
            cell.metadata.pop("tags", None)
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def _notebook_text(nb: Any, where: Path) -> str:
    import nbformat

    text = nbformat.writes(nb) + "\n"
    size = len(text.encode())
    if size >= MAX_KERNEL_BYTES:
        raise ValueError(f"{where}: notebook is {size:,} bytes; Kaggle needs < {MAX_KERNEL_BYTES:,}")
    return text


def _copy_code(folder: Path) -> None:
    """Copy the package (with its shipped weights) into ``folder/nbsrc``, and the checkout's ``pyproject.toml``,
    requirements and README beside it."""
    root = paths.project_root()
    package = Path(__file__).resolve().parent
    shutil.copytree(package, folder / "nbsrc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    if root is not None:
        for name in ("pyproject.toml", "requirements.txt", "README.md"):
            if (root / name).is_file():
                shutil.copy2(root / name, folder / name)


def _push_instructions(owner: str, code_folder: Path, kernels: Mapping[str, Path]) -> tuple[str, list[str]]:
    """PUSH.md and its commands: the code dataset, then the kernels in order; a kernel that reads another
    kernel's output is pushed only once that kernel reports complete."""
    dataset_commands = [
        f"kaggle datasets create -p {code_folder} --dir-mode zip   # first time; later:",
        f"kaggle datasets version -p {code_folder} -m 'update nbsrc' --dir-mode zip",
    ]
    kernel_commands: list[str] = []
    notes = []
    for name, folder in kernels.items():
        spec = KERNELS[name]
        guards = []
        for index, source in enumerate(spec.kernel_sources):
            ref = f"{owner}/{KERNELS[source].slug}"
            var = f"state{index + 1}"
            notes.append(
                f"`{owner}/{spec.slug}` reads the completed output of `{ref}`: push it only once "
                f"`kaggle kernels status {ref}` reports complete (pushed earlier, it finds no checkpoint or the "
                f"previous version's). The loop below asks every {POLL_SECONDS} s until the status is complete or "
                "error, and the push after it runs only on complete."
            )
            kernel_commands += [
                f"# wait until {ref} has finished (status every {POLL_SECONDS} s); the first pause lets the new "
                "version's status replace the previous version's",
                f"sleep {2 * POLL_SECONDS}",
                f'until {var}=$(kaggle kernels status {ref} 2>&1); echo "${var}"; '
                f"echo \"${var}\" | grep -qiE '{_DONE_RE}'; do sleep {POLL_SECONDS}; done",
            ]
            guards.append(f"echo \"${var}\" | grep -qiE '{_COMPLETE_RE}'")
        push = f"kaggle kernels push -p {folder}"
        if spec.gpu:  # older kaggle CLIs ignore machine_shape; they reject the flag instead of running on a P100
            push += f" --accelerator {MACHINE_SHAPE}"
        if guards:
            waited = ", ".join(f"{owner}/{KERNELS[source].slug}" for source in spec.kernel_sources)
            push = f'if {" && ".join(guards)}; then {push}; else echo "{waited} did not complete: {spec.slug} not pushed"; fi'
        kernel_commands.append(push)
    follow: list[str] = []
    for name in list(kernels)[-1:]:  # the last kernel
        ref = f"{owner}/{KERNELS[name].slug}"
        follow = [f"kaggle kernels status {ref}", f"kaggle kernels output {ref} -p runs/kaggle-output/{name}"]

    def block(commands: list[str]) -> str:
        return "```bash\n" + "\n".join(commands) + "\n```\n"

    text = "# Push to Kaggle\n\n"
    text += "Upload the code dataset every kernel attaches (`create` the first time, `version` after changes):\n\n"
    text += block(dataset_commands)
    text += "\nPush the kernels in this order." + "".join(f" {note}" for note in notes) + "\n\n"
    text += block(kernel_commands)
    if follow:
        text += "\nFollow the last kernel and download its output once it is complete:\n\n" + block(follow)
    return text, dataset_commands + kernel_commands + follow


def _install(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move ``staging/NAME`` onto ``out/NAME`` for every name, replacing what is there; on an error, put
    back what was moved so that `out` is as before."""
    trash = staging / ".replaced"
    trash.mkdir()
    done: list[tuple[Path, Path | None]] = []
    try:
        for name in names:
            target, old = out / name, None
            if target.exists() or target.is_symlink():
                old = trash / name
                os.replace(target, old)
            done.append((target, old))
            os.replace(staging / name, target)
    except OSError:
        for target, old in reversed(done):
            if not (staging / target.name).exists():  # the new one is in place: take it out again
                os.replace(target, staging / target.name)
            if old is not None:
                os.replace(old, target)
        raise


def build(
    owner: str,
    out: str | Path = "kaggle/build",
    *,
    dataset: str | None = None,
    wider: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    notebooks: Sequence[str] | None = None,
    notebooks_dir: str | Path | None = None,
    private: bool = True,
) -> dict[str, Any]:
    """Write push-ready kernel folders and the code dataset folder under `out` (see the module docstring) and return
    ``{"kernels": {notebook: folder}, "code_dataset": folder, "push": PUSH.md, "commands": [...]}``.

    `dataset` and `wider` as in `kernel_metadata`; a dataset slug other than ``retina-modify`` is baked in as
    ``dataset_root`` unless `parameters` (`nbsrc.nbrun.plan_parameters`) set it. A `ValueError` (bad owner,
    dataset, notebook or parameter, or a folder failing validation) leaves `out` as it was.
    """
    out = Path(out)
    owner = _check_owner(owner)
    dataset = _check_dataset(dataset, owner)
    kernel_metadata(next(iter(KERNELS)), owner, code_file="check.ipynb", dataset=dataset, wider=wider)  # checks
    parameters = dict(parameters or {})
    slug = dataset.split("/", 1)[1]
    if slug != paths.DATASET_SLUG and "dataset_root" not in parameters:
        parameters["dataset_root"] = slug  # the notebooks find an attached dataset by this name
    sources = nbrun.select_notebooks(notebooks, nbrun.list_notebooks(notebooks_dir))
    sources = [s for s in sources if s.stem in KERNELS]
    plan = nbrun.plan_parameters(sources, parameters)
    code_meta = code_dataset_metadata(owner)
    kernels = {}  # notebook -> (notebook text, metadata)
    for name, nb, params in plan:
        where = out / KERNELS[name].slug / f"{name}.ipynb"
        text = _notebook_text(prepare_notebook(nb, params), where)
        kernels[name] = (
            text,
            kernel_metadata(name, owner, code_file=where.name, dataset=dataset, wider=wider, private=private),
        )
    folders = {name: out / KERNELS[name].slug for name in kernels}
    push, commands = _push_instructions(owner, out / CODE_DATASET_SLUG, folders)

    missing = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kaggle-build-", dir=out))
    try:
        _stage(staging, code_meta, kernels, push)
        _install(staging, out, [CODE_DATASET_SLUG, *(folder.name for folder in folders.values()), "PUSH.md"])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in missing:  # created for this build: removed again when empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Kaggle build written to %s", out)
    return {"kernels": folders, "code_dataset": out / CODE_DATASET_SLUG, "push": out / "PUSH.md", "commands": commands}


def _stage(staging: Path, code_meta: Mapping[str, Any], kernels: Mapping[str, tuple[str, dict]], push: str) -> None:
    """Write and validate the code dataset, the kernel folders and PUSH.md in `staging` (plain writes: `_install`
    moves the finished folders in)."""
    code_folder = staging / CODE_DATASET_SLUG
    code_folder.mkdir()
    _copy_code(code_folder)
    (code_folder / "dataset-metadata.json").write_text(json.dumps(code_meta, indent=2) + "\n")
    validate_dataset_metadata(code_folder / "dataset-metadata.json")
    for name, (text, meta) in kernels.items():
        folder = staging / KERNELS[name].slug
        folder.mkdir()
        (folder / meta["code_file"]).write_text(text)
        (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        validate_kernel_metadata(folder / "kernel-metadata.json")
    (staging / "PUSH.md").write_text(push)


def write_committed_metadata(
    kaggle_dir: str | Path | None = None, notebooks_dir: str | Path | None = None
) -> list[Path]:
    """(Re)write ``kaggle/<slug>/kernel-metadata.json`` for every kernel: placeholder owner, ``code_file``
    pointing at the paired ``notebooks/NN_name.ipynb``."""
    root = paths.project_root()
    if root is None and (kaggle_dir is None or notebooks_dir is None):
        raise FileNotFoundError("not running from a source checkout: pass kaggle_dir and notebooks_dir")
    kaggle_dir = Path(kaggle_dir) if kaggle_dir is not None else root / "kaggle"
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else root / "notebooks"
    written = []
    for name, spec in KERNELS.items():
        folder = kaggle_dir / spec.slug
        code_file = Path("..") / ".." / notebooks_dir.relative_to(kaggle_dir.parent) / f"{name}.ipynb"
        meta = kernel_metadata(name, PLACEHOLDER_OWNER, code_file=code_file.as_posix())
        atomic_write_text(folder / "kernel-metadata.json", json.dumps(meta, indent=2) + "\n")
        written.append(folder / "kernel-metadata.json")
    return written
