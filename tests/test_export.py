"""Export to ONNX and TorchScript: the exported graphs give the PyTorch model's outputs (probabilities included) at
any input size for every preset family, the config travels inside the file, `Detector.from_onnx` detects what the
PyTorch detector detects, ``detect --weight FILE.onnx`` works, and bad input gets one clear error."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_path
from skimage import data as skdata

from nbsrc.checkpoint import save_checkpoint
from nbsrc.cli import main
from nbsrc.config import get_preset
from nbsrc.detector import Detector
from nbsrc.export import (
    INPUT_NAME,
    anchors_for,
    config_of,
    export_checkpoint,
    export_model,
    read_metadata,
)
from nbsrc.model import build_model
from nbsrc.model.loading import load_model
from nbsrc.preprocess import normalize_image
from nbsrc.weights import PUBLISHED_DETECTOR

ort = pytest.importorskip("onnxruntime")

# small models; few candidates, so that detections of untrained models are compared on well separated scores
TINY = {"model.pretrained": "none", "model.out_channels": 8, "eval.top_k": 100, "eval.keep_top_k": 20}
# preset family -> (preset, overrides); the biubug6 family uses the published weights (shipped with nbsrc)
FAMILIES = {
    "biubug6-landmarks": ("mnet-biubug6", None),
    "2class-no-landmarks": ("mnet-2cls", TINY),
    "p2p6-rgb": ("mnet-p2p6", TINY),
    "p2p6-rgb-focal": ("mnet-p2p6", {**TINY, "loss.cls_loss": "focal"}),
    "latent": ("latent-mnet", {**TINY, "model.latent_channels": 16}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple]:
    """family -> (checkpoint path, model, cfg): our checkpoints as training writes them; the published file."""
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for family, (preset, overrides) in FAMILIES.items():
        if overrides is None:
            made[family] = (PUBLISHED_DETECTOR, *load_model(PUBLISHED_DETECTOR, preset=preset))
            continue
        torch.manual_seed(0)
        cfg = get_preset(preset, **overrides)
        model = build_model(cfg).eval()
        with torch.no_grad():  # trained-looking BatchNorm statistics instead of the identity of a fresh model
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        path = save_checkpoint(root / f"{family}.pth", model=model, config=cfg, epoch=3)
        made[family] = (path, model, cfg)
    return made


def _inputs(model, cfg) -> list[torch.Tensor]:
    """Two batches of different batch size and odd sizes: real photo pixels, or latent-like values."""
    if model.input_kind == "latent":
        generator = torch.Generator().manual_seed(1)
        return [
            torch.randn(shape, generator=generator)
            for shape in ((1, model.in_channels, 6, 9), (2, model.in_channels, 5, 7))
        ]
    photo = skdata.astronaut()
    m = cfg.model
    first = normalize_image(photo[40:200, 100:228], m.channel_order, m.pixel_mean, m.pixel_std)[None]  # 160x128
    second = torch.stack(
        [
            normalize_image(np.ascontiguousarray(p), m.channel_order, m.pixel_mean, m.pixel_std)
            for p in (photo[10:107, 150:281], photo[300:397, 30:161])
        ]
    )  # (2, 3, 97, 131)
    return [first, second]


def _expected(model, cfg, x) -> list[torch.Tensor]:
    """The PyTorch model's outputs in the exported order, scored as the detector scores them."""
    with torch.no_grad():
        out = model(x)
    conf = torch.softmax(out["conf"], -1) if cfg.loss.cls_loss == "ohem" else torch.sigmoid(out["conf"])
    return [out["loc"], conf] + ([out["landm"]] if out["landm"] is not None else [])


