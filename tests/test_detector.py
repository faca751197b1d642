"""Detector acceptance with the published weights, numerical equality with the published network, sigmoid
scores for a focal-loss model, bad inputs, and the ``detect`` command."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import focal_model, shared_path
from skimage import data as skdata

from nbsrc.checkpoint import save_checkpoint
from nbsrc.cli import main
from nbsrc.config import get_preset
from nbsrc.detector import Detector
from nbsrc.frame import FrameMap
from nbsrc.model import build_model

MNET = "weights/mobilenet0.25_Final.pth"
TWO_CLASS = "weights/mobilenet0.25_2cls6anchors_130324_epoch_295.pth"
ASTRONAUT_FACE = (177, 56, 270, 176)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnet() -> Detector:
    return Detector.from_checkpoint(shared_path(MNET))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


# ---- an independent functional re-implementation of the published mobilenet0.25 RetinaFace -------------
def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def _conv_bn(x, sd, p, stride=1, leaky=None, groups=1):
    """``p.0`` conv (padding k//2, no bias), ``p.1`` BN, optional LeakyReLU(leaky)."""
    w = sd[p + ".0.weight"]
    x = _bn(F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), sd, p + ".1")
    return F.leaky_relu(x, leaky) if leaky is not None else x


def _conv_dw(x, sd, p, stride):
    c = x.shape[1]
    x = F.leaky_relu(_bn(F.conv2d(x, sd[p + ".0.weight"], None, stride, 1, 1, c), sd, p + ".1"), 0.1)
    return F.leaky_relu(_bn(F.conv2d(x, sd[p + ".3.weight"]), sd, p + ".4"), 0.1)


def _published_forward(sd, x):
    """biubug6 RetinaFace(cfg_mnet) in test phase, from the state dict alone: (softmax conf, loc, landm)."""
    x = _conv_bn(x, sd, "body.stage1.0", stride=2, leaky=0.1)
    for i, s in zip(range(1, 6), (1, 2, 1, 2, 1)):
        x = _conv_dw(x, sd, f"body.stage1.{i}", s)
    c3 = x
    for i, s in enumerate((2, 1, 1, 1, 1, 1)):
        x = _conv_dw(x, sd, f"body.stage2.{i}", s)
    c4 = x
    for i, s in enumerate((2, 1)):
        x = _conv_dw(x, sd, f"body.stage3.{i}", s)
    c5 = x
    leaky = 0.1  # out_channel 64 <= 64
    o1 = _conv_bn(c3, sd, "fpn.output1", leaky=leaky)
    o2 = _conv_bn(c4, sd, "fpn.output2", leaky=leaky)
    o3 = _conv_bn(c5, sd, "fpn.output3", leaky=leaky)
    o2 = _conv_bn(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"), sd, "fpn.merge2", leaky=leaky)
    o1 = _conv_bn(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"), sd, "fpn.merge1", leaky=leaky)
    features = []
    for level, f in enumerate((o1, o2, o3), 1):
        p = f"ssh{level}"
        a = _conv_bn(f, sd, p + ".conv3X3")
        b1 = _conv_bn(f, sd, p + ".conv5X5_1", leaky=leaky)
        b = _conv_bn(b1, sd, p + ".conv5X5_2")
        c = _conv_bn(_conv_bn(b1, sd, p + ".conv7X7_2", leaky=leaky), sd, p + ".conv7x7_3")
        features.append(F.relu(torch.cat([a, b, c], 1)))

    def head(name, k):
        outs = []
        for i, f in enumerate(features):
            y = F.conv2d(f, sd[f"{name}.{i}.conv1x1.weight"], sd[f"{name}.{i}.conv1x1.bias"])
            outs.append(y.permute(0, 2, 3, 1).contiguous().view(y.shape[0], -1, k))  # (B, H*W*2, k)
        return torch.cat(outs, 1)

    return F.softmax(head("ClassHead", 2), dim=-1), head("BboxHead", 4), head("LandmarkHead", 10)


def _published_priors(h, w):
    """biubug6 PriorBox (cfg_mnet) with its loops."""
    out = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512))):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for m in sizes:
                    out.append([(j + 0.5) * step / w, (i + 0.5) * step / h, m / w, m / h])
    return torch.tensor(out)


