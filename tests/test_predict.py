"""Dataset-wide prediction on the demo dataset with untrained small models: it runs, writes every file in
original-image pixels (latent boxes mapped back with the dataset's resize policy), resumes, times forward and
post-processing separately, and writes a class column for 2-class models.

``eval.test_scale``: RGB prediction at biubug6's ``test_widerface.py`` test scales (``original``: the image at
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
from nbsrc.evaluation.predict import (
    MANIFEST,
    available_rates,
    build_predict_dataset,
    predict_dataset,
    weights_digest,
)
from nbsrc.evaluation.results import read_result_file, result_path
from nbsrc.evaluation.twoclass import evaluate_twoclass
from nbsrc.evaluation.widerface import evaluate
from nbsrc.frame import ScaleMap
from nbsrc.model import build_model
from nbsrc.preprocess import eval_resize_factor

SMALL = {"model.pretrained": "none", "model.out_channels": 8, "eval.keep_top_k": 100, "data.max_images": 2}


@pytest.fixture(scope="module")
def latent_detector() -> Detector:
    torch.manual_seed(0)
    cfg = get_preset("latent-r18").replace(**SMALL)
    return Detector(build_model(cfg), cfg, "cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, latent_detector):
    folder = tmp_path_factory.mktemp("ckpt")
    latent = folder / "latent.pth"
    # A training-time cap is saved with the config; prediction does not inherit it (--max_images asks for one).
    save_checkpoint(latent, model=latent_detector.model, config=latent_detector.cfg.replace(**{"data.max_images": 1}))
    torch.manual_seed(1)
    rgb_cfg = get_preset("mnet-biubug6").replace(**SMALL)
    rgb = folder / "rgb.pth"
    save_checkpoint(rgb, model=build_model(rgb_cfg), config=rgb_cfg)
    return latent, rgb


def test_predict_maps_back_and_resumes(demo_root, latent_detector, tmp_path):
    cfg = latent_detector.cfg.replace(**{"data.max_images": 3})
    dataset = build_predict_dataset(cfg, demo_root, "val")
    assert len(dataset) == 3
    stats = predict_dataset(latent_detector, dataset, tmp_path, conf=0.02, nms=0.4, batch_size=2, progress=False)
    assert stats.written == 3 and stats.skipped == 0 and stats.detections > 0
    assert stats.forward_ms > 0 and stats.postprocess_ms > 0 and 0 < stats.postprocess_share < 1
    sizes = set()
    for i in range(3):
        sample = dataset[i]
        path = result_path(tmp_path, sample["name"])
        assert path.parent.name == sample["name"].split("/")[0]  # <out>/<event>/<basename>.txt
        _, rows = read_result_file(path)
        assert 0 < len(rows) <= 100 and np.all(np.diff(rows[:, 4]) <= 0)  # sorted by score
        det = latent_detector.predict_batch(sample["input"][None], conf=0.02, nms=0.4)[0]
        frame = sample["frame"]
        assert frame is not None
        sizes.add(frame.orig_size)
        expected = frame.to_original(det["boxes"].numpy())  # (N, 4) original pixels
        got = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4], rows[:, 4:5]], 1)
        want = np.concatenate([expected, det["scores"].numpy()[:, None]], 1)[: len(got)]
        assert len(want) == len(got)
        # Same detections up to the written precision (ties in score may be listed in another order).
        gap = np.abs(got[:, None, :4] - want[None, :, :4]).max(-1) + np.abs(got[:, None, 4] - want[None, :, 4])
        assert gap.min(1).max() < 0.02 and gap.min(0).max() < 0.02
    assert sizes - {(640, 640)}  # originals of other sizes: the mapping is not the identity
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.txt")}
    more = build_predict_dataset(cfg.replace(**{"data.max_images": 5}), demo_root, "val")
    again = predict_dataset(latent_detector, more, tmp_path, batch_size=4, progress=False)
    assert again.skipped == 3 and again.written == 2
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(list(tmp_path.rglob("*.txt"))) == 5
    ap = evaluate(tmp_path, demo_root / "val" / "ground_truth", missing="empty")
    assert set(ap) == {"easy", "medium", "hard"} and all(0.0 <= v <= 1.0 for v in ap.values())


def test_predict_cli_all_rates(demo_root, checkpoints, tmp_path, capsys):
    latent, rgb = checkpoints
    assert available_rates(demo_root, "val") == [12, 25, 50, 75, 100]
    out = tmp_path / "pred"
    args = [
        "predict",
        "--weight",
        str(latent),
        "--dataset_root",
        str(demo_root),
        "--split",
        "val",
        "--all-rates",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch_size",
        "2",
        "--no-progress",
        "--json",
        str(tmp_path / "s.json"),
        "--max_images",
        "1",
    ]
    assert cli_main(args) == 0
    for rate in (12, 25, 50, 75, 100):
        assert len(list((out / f"latent_{rate}").rglob("*.txt"))) == 1
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["latent_12"]["written"] == 1 and stats["latent_12"]["forward_ms_per_image"] > 0
    printed = capsys.readouterr().out
    assert "ms/image" in printed and "post-processing" in printed
    assert printed.count("predicted 1 of 8 images (max_images=1)") == 5
    assert cli_main(args) == 0  # resumed: nothing left to do
    assert json.loads((tmp_path / "s.json").read_text())["latent_100"]["skipped"] == 1
    # One rate by its suffix: the same files as that rate's folder of the --all-rates run.
    single = args[: args.index("--all-rates")] + ["--latent_suffix", "latent_25.npy", "--out", str(tmp_path / "one")]
    single += ["--device", "cpu", "--no-progress", "--max_images", "1"]
    assert cli_main(single) == 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.txt"))
    assert files == sorted(p.relative_to(out / "latent_25") for p in (out / "latent_25").rglob("*.txt"))
    assert all((tmp_path / "one" / f).read_text() == (out / "latent_25" / f).read_text() for f in files)
    assert (tmp_path / "one" / files[0]).read_text() != (out / "latent_100" / files[0]).read_text()
    bad = ["predict", "--weight", str(rgb), "--dataset_root", str(demo_root), "--all-rates", "--out", str(out)]
    assert cli_main(bad) == 2
    assert "need a latent model" in capsys.readouterr().err


def test_predict_twoclass_rgb_model(demo_root, tmp_path):
    """A 2-class RGB model writes ``x y w h score cls`` files in the WIDER layout, in original-image pixels, and
    the 2-class evaluation reads them against the demo's 2-class labels."""
    torch.manual_seed(2)
    cfg = get_preset("mnet-2cls").replace(**SMALL)
    detector = Detector(build_model(cfg), cfg, "cpu")
    dataset = build_predict_dataset(cfg, demo_root, "val")
    stats = predict_dataset(detector, dataset, tmp_path / "pred", batch_size=2, progress=False)
    assert stats.written == 2 and stats.unmapped == 0
    for i in range(2):
        sample = dataset[i]
        _, rows = read_result_file(result_path(tmp_path / "pred", sample["name"]), columns=(6,))
        assert rows.shape[1] == 6 and set(rows[:, 5].tolist()) <= {1.0, 2.0} and len(rows) > 0
        w, h = sample["frame"].orig_size
        # Original-image pixels: boxes spread over the image, not over the 640 network frame.
        assert rows[:, 0].max() <= w and rows[:, 1].max() <= h
        assert (rows[:, 0] + rows[:, 2]).max() > 0.5 * w or (rows[:, 1] + rows[:, 3]).max() > 0.5 * h
    result = evaluate_twoclass(
        tmp_path / "pred",
        demo_root / "val" / "labels_2cls.txt",
        coords="pixels",
        image_sizes=demo_root / "image_sizes.csv",
        missing="empty",
    )
    assert len(result.missing) == 8 - 2 and result.num_predictions["face"] + result.num_predictions["person"] > 0
    assert all(0.0 <= result.ap[c][t] <= 1.0 for c in ("face", "person") for t in (0.5, 0.3))


