"""The headless notebook runner (`nbsrc.nbrun`, ``python -m nbsrc run-notebooks``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from nbsrc import nbrun, paths
from nbsrc.model.build import MOBILENET_FILE
from nbsrc.notebook import NotebookParameter, check_given_parameters
from nbsrc.weights import IMAGENET_MOBILENET

HEADER = """\
# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""

MAKE = (
    HEADER
    + """
# %% [markdown]
# # Make an artifact

# %%
import matplotlib.pyplot as plt

from nbsrc import paths

# %% tags=["parameters"]
value: int = 3  # a number written to the artifact
run_dir: str | None = None  # run folder

# %%
run = paths.run_folder(run_dir)
artifact = run / "value.txt"
artifact.write_text(str(value * 2))
paths.save_artifact(run, "value", artifact)
paths.save_metrics(run, "01_make", {"value": value, "doubled": value * 2})

# %%
fig = plt.figure()
plt.plot([0, 1], [0, value])
"""
)

USE = (
    HEADER
    + """
# %% [markdown]
# # Use the artifact

# %%
from nbsrc import paths

# %% tags=["parameters"]
fail: bool = False  # raise on purpose
run_dir: str | None = None  # run folder

# %%
doubled = int(paths.load_artifact(run_dir, "value").read_text())

# %%
if fail:
    raise ZeroDivisionError(f"asked to fail after reading {doubled}")
paths.save_metrics(run_dir, "02_use", {"read": doubled})
"""
)


@pytest.fixture()
def notebooks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    (folder / "01_make.py").write_text(MAKE)
    (folder / "02_use.py").write_text(USE)
    return folder


def test_declared_parameters_and_selection(notebooks_dir):
    declared = nbrun.declared_parameters(nbrun.read_notebook(notebooks_dir / "01_make.py"))
    assert list(declared) == ["value", "run_dir"]
    assert declared["value"].type_name == "int" and declared["value"].help == "a number written to the artifact"
    sources = nbrun.list_notebooks(notebooks_dir)
    assert [p.stem for p in nbrun.select_notebooks(["use", "01"], sources)] == ["01_make", "02_use"]
    with pytest.raises(ValueError, match="unknown notebook 'mkae'"):
        nbrun.select_notebooks(["mkae"], sources)


def test_unknown_parameter_is_rejected_before_running(notebooks_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="notebook 01_make does not declare parameter 'valeu'; did you mean 'value'"):
        nbrun.run_notebooks(["01_make"], {"valeu": 1}, out, notebooks_dir=notebooks_dir)
    with pytest.raises(ValueError, match="'epochs' is declared by none of the notebooks"):
        nbrun.run_notebooks(None, {"epochs": 1}, out, notebooks_dir=notebooks_dir)
    with pytest.raises(ValueError, match="02_use does not declare parameter 'value'"):
        nbrun.run_notebooks(None, {"02_use": {"value": 1}}, out, notebooks_dir=notebooks_dir)
    with pytest.raises(ValueError, match="parameter 'value' expects int"):
        nbrun.run_notebooks(["01"], {"value": "three"}, out, notebooks_dir=notebooks_dir)
    assert not (out / "01_make.ipynb").exists()


def test_parameter_parsing_and_coercion():
    assert nbrun.parse_param_pairs([["epochs", "5"], ["lr", "0.01"], ["smoke", "true"], ["root", "null"]]) == {
        "epochs": 5,
        "lr": 0.01,
        "smoke": True,
        "root": None,
    }
    declared = {
        "lr": NotebookParameter("lr", "float", "0.1", ""),
        "name": NotebookParameter("name", "str | None", "None", ""),
        "epochs": NotebookParameter("epochs", "int", "1", ""),
    }
    checked = nbrun.check_parameters("nb", declared, {"lr": 1, "name": 2024, "epochs": 3.0})
    assert checked == {"lr": 1.0, "name": "2024", "epochs": 3}
    assert isinstance(checked["lr"], float)
    with pytest.raises(ValueError, match="'epochs' expects int"):
        nbrun.check_parameters("nb", declared, {"epochs": 2.5})
    with pytest.raises(ValueError, match="'lr' expects float"):
        nbrun.check_parameters("nb", declared, {"lr": None})
    optional = {
        "keep": NotebookParameter("keep", "Optional[int]", "3", ""),
        "root": NotebookParameter("root", "Optional[str]", "None", ""),
    }
    assert nbrun.check_parameters("nb", optional, {"keep": None, "root": None}) == {"keep": None, "root": None}
    assert nbrun.check_parameters("nb", optional, {"keep": "5", "root": 7}) == {"keep": 5, "root": "7"}
    with pytest.raises(ValueError, match="'keep' expects Optional\\[int\\]"):
        nbrun.check_parameters("nb", optional, {"keep": 2.5})


