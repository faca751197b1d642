"""Kaggle kernels: the committed metadata, and what ``kaggle-build`` writes (`nbsrc.kaggle`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbsrc import kaggle, paths

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "kaggle").glob("*/kernel-metadata.json"))


def test_every_notebook_has_a_committed_kernel():
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert notebooks == list(kaggle.KERNELS)
    assert sorted(p.parent.name for p in COMMITTED) == sorted(spec.slug for spec in kaggle.KERNELS.values())


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_metadata_is_valid_and_in_sync(path):
    meta = kaggle.validate_kernel_metadata(path)  # fields, types, code_file exists, kernelspec, < 1 MB
    notebook = Path(meta["code_file"]).stem
    assert (path.parent / meta["code_file"]).resolve() == ROOT / "notebooks" / f"{notebook}.ipynb"
    expected = kaggle.kernel_metadata(notebook, kaggle.PLACEHOLDER_OWNER, code_file=meta["code_file"])
    assert meta == expected, "regenerate with nbsrc.kaggle.write_committed_metadata()"


def test_kernel_metadata_fields():
    meta = kaggle.kernel_metadata("04_widerface_evaluation", "alice", code_file="x.ipynb", dataset="bob/retina-modify")
    assert meta["id"] == "alice/nbsrc-04-widerface-evaluation"
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True and meta["enable_internet"] is True
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["dataset_sources"] == ["bob/retina-modify", f"alice/{paths.CODE_DATASET_SLUG}"]
    assert meta["kernel_sources"] == ["alice/nbsrc-03-training"]  # finds the training kernel's checkpoint
    assert kaggle.kernel_metadata("01_data_inspection", "alice", code_file="x.ipynb")["dataset_sources"][0] == (
        "alice/retina-modify"
    )
    with pytest.raises(ValueError, match="owner"):
        kaggle.kernel_metadata("01_data_inspection", "bad owner!", code_file="x.ipynb")
    with pytest.raises(ValueError, match="no Kaggle kernel for notebook"):
        kaggle.kernel_metadata("99_nothing", "alice", code_file="x.ipynb")


def test_validation_finds_problems(tmp_path):
    notebook = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    meta = kaggle.kernel_metadata("03_training", "alice", code_file="nb.ipynb")
    good = tmp_path / "kernel-metadata.json"
    good.write_text(json.dumps(meta))
    assert kaggle.validate_kernel_metadata(good) == meta
    cases = {
        "'enable_gpu' must be bool": {**meta, "enable_gpu": "true"},
        "missing 'machine_shape'": {k: v for k, v in meta.items() if k != "machine_shape"},
        "does not exist": {**meta, "code_file": "missing.ipynb"},
        "'machine_shape' must be 'NvidiaTeslaT4'": {**meta, "machine_shape": "NvidiaTeslaP100"},
        "lacks the nbsrc-code code dataset": {**meta, "dataset_sources": ["alice/retina-modify"]},
        "does not match the title": {**meta, "id": "alice/another-slug"},
    }
    for message, broken in cases.items():
        good.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            kaggle.validate_kernel_metadata(good)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1\n" * 200_000))
    nbformat.write(nb, notebook)
    good.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Kaggle needs < 1,000,000"):
        kaggle.validate_kernel_metadata(good)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaggle-build")
    params = {"smoke": False, "03_training": {"epochs": 30, "batch_size": 16}, "preset": "latent-r50"}
    result = kaggle.build("alice", out, dataset="bob/retina-modify", parameters=params)
    return out, result


def test_build_writes_push_ready_kernels(build):
    out, result = build
    assert list(result["kernels"]) == list(kaggle.KERNELS)
    for notebook, folder in result["kernels"].items():
        meta = kaggle.validate_kernel_metadata(folder / "kernel-metadata.json")
        assert meta["id"] == f"alice/{kaggle.KERNELS[notebook].slug}"
        assert meta["dataset_sources"] == ["bob/retina-modify", "alice/nbsrc-code"]
        code = folder / meta["code_file"]
        assert code.stat().st_size < kaggle.MAX_KERNEL_BYTES
        nb = nbformat.read(code, as_version=4)
        assert nb.metadata.kernelspec.name == "python3"
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1  # papermill --prepare-only
    training = nbformat.read(result["kernels"]["03_training"] / "03_training.ipynb", as_version=4)
    injected = next(c.source for c in training.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "epochs = 30" in injected and "batch_size = 16" in injected and 'preset = "latent-r50"' in injected
    assert "run_dir" not in injected  # stays None: outputs go to the Kaggle working folder


def test_build_writes_the_code_dataset(build):
    out, result = build
    folder = result["code_dataset"]
    meta = kaggle.validate_dataset_metadata(folder / "dataset-metadata.json")
    assert meta["id"] == "alice/nbsrc-code"
    assert (folder / "nbsrc" / "__init__.py").is_file() and (folder / "nbsrc" / "paths.py").is_file()
    assert not list(folder.rglob("__pycache__"))
    assert "kaggle kernels push -p" in (out / "PUSH.md").read_text()


def test_build_rejects_unknown_parameter(tmp_path):
    with pytest.raises(ValueError, match="'epochz' is declared by none of the notebooks"):
        kaggle.build("alice", tmp_path, parameters={"epochz": 3})


def test_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nbsrc", "kaggle-build", "--owner", "carol", "--notebooks", "01"]
        + ["-p", "smoke", "true", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "kaggle kernels push -p" in result.stdout
    kaggle.validate_kernel_metadata(tmp_path / "nbsrc-01-data-inspection" / "kernel-metadata.json")
