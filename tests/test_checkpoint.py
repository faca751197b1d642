"""Checkpoints: atomic save / strict load of ours, the published state dicts (legacy pickle, ``module.`` prefix),
preset inference and mismatch errors, and pretrained backbone weights (file path, torch hub cache, no network)."""

from __future__ import annotations

import logging
import os
import random
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import shared_path

from nbsrc.checkpoint import load_checkpoint, save_checkpoint
from nbsrc.config import get_preset
from nbsrc.detector import Detector
from nbsrc.model import build, build_model
from nbsrc.model.loading import infer_preset, load_model, load_state_dict_strict
from nbsrc.utils import atomic_write_text

MNET = "weights/mobilenet0.25_Final.pth"
TWO_CLASS = "weights/mobilenet0.25_2cls6anchors_130324_epoch_295.pth"
PRETRAIN = "weights/mobilenetV1X0.25_pretrain.tar"


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(preset: str, **overrides):
    torch.manual_seed(0)
    return build_model(get_preset(preset, **{"model.pretrained": "none", **overrides}))


def test_save_load_round_trip(tmp_path):
    cfg = get_preset("mnet-p2p6", **{"model.pretrained": "none", "train.lr": 0.005})
    model = _model("mnet-p2p6", **{"train.lr": 0.005})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model(torch.randn(2, 3, 32, 32))["loc"].mean().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path / "run" / "last.pth",
        model=model,
        config=cfg,
        epoch=7,
        optimizer=optimizer,
        metrics={"loss": 1.5},
        best=0.3,
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "nbsrc" and ckpt["epoch"] == 7 and ckpt["metrics"] == {"loss": 1.5} and ckpt["best"] == 0.3
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9 and ckpt["scaler"] is None
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg and not loaded.training
    x = torch.randn(1, 3, 48, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.isfinite(a[k]).all() and torch.equal(a[k], b[k]) for k in ("loc", "conf", "landm"))


def test_save_is_atomic_on_failure(tmp_path):
    model = _model("mnet-biubug6")
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model=model, config=get_preset("mnet-biubug6"), epoch=1)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_checkpoint(path, model=model, config=get_preset("mnet-biubug6"), epoch=2, bad=lambda: None)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_atomically_written_files_get_the_umask_mode_like_any_other_file(tmp_path):
    previous = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "c.pth", model=torch.nn.Linear(2, 2), config=get_preset("mnet-biubug6"))
        atomic_write_text(tmp_path / "labels.txt", "x\n")
        (tmp_path / "plain.txt").write_text("x\n")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"c.pth": 0o640, "labels.txt": 0o640, "plain.txt": 0o640}  # not mkstemp's 0600


def test_wrapped_model_saves_clean_keys(tmp_path):
    model = _model("mnet-biubug6")
    path = save_checkpoint(tmp_path / "c.pth", model=torch.nn.DataParallel(model), config=get_preset("mnet-biubug6"))
    assert all(not k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])


def test_published_legacy_file_loads_strictly():
    path = shared_path(MNET)
    assert path.read_bytes()[:2] != b"PK"  # pre-1.6 pickle, not a zip archive
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "state_dict" and ckpt["config"] is None and len(ckpt["model"]) == 300
    model, cfg = load_model(path)
    assert cfg.preset == "mnet-biubug6"
    assert torch.equal(model.state_dict()["LandmarkHead.2.conv1x1.bias"], ckpt["model"]["LandmarkHead.2.conv1x1.bias"])


def test_two_class_file_is_recognised():
    model, cfg = load_model(shared_path(TWO_CLASS))
    assert cfg.preset == "mnet-2cls" and model.num_classes == 3 and not model.has_landmarks


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("legacy", [True, False])
def test_prefixes_and_pickle_formats(tmp_path, prefix, legacy):
    state = _model("mnet-2cls").state_dict()
    path = tmp_path / "prefixed.pth"
    torch.save(OrderedDict((prefix + k, v) for k, v in state.items()), path, _use_new_zipfile_serialization=not legacy)
    assert (path.read_bytes()[:2] == b"PK") is not legacy
    model, cfg = load_model(path)
    assert cfg.preset == "mnet-2cls"
    assert torch.equal(model.state_dict()["BboxHead.1.conv1x1.weight"], state["BboxHead.1.conv1x1.weight"])


def test_r50_published_layout_with_module_prefix(tmp_path):
    # A Resnet50_Final.pth saved from DataParallel: schema from a state dict the model itself produces.
    with torch.device("meta"):
        meta = build_model(get_preset("r50-biubug6", **{"model.pretrained": "none"}))
    state = {"module." + k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta.state_dict().items()}
    assert len(state) == 456
    assert infer_preset(state) == "r50-biubug6"


def test_state_dict_wrapper_key(tmp_path):
    state = _model("mnet-biubug6").state_dict()
    path = tmp_path / "wrapped.tar"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and set(ckpt["model"]) == set(state)