def test_run_passes_artifacts_and_writes_summary(notebooks_dir, tmp_path):
    out = tmp_path / "run"
    summary = nbrun.run_notebooks(None, {"value": 21}, out, notebooks_dir=notebooks_dir)
    assert summary["status"] == "ok"
    assert [e["status"] for e in summary["notebooks"]] == ["ok", "ok"]
    assert summary["notebooks"][0]["parameters"] == {"value": 21, "run_dir": str(out.resolve())}
    assert summary["notebooks"][0]["metrics"] == {"doubled": 42, "value": 21}
    assert summary["notebooks"][1]["metrics"] == {"read": 42}
    assert summary["notebooks"][0]["images"] == 1
    assert json.loads((out / "summary.json").read_text())["notebooks"][1]["metrics"] == {"read": 42}
    executed = nbformat.read(out / "01_make.ipynb", as_version=4)
    assert executed.metadata.kernelspec.name == "python3"
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "<html" in (out / "01_make.html").read_text().lower()
    # running one notebook again into the folder keeps the other's entry
    again = nbrun.run_notebooks(["02_use"], {}, out, notebooks_dir=notebooks_dir)
    assert [(e["name"], e.get("earlier", False)) for e in again["notebooks"]] == [("01_make", True), ("02_use", False)]
    assert json.loads((out / "summary.json").read_text())["notebooks"][0]["metrics"] == {"doubled": 42, "value": 21}


