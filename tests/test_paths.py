"""Where the training notebook finds the ImageNet MobileNet file for ``pretrained="auto"``: ./weights or the
torch hub cache, and on Kaggle an attached dataset; other values and ResNet backbones pass through."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import shared_path

from nbsrc import paths
from nbsrc.config import get_preset
from nbsrc.model import build_model

PRETRAIN = "weights/mobilenetV1X0.25_pretrain.tar"


def test_auto_stays_auto_when_the_file_is_nowhere(no_pretrained_files):
    assert paths.resolve_pretrained("auto", "mobilenet0.25") == "auto"


def test_auto_finds_the_file_in_dot_weights(no_pretrained_files):
    (no_pretrained_files / "weights").mkdir()
    shutil.copyfile(shared_path(PRETRAIN), no_pretrained_files / PRETRAIN)
    assert paths.resolve_pretrained("auto", "mobilenet0.25") == str((no_pretrained_files / PRETRAIN).resolve())


def test_on_kaggle_auto_finds_an_attached_weights_dataset(no_pretrained_files, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    attached = no_pretrained_files / "input" / "datasets" / "alice" / "retinaface-weights"
    attached.mkdir(parents=True)
    shutil.copyfile(shared_path(PRETRAIN), attached / "mobilenetV1X0.25_pretrain.tar")
    found = paths.resolve_pretrained("auto", "mobilenet0.25", input_root=no_pretrained_files / "input")
    assert found == str(attached / "mobilenetV1X0.25_pretrain.tar")
    # the resolved value loads into the latent MobileNet's kept blocks
    model = build_model(get_preset("latent-mnet", **{"model.pretrained": found}))
    raw = torch.load(found, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.body.stage2[0][0].weight, raw["module.stage2.0.0.weight"])


@pytest.mark.parametrize(
    ("value", "backbone"), [("none", "mobilenet0.25"), ("/w/file.pth", "mobilenet0.25"), ("auto", "resnet18")]
)
def test_other_values_and_backbones_pass_through(no_pretrained_files, value, backbone):
    (no_pretrained_files / "weights").mkdir()
    shutil.copyfile(shared_path(PRETRAIN), no_pretrained_files / PRETRAIN)
    assert paths.resolve_pretrained(value, backbone) == value
