"""The weights shipped in ``nbsrc/weights``: they load, they are the original files' tensors, ``pretrained=auto``
ends at the ImageNet MobileNet copy when nothing else is found, and the published detector runs with no file given
(``Detector.published()``, ``detect`` without ``--weight``)."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, shared_path
from skimage import data as skdata

from nbsrc import kaggle
from nbsrc.checkpoint import read_state_dict
from nbsrc.cli import main
from nbsrc.config import get_preset
from nbsrc.detector import Detector
from nbsrc.model import build_model
from nbsrc.model.backbones import MobileNetV1
from nbsrc.model.build import MOBILENET_FILE, convert_imagenet_mobilenet, find_mobilenet_file
from nbsrc.model.loading import infer_preset
from nbsrc.pretrained import resolve_pretrained
from nbsrc.weights import IMAGENET_MOBILENET, PUBLISHED_DETECTOR, PUBLISHED_PRESET

ORIGINAL_BACKBONE = "weights/mobilenetV1X0.25_pretrain.tar"
ORIGINAL_DETECTOR = "weights/mobilenet0.25_Final.pth"
ASTRONAUT_FACE = (177, 56, 270, 176)  # x1, y1, x2, y2 of the one face in skimage's astronaut()


@pytest.fixture
def nothing_else(tmp_path, monkeypatch):
    """An empty working directory and torch hub cache (via TORCH_HOME), not on Kaggle."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), skdata.astronaut()[:, :, ::-1])
    return path


# ---- the files --------------------------------------------------------------------------------------------
def test_the_imagenet_backbone_is_a_plain_state_dict_of_the_mobilenet_trunk():
    raw = torch.load(IMAGENET_MOBILENET, map_location="cpu", weights_only=True)
    own = MobileNetV1().state_dict()
    assert isinstance(raw, dict) and list(raw) == list(own)  # 162 tensors, no prefix, no classifier
    assert len(raw) == 162 and all(raw[k].shape == own[k].shape for k in own)
    MobileNetV1().load_state_dict(raw, strict=True)
    assert IMAGENET_MOBILENET.stat().st_size < 1_000_000


def test_the_imagenet_backbone_holds_the_original_tensors(tmp_path):
    original = torch.load(shared_path(ORIGINAL_BACKBONE), map_location="cpu", weights_only=True)["state_dict"]
    shipped = torch.load(IMAGENET_MOBILENET, map_location="cpu", weights_only=True)
    expected = {k.removeprefix("module."): v for k, v in original.items() if not k.startswith("module.fc.")}
    assert shipped.keys() == expected.keys()
    different = [
        k for k in expected if not (torch.equal(shipped[k], expected[k]) and shipped[k].dtype == expected[k].dtype)
    ]
    assert not different, different[:5]
    # the original tar and the shipped file give the same model
    torch.manual_seed(0)
    by_tar = build_model(get_preset("latent-mnet", **{"model.pretrained": str(shared_path(ORIGINAL_BACKBONE))}))
    torch.manual_seed(0)
    by_shipped = build_model(get_preset("latent-mnet", **{"model.pretrained": str(IMAGENET_MOBILENET)}))
    assert all(torch.equal(v, by_shipped.state_dict()[k]) for k, v in by_tar.state_dict().items())
    # the conversion is reproducible: it writes the shipped file byte for byte
    rebuilt = convert_imagenet_mobilenet(shared_path(ORIGINAL_BACKBONE), tmp_path / "rebuilt.pth")
    assert rebuilt.read_bytes() == IMAGENET_MOBILENET.read_bytes()