def test_strict_mismatch_lists_keys():
    model = _model("mnet-biubug6")
    two_class = _model("mnet-2cls").state_dict()
    two_class["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        load_state_dict_strict(model, two_class, "two.pth")
    message = str(info.value)
    assert message.startswith("two.pth: the checkpoint does not fit the model")
    assert "6 missing keys: LandmarkHead.0.conv1x1.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "ClassHead.0.conv1x1.weight: checkpoint (18, 64, 1, 1) vs model (4, 64, 1, 1)" in message


def test_checkpoint_of_another_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint of preset 'mnet-biubug6', not 'mnet-2cls'"):
        load_model(shared_path(MNET), preset="mnet-2cls")
    path = save_checkpoint(tmp_path / "p.pth", model=_model("mnet-p2p6"), config=get_preset("mnet-p2p6"))
    with pytest.raises(ValueError, match=r"p\.pth: this is a checkpoint of preset 'mnet-p2p6', not 'r18-p2p6'"):
        load_model(path, preset="r18-p2p6")


def test_unrecognised_or_broken_files(tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save({"a.weight": torch.zeros(2)}, odd)
    with pytest.raises(ValueError, match=r"odd\.pth: a bare state dict that fits no preset"):
        load_model(odd)
    with pytest.raises(ValueError, match=r"odd\.pth: the checkpoint does not fit the model"):
        load_model(odd, preset="mnet-biubug6")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    text = tmp_path / "list.pth"
    torch.save([1, 2, 3], text)
    with pytest.raises(ValueError, match=r"list\.pth: expected a state dict"):
        load_checkpoint(text)


# ---- pretrained backbones -------------------------------------------------------------------------
def test_pretrain_tar_path_loads_backbone():
    path = shared_path(PRETRAIN)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert "module.fc.weight" in raw
    model = build_model(get_preset("mnet-biubug6", **{"model.pretrained": str(path)}))
    body = model.body.state_dict()
    assert len(body) == 162
    assert all(torch.equal(body[k], raw["module." + k]) for k in body)
    # the stride-4 tap variant has the same body keys
    p2p6 = build_model(get_preset("mnet-p2p6", **{"model.pretrained": str(path)}))
    assert torch.equal(p2p6.body.stage3[1][3].weight, raw["module.stage3.1.3.weight"])
    # the latent MobileNet takes every tensor of the blocks it keeps (stage1[3:], stage2, stage3)
    latent = build_model(get_preset("latent-mnet", **{"model.pretrained": str(path)}))
    kept = {k: v for k, v in latent.body.state_dict().items() if not k.startswith("bridge.")}
    assert len(kept) == 132 and all(torch.equal(v, raw["module." + k]) for k, v in kept.items())


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(get_preset("mnet-biubug6", **{"model.pretrained": str(tmp_path / "nope.pth")}))
    with pytest.raises(ValueError, match="not a backbone state dict"):
        build_model(get_preset("r18-p2p6", **{"model.pretrained": str(shared_path(PRETRAIN))}))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(build, "_reachable", lambda *a, **k: False)
    monkeypatch.setattr(build, "_WARNED", set())
    return tmp_path / "hub"


def test_auto_without_network_warns_once_and_starts_from_scratch(offline_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        build_model(get_preset("r18-p2p6"))
        build_model(get_preset("r18-p2p6"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "random init" in warnings[0].getMessage()
    with pytest.raises(RuntimeError, match="model.pretrained='imagenet'.*resnet18"):
        build_model(get_preset("r18-p2p6", **{"model.pretrained": "imagenet"}))


def test_auto_uses_torchvision_weights_from_the_hub_cache(offline_hub):
    torch.manual_seed(1)
    from torchvision.models import resnet18

    reference = resnet18().state_dict()
    (offline_hub / "checkpoints").mkdir(parents=True)
    torch.save(reference, offline_hub / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model(get_preset("latent-r18"))  # auto: the pruned ResNet gets layer2..4
    assert torch.equal(model.body.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"])
    assert torch.equal(model.body.layer2[0].bn1.running_var, reference["layer2.0.bn1.running_var"])
    rgb = build_model(get_preset("r18-p2p6", **{"model.pretrained": "imagenet"}))
    assert torch.equal(rgb.body.conv1.weight, reference["conv1.weight"])


def test_real_probe_returns_quickly():
    start = time.monotonic()
    build._reachable("unreachable.invalid", timeout=1.0)
    assert time.monotonic() - start < 2.5


def test_training_state_with_numpy_rng_round_trips(tmp_path):
    rng = {"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()}
    path = save_checkpoint(tmp_path / "r.pth", model=_model("mnet-biubug6"), config=get_preset("mnet-biubug6"), rng=rng)
    loaded = load_checkpoint(path)["rng"]
    assert loaded["numpy"][0] == "MT19937" and np.array_equal(loaded["numpy"][1], rng["numpy"][1])
    assert torch.equal(loaded["torch"], rng["torch"])


def test_an_imagenet_backbone_file_given_as_detector_weights_says_what_it_is():
    pretrain = shared_path("weights/mobilenetV1X0.25_pretrain.tar")
    for preset in (None, "mnet-biubug6"):
        with pytest.raises(ValueError, match="ImageNet classifier.*pass it as model.pretrained"):
            Detector.from_checkpoint(pretrain, preset=preset)
