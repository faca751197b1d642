"""The demo's training choice: latent-mnet from the ImageNet MobileNet file (--pretrained, ./weights, the torch hub
cache, else the copy shipped with the package), from scratch with --pretrained none, latent-r18 on request; every
choice gives notebook parameters that the training notebook accepts and a config that builds."""

from __future__ import annotations

import argparse
import logging
import shutil

import pytest
from conftest import shared_path

from nbsrc.commands import demo
from nbsrc.config import get_preset
from nbsrc.model import build_model
from nbsrc.weights import IMAGENET_MOBILENET

PRETRAIN = "weights/mobilenetV1X0.25_pretrain.tar"


def _args(**kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    argv = [item for key, value in kwargs.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    return parser.parse_args(argv)


def _config(params: dict):
    training = params["03_training"]
    cfg = get_preset(training["preset"], **{"model.pretrained": training["pretrained"]})
    return cfg.override_pairs(training["overrides"].split())


def test_with_nothing_found_the_demo_trains_latent_mnet_from_the_shipped_backbone(no_pretrained_files, caplog):
    with caplog.at_level(logging.INFO, logger="nbsrc.commands.demo"):
        params = demo.demo_parameters(_args(), no_pretrained_files / "data")
    training = params["03_training"]
    assert (training["preset"], training["pretrained"], training["epochs"], training["batch_size"]) == (
        "latent-mnet",
        str(IMAGENET_MOBILENET),
        160,
        8,
    )
    assert training["lr"] == 4e-3 and params["02_anchor_statistics"]["preset"] == "latent-mnet"
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"the demo trains latent-mnet from the backbone {IMAGENET_MOBILENET} (the ImageNet copy shipped with nbsrc)"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cfg = _config(params)
    assert (cfg.model.bridge, cfg.data.latent_crop, cfg.train.optimizer) == ("pixelshuffle", 12, "adamw")
    assert build_model(cfg).pretrained_source == str(IMAGENET_MOBILENET)


def test_weights_in_dot_weights_come_first(no_pretrained_files, caplog):
    (no_pretrained_files / "weights").mkdir()
    shutil.copyfile(shared_path(PRETRAIN), no_pretrained_files / PRETRAIN)
    with caplog.at_level(logging.WARNING, logger="nbsrc.commands.demo"):
        params = demo.demo_parameters(_args(epochs=3), no_pretrained_files / "data")
    training = params["03_training"]
    assert (training["preset"], training["epochs"], training["batch_size"], training["lr"]) == (
        "latent-mnet",
        3,
        8,
        4e-3,
    )
    assert training["pretrained"] == str(
        (no_pretrained_files / PRETRAIN).resolve()
    )  # absolute: notebooks run elsewhere
    assert not caplog.records
    assert _config(params).model.backbone == "mobilenet0.25"


def test_pretrained_none_trains_from_scratch(no_pretrained_files):
    training = demo.demo_parameters(_args(pretrained="none"), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"], training["epochs"]) == ("latent-mnet", "none", 160)
    assert build_model(_config({"03_training": training})).pretrained_source is None
    training = demo.demo_parameters(_args(pretrained="none", preset="latent-r18"), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"], training["epochs"], training["batch_size"]) == (
        "latent-r18",
        "none",
        80,
        4,
    )


def test_pretrained_option_and_explicit_preset(no_pretrained_files, monkeypatch):
    path = shared_path(PRETRAIN)
    training = demo.demo_parameters(_args(pretrained=path), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"]) == ("latent-mnet", str(path))
    monkeypatch.chdir(path.parent)  # a relative --pretrained becomes absolute
    training = demo.demo_parameters(_args(pretrained=path.name), no_pretrained_files)["03_training"]
    assert training["pretrained"] == str(path)
    # an explicit ResNet preset never receives the MobileNet file
    training = demo.demo_parameters(_args(pretrained=path, preset="latent-r34"), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"]) == ("latent-r34", "auto")
    training = demo.demo_parameters(_args(preset="latent-r18"), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"], training["epochs"]) == ("latent-r18", "auto", 80)
    with pytest.raises(FileNotFoundError, match="nowhere.tar"):
        demo.demo_parameters(_args(pretrained=no_pretrained_files / "nowhere.tar"), no_pretrained_files)
    with pytest.raises(ValueError, match="no-such-preset"):
        demo.demo_parameters(_args(preset="no-such-preset"), no_pretrained_files)
