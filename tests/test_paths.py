"""Where the notebooks find things: the ImageNet backbone file for ``pretrained="auto"`` (./weights or the torch
hub cache, on Kaggle an attached dataset, else the shipped MobileNet copy), checkpoints, runs to resume, and the attached dataset."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import shared_path

from nbsrc import kaggle, paths
from nbsrc.config import get_preset
from nbsrc.data.demo import resolve_dataset_root
from nbsrc.model import build_model
from nbsrc.pretrained import resolve_pretrained
from nbsrc.weights import IMAGENET_MOBILENET

PRETRAIN = "weights/mobilenetV1X0.25_pretrain.tar"


def test_auto_ends_at_the_shipped_backbone_when_the_file_is_nowhere(no_pretrained_files):
    assert resolve_pretrained("auto", "mobilenet0.25") == str(IMAGENET_MOBILENET)


def test_auto_finds_the_file_in_dot_weights(no_pretrained_files):
    (no_pretrained_files / "weights").mkdir()
    shutil.copyfile(shared_path(PRETRAIN), no_pretrained_files / PRETRAIN)
    assert resolve_pretrained("auto", "mobilenet0.25") == str((no_pretrained_files / PRETRAIN).resolve())


def test_on_kaggle_auto_finds_an_attached_weights_dataset(no_pretrained_files, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    attached = no_pretrained_files / "input" / "datasets" / "alice" / "retinaface-weights"
    attached.mkdir(parents=True)
    shutil.copyfile(shared_path(PRETRAIN), attached / "mobilenetV1X0.25_pretrain.tar")
    found = resolve_pretrained("auto", "mobilenet0.25", input_root=no_pretrained_files / "input")
    assert found == str(attached / "mobilenetV1X0.25_pretrain.tar")
    # the resolved value loads into the latent MobileNet's kept blocks
    model = build_model(get_preset("latent-mnet", **{"model.pretrained": found}))
    raw = torch.load(found, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.body.stage2[0][0].weight, raw["module.stage2.0.0.weight"])


def test_on_kaggle_auto_finds_an_attached_torchvision_resnet_file(no_pretrained_files, monkeypatch):
    # a kernel without internet: torchvision's resnet18-<hash>.pth uploaded as a dataset
    import torchvision

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    attached = no_pretrained_files / "input" / "resnet-weights" / "imagenet"
    attached.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), attached / "resnet18-f37072fd.pth")
    assert resolve_pretrained("auto", "resnet34", input_root=no_pretrained_files / "input") == "auto"
    found = resolve_pretrained("auto", "resnet18", input_root=no_pretrained_files / "input")
    assert found == str(attached / "resnet18-f37072fd.pth")
    model = build_model(get_preset("latent-r18", **{"model.pretrained": found}))
    assert model.pretrained_source == found
    raw = torch.load(found, map_location="cpu", weights_only=True)
    kept = dict(model.backbone.named_parameters())
    layer2 = [k for k in kept if k.endswith("layer2.0.conv1.weight")]
    assert layer2 and torch.equal(kept[layer2[0]], raw["layer2.0.conv1.weight"])


@pytest.mark.parametrize(
    ("value", "backbone"), [("none", "mobilenet0.25"), ("/w/file.pth", "mobilenet0.25"), ("auto", "resnet18")]
)
def test_other_values_and_backbones_pass_through(no_pretrained_files, value, backbone):
    (no_pretrained_files / "weights").mkdir()
    shutil.copyfile(shared_path(PRETRAIN), no_pretrained_files / PRETRAIN)
    assert resolve_pretrained(value, backbone) == value


def _touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize("mount", ["nbsrc-03-training", "notebooks/alice/nbsrc-03-training"])
def test_on_kaggle_the_training_kernels_latest_checkpoint_is_found(tmp_path, monkeypatch, mount):
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


def _run(folder, preset, mtime):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"preset": preset}))
    return _touch(folder / "last.pth", mtime)


def test_resume_auto_continues_the_latest_earlier_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert paths.resolve_resume(None, run_dir) is None and paths.resolve_resume("", run_dir) is None
    assert paths.resolve_resume("auto", run_dir) is None  # nothing earlier: a new run
    older = _run(run_dir / "train" / "latent-r18-20261201-080000", "latent-r18", 1000)
    newer = _run(run_dir / "train" / "latent-r18-20261202-090000", "latent-r18", 2000)
    other_preset = _run(run_dir / "train" / "latent-mnet-20261203-090000", "latent-mnet", 3000)
    assert paths.resolve_resume("auto", run_dir) == other_preset.resolve()
    assert paths.resolve_resume("auto", run_dir, preset="latent-r18") == newer.resolve()
    named = {"run_name": "latent-r18-20261201-080000", "preset": "latent-r18"}
    assert paths.resolve_resume("auto", run_dir, **named) == older.resolve()
    assert paths.resolve_resume("auto", run_dir, run_name="c", preset="latent-r18") is None  # a new run c
    assert paths.resolve_resume("auto", run_dir, preset="latent-r34") is None
    assert paths.resolve_resume(str(newer), None) == newer.resolve()
    with pytest.raises(FileNotFoundError, match="resume 'missing.pth'"):
        paths.resolve_resume("missing.pth", run_dir)
    # on Kaggle: the training kernel's earlier version, attached as input, is searched too
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setattr(paths, "KAGGLE_INPUT", tmp_path / "input")
    stopped = _run(tmp_path / "input" / "nbsrc-03-training" / "runs" / "train" / "r", "latent-r18", 4000)
    assert paths.resolve_resume("auto", run_dir, preset="latent-r18") == stopped.resolve()


def test_on_kaggle_a_dataset_under_another_name_is_found_by_its_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    root = tmp_path / "input"
    (root / "nbsrc-code" / "nbsrc").mkdir(parents=True)  # the code dataset is never taken for data
    latents = root / "datasets" / "bob" / "wider-latents" / "retina-modify"  # an uploaded top folder
    (latents / "train").mkdir(parents=True)
    (latents / "val").mkdir()
    assert resolve_dataset_root(None, input_root=root) == latents
    assert resolve_dataset_root("wider-latents", input_root=root) == latents
    (root / "other" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="several attached datasets.*set dataset_root to its name"):
        resolve_dataset_root(None, input_root=root)
    with pytest.raises(FileNotFoundError, match="'retina-modify' is not attached"):
        resolve_dataset_root(None, input_root=tmp_path / "empty")
