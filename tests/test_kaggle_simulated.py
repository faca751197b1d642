"""A Kaggle run, simulated: the four kernels `kaggle-build` writes, executed in push order as Kaggle runs them.

What Kaggle gives a kernel, reproduced in a temporary folder (nothing is written outside it):

- an input root holding the dataset exactly as published (``retina-modify/retina-modify/{train,val}``: latents
  and labels only, a stray ``train/latent/labels.txt``, no images, no sizes, no ground truth), a separately
  attached WIDER FACE copy (``WIDER_{train,val}/images``, ``wider_face_split/``, ``eval_tools/ground_truth/``),
  and the code dataset as Kaggle unpacks it (``nbsrc-code/nbsrc``); nothing may write into it;
- a Python where ``nbsrc`` is not installed (the notebooks import it from the code dataset);
- ``KAGGLE_KERNEL_RUN_TYPE`` set, papermill running the notebook with the baked-in parameters;
- each kernel's working folder, once it completed, attached to the next kernels as an input mount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nbsrc import kaggle, paths
from nbsrc.data.demo import make_demo_data
from nbsrc.data.published_layout import split_as_published

ROOT = Path(__file__).resolve().parents[1]

# hides an installed nbsrc (an editable install's finder, a source checkout on sys.path) from every process
BLOCK_INSTALLED = """
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "nbsrc" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "nbsrc" not in getattr(h, "__module__", "")]
sys.path[:] = [p for p in sys.path if not (p and __import__("os").path.isfile(p + "/nbsrc/__init__.py"))]
"""

PARAMETERS = {
    "01_data_inspection": {"samples": 2, "stats_latents": 4},
    "03_training": {"preset": "latent-mnet", "epochs": 2, "batch_size": 4, "num_workers": 0, "gallery": 2},
    "04_widerface_evaluation": {"all_rates": False, "gallery": 2},
}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def kaggle_world(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kaggle")
    demo = make_demo_data(base / "demo", images=8, seed=3)
    inputs = base / "input"
    split_as_published(demo, inputs)  # input/retina-modify/retina-modify/..., input/wider-face/...
    build = kaggle.build("sim-user", base / "build", parameters=PARAMETERS)
    shutil.copytree(build["code_dataset"], inputs / paths.CODE_DATASET_SLUG)
    blocker = base / "not-installed"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_INSTALLED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBSRC_", "KAGGLE_", "PYTHON"))}
    env.update(
        KAGGLE_KERNEL_RUN_TYPE="Batch",
        PYTHONPATH=str(blocker),
        MPLBACKEND="Agg",
        NBSRC_KAGGLE_INPUT=str(inputs),
        WANDB_MODE="disabled",
        PYTHONDONTWRITEBYTECODE="1",  # a read-only mount gets no __pycache__
    )
    return {"base": base, "inputs": inputs, "build": base / "build", "env": env, "kernels": build["kernels"]}


def test_the_published_shape_is_what_users_have(kaggle_world):
    dataset = kaggle_world["inputs"] / "retina-modify" / "retina-modify"
    assert sorted(p.name for p in dataset.iterdir()) == ["train", "val"]
    assert (dataset / "train" / "latent" / "labels.txt").is_file()  # the stray copy
    kinds = {p.suffix for p in dataset.rglob("*") if p.is_file()}
    assert kinds == {".npy", ".txt"}, "latents and labels only"
    wider = kaggle_world["inputs"] / "wider-face"
    assert (wider / "WIDER_val" / "images").is_dir() and (wider / "WIDER_train" / "images").is_dir()
    assert (wider / "eval_tools" / "ground_truth" / "wider_hard_val.mat").is_file()
    assert (wider / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file()


def test_nbsrc_is_not_installed_in_the_kernels(kaggle_world):
    env = kaggle_world["env"]
    done = subprocess.run(
        [sys.executable, "-c", "import nbsrc"], env=env, cwd=kaggle_world["base"], capture_output=True
    )
    assert done.returncode != 0 and b"No module named 'nbsrc'" in done.stderr
    code = str(kaggle_world["inputs"] / paths.CODE_DATASET_SLUG)
    probe = f"import sys; sys.path.insert(0, {code!r}); import nbsrc; print(nbsrc.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=kaggle_world["base"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith(code), done.stderr


def test_the_four_kernels_run_in_push_order_on_the_published_dataset(kaggle_world):
    inputs, env = kaggle_world["inputs"], dict(kaggle_world["env"])
    before = _snapshot(inputs)
    outputs = {}
    for name, folder in kaggle_world["kernels"].items():
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        working = kaggle_world["base"] / "working" / meta["id"].split("/", 1)[1]
        working.mkdir(parents=True)
        env[paths.WORKING_ENV] = str(working)
        executed = working / "__notebook__.ipynb"
        command = [sys.executable, "-m", "papermill", str(folder / meta["code_file"]), str(executed), "-k", "python3"]
        command += ["--cwd", str(working), "--no-progress-bar"]
        done = subprocess.run(command, env=env, cwd=working, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"kernel {name} failed:\n{done.stderr[-6000:]}"
        assert _snapshot(inputs) == before, f"kernel {name} wrote into the read-only input"
        outputs[name] = nbformat.read(executed, as_version=4)
        shutil.copytree(working, inputs / meta["id"].split("/", 1)[1])  # its output, attached to the next kernels
        before = _snapshot(inputs)

    def text(nb) -> str:
        parts = []
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                parts.append(out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", "")))
        return "\n".join(parts)

    inspection = text(outputs["01_data_inspection"])
    assert "WIDER_val/images" in inspection or "original" in inspection  # sizes found, frame reported
    evaluation = text(outputs["04_widerface_evaluation"])
    for setting in ("Easy", "Medium", "Hard"):
        assert setting in evaluation, f"notebook 04 prints no {setting} AP"
    assert "eval_tools/ground_truth" in evaluation  # the attached WIDER copy's ground truth, found and named
    metrics = json.loads(
        (kaggle_world["base"] / "working" / "nbsrc-04-widerface-evaluation" / "notebooks" / "metrics")
        .joinpath("04_widerface_evaluation.json")
        .read_text()
    )
    aps = {k: v for k, v in metrics.items() if k.lower().startswith(("easy", "medium", "hard", "wider"))}
    assert aps, f"no WIDER AP among the saved metrics {sorted(metrics)}"
