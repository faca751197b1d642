"""Kaggle kernels: the committed metadata, and what ``kaggle-build`` writes (`nbsrc.kaggle`)."""

from __future__ import annotations

import json
import os
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
    inspection = kaggle.kernel_metadata("01_data_inspection", "alice", code_file="x.ipynb")
    assert inspection["enable_gpu"] is False and "machine_shape" not in inspection  # spends no GPU quota
    assert kaggle.kernel_metadata("02_anchor_statistics", "alice", code_file="x.ipynb")["enable_gpu"] is False
    assert kaggle.kernel_metadata("03_training", "alice", code_file="x.ipynb")["enable_gpu"] is True
    with pytest.raises(ValueError, match="owner"):
        kaggle.kernel_metadata("01_data_inspection", "bad owner!", code_file="x.ipynb")
    with pytest.raises(ValueError, match="no Kaggle kernel for notebook"):
        kaggle.kernel_metadata("99_nothing", "alice", code_file="x.ipynb")


def test_a_wider_face_copy_is_attached_to_every_kernel(tmp_path):
    for notebook in kaggle.KERNELS:
        meta = kaggle.kernel_metadata(notebook, "alice", code_file="x.ipynb", wider="carol/wider-face")
        assert meta["dataset_sources"] == [
            "alice/retina-modify",
            "carol/wider-face",
            f"alice/{paths.CODE_DATASET_SLUG}",
        ]
    with pytest.raises(ValueError, match="WIDER FACE dataset 'wider face'"):
        kaggle.kernel_metadata("01_data_inspection", "alice", code_file="x.ipynb", wider="wider face")
    with pytest.raises(ValueError, match="OWNER/SLUG"):
        kaggle.build("alice", tmp_path / "build", wider="no-owner")
    assert not (tmp_path / "build").exists()
    built = kaggle.build("alice", tmp_path / "build", wider="carol/wider-face", notebooks=["01_data_inspection"])
    meta = json.loads((built["kernels"]["01_data_inspection"] / "kernel-metadata.json").read_text())
    assert "carol/wider-face" in meta["dataset_sources"]


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
        "lacks the latent dataset": {**meta, "dataset_sources": ["alice/nbsrc-code"]},
        "'enable_gpu' must be True": {**meta, "enable_gpu": False},
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


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner": "john.doe"}, r"Kaggle owner 'john\.doe'"),
        ({"dataset": "no-owner"}, "expected OWNER/SLUG"),
        ({"parameters": {"epochs": "many"}}, "epochs"),
    ],
    ids=["owner", "dataset-id", "parameter"],
)
def test_bad_input_writes_nothing(tmp_path, kwargs, message):
    out = tmp_path / "B"
    with pytest.raises(ValueError, match=message):
        kaggle.build(**{"owner": "alice", "out": out, **kwargs})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_under_another_name_is_attached_and_baked_in_as_dataset_root(tmp_path):
    result = kaggle.build("alice", tmp_path / "B", dataset="someone/wider-latents", notebooks=["01", "03"])
    for notebook, folder in result["kernels"].items():
        meta = kaggle.validate_kernel_metadata(folder / "kernel-metadata.json")
        assert meta["dataset_sources"] == ["someone/wider-latents", "alice/nbsrc-code"]
        nb = nbformat.read(folder / meta["code_file"], as_version=4)
        injected = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert 'dataset_root = "wider-latents"' in injected, notebook
    chosen = kaggle.build("alice", tmp_path / "C", dataset="someone/wider-latents", parameters={"dataset_root": "x"})
    nb = nbformat.read(chosen["kernels"]["01_data_inspection"] / "01_data_inspection.ipynb", as_version=4)
    assert 'dataset_root = "x"' in next(
        c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])
    )


def test_failed_build_keeps_the_previous_build(tmp_path, monkeypatch):
    out = tmp_path / "B"
    kaggle.build("alice", out, notebooks=["01"], parameters={"smoke": True})
    before = _tree(out)
    with pytest.raises(ValueError, match="Kaggle owner"):
        kaggle.build("john.doe", out, notebooks=["01", "02"])
    assert _tree(out) == before
    validate = kaggle.validate_kernel_metadata

    def fail_on_02(path):
        if "02" in Path(path).parent.name:
            raise ValueError(f"{path}: broken")
        return validate(path)

    monkeypatch.setattr(kaggle, "validate_kernel_metadata", fail_on_02)
    with pytest.raises(ValueError, match="broken"):
        kaggle.build("alice", out, notebooks=["01", "02"], parameters={"smoke": False})
    assert _tree(out) == before  # no 02 folder, 01 and the code dataset untouched, no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == sorted(["PUSH.md", "nbsrc-code", "nbsrc-01-data-inspection"])


