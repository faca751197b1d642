"""Run the notebooks headless: jupytext source -> notebook with a kernelspec -> papermill -> run folder.

``python -m nbsrc run-notebooks [NAMES...] --params params.yaml | -p key value ... --out runs/NAME``

Each selected ``notebooks/NN_name.py`` (jupytext) has its parameters checked against its ``parameters`` cell (an
undeclared key or a wrongly typed value is a `ValueError` before anything runs), then runs through papermill with
the run folder as working directory and ``run_dir`` (notebooks hand artifacts to each other through files). The
run folder receives ``NN_name.ipynb`` (executed), ``NN_name.html`` and ``summary.json`` (status, duration, the
metrics each notebook saved with `nbsrc.paths.save_metrics`). A failing notebook stops the run with
`NotebookExecutionError` naming its cell, after the summary and the executed notebook are written.

Parameters: a top-level key goes to every selected notebook declaring it (at least one must); a key equal to a
notebook name (``03_training:``) holds that notebook's own parameters (ignored when it is not selected).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import json
import logging
import os
import tempfile
import time
import tokenize
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbsrc import paths
from nbsrc.config import get_preset
from nbsrc.notebook import NotebookParameter, check_value
from nbsrc.pretrained import resolve_pretrained
from nbsrc.utils import atomic_write_text

__all__ = [
    "KERNEL_NAME",
    "absolute_paths",
    "NotebookExecutionError",
    "check_parameters",
    "declared_parameters",
    "default_notebooks_dir",
    "kernel_manager",
    "list_notebooks",
    "load_params_file",
    "merge_parameters",
    "parameters_cell",
    "parse_param_pairs",
    "parse_parameters_cell",
    "plan_parameters",
    "read_notebook",
    "resolve_auto_pretrained",
    "select_notebooks",
    "run_notebooks",
]

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"
KERNELSPEC = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class NotebookExecutionError(RuntimeError):
    """A notebook raised. `cell_index` counts the cells of the source notebook from 0 (markdown included);
    `cell_line` is the first line of that cell."""

    def __init__(
        self, notebook: str, cell_index: int | None, ename: str, evalue: str, output: Path | None, cell_line: str = ""
    ) -> None:
        self.notebook = notebook
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.output = output
        self.cell_line = cell_line
        where = f"cell {cell_index}" if cell_index is not None else "an unknown cell"
        if cell_line:
            where += f" ({cell_line!r})"
        saved = f"; executed notebook with the traceback: {output}" if output is not None else ""
        super().__init__(f"notebook {notebook} failed at {where}: {ename}: {evalue}{saved}")


# ---- finding and reading notebooks ----------------------------------------------------------------
def default_notebooks_dir() -> Path:
    """``notebooks/`` of the source checkout."""
    root = paths.project_root()
    if root is None:
        raise FileNotFoundError("no notebooks folder: nbsrc is not running from a source checkout; pass notebooks_dir")
    return root / "notebooks"


def list_notebooks(notebooks_dir: str | Path | None = None) -> list[Path]:
    """The notebook sources ``NN_name.py`` in run order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else default_notebooks_dir()
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if not found:
        raise FileNotFoundError(f"{folder}: no notebooks (expected NN_name.py files in jupytext percent format)")
    return found


def _unknown(message: str, key: str, choices: Iterable[str], listing: str) -> ValueError:
    """`message`, the close match of `key` among `choices` if any, and `listing` in parentheses."""
    hint = difflib.get_close_matches(key, list(choices), n=1)
    return ValueError(message + (f"; did you mean {hint[0]!r}?" if hint else "") + f" ({listing})")


def select_notebooks(names: Sequence[str] | None, available: list[Path]) -> list[Path]:
    if not names:
        return available
    by_stem = {p.stem: p for p in available}
    selected = []
    for name in names:
        key = Path(name).stem
        matches = [p for stem, p in by_stem.items() if stem == key or stem[:2] == key or stem[3:] == key]
        if len(matches) != 1:
            raise _unknown(f"unknown notebook {name!r}", key, by_stem, f"notebooks: {', '.join(by_stem)}")
        if matches[0] not in selected:
            selected.append(matches[0])
    return sorted(selected)


