"""Shared fixtures and config builders. ``../shared`` holds real ground truth and published weights: tests that
need it skip with a clear reason when it is absent, and fail instead when ``REQUIRE_SHARED=1`` (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NBSRC_SHARED", ROOT.parent / "shared"))

# one thread per pytest-xdist worker (the workers share the cores), else up to 2
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def shared_path(relative: str) -> Path:
    """Path of a file under ../shared, or skip (fail under REQUIRE_SHARED=1) when it is missing."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared file {path} not found"
        if os.environ.get("REQUIRE_SHARED") == "1":
            pytest.fail(message + " (REQUIRE_SHARED=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder (skip / fail like `shared_path`)."""
    return shared_path("")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset built once per test session (see `nbsrc.data.demo`)."""
    from nbsrc.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, images=24, seed=0)
    return root


@pytest.fixture
def no_pretrained_files(tmp_path, monkeypatch) -> Path:
    """A working directory without ./weights, an empty torch hub cache, and not on Kaggle."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    return tmp_path


# Small and fast models: thin heads, at most 100 detections per image, the first 2 images of a split.
SMALL = {"model.pretrained": "none", "model.out_channels": 8, "eval.keep_top_k": 100, "data.max_images": 2}


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(latent-r18, mnet-biubug6) checkpoints of untrained `SMALL` models, without training state."""
    from nbsrc.checkpoint import save_checkpoint
    from nbsrc.config import get_preset
    from nbsrc.model import build_model

    folder = tmp_path_factory.mktemp("small_ckpt")
    torch.manual_seed(0)
    latent_cfg = get_preset("latent-r18").replace(**SMALL)
    save_checkpoint(folder / "latent.pth", model=build_model(latent_cfg), config=latent_cfg)
    torch.manual_seed(1)
    rgb_cfg = get_preset("mnet-biubug6").replace(**SMALL)
    save_checkpoint(folder / "rgb.pth", model=build_model(rgb_cfg), config=rgb_cfg)
    return folder / "latent.pth", folder / "rgb.pth"


def focal_model():
    """(model, config): a seeded, untrained mnet-biubug6 trained with focal loss."""
    from nbsrc.config import get_preset
    from nbsrc.model import build_model

    torch.manual_seed(0)
    cfg = get_preset("mnet-biubug6", **{"model.pretrained": "none", "loss.cls_loss": "focal"})
    return build_model(cfg), cfg


@pytest.fixture(scope="module")
def one_thread():
    """Small convolutions on a shared 2-core machine run faster (and far steadier) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_TRAINING = {  # a tiny training run on the demo data: 2 steps of 2 images per epoch, CPU, seeded
    "model.pretrained": "none",
    "model.out_channels": 16,
    "data.image_size": 128,
    "train.batch_size": 2,
    "train.max_steps_per_epoch": 2,
    "train.lr": 0.01,
    "train.warmup_epochs": 0.5,
    "train.schedule": "step",
    "train.gamma": 0.7,
    "train.step_size": 1,
    "train.device": "cpu",
    "train.wandb": "disabled",
    "train.progress": False,
    "train.seed": 7,
    "data.num_workers": 0,
    "data.max_images": 4,
}


def tiny_training_config(root, out, preset: str = "mnet-biubug6", **overrides):
    """`preset` with `TINY_TRAINING` on the dataset at `root`, writing runs under `out`, then `overrides`."""
    from nbsrc.config import get_preset

    return get_preset(preset, **{**TINY_TRAINING, "data.dataset_root": str(root), "train.out": str(out), **overrides})
