"""``eval.test_scale``: RGB prediction at biubug6's ``test_widerface.py`` test scales (``original``: the image at
its own size; ``mxnet``: short side 1600, long side at most 2150), boxes written in original-image pixels; the
default ``square`` stays what it was."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_path

from nbsrc.checkpoint import save_checkpoint
from nbsrc.cli import main as cli_main
from nbsrc.config import Config, get_preset
from nbsrc.data.rgb_dataset import read_rgb
from nbsrc.detector import Detector
from nbsrc.evaluation.predict import MANIFEST, build_predict_dataset, predict_dataset
from nbsrc.evaluation.results import read_result_file, result_path
from nbsrc.frame import ScaleMap
from nbsrc.model import build_model
from nbsrc.preprocess import eval_resize_factor


def _biubug6_resize(height: int, width: int) -> float:
    """The lines of biubug6 test_widerface.py (target_size 1600, max_size 2150), as they stand there."""
    im_size_min, im_size_max = np.min([height, width]), np.max([height, width])
    resize = float(1600) / float(im_size_min)
    if np.round(resize * im_size_max) > 2150:
        resize = float(2150) / float(im_size_max)
    return resize


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (1024, 683, 2150 / 1024),  # 1600 / 683 * 1024 = 2399 > 2150: capped
        (683, 1024, 2150 / 1024),
        (1000, 1200, 1.6),  # 1.6 * 1200 = 1920: the short side reaches 1600
        (800, 800, 2.0),
        (200, 2000, 2150 / 2000),  # very elongated: capped, the short side ends at 215
        (1600, 2150, 1.0),  # exactly at the cap: round(2150) is not > 2150
        (1600, 2151, 2150 / 2151),
    ],
)
def test_mxnet_resize_factor_follows_biubug6(height, width, expected):
    assert eval_resize_factor(height, width, "mxnet") == pytest.approx(expected, rel=1e-12)
    assert eval_resize_factor(height, width, "mxnet") == _biubug6_resize(height, width)
    assert eval_resize_factor(height, width, "original") == 1.0
    with pytest.raises(ValueError, match="test_scale"):
        eval_resize_factor(height, width, "square")


def test_test_scale_config_is_validated_saved_and_defaults_for_old_configs():
    cfg = get_preset("mnet-biubug6")
    assert cfg.eval.test_scale == "square"
    assert cfg.replace(**{"eval.test_scale": "original"}).eval.test_scale == "original"
    assert cfg.override_pairs(["test_scale=mxnet"]).eval.test_scale == "mxnet"
    with pytest.raises(ValueError, match="eval.test_scale"):
        cfg.replace(**{"eval.test_scale": "origin"})
    saved = cfg.replace(**{"eval.test_scale": "mxnet"}).to_dict()
    assert Config.from_dict(saved).eval.test_scale == "mxnet"
    del saved["eval"]["test_scale"]  # a config saved before the key existed
    assert Config.from_dict(saved).eval.test_scale == "square"


@pytest.fixture(scope="module")
def published() -> Detector:
    return Detector.from_checkpoint(shared_path("weights/mobilenet0.25_Final.pth"), preset="mnet-biubug6")


def _rows_as_xyxy(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4], rows[:, 4:5]], 1)  # (N, 5) xyxy + score


def _assert_same_detections(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """Equal sets of (x1, y1, x2, y2, score) rows (ties in score may be listed in another order)."""
    assert got.shape == want.shape and len(got) > 0
    gap = np.abs(got[:, None, :] - want[None, :, :]).max(-1)  # (N, N)
    assert gap.min(1).max() < tol and gap.min(0).max() < tol


def test_original_scale_predictions_equal_detector_detect(demo_root, published, tmp_path):
    cfg = published.cfg.replace(**{"eval.test_scale": "original", "data.max_images": 2})
    dataset = build_predict_dataset(cfg, demo_root, "val")
    assert dataset.test_scale == "original"
    stats = predict_dataset(published, dataset, tmp_path, conf=0.02, nms=0.4, batch_size=8, decimals=4, progress=False)
    assert stats.written == 2
    assert json.loads((tmp_path / MANIFEST).read_text())["settings"]["test_scale"] == "original"
    for sample in dataset.samples:
        image = read_rgb(sample.path)
        assert dataset[dataset.names.index(sample.name)]["input"].shape[1:] == image.shape[:2]  # no resize
        faces = published.detect(image, conf=0.02, nms=0.4)
        want = np.array([[*f["box"], f["score"]] for f in faces])  # (N, 5)
        _, rows = read_result_file(result_path(tmp_path, sample.name))
        _assert_same_detections(_rows_as_xyxy(rows), want, tol=1e-3)


def test_mxnet_scale_boxes_come_back_in_original_pixels(demo_root, published, tmp_path):
    cfg = published.cfg.replace(**{"eval.test_scale": "mxnet", "data.max_images": 1})
    dataset = build_predict_dataset(cfg, demo_root, "val")
    predict_dataset(published, dataset, tmp_path, conf=0.02, nms=0.4, decimals=4, progress=False)
    sample = dataset.samples[0]
    # biubug6 test_widerface.py by hand: BGR float32, resize by the factor, minus the mean, boxes / resize
    image = np.float32(cv2.imread(str(sample.path), cv2.IMREAD_COLOR))
    height, width = image.shape[:2]
    resize = _biubug6_resize(height, width)
    assert resize != 1.0
    image = cv2.resize(image, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
    image -= (104, 117, 123)
    inputs = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]  # (1, 3, H', W')
    det = published.predict_batch(inputs, conf=0.02, nms=0.4)[0]
    want = np.concatenate([det["boxes"].numpy() / resize, det["scores"].numpy()[:, None]], 1)  # (N, 5)
    _, rows = read_result_file(result_path(tmp_path, sample.name))
    got = _rows_as_xyxy(rows)
    _assert_same_detections(got, want, tol=1e-3)
    assert got[:, [0, 2]].max() <= width + 1 and got[:, [1, 3]].max() <= height + 1
    frame = dataset[0]["frame"]
    assert isinstance(frame, ScaleMap) and frame.factor == resize and frame.orig_size == (width, height)
    assert dataset[0]["input"].shape == inputs.shape[1:]
    # another test scale into the same folder: the old predictions are not kept
    original = build_predict_dataset(cfg.replace(**{"eval.test_scale": "original"}), demo_root, "val")
    assert predict_dataset(published, original, tmp_path, progress=False).skipped == 0
    assert predict_dataset(published, original, tmp_path, progress=False).skipped == 1


def test_square_manifest_unchanged_and_latents_ignore_test_scale(demo_root, tmp_path, caplog):
    small = {"model.pretrained": "none", "model.out_channels": 8, "data.max_images": 1}
    torch.manual_seed(0)
    cfg = get_preset("mnet-biubug6").replace(**small)
    detector = Detector(build_model(cfg), cfg, "cpu")
    dataset = build_predict_dataset(cfg, demo_root, "val")
    assert dataset.test_scale == "square" and dataset[0]["input"].shape[1:] == (640, 640)
    predict_dataset(detector, dataset, tmp_path, progress=False)
    assert "test_scale" not in json.loads((tmp_path / MANIFEST).read_text())["settings"]  # old folders stay resumable
    latent_cfg = get_preset("latent-r18").replace(**small, **{"eval.test_scale": "original"})
    latent_set = build_predict_dataset(latent_cfg, demo_root, "val")
    assert not hasattr(latent_set, "test_scale")
    assert "applies to RGB models only" in caplog.text


def test_predict_command_test_scale(demo_root, tmp_path):
    torch.manual_seed(1)
    cfg = get_preset("mnet-biubug6").replace(**{"model.pretrained": "none", "model.out_channels": 8})
    weight = tmp_path / "rgb.pth"
    save_checkpoint(weight, model=build_model(cfg), config=cfg.replace(**{"data.max_images": 1}))
    base = ["predict", "--weight", str(weight), "--dataset_root", str(demo_root), "--device", "cpu", "--no-progress"]
    base += ["--max_images", "1"]  # the checkpoint's training cap is not inherited

    def settings(out):
        return json.loads((out / MANIFEST).read_text())["settings"]

    assert cli_main([*base, "--out", str(tmp_path / "a"), "--test_scale", "original"]) == 0
    assert settings(tmp_path / "a")["test_scale"] == "original"
    assert cli_main([*base, "--out", str(tmp_path / "b"), "eval.test_scale=mxnet"]) == 0
    assert settings(tmp_path / "b")["test_scale"] == "mxnet"
    assert cli_main([*base, "--out", str(tmp_path / "c"), "model.out_channels=4"]) == 2
    assert cli_main([*base, "--out", str(tmp_path / "c"), "eval.test_scale=big"]) == 2