def read_notebook(source: str | Path) -> Any:
    """A ``.py`` (jupytext) or ``.ipynb`` file as an nbformat notebook carrying the ``python3`` kernelspec."""
    import jupytext

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def parse_parameters_cell(source: str, where: str = "parameters cell") -> dict[str, NotebookParameter]:
    """Parse a ``parameters`` cell: one ``name: type = literal  # help`` per line (with `ast`: papermill's pattern
    skips annotations such as ``str | None``). Anything else raises `ValueError` naming `where` and the line."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{where}: line {exc.lineno}: not valid Python ({exc.msg})") from None
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    params: dict[str, NotebookParameter] = {}
    for node in tree.body:
        line = f"{where}: line {node.lineno}"
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ValueError(f"{line}: expected 'name: type = literal  # help', got {ast.unparse(node)!r}")
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(
                f"{line}: default of {node.target.id!r} must be a literal, got {ast.unparse(node.value)!r}"
            ) from None
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{line}: default of {node.target.id!r} must be str, int, float, bool or None")
        help_text = comments.get(node.end_lineno or node.lineno, "")
        if not help_text:
            raise ValueError(f"{line}: parameter {node.target.id!r} needs a trailing '# comment' saying what it is")
        params[node.target.id] = NotebookParameter(
            node.target.id, ast.unparse(node.annotation), ast.unparse(node.value), help_text
        )
    return params


def parameters_cell(nb: Any, where: str = "notebook") -> Any | None:
    """The cell tagged ``parameters`` (None when there is none; more than one is an error)."""
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) > 1:
        raise ValueError(f"{where}: {len(tagged)} cells tagged 'parameters'; expected exactly one")
    return tagged[0] if tagged else None


def declared_parameters(nb: Any, where: str = "notebook") -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its ``parameters`` cell (`parse_parameters_cell`)."""
    cell = parameters_cell(nb, where)
    return {} if cell is None else parse_parameters_cell(cell.source, f"{where} parameters cell")


# ---- parameters ---------------------------------------------------------------------------------
def load_params_file(path: str | Path) -> dict[str, Any]:
    """Parameters from a YAML (or JSON) file: a mapping of names to values."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    return data


def parse_param_pairs(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``-p key value`` pairs; values are read as YAML scalars (``5`` int, ``0.1`` float, ``true``, ``null``)."""
    import yaml

    params: dict[str, Any] = {}
    for key, value in pairs:
        try:
            params[key] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            params[key] = value
    return params


def check_parameters(notebook: str, declared: Mapping[str, NotebookParameter], params: Mapping[str, Any]) -> dict:
    """`params` checked against what `notebook` declares: `ValueError` for an undeclared key (with a suggestion)
    or a value of the wrong type."""
    checked = {}
    for key, value in params.items():
        if key not in declared:
            listing = f"declared: {', '.join(declared) or 'none'}"
            raise _unknown(f"notebook {notebook} does not declare parameter {key!r}", key, declared, listing)
        checked[key] = check_value(notebook, declared[key], value)
    return checked


def merge_parameters(params: Mapping[str, Any], command_line: Mapping[str, Any]) -> dict[str, Any]:
    """A parameters file's content with the command line's ``-p`` values on top: a value given on the command line
    replaces the file's top-level value and the same key in every notebook's own section."""
    merged = dict(params)
    for key, value in command_line.items():
        merged[key] = value
        for name, section in params.items():
            if isinstance(section, Mapping) and key in section:
                merged[name] = {**merged[name], key: value}
    return merged