def test_numerically_equal_to_the_published_network(mnet, astronaut):
    sd = torch.load(shared_path(MNET), map_location="cpu", weights_only=True)
    for image in (astronaut, astronaut[40:300, 10:391]):  # square and odd-sized non-square
        reference_input = image[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)  # BGR - mean
        x_ref = torch.from_numpy(reference_input.transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            conf_ref, loc_ref, landm_ref = _published_forward(sd, x_ref)
            x = mnet.prepare(image)[None]
            assert torch.equal(x, x_ref)
            out = mnet.model(x)
        assert torch.allclose(F.softmax(out["conf"], -1), conf_ref, atol=1e-4, rtol=0)
        assert torch.allclose(out["loc"], loc_ref, atol=1e-4, rtol=0)
        assert torch.allclose(out["landm"], landm_ref, atol=1e-4, rtol=0)
        h, w = image.shape[:2]
        assert torch.allclose(mnet.model.anchors(x), _published_priors(h, w), atol=1e-6)


# ---- acceptance ------------------------------------------------------------------------------------
def test_astronaut_has_exactly_one_face(mnet, astronaut):
    dets = mnet.detect(astronaut, conf=0.5, nms=0.4)
    assert len(dets) == 1
    det = dets[0]
    assert det["score"] > 0.9 and det["label"] == 1
    assert np.allclose(det["box"], ASTRONAUT_FACE, atol=8)
    eyes = np.array(det["landmarks"][:2])
    assert eyes[0, 0] < eyes[1, 0]  # left eye (image left) first
    x1, y1, x2, y2 = det["box"]
    assert all(x1 <= px <= x2 and y1 <= py <= y2 for px, py in det["landmarks"])


def test_coffee_has_no_face(mnet):
    assert mnet.detect(skdata.coffee(), conf=0.5) == []


def test_two_class_checkpoint_finds_the_face(astronaut):
    detector = Detector.from_checkpoint(shared_path(TWO_CLASS))
    dets = detector.detect(astronaut, conf=0.5)
    faces = [d for d in dets if d["label"] == 1]
    assert faces and faces[0]["landmarks"] is None
    assert np.allclose(faces[0]["box"], ASTRONAUT_FACE, atol=12)


def test_detect_batch_matches_detect(mnet, astronaut):
    crop = np.ascontiguousarray(astronaut[:300, :320])
    batch = mnet.detect_batch([astronaut, crop, astronaut], conf=0.5)

    def same(a, b):  # batched convolutions may differ from single ones in the last float bits
        return len(a) == len(b) and all(
            np.allclose(x["box"], y["box"], atol=1e-3) and abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b)
        )

    single = mnet.detect(astronaut, conf=0.5)
    assert same(batch[0], single) and same(batch[2], single) and len(single) == 1
    assert same(batch[1], mnet.detect(crop, conf=0.5))
    predictions = mnet.predict_batch(mnet.prepare(astronaut)[None])
    assert predictions[0]["scores"][0] > 0.9 and len(predictions[0]["scores"]) >= 1  # eval thresholds (0.02)


def test_detector_scores_a_focal_model_with_sigmoid():
    model, cfg = focal_model()
    with torch.no_grad():
        head = model.ClassHead[0].conv1x1
        head.bias.view(-1, 2)[:, 0] = 5.0  # an untrained background logit must not matter
        head.bias.view(-1, 2)[:, 1] = 0.5
    detector = Detector(model, cfg)
    x = torch.randn(1, 3, 64, 64)
    detections = detector.predict_batch(x, conf=0.05)[0]
    with torch.no_grad():
        face = torch.sigmoid(model(x)["conf"][0, :, 1])  # (A,)
    assert len(detections["scores"]) > 0
    assert torch.allclose(detections["scores"][0], face.max())


# ---- bad inputs ----------------------------------------------------------------------------------------
def test_bad_rgb_inputs(mnet):
    with pytest.raises(ValueError, match=r"expected an RGB image \[H, W, 3\] uint8, got shape \[32, 32\]"):
        mnet.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        mnet.detect(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="latent"):
        mnet.detect(np.zeros((256, 40, 40), np.float32))


@pytest.fixture(scope="module")
def latent_detector() -> Detector:
    torch.manual_seed(0)
    cfg = get_preset("latent-r18", **{"model.pretrained": "none", "model.bridge": "nearest"})
    return Detector(build_model(cfg), cfg)