def test_failing_notebook_reports_cell_and_error(notebooks_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(nbrun.NotebookExecutionError) as info:
        nbrun.run_notebooks(None, {"02_use": {"fail": True}}, out, notebooks_dir=notebooks_dir)
    error = info.value
    # Cells of 02_use.py: 0 markdown, 1 imports, 2 parameters, 3 read, 4 the raise.
    assert error.notebook == "02_use" and error.cell_index == 4
    assert error.ename == "ZeroDivisionError" and "asked to fail after reading 6" in error.evalue
    assert "notebook 02_use failed at cell 4 ('if fail:'): ZeroDivisionError" in str(error)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert [e["status"] for e in summary["notebooks"]] == ["ok", "failed"]
    assert summary["notebooks"][1]["error"]["cell_index"] == 4
    assert (out / "02_use.ipynb").is_file() and (out / "02_use.html").is_file()


def test_cli_rejects_unknown_parameter_with_one_line(notebooks_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nbsrc", "run-notebooks", "--notebooks-dir", str(notebooks_dir)]
        + ["-p", "nope", "1", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: parameter 'nope' is declared by none")


def test_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent("epochs: 2\n03_training:\n  lr: 0.01\n"))
    assert nbrun.load_params_file(path) == {"epochs": 2, "03_training": {"lr": 0.01}}
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        nbrun.load_params_file(path)


def test_python3_kernel_is_the_running_interpreter():
    manager = nbrun.kernel_manager("python3")  # works without an installed python3 kernelspec
    assert manager.kernel_spec.argv[0] == sys.executable
    assert manager.kernel_spec.language == "python"
    with pytest.raises(RuntimeError, match="no Jupyter kernel named 'no-such-kernel'"):
        nbrun.kernel_manager("no-such-kernel")


def test_relative_path_parameters_become_absolute(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "sizes.csv").write_text("name,width,height\n")
    params = {"dataset_root": "data", "gt_dir": "missing", "split": "data", "checkpoint": None, "epochs": 2}
    params.update(images_root="data", sizes_csv="sizes.csv")
    fixed = nbrun.absolute_paths(params, cwd=tmp_path)  # notebooks run inside the run folder
    assert fixed["dataset_root"] == fixed["images_root"] == str((tmp_path / "data").resolve())
    assert fixed["sizes_csv"] == str((tmp_path / "sizes.csv").resolve())
    assert fixed["gt_dir"] == "missing" and fixed["split"] == "data"  # absent paths and non-path names stay
    assert fixed["checkpoint"] is None and fixed["epochs"] == 2


def test_numbers_in_exponent_notation_are_accepted(tmp_path):
    pairs = nbrun.parse_param_pairs([["lr", "1e-3"], ["wd", "5E-4"], ["epochs", "12"]])
    assert pairs["lr"] == "1e-3"  # YAML 1.1 reads exponent notation without a dot as a string
    path = tmp_path / "params.yaml"
    path.write_text("lr: 1e-3\n")
    declared = {
        "lr": NotebookParameter("lr", "float", "0.001", ""),
        "wd": NotebookParameter("wd", "float | None", "None", ""),
        "epochs": NotebookParameter("epochs", "int", "1", ""),
        "name": NotebookParameter("name", "str | None", "None", ""),
    }
    checked = nbrun.check_parameters("nb", declared, {**pairs, **nbrun.load_params_file(path)})
    assert checked == {"lr": 0.001, "wd": 0.0005, "epochs": 12}
    assert isinstance(checked["lr"], float)
    assert nbrun.check_parameters("nb", declared, {"epochs": "7", "name": "1e-3"}) == {"epochs": 7, "name": "1e-3"}
    for key, value in [("lr", "fast"), ("lr", "1e-3x"), ("epochs", "1e3"), ("epochs", "2.5"), ("wd", "nan")]:
        with pytest.raises(ValueError, match=f"parameter '{key}' expects .*, got str '{value}'"):
            nbrun.check_parameters("nb", declared, {key: value})


def test_pretrained_path_becomes_absolute_but_keywords_stay(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.tar").write_bytes(b"")
    for keyword in ("auto", "none", "imagenet"):
        (tmp_path / keyword).write_bytes(b"")  # a file named like a keyword is still the keyword
        assert nbrun.absolute_paths({"pretrained": keyword}, cwd=tmp_path) == {"pretrained": keyword}
    fixed = nbrun.absolute_paths({"pretrained": "weights/backbone.tar"}, cwd=tmp_path)
    assert fixed == {"pretrained": str((tmp_path / "weights" / "backbone.tar").resolve())}


@pytest.fixture()
def mobilenet_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose ``weights/`` holds the ImageNet MobileNet file (and an empty torch hub cache)."""
    cwd = tmp_path / "cwd"
    (cwd / "weights").mkdir(parents=True)
    (cwd / "weights" / MOBILENET_FILE).write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(cwd)
    return (cwd / "weights" / MOBILENET_FILE).resolve()


def test_auto_pretrained_is_searched_from_the_working_directory(mobilenet_in_cwd):
    declared = {
        "preset": NotebookParameter("preset", "str", '"latent-mnet"', ""),
        "pretrained": NotebookParameter("pretrained", "str", '"auto"', ""),
        "overrides": NotebookParameter("overrides", "str", '""', ""),
    }
    found = str(mobilenet_in_cwd)
    assert nbrun.resolve_auto_pretrained({}, declared) == {"pretrained": found}  # the declared default 'auto'
    assert nbrun.resolve_auto_pretrained({"pretrained": "auto", "epochs": 2}, declared) == {
        "pretrained": found,
        "epochs": 2,
    }
    for params in (
        {"pretrained": "none"},  # not auto
        {"preset": "latent-r18"},  # a ResNet backbone: torchvision's weights, not this file
        {"overrides": "model.backbone=resnet18"},
        {"preset": "no-such-preset"},  # the notebook reports it
    ):
        assert nbrun.resolve_auto_pretrained(params, declared) == params
    assert nbrun.resolve_auto_pretrained({}, {"preset": declared["preset"]}) == {}  # no pretrained parameter
    mobilenet_in_cwd.unlink()
    # nothing found from here: the copy shipped with the package
    assert nbrun.resolve_auto_pretrained({}, declared) == {"pretrained": str(IMAGENET_MOBILENET)}


PRETRAINED = (
    HEADER
    + """
# %%
from nbsrc import paths

# %% tags=["parameters"]
preset: str = "latent-mnet"  # model preset
pretrained: str = "auto"  # ImageNet backbone
run_dir: str | None = None  # run folder

# %%
paths.save_metrics(run_dir, "01_pretrained", {"pretrained": pretrained})
"""
)


def test_run_passes_auto_pretrained_found_from_the_working_directory(mobilenet_in_cwd, tmp_path):
    folder = tmp_path / "nbs_pretrained"
    folder.mkdir()
    (folder / "01_pretrained.py").write_text(PRETRAINED)
    summary = nbrun.run_notebooks(None, {}, tmp_path / "run", notebooks_dir=folder, html=False)
    assert summary["notebooks"][0]["parameters"]["pretrained"] == str(mobilenet_in_cwd)
    assert summary["notebooks"][0]["metrics"] == {"pretrained": str(mobilenet_in_cwd)}


def test_failed_notebook_reports_no_stale_metrics(notebooks_dir, tmp_path):
    out = tmp_path / "run"
    (out / "value.txt").parent.mkdir(parents=True)
    (out / "value.txt").write_text("6")
    paths.save_artifact(out, "value", out / "value.txt")
    paths.save_metrics(out, "02_use", {"read": 999})  # left by an earlier run into the same folder
    with pytest.raises(nbrun.NotebookExecutionError):
        nbrun.run_notebooks(["02"], {"fail": True}, out, notebooks_dir=notebooks_dir, html=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["notebooks"][0]["status"] == "failed"
    assert summary["notebooks"][0]["metrics"] == {}
    assert paths.load_metrics(out, "02_use") is None


def test_command_line_values_win_over_a_notebooks_own_section():
    params = {"epochs": 1, "03_training": {"epochs": 3, "lr": 0.1}, "04_widerface_evaluation": {"split": "val"}}
    merged = nbrun.merge_parameters(params, {"epochs": 5, "resume": "auto"})
    assert merged == {
        "epochs": 5,
        "resume": "auto",
        "03_training": {"epochs": 5, "lr": 0.1},
        "04_widerface_evaluation": {"split": "val"},
    }
    assert params["03_training"]["epochs"] == 3  # the file's content is not changed


def test_papermills_none_and_yaml_dates_are_read_as_meant():
    declared = {
        "keep": NotebookParameter("keep", "Optional[int]", "3", ""),
        "checkpoint": NotebookParameter("checkpoint", "Optional[str]", "None", ""),
        "run_name": NotebookParameter("run_name", "Optional[str]", "None", ""),
        "preset": NotebookParameter("preset", "str", "'x'", ""),
    }
    values = nbrun.parse_param_pairs([["keep", "None"], ["checkpoint", "None"], ["run_name", "2024-01-01"]])
    assert nbrun.check_parameters("nb", declared, values) == {
        "keep": None,
        "checkpoint": None,
        "run_name": "2024-01-01",
    }
    assert nbrun.check_parameters("nb", declared, {"preset": "None"}) == {"preset": "None"}  # a str: kept as text


@pytest.mark.parametrize("name", ["01_data_inspection", "03_training", "04_widerface_evaluation"])
def test_notebooks_check_what_plain_papermill_injects(name):
    # papermill -p smoke false injects the text "false"; the notebook's first cell after its parameters fixes it
    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.py"
    cell = nbrun.parameters_cell(nbrun.read_notebook(path))
    namespace: dict = {}
    exec("from typing import Optional\n" + cell.source, namespace)
    exec('smoke = "false"\nrun_dir = "None"\ndataset_root = "/data/x"\n', namespace)  # papermill's injected cell
    check_given_parameters(namespace, name)
    assert (namespace["smoke"], namespace["run_dir"], namespace["dataset_root"]) == (False, None, "/data/x")
    exec('smoke = "maybe"\n', namespace)
    with pytest.raises(ValueError, match="'smoke' expects bool"):
        check_given_parameters(namespace, name)