def _assert_close(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = torch.as_tensor(g)
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_equals_pytorch_at_two_sizes(tmp_path, checkpoints, family):
    path, model, cfg = checkpoints[family]
    out = export_checkpoint(path, tmp_path / "model.onnx", size=(64, 64) if model.input_kind == "rgb" else (4, 4))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["loc", "conf", "landmarks"] if model.has_landmarks else ["loc", "conf"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    dims = session.get_inputs()[0].shape
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims  # dynamic batch, height, width
    for x in _inputs(model, cfg):
        got = session.run(None, {INPUT_NAME: x.numpy()})
        anchors = model.anchors(x)
        assert got[0].shape == (x.shape[0], len(anchors), 4)
        assert got[1].shape == (x.shape[0], len(anchors), cfg.model.num_classes)
        _assert_close(got, _expected(model, cfg, x))
        assert torch.equal(anchors_for(read_metadata(out), model.image_size(x)), anchors)
    if cfg.loss.cls_loss == "ohem":  # probabilities: every row sums to 1
        np.testing.assert_allclose(got[1].sum(-1), 1.0, atol=1e-5)
    metadata = read_metadata(out)
    assert json.loads(metadata["nbsrc_config"]) == cfg.to_dict()
    assert config_of(metadata) == cfg
    assert metadata["nbsrc_scores"] == ("softmax" if cfg.loss.cls_loss == "ohem" else "sigmoid")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_torchscript_equals_pytorch_at_two_sizes(tmp_path, checkpoints, family):
    path, model, cfg = checkpoints[family]
    out = export_checkpoint(path, tmp_path / "model.pt", size=(64, 64) if model.input_kind == "rgb" else (4, 4))
    loaded = torch.jit.load(str(out))
    for x in _inputs(model, cfg):
        with torch.no_grad():
            _assert_close(list(loaded(x)), _expected(model, cfg, x))
    assert config_of(read_metadata(out)) == cfg


def test_biubug6_outputs_are_the_published_test_phase_outputs(tmp_path):
    """Code written for biubug6's exports: ``loc, conf, landms = session.run(None, {"input0": BGR - mean})``,
    ``conf[..., 1]`` the face score, decoded with their priors for the image size."""
    out = export_checkpoint(PUBLISHED_DETECTOR, tmp_path / "FaceDetector.onnx", size=(96, 96))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = skdata.astronaut()
    x = image[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
    loc, conf, landms = session.run(None, {"input0": x.transpose(2, 0, 1)[None].copy()})
    priors = anchors_for(read_metadata(out), image.shape[:2]).numpy()
    best = int(conf[0, :, 1].argmax())
    centre = priors[best, :2] + loc[0, best, :2] * 0.1 * priors[best, 2:]
    size = priors[best, 2:] * np.exp(loc[0, best, 2:] * 0.2)
    box = np.concatenate([centre - size / 2, centre + size / 2]) * 512
    assert conf[0, best, 1] > 0.99
    np.testing.assert_allclose(box, (177, 56, 270, 176), atol=4)  # the astronaut's face
    assert landms.shape == (1, len(priors), 10)


def _trained_detectors(tmp_path, kind):
    """(checkpoint, PyTorch detector) of trained weights: the published detector, its weights scored with sigmoids
    (a focal-loss config, saved as our checkpoint), or the published 2-class detector (../shared)."""
    if kind == "2class":
        path = shared_path("weights/mobilenet0.25_2cls6anchors_130324_epoch_295.pth")
        return path, Detector(*load_model(path, preset="mnet-2cls"))
    model, cfg = load_model(PUBLISHED_DETECTOR, preset="mnet-biubug6")
    if kind == "focal":
        cfg = cfg.replace(**{"loss.cls_loss": "focal"})
        return save_checkpoint(tmp_path / "focal.pth", model=model, config=cfg), Detector(model, cfg)
    return PUBLISHED_DETECTOR, Detector(model, cfg)


@pytest.mark.parametrize("kind", ["published", "focal", "2class"])
def test_from_onnx_detects_what_pytorch_detects(tmp_path, kind):
    path, torch_detector = _trained_detectors(tmp_path, kind)
    out = export_checkpoint(path, tmp_path / "model.onnx", size=(64, 64))
    onnx_detector = Detector.from_onnx(out, threads=1)
    assert onnx_detector.cfg == torch_detector.cfg and onnx_detector.input_kind == "rgb"
    image = skdata.astronaut()
    for item, conf in ((image, 0.5), (np.ascontiguousarray(image[37:301, 5:398]), 0.05)):
        want = torch_detector.detect(item, conf=conf)
        got = onnx_detector.detect(item, conf=conf)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            np.testing.assert_allclose(g["box"], w["box"], atol=2e-3)
            assert abs(g["score"] - w["score"]) < 1e-5 and g["label"] == w["label"]
            if w["landmarks"] is None:
                assert g["landmarks"] is None
            else:
                np.testing.assert_allclose(g["landmarks"], w["landmarks"], atol=2e-3)


def test_from_onnx_latent_maps_to_the_original_size(tmp_path, checkpoints):
    path, model, cfg = checkpoints["latent"]
    out = export_checkpoint(path, tmp_path / "latent.onnx", size=(4, 4))
    onnx_detector = Detector.from_onnx(out, preset="latent-mnet", threads=1)
    latent = np.random.default_rng(0).standard_normal((16, 6, 8)).astype(np.float32)
    want = Detector(model, cfg).detect(latent, conf=0.0, orig_size=(300, 200))
    got = onnx_detector.detect(latent, conf=0.0, orig_size=(300, 200))
    assert len(got) == len(want) > 0
    np.testing.assert_allclose([g["box"] for g in got], [w["box"] for w in want], atol=2e-3)
    with pytest.raises(ValueError, match="export of preset 'latent-mnet', not 'mnet-biubug6'"):
        Detector.from_onnx(out, preset="mnet-biubug6")


def test_cli_export_and_detect_with_the_onnx_file(tmp_path, capsys):
    """``export`` without --weight writes the shipped published detector; ``detect --weight FILE.onnx`` prints
    what ``detect`` prints with the PyTorch weights."""
    onnx_path = tmp_path / "retinaface.onnx"
    assert main(["export", "--out", str(onnx_path), "--size", "64", "64"]) == 0
    assert config_of(read_metadata(onnx_path)).preset == "mnet-biubug6"
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), skdata.astronaut()[:, :, ::-1])
    capsys.readouterr()
    assert main(["detect", "--weight", str(onnx_path), "--image", str(image)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["detect", "--image", str(image)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["preset"] == want["preset"] == "mnet-biubug6"
    assert len(got["detections"]) == len(want["detections"]) == 1
    np.testing.assert_allclose(got["detections"][0]["box"], want["detections"][0]["box"], atol=0.011)


def test_cli_exports_the_published_checkpoints(tmp_path):
    """The published files of ../shared, the 2-class one with its preset given (TorchScript), load as exports."""
    mnet = tmp_path / "mnet.onnx"
    assert main(["export", "--weight", str(shared_path("weights/mobilenet0.25_Final.pth")), "--out", str(mnet)]) == 0
    two_class = shared_path("weights/mobilenet0.25_2cls6anchors_130324_epoch_295.pth")
    ts = tmp_path / "two_class.ts"
    argv = ["export", "--weight", str(two_class), "--preset", "mnet-2cls", "--out", str(ts), "--size", "96", "128"]
    assert main(argv) == 0
    assert config_of(read_metadata(ts)).preset == "mnet-2cls"
    assert Detector.from_onnx(mnet).cfg.preset == "mnet-biubug6"


def test_bad_input_gets_one_clear_error(tmp_path, capsys, checkpoints):
    path, model, cfg = checkpoints["2class-no-landmarks"]
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    cases = [
        (["--out", str(tmp_path / "m.onnx"), "--format", "tflite"], "--format tflite: unknown export format"),
        (["--out", str(folder)], "is a directory (expected a file path)"),
        (["--out", str(tmp_path / "m.bin")], "cannot tell the export format from the suffix '.bin'"),
        (["--out", str(tmp_path / "m.onnx"), "--weight", str(tmp_path / "none.pth")], "checkpoint file not found"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["export", "--weight", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx"]  # nothing written
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model, cfg, tmp_path / "m.onnx", "tflite")
    with pytest.raises(ValueError, match="is a directory"):
        export_model(model, cfg, folder, "onnx")


def test_onnx_files_not_written_by_nbsrc_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"  # a valid model without nbsrc metadata
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input0"], ["loc"])],
        "foreign",
        [helper.make_tensor_value_info("input0", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(ValueError, match="no 'nbsrc_config' metadata: not a file written by 'python -m nbsrc export'"):
        Detector.from_onnx(foreign)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a loadable ONNX model"):
        Detector.from_onnx(junk)
    with pytest.raises(FileNotFoundError, match="missing.onnx: ONNX model file not found"):
        Detector.from_onnx(tmp_path / "missing.onnx")


def test_missing_onnx_packages_are_named(tmp_path, monkeypatch, checkpoints):
    path, model, cfg = checkpoints["2class-no-landmarks"]
    exported = export_checkpoint(path, tmp_path / "m.onnx", size=(64, 64), check=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"onnxruntime is not installed \(it runs ONNX files\): pip install"):
        Detector.from_onnx(exported)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(RuntimeError, match="onnx is not installed"):
        export_model(model, cfg, tmp_path / "n.onnx", check=False)
