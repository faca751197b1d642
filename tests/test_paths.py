"""Where the training notebook finds the ImageNet MobileNet file for ``pretrained="auto"``: ./weights or the
torch hub cache, and on Kaggle an attached dataset; other values and ResNet backbones pass through."""

from __future__ import annotations

import os
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


def _touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize("mount", ["nbsrc-03-training", "notebooks/alice/nbsrc-03-training"])
def test_on_kaggle_the_training_kernels_latest_checkpoint_is_found(tmp_path, monkeypatch, mount):
    from nbsrc import kaggle

    assert kaggle.KERNELS["03_training"].slug == paths.TRAINING_KERNEL_SLUG
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(paths, "KAGGLE_INPUT", tmp_path)
    _touch(tmp_path / "retina-modify" / "val" / "best.pth", 3000)  # not the training kernel's
    runs = tmp_path / mount / "notebooks" / "train"  # the kernel's /kaggle/working, 6 folders deep when nested
    _touch(runs / "latent-r18-20261201-080000" / "best.pth", 1000)
    latest = _touch(runs / "latent-r18-20261202-090000" / "best.pth", 2000)
    _touch(runs / "latent-r18-20261202-090000" / "last.pth", 2500)
    assert paths.resolve_checkpoint(None) == latest


def test_on_kaggle_other_inputs_are_searched_seven_folders_deep(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(paths, "KAGGLE_INPUT", tmp_path)
    deep = _touch(tmp_path / "models" / "alice" / "retina" / "pytorch" / "v1" / "1" / "run" / "weight_final.pth", 1)
    assert paths.resolve_checkpoint(None) == deep
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert paths.resolve_checkpoint(None) is None  # off Kaggle nothing is searched