def _result_texts(folder):
    return {p.relative_to(folder): p.read_text() for p in sorted(folder.rglob("*.txt"))}


def test_a_prediction_folder_never_mixes_two_models_or_settings(demo_root, latent_detector, tmp_path):
    cfg = latent_detector.cfg.replace(**{"data.max_images": 3})
    dataset = build_predict_dataset(cfg, demo_root, "val")
    folder = tmp_path / "preds"
    predict_dataset(
        latent_detector,
        build_predict_dataset(cfg.replace(**{"data.max_images": 5}), demo_root, "val"),
        folder,
        batch_size=4,
        progress=False,
    )
    manifest = json.loads((folder / "predictions.json").read_text())
    assert len(manifest["names"]) == 5 and len(manifest["settings"]["weights"]) == 40

    # other weights into the same folder: the 5 old files go, the 3 images are predicted again
    torch.manual_seed(5)
    other = Detector(build_model(cfg), cfg, "cpu")
    stats = predict_dataset(other, dataset, folder, batch_size=4, progress=False)
    assert stats.skipped == 0 and stats.written == 3
    fresh = tmp_path / "fresh"
    predict_dataset(other, dataset, fresh, batch_size=4, progress=False)
    assert _result_texts(folder) == _result_texts(fresh)  # exactly what a clean folder gets, no stale extras

    # same weights and settings: resumed; another threshold: predicted again
    assert predict_dataset(other, dataset, folder, batch_size=4, progress=False).skipped == 3
    stricter = predict_dataset(other, dataset, folder, conf=0.5, batch_size=4, progress=False)
    assert stricter.skipped == 0 and stricter.written == 3
    assert json.loads((folder / "predictions.json").read_text())["settings"]["conf"] == 0.5

    # resume=False starts over; a folder of result files without a manifest is not trusted
    assert predict_dataset(other, dataset, folder, conf=0.5, resume=False, progress=False).written == 3
    (folder / "predictions.json").unlink()
    assert predict_dataset(other, dataset, folder, conf=0.5, progress=False).written == 3


def test_prediction_settings_digest_the_weights_not_the_object(latent_detector):
    copy = build_model(latent_detector.cfg)
    copy.load_state_dict(latent_detector.model.state_dict())
    assert weights_digest(copy) == weights_digest(latent_detector.model)
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(copy) != weights_digest(latent_detector.model)


# ---- eval.test_scale: biubug6's test scales for RGB models


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
