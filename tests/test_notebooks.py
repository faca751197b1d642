"""The notebooks: thin drivers with one parameters cell, paired .py / .ipynb, and a smoke run of all four."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
from jupytext.compare import compare_notebooks

from nbsrc import nbrun

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
EXPECTED = ["01_data_inspection", "02_anchor_statistics", "03_training", "04_widerface_evaluation"]
REQUIRED = {"smoke": ("bool", "False"), "dataset_root": ("Optional[str]", "None"), "run_dir": ("Optional[str]", "None")}
TYPES = {"bool", "int", "float", "str", "Optional[str]", "Optional[int]", "Optional[float]"}
MAX_CELL_LINES = 15


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def _code_cells(path: Path) -> list:
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_contract(path):
    nb = nbrun.read_notebook(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    declared = nbrun.parse_parameters_cell(tagged[0].source, path.name)  # literals, annotated, commented
    for name, (type_name, default) in REQUIRED.items():
        assert name in declared, f"{path.name}: missing parameter {name}"
        assert (declared[name].type_name, declared[name].default) == (type_name, default)
    for param in declared.values():
        assert param.type_name in TYPES, f"{path.name}: {param.name}: annotation {param.type_name}"
        assert param.help, f"{path.name}: {param.name} has no comment"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    """``papermill -p`` and ``--help-notebook`` know only what papermill's own parser reads: every parameter
    (an ``X | None`` annotation or a second ``=`` in the comment hides one) with the same default."""
    papermill = pytest.importorskip("papermill")
    nb_path = path.with_suffix(".ipynb")
    declared = nbrun.declared_parameters(nbformat.read(nb_path, as_version=4), path.name)
    seen = papermill.inspect_notebook(str(nb_path))
    assert sorted(seen) == sorted(declared)
    for name, param in declared.items():
        assert ast.literal_eval(seen[name]["default"]) == ast.literal_eval(param.default), name
        assert seen[name]["inferred_type_name"] == param.type_name, name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_thin_driver_layout(path):
    cells = jupytext.read(path).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), "title first"
    assert len(cells[0].source.splitlines()) >= 3, "a title and a purpose"
    bootstrap = [line for line in cells[1].source.splitlines() if line.strip()]
    assert cells[1].cell_type == "code" and len(bootstrap) <= 4 and "sys.path" in cells[1].source
    assert "setup_logging()" in cells[2].source and "import" in cells[2].source
    assert "parameters" in cells[3].metadata.get("tags", []), "imports, then the parameters cell"
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name} cell {index}: defines {[n.name for n in defined]} (move it to nbsrc)"
        lines = [line for line in cell.source.splitlines() if line.strip() and not line.strip().startswith("#")]
        if index != 3:
            assert len(lines) <= MAX_CELL_LINES, f"{path.name} cell {index}: {len(lines)} lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync_without_outputs(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run jupytext --to ipynb {path}"
    paired = nbformat.read(ipynb, as_version=4)
    assert paired.metadata.kernelspec.name == "python3"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{ipynb.name} carries outputs"
    # Same cells, sources and metadata: raises on the first difference.
    compare_notebooks(jupytext.read(ipynb), jupytext.read(path), fmt="py:percent")


def test_evaluation_notebook_reads_its_checkpoint_once(small_checkpoints, demo_root, tmp_path, monkeypatch):
    cells = jupytext.read(ROOT / "notebooks" / "04_widerface_evaluation.py").cells
    monkeypatch.setattr("nbsrc.utils.setup_logging", lambda *args, **kwargs: None)
    namespace: dict = {}
    for cell in cells[2:4]:  # imports, parameters
        exec(cell.source, namespace)
    checkpoint = small_checkpoints[1]
    injected = {"checkpoint": str(checkpoint), "dataset_root": str(demo_root), "run_dir": str(tmp_path)}
    namespace.update(injected, device="cpu", smoke=True)  # papermill's injected cell
    real_load, loaded = torch.load, []

    def load(path, *args, **kwargs):
        loaded.append(path)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    exec(cells[4].source, namespace)  # the first cell after the parameters: the detector
    assert loaded == [checkpoint]
    assert namespace["weights"] == checkpoint
    assert namespace["detector"].cfg.data.max_images == 4


@pytest.mark.notebooks
def test_smoke_run_of_every_notebook(demo_root, tmp_path):
    out = tmp_path / "run"
    summary = nbrun.run_notebooks(None, {"smoke": True, "dataset_root": str(demo_root)}, out)
    assert summary["status"] == "ok"
    assert [e["name"] for e in summary["notebooks"]] == EXPECTED
    for entry in summary["notebooks"]:
        executed = nbformat.read(entry["output"], as_version=4)
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], entry["name"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{entry['name']} shows no image"
        assert entry["metrics"], f"{entry['name']} saved no metrics"
        assert Path(entry["html"]).is_file()
    assert (out / "artifacts.json").is_file()  # the checkpoint handed from training to evaluation


@pytest.mark.notebooks
def test_training_notebook_uses_the_configured_validation_split(demo_root, tmp_path):
    root = tmp_path / "data"  # the demo dataset with its val split named "valid"
    root.mkdir()
    for entry in demo_root.iterdir():
        (root / ("valid" if entry.name == "val" else entry.name)).symlink_to(entry)
    params = {"smoke": True, "dataset_root": str(root), "overrides": "data.val_split=valid"}
    summary = nbrun.run_notebooks(["03_training"], params, tmp_path / "run")
    assert summary["status"] == "ok", summary["notebooks"][0].get("error")