def test_the_converter_refuses_another_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"other\.pth: not biubug6's MobileNetV1 x0\.25 checkpoint: 162 missing"):
        torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
        convert_imagenet_mobilenet(tmp_path / "other.pth", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_the_published_detector_loads_as_mnet_biubug6():
    state_dict = read_state_dict(PUBLISHED_DETECTOR)
    assert len(state_dict) == 300 and infer_preset(state_dict) == PUBLISHED_PRESET
    detector = Detector.published()
    assert detector.cfg.preset == PUBLISHED_PRESET and detector.input_kind == "rgb"


def test_the_published_detector_is_the_original_file():
    assert PUBLISHED_DETECTOR.read_bytes() == shared_path(ORIGINAL_DETECTOR).read_bytes()
    image = skdata.astronaut()
    shipped, original = Detector.published(), Detector.from_checkpoint(shared_path(ORIGINAL_DETECTOR))
    batch = shipped.prepare(image)[None]  # (1, 3, 512, 512)
    with torch.inference_mode():
        a, b = shipped.model(batch), original.model(batch)
    assert a.keys() == {"loc", "conf", "landm"} == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert shipped.detect(image) == original.detect(image)


def test_the_files_are_package_data_and_go_into_the_kaggle_code_dataset(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in (IMAGENET_MOBILENET, PUBLISHED_DETECTOR):
        assert any(path.match(pattern) for pattern in patterns["nbsrc.weights"]), path.name
    kaggle._copy_code(tmp_path)
    for path in (IMAGENET_MOBILENET, PUBLISHED_DETECTOR):
        assert (tmp_path / "nbsrc" / "weights" / path.name).read_bytes() == path.read_bytes()


# ---- pretrained=auto ----------------------------------------------------------------------------------------
def test_auto_resolves_to_the_shipped_backbone_when_nothing_else_is_found(nothing_else, monkeypatch):
    assert torch.hub.get_dir() == str(nothing_else / "torch_home" / "hub")
    assert resolve_pretrained("auto", "mobilenet0.25") == str(IMAGENET_MOBILENET)
    assert find_mobilenet_file() == IMAGENET_MOBILENET
    with pytest.raises(RuntimeError, match="neither in .* nor in ./weights"):
        find_mobilenet_file(shipped=False)
    # on Kaggle with nothing attached, too
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    (nothing_else / "input").mkdir()
    assert resolve_pretrained("auto", "mobilenet0.25", input_root=nothing_else / "input") == str(IMAGENET_MOBILENET)
    assert resolve_pretrained("auto", "resnet18") == "auto"  # ResNets: unchanged
    assert resolve_pretrained("none", "mobilenet0.25") == "none"


def test_a_local_file_comes_before_the_shipped_one(nothing_else):
    hub = nothing_else / "torch_home" / "hub" / "checkpoints"
    for folder in (nothing_else / "weights", hub):
        folder.mkdir(parents=True)
        shutil.copyfile(IMAGENET_MOBILENET, folder / MOBILENET_FILE)  # a plain state dict under the tar's name
        found = resolve_pretrained("auto", "mobilenet0.25")
        assert found == str((hub if folder == hub else folder) / MOBILENET_FILE)
    model = build_model(get_preset("latent-mnet"))
    assert model.pretrained_source == str(hub / MOBILENET_FILE)  # build_model searches the hub cache first


def test_latent_mnet_with_auto_starts_from_the_shipped_imagenet_backbone(nothing_else, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="nbsrc.model.build"):
        model = build_model(get_preset("latent-mnet", **{"model.pretrained": "auto"}))
    assert model.pretrained_source == str(IMAGENET_MOBILENET)
    lines = [r.getMessage() for r in caplog.records if "pretrained tensors" in r.getMessage()]
    assert len(lines) == 1 and str(IMAGENET_MOBILENET) in lines[0] and "shipped with nbsrc" in lines[0]
    shipped = torch.load(IMAGENET_MOBILENET, map_location="cpu", weights_only=True)
    kept = {k: v for k, v in model.body.state_dict().items() if not k.startswith("bridge.")}
    assert len(kept) == 132 and all(torch.equal(v, shipped[k]) for k, v in kept.items())
    # the same file given as a path (a plain state dict) loads the same tensors
    by_path = build_model(get_preset("latent-mnet", **{"model.pretrained": str(IMAGENET_MOBILENET)}))
    assert all(torch.equal(v, by_path.body.state_dict()[k]) for k, v in kept.items())
    untrained = build_model(get_preset("latent-mnet", **{"model.pretrained": "none"}))
    assert untrained.pretrained_source is None
    assert not torch.equal(untrained.body.stage2[0][0].weight, model.body.stage2[0][0].weight)


# ---- detection with no file given -------------------------------------------------------------------------
def test_detect_without_weight_finds_the_astronauts_face(astronaut_png, capsys):
    assert main(["detect", "--image", str(astronaut_png)]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert report["preset"] == PUBLISHED_PRESET and report["weight"] == str(PUBLISHED_DETECTOR)
    assert len(report["detections"]) == 1
    face = report["detections"][0]
    assert face["score"] > 0.9 and np.allclose(face["box"], ASTRONAUT_FACE, atol=8)


def test_detect_without_weight_says_which_detector_it_ran(astronaut_png, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nbsrc.commands.detect"):
        assert main(["detect", "--image", str(astronaut_png), "--json", str(tmp_path / "faces.json")]) == 0
    said = [r.getMessage() for r in caplog.records if "no --weight" in r.getMessage()]
    assert len(said) == 1 and str(PUBLISHED_DETECTOR) in said[0] and PUBLISHED_PRESET in said[0]
    assert json.loads((tmp_path / "faces.json").read_text())["detections"][0]["score"] > 0.9


def test_detect_without_weight_refuses_a_latent_and_another_preset(astronaut_png, tmp_path, capsys):
    latent = tmp_path / "x.npy"
    np.save(latent, np.zeros((256, 3, 4), np.float32))
    assert main(["detect", "--latent", str(latent)]) == 2
    assert "--latent needs --weight" in capsys.readouterr().err
    assert main(["detect", "--image", str(astronaut_png), "--preset", "r50-biubug6"]) == 2
    assert "--preset r50-biubug6 needs --weight" in capsys.readouterr().err
    assert main(["detect", "--image", str(astronaut_png), "--network", "mobile0.25"]) == 0  # the published preset