def plan_parameters(
    sources: Sequence[Path],
    parameters: Mapping[str, Any],
    run_dir: Path | None = None,
    known: Iterable[str] | None = None,
) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, notebook, checked parameters) per notebook source, in order (see the module docstring): the sections
    of `known` notebooks (default: those beside `sources`) not selected are ignored; notebooks declaring
    ``run_dir`` get `run_dir` unless given. Raises `ValueError` for an undeclared key or a wrongly typed value."""
    stems = {p.stem for p in sources}
    if known is None:
        known = {p.stem for folder in {Path(s).parent for s in sources} for p in folder.glob("[0-9][0-9]_*.py")}
    unselected = set(known) - stems
    ignored = sorted(k for k in parameters if k in unselected)
    if ignored:
        logger.info("parameters for notebook(s) not selected ignored: %s", ", ".join(ignored))
    common = {k: v for k, v in parameters.items() if k not in stems and k not in unselected}
    sections = {k: v for k, v in parameters.items() if k in stems}
    for name, section in sections.items():
        if not isinstance(section, Mapping):
            raise ValueError(f"parameters for notebook {name} must be a mapping, got {type(section).__name__}")
    plan = []
    declared_by: dict[str, dict[str, NotebookParameter]] = {}
    for source in sources:
        nb = read_notebook(source)
        declared = declared_parameters(nb, str(source))
        declared_by[source.stem] = declared
        # One notebook: every key is its own (so an unknown key is reported against it by check_parameters).
        chosen = {k: v for k, v in common.items() if k in declared or len(sources) == 1}
        if run_dir is not None and "run_dir" in declared and "run_dir" not in chosen:
            chosen["run_dir"] = str(run_dir)
        chosen.update(sections.get(source.stem, {}))
        plan.append((source.stem, nb, check_parameters(source.stem, declared, chosen)))
    undeclared = [k for k in common if not any(k in d for d in declared_by.values())]
    if undeclared:
        everything = sorted({k for d in declared_by.values() for k in d})
        message = f"parameter {undeclared[0]!r} is declared by none of the notebooks {', '.join(declared_by)}"
        raise _unknown(message, undeclared[0], everything, f"declared: {', '.join(everything)}")
    return plan


_PATH_PARAMETER_SUFFIXES = ("_root", "_dir", "_labels", "_csv", "checkpoint", "weight", "pretrained", "resume")
_PRETRAINED_KEYWORDS = ("auto", "none", "imagenet")  # values of ``model.pretrained`` that are not paths


def absolute_paths(params: Mapping[str, Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """Path parameters (names ending in `_PATH_PARAMETER_SUFFIXES`; not ``pretrained``'s keywords) that exist
    relative to `cwd` (default: the working directory) made absolute: notebooks run in the run folder."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    out = dict(params)
    for key, value in params.items():
        if key.endswith("pretrained") and value in _PRETRAINED_KEYWORDS:
            continue
        if isinstance(value, str) and value and key.endswith(_PATH_PARAMETER_SUFFIXES):
            path = Path(value).expanduser()
            if not path.is_absolute() and (base / path).exists():
                out[key] = str((base / path).resolve())
    return out


def resolve_auto_pretrained(params: Mapping[str, Any], declared: Mapping[str, NotebookParameter]) -> dict[str, Any]:
    """`params` with ``pretrained='auto'`` (given or by default) replaced by the file the auto search
    (`nbsrc.pretrained.resolve_pretrained`) finds from the working directory for the backbone of ``preset`` and
    ``overrides``: in the notebook it would search the run folder."""
    if "pretrained" not in declared or "preset" not in declared:
        return dict(params)
    keys = ("pretrained", "preset", "overrides")
    values = {key: ast.literal_eval(declared[key].default) for key in keys if key in declared}
    values.update(params)
    if values["pretrained"] != "auto" or not isinstance(values["preset"], str):
        return dict(params)
    try:
        cfg = get_preset(values["preset"]).override_pairs(str(values.get("overrides") or "").split())
    except (ValueError, TypeError):  # the notebook reports it
        return dict(params)
    found = resolve_pretrained("auto", cfg.model.backbone)
    if found == "auto":
        return dict(params)
    logger.info("pretrained='auto' resolved to %s (searched from %s)", found, Path.cwd())
    return {**params, "pretrained": found}


# ---- execution ----------------------------------------------------------------------------------
class _CheckedParametersFilter(logging.Filter):
    """Drop papermill's "Passed unknown parameter" warnings: `check_parameters` checked them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


@contextlib.contextmanager
def _kernel_environment() -> Iterator[None]:
    """Kernels import this checkout's nbsrc and draw figures inline (a CI's MPLBACKEND=Agg would hide them)."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "MPLBACKEND")}
    root = paths.project_root()
    if root is not None:
        parts = [str(root)] + [p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    papermill_logger = logging.getLogger("papermill")
    checked = _CheckedParametersFilter()
    papermill_logger.addFilter(checked)
    try:
        yield
    finally:
        papermill_logger.removeFilter(checked)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _source_cell(executed: Any, index: int | None) -> tuple[int | None, str]:
    """Map a cell index of the executed notebook back to the source notebook (skips papermill's cells)."""
    if index is None:
        return None, ""
    source_index = -1
    for i, cell in enumerate(executed.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue
        source_index += 1
        if i == index:
            lines = [line for line in cell.source.splitlines() if line.strip()]
            return source_index, (lines[0].strip()[:80] if lines else "")
    return None, ""


def _failed_cell(executed: Any) -> tuple[int | None, str, str]:
    """(index in `executed`, ename, evalue) of the first code cell with an error output or left running."""
    for index, cell in enumerate(executed.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return index, out.get("ename", ""), out.get("evalue", "")
        if cell.get("metadata", {}).get("papermill", {}).get("status") in ("running", "pending"):
            return index, "", ""
    return None, "", ""


def kernel_manager(kernel_name: str = KERNEL_NAME) -> Any:
    """A Jupyter kernel manager for `kernel_name`: ``python3`` is always ipykernel on this interpreter (whatever
    kernelspec is installed), so notebooks see the runner's packages; other names are installed kernelspecs.
    `RuntimeError` when ipykernel or the kernelspec is missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager

    if kernel_name == KERNEL_NAME:
        try:
            import ipykernel  # noqa: F401
        except ImportError:
            raise RuntimeError(
                f"cannot start the {KERNEL_NAME!r} kernel: ipykernel is not installed (pip install ipykernel)"
            ) from None
        specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)  # only the native kernel
    else:
        specs = KernelSpecManager()
    try:
        specs.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        known = ", ".join(sorted(specs.find_kernel_specs())) or "none"
        raise RuntimeError(f"no Jupyter kernel named {kernel_name!r} (installed: {known})") from None
    return KernelManager(kernel_name=kernel_name, kernel_spec_manager=specs)


def _export_html(nb: Any, path: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    atomic_write_text(path, body)
    return path


def _remove_metrics(run_dir: Path, name: str) -> None:
    """Delete the metrics file an earlier run left for notebook `name` (see `nbsrc.paths.save_metrics`)."""
    stale = run_dir / "metrics" / f"{name}.json"
    if stale.is_file():
        logger.info("removing %s of an earlier run", stale)
        stale.unlink()


def _image_count(nb: Any) -> int:
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    return sum("image/png" in out.get("data", {}) for out in outputs)


def _with_earlier_entries(path: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's notebook entries, with those of an earlier run into the same folder for the notebooks not run
    again (marked ``"earlier": true``), in notebook order: re-running one notebook keeps the others' results."""
    try:
        earlier = json.loads(path.read_text()).get("notebooks", []) if path.is_file() else []
    except (OSError, ValueError, AttributeError):
        earlier = []
    names = {entry["name"] for entry in entries}
    kept = [
        {**entry, "earlier": True}
        for entry in earlier
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] not in names
    ]
    return sorted(entries + kept, key=lambda entry: entry["name"])


def _execute(
    nb: Any, params: Mapping[str, Any], output: Path, options: Mapping[str, Any]
) -> tuple[Any, Exception | None]:
    """Execute `nb` with papermill into `output` (working directory: its folder); returns the executed notebook
    (None when nothing was written) and the error a cell raised, a timeout or a dead kernel (None: it ran)."""
    import nbformat
    import papermill

    executed = None
    error: Exception | None = None
    with tempfile.TemporaryDirectory() as tmp, _kernel_environment():
        source = Path(tmp) / output.name
        nbformat.write(nb, source)
        try:
            executed = papermill.execute_notebook(
                str(source),
                str(output),
                parameters=dict(params),
                km=kernel_manager(options["kernel_name"]),
                progress_bar=False,
                cwd=str(output.parent),
                start_timeout=120,
                **options,
            )
        except Exception as exc:  # a cell raised (PapermillExecutionError), timed out, or the kernel died
            error = exc
    if executed is None and output.is_file():
        executed = nbformat.read(output, as_version=4)
    return executed, error


def _failure(name: str, executed: Any, error: Exception, output: Path) -> NotebookExecutionError:
    """The error of a failed notebook, naming its cell in the source notebook."""
    from papermill.exceptions import PapermillExecutionError

    index, ename, evalue = _failed_cell(executed) if executed is not None else (None, "", "")
    if isinstance(error, PapermillExecutionError):
        ename, evalue = error.ename, error.evalue
    cell_index, cell_line = _source_cell(executed, index) if executed is not None else (None, "")
    return NotebookExecutionError(
        name,
        cell_index,
        ename or type(error).__name__,
        evalue or str(error),
        output if output.is_file() else None,
        cell_line,
    )


def _finish_entry(entry: dict[str, Any], failure: NotebookExecutionError | None) -> None:
    """Mark a summary entry ok or failed (with the failure's cell and error)."""
    if failure is None:
        entry["status"] = "ok"
        logger.info("notebook %s finished in %.1f s", entry["name"], entry["duration_s"])
        return
    entry["status"] = "failed"
    entry["error"] = {
        "cell_index": failure.cell_index,
        "cell": failure.cell_line,
        "ename": failure.ename,
        "evalue": failure.evalue,
    }
    logger.error("%s", failure)


def run_notebooks(
    names: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    out: str | Path = "runs/notebooks",
    *,
    notebooks_dir: str | Path | None = None,
    kernel_name: str = KERNEL_NAME,
    html: bool = True,
    cell_timeout: int | None = None,
    log_output: bool = False,
) -> dict[str, Any]:
    """Execute notebooks (``01``, ``data_inspection`` or ``01_data_inspection``; None: all) in order into the run
    folder `out` and return the summary (also ``summary.json``); see the module docstring.

    Raises:
        ValueError: an undeclared parameter or a wrongly typed value (nothing has run then).
        NotebookExecutionError: a notebook failed; the summary marks it and skips the ones after it.
    """
    run_dir = Path(out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = select_notebooks(names, list_notebooks(notebooks_dir))
    plan = [
        (name, nb, absolute_paths(resolve_auto_pretrained(params, declared_parameters(nb, name))))
        for name, nb, params in plan_parameters(sources, dict(parameters or {}), run_dir)
    ]
    summary: dict[str, Any] = {"run_dir": str(run_dir), "status": "running", "notebooks": []}
    started = time.perf_counter()
    failure: NotebookExecutionError | None = None
    options = {"kernel_name": kernel_name, "execution_timeout": cell_timeout, "log_output": log_output}
    for name, nb, params in plan:
        entry: dict[str, Any] = {"name": name, "parameters": params}
        summary["notebooks"].append(entry)
        if failure is not None:
            entry["status"] = "skipped"
            continue
        output = run_dir / f"{name}.ipynb"
        _remove_metrics(run_dir, name)  # only what this execution saves is reported
        logger.info("running notebook %s -> %s", name, output)
        t0 = time.perf_counter()
        executed, error = _execute(nb, params, output, options)
        entry["duration_s"] = round(time.perf_counter() - t0, 2)
        entry["output"] = str(output)
        if error is not None:
            failure = _failure(name, executed, error, output)
        if executed is not None:
            entry["images"] = _image_count(executed)
            if html:
                entry["html"] = str(_export_html(executed, run_dir / f"{name}.html"))
        entry["metrics"] = paths.load_metrics(run_dir, name) or {}
        _finish_entry(entry, failure)
    summary["status"] = "failed" if failure is not None else "ok"
    summary["duration_s"] = round(time.perf_counter() - started, 2)
    summary["notebooks"] = _with_earlier_entries(run_dir / "summary.json", summary["notebooks"])
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    if failure is not None:
        raise failure
    return summary