def test_failed_install_puts_the_previous_build_back(tmp_path, monkeypatch):
    out = tmp_path / "B"
    kaggle.build("alice", out, notebooks=["01"], parameters={"smoke": True})
    (out / "nbsrc-code" / "older.txt").write_text("marks the older code dataset")
    before = _tree(out)
    replace = os.replace

    def fail_on_01(src, dst):
        if Path(dst) == out / "nbsrc-01-data-inspection" and Path(src).parent.name.startswith(".kaggle-build-"):
            raise OSError(f"cannot move {src}")
        replace(src, dst)

    monkeypatch.setattr(kaggle.os, "replace", fail_on_01)
    with pytest.raises(OSError, match="cannot move"):
        kaggle.build("alice", out, notebooks=["01"], parameters={"smoke": False})
    monkeypatch.undo()
    assert _tree(out) == before  # the code dataset moved in before the failure is the older one again
    assert sorted(p.name for p in out.iterdir()) == sorted(["PUSH.md", "nbsrc-code", "nbsrc-01-data-inspection"])


def test_rebuild_replaces_each_folder(tmp_path):
    out = tmp_path / "B"
    kaggle.build("alice", out, notebooks=["01"], parameters={"smoke": True})
    stale = out / "nbsrc-01-data-inspection" / "stale.txt"
    stale.write_text("from an older build")
    (out / "unrelated").mkdir()
    kaggle.build("alice", out, notebooks=["01"], parameters={"smoke": False})
    assert not stale.exists()
    notebook = nbformat.read(out / "nbsrc-01-data-inspection" / "01_data_inspection.ipynb", as_version=4)
    injected = next(c.source for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "smoke = False" in injected
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["PUSH.md", "nbsrc-code", "nbsrc-01-data-inspection", "unrelated"]
    )


def test_cli_rejects_a_malformed_dataset_before_writing(tmp_path):
    out = tmp_path / "B"
    result = subprocess.run(
        [sys.executable, "-m", "nbsrc", "kaggle-build", "--owner", "carol", "--dataset", "wider-latents"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "expected OWNER/SLUG" in result.stderr
    assert not out.exists()


def _wait_snippet(push: str, kernel: str) -> str:
    """The PUSH.md line that waits for `kernel`."""
    lines = [line for line in push.splitlines() if f"kaggle kernels status {kernel}" in line and "sleep 60" in line]
    assert len(lines) == 1, push
    return lines[0]


def test_push_waits_for_training_before_evaluation(build):
    out, _ = build
    push = (out / "PUSH.md").read_text()
    training = push.index(f"kaggle kernels push -p {out / 'nbsrc-03-training'}")
    wait = push.index(_wait_snippet(push, "alice/nbsrc-03-training"))
    evaluation = push.index(f"kaggle kernels push -p {out / 'nbsrc-04-widerface-evaluation'}")
    assert training < wait < evaluation
    assert "`kaggle kernels status alice/nbsrc-03-training`" in push  # the command to check by hand
    pushes = [line for line in push.splitlines() if "kaggle kernels push" in line]
    assert len(pushes) == 4 and "sleep" not in push[: push.index(pushes[2])]  # 01..03 do not wait
    # the GPU kernels ask for the T4 on the command line too: an older CLI rejects it rather than run on a P100
    assert [("--accelerator NvidiaTeslaT4" in line) for line in pushes] == [False, False, True, True]
    assert "kaggle datasets create -p" in push and "kaggle kernels output alice/nbsrc-04" in push


@pytest.mark.parametrize(
    ("statuses", "pushed"),
    [
        (['has status "queued"', 'has status "KernelWorkerStatus.RUNNING"', 'has status "complete"'], True),
        (['has status "running"', 'has status "KernelWorkerStatus.ERROR"'], False),
    ],
    ids=["complete", "error"],
)
def test_push_wait_loop_polls_until_done(build, tmp_path, statuses, pushed):
    out, _ = build
    push = (out / "PUSH.md").read_text()
    lines = push.splitlines()
    start = lines.index(_wait_snippet(push, "alice/nbsrc-03-training"))
    script = "\n".join(lines[start : start + 2])  # the loop and the guarded push of the evaluation kernel
    assert "nbsrc-04-widerface-evaluation" in lines[start + 1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    queue = tmp_path / "statuses"
    queue.write_text("".join(f"alice/nbsrc-03-training {s}\n" for s in statuses))
    (bin_dir / "kaggle").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        f'if [ "$2" = status ]; then head -n 1 {queue}; tail -n +2 {queue} > {queue}.rest; mv {queue}.rest {queue}; fi\n'
    )
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/sleeps\n')
    for tool in ("kaggle", "sleep"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls.count("kernels status alice/nbsrc-03-training") == len(statuses)
    assert (tmp_path / "sleeps").read_text().split() == ["60"] * (len(statuses) - 1)
    assert any(c.startswith("kernels push") for c in calls) is pushed, result.stdout + result.stderr
    assert ("did not complete: nbsrc-04-widerface-evaluation not pushed" in result.stdout) is not pushed
