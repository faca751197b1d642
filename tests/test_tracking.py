"""W&B tracking without a key and without network: disabled is a no-op that never imports wandb, offline
writes a local run (scalars, images with boxes, a checkpoint artifact), online without a key falls back to
offline with one warning, on Kaggle the key comes from the notebook secret, and
without wandb installed a run warns once and tracks nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from nbsrc import engine, tracking
from nbsrc.config import get_preset
from nbsrc.pictures import preview_picture
from nbsrc.tracking import Tracker, find_wandb_key, init_tracker


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    """An environment with no W&B key anywhere and wandb's folders under tmp_path."""
    monkeypatch.setenv("WANDB_API_KEY", "placeholder")
    monkeypatch.delenv("WANDB_API_KEY")
    for name in ("WANDB_MODE", "WANDB_DIR", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _exercise(tracker: Tracker, tmp_path) -> None:
    tracker.log({"train/loss": 1.5, "train/lr": 1e-3, "note": "skipped"}, step=1)
    image = np.zeros((64, 80, 3), np.uint8)
    detections = {"boxes": np.array([[4.0, 5.0, 30.0, 40.0]]), "scores": np.array([0.9]), "labels": np.array([1])}
    tracker.log_detections("val/detections", [image], [detections], [np.array([[5.0, 5.0, 31.0, 41.0]])], step=1)
    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes(b"weights")
    tracker.log_checkpoint(checkpoint, name="run 1/best", aliases=("best",), metadata={"val_ap": 0.5})
    tracker.summary({"best": 0.5})
    tracker.finish()
    tracker.finish()  # idempotent


def test_disabled_is_a_noop_and_never_imports_wandb():
    code = (
        "import sys, numpy as np\n"
        "from nbsrc.tracking import init_tracker\n"
        "t = init_tracker('disabled', run_dir='/nonexistent/never-created')\n"
        "t.log({'a': 1.0}, step=1)\n"
        "t.log_detections('k', [np.zeros((4, 4, 3), np.uint8)], [{'boxes': np.zeros((0, 4)), 'scores': [], 'labels': []}])\n"
        "t.log_checkpoint('/nonexistent.pth', name='x')\n"
        "t.finish()\n"
        "assert not t.enabled and t.mode == 'disabled'\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_offline_without_key_writes_a_local_run(no_key):
    tracker = init_tracker("offline", project="nbsrc-test", run_name="offline-run", config={"lr": 0.1}, run_dir=no_key)
    assert tracker.enabled and tracker.mode == "offline"
    _exercise(tracker, no_key)
    runs = list((no_key / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no run file written"
    assert list(runs[0].rglob("*.png")), "the detection image was not written"


def test_online_without_key_falls_back_to_offline_with_one_warning(no_key, caplog):
    with caplog.at_level(logging.WARNING, logger="nbsrc.tracking"):
        tracker = init_tracker("online", project="nbsrc-test", run_name="fallback", run_dir=no_key)
    try:
        assert tracker.mode == "offline"
        warnings = [r for r in caplog.records if r.name == "nbsrc.tracking" and r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "offline" in warnings[0].getMessage()
    finally:
        tracker.finish()


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="online"):
        init_tracker("sometimes")


def _fake_secrets(monkeypatch, get_secret):
    module = types.ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, label):
            return get_secret(label)

    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)


def test_kaggle_secret_provides_the_key(no_key, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    _fake_secrets(monkeypatch, lambda label: "k" * 40 if label == "WANDB_API_KEY" else None)
    assert find_wandb_key() == "kaggle"
    assert os.environ["WANDB_API_KEY"] == "k" * 40


def test_unattached_kaggle_secret_means_no_key(no_key, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")

    def missing(label):
        raise ConnectionError(f"secret {label} not attached")

    _fake_secrets(monkeypatch, missing)
    assert find_wandb_key() is None
    assert tracking._kaggle_secret("WANDB_API_KEY") is None


def test_no_key_outside_kaggle_even_with_secrets_module(no_key, monkeypatch):
    _fake_secrets(monkeypatch, lambda label: "k" * 40)
    assert find_wandb_key() is None  # not on Kaggle: the secrets client is never asked


def test_netrc_entry_counts_as_a_key(no_key):
    home = no_key / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
    assert find_wandb_key() == "netrc"


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_missing_wandb_means_one_warning_and_no_tracking(no_key, monkeypatch, caplog, mode):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with caplog.at_level(logging.WARNING, logger="nbsrc.tracking"):
        tracker = init_tracker(mode, run_dir=no_key)
    assert not tracker.enabled and tracker.mode == "disabled"
    warnings = [r.getMessage() for r in caplog.records if r.name == "nbsrc.tracking" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not installed" in warnings[0], warnings
    _exercise(tracker, no_key)  # every call is a no-op
    assert not (no_key / "wandb").exists()


class _Capture(Tracker):
    """An enabled tracker that keeps what it is asked to log."""

    def __init__(self) -> None:
        super().__init__(run=object(), mode="offline")
        self.logged: list[dict] = []

    def log_detections(self, key, images, detections, ground_truth=None, *, captions=None, step=None, max_images=8):
        self.logged.append({"key": key, "images": images, "detections": detections, "captions": captions})


@pytest.mark.parametrize("preset", ["mnet-biubug6", "latent-r18"])
def test_validation_previews_show_the_input_with_its_confident_detections(preset):
    cfg = get_preset(preset)
    shape = (3, 64, 80) if cfg.model.input_kind == "rgb" else (cfg.model.latent_channels, 4, 5)
    x = torch.randn(shape) * 30
    found = {"boxes": np.array([[4.0, 5.0, 30.0, 40.0], [1, 1, 9, 9]]), "scores": np.array([0.9, 0.2])}
    sample = {"input": x, "detections": {**found, "labels": np.array([1, 1])}, "gt_boxes": np.zeros((0, 4))}
    tracker = _Capture()
    engine._log_previews(tracker, cfg, [{**sample, "name": "0--Parade/a"}], step=3, latent_stride=16)
    (logged,) = tracker.logged
    assert logged["key"] == "val/detections" and logged["captions"] == ["0--Parade/a"]
    np.testing.assert_array_equal(logged["images"][0], preview_picture(x, cfg.model, latent_stride=16))
    assert logged["images"][0].shape == (64, 80, 3) and logged["images"][0].dtype == np.uint8
    assert logged["detections"][0]["scores"].tolist() == [0.9]  # only detections scoring 0.5 or more