def test_bad_latent_inputs(latent_detector):
    with pytest.raises(ValueError, match=r"expected a latent of shape \[256, h, w\].*got \[3, 40, 40\]"):
        latent_detector.detect(np.zeros((3, 40, 40), np.float32))
    with pytest.raises(ValueError, match="dtype int32"):
        latent_detector.detect(np.zeros((256, 4, 4), np.int32))
    bad = np.zeros((1, 256, 4, 4), np.float32)
    bad[0, 3, 1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        latent_detector.detect(bad)


def test_latent_detection_frames(latent_detector):
    latent = np.random.default_rng(0).standard_normal((1, 256, 4, 5)).astype(np.float16)
    net = latent_detector.detect(latent, conf=0.0, nms=0.3)
    assert net, "a random model at conf 0 detects something"
    assert all(-200 < v < 300 for d in net for v in d["box"])
    orig = latent_detector.detect(latent, conf=0.0, nms=0.3, orig_size=(1280, 960))
    frame = FrameMap(orig_size=(1280, 960), net_size=(80, 64), policy="stretch")
    assert np.allclose([d["box"] for d in orig], frame.to_original(np.array([d["box"] for d in net])), atol=1e-3)
    assert np.allclose(orig[0]["landmarks"], frame.to_original(np.array(net[0]["landmarks"])), atol=1e-3)


def test_orig_size_is_for_latents_only(mnet, astronaut):
    with pytest.raises(ValueError, match="latent models only"):
        mnet.detect(astronaut, orig_size=(100, 100))


def test_checkpoint_of_another_preset_is_rejected():
    with pytest.raises(ValueError, match="checkpoint of preset 'mnet-2cls', not 'mnet-biubug6'"):
        Detector.from_checkpoint(shared_path(TWO_CLASS), preset="mnet-biubug6")


# ---- the detect command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), astronaut[:, :, ::-1])
    return path


def test_cli_detect_image_to_stdout(capsys, astronaut_png):
    rc = main(["detect", "--weight", str(shared_path(MNET)), "--image", str(astronaut_png)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preset"] == "mnet-biubug6" and len(report["detections"]) == 1
    assert np.allclose(report["detections"][0]["box"], ASTRONAUT_FACE, atol=8)


def test_cli_aliases_json_and_visualisation(tmp_path, capsys, astronaut_png):
    out_json, vis = tmp_path / "dets.json", tmp_path / "vis.png"
    argv = ["detect", "--trained_model", str(shared_path(MNET)), "--network", "mobile0.25", "--image"]
    rc = main([*argv, str(astronaut_png), "--conf", "0.6", "--json", str(out_json), "--save", str(vis)])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert len(report["detections"]) == 1 and report["detections"][0]["score"] > 0.9
    image = cv2.imread(str(vis))
    assert image.shape == (512, 512, 3)
    x1, y1 = (int(v) for v in report["detections"][0]["box"][:2])
    assert tuple(image[y1 + 20, x1]) == (0, 0, 255)  # red box edge (BGR on disk)


def test_cli_latent(tmp_path, capsys, latent_detector):
    ckpt = save_checkpoint(tmp_path / "latent.pth", model=latent_detector.model, config=latent_detector.cfg)
    latent = tmp_path / "img_latent_75.npy"
    np.save(latent, np.random.default_rng(1).standard_normal((256, 3, 4)).astype(np.float32))
    rc = main(["detect", "--weight", str(ckpt), "--latent", str(latent), "--conf", "0.0", "--orig-size", "640", "480"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preset"] == "latent-r18" and report["detections"]
    bad = tmp_path / "bad_latent.npy"
    np.save(bad, np.zeros((128, 3, 4), np.float32))
    assert main(["detect", "--weight", str(ckpt), "--latent", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad_latent.npy" in err and "expected a latent of shape [256, h, w]" in err
    assert main(["detect", "--weight", str(ckpt), "--image", str(bad)]) == 2
    assert "takes latents; use --latent" in capsys.readouterr().err


def test_cli_bad_inputs(tmp_path, capsys, astronaut_png):
    weight = str(shared_path(MNET))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["detect", "--weight", weight, "--image", str(broken)]) == 2
    assert "broken.jpg: not a readable image" in capsys.readouterr().err
    assert main(["detect", "--weight", weight, "--image", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: image file not found" in capsys.readouterr().err
    assert main(["detect", "--weight", weight, "--preset", "mnet-2cls", "--image", str(astronaut_png)]) == 2
    assert "checkpoint of preset 'mnet-biubug6', not 'mnet-2cls'" in capsys.readouterr().err
    assert main(["detect", "--weight", str(tmp_path / "nope.pth"), "--image", str(astronaut_png)]) == 2
    assert "nope.pth: checkpoint file not found" in capsys.readouterr().err
