"""The demo's training choice: latent-mnet from the ImageNet MobileNet file when it is found (./weights, the
torch hub cache or --pretrained), else latent-r18 from scratch with one warning; every choice gives notebook
parameters that the training notebook accepts and a config that builds."""

from __future__ import annotations

import argparse
import logging
import shutil

import pytest
from conftest import shared_path

from nbsrc.commands import demo
from nbsrc.config import get_preset

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


def test_without_weights_the_demo_trains_latent_r18_and_says_so(no_pretrained_files, caplog):
    with caplog.at_level(logging.WARNING, logger="nbsrc.commands.demo"):
        params = demo.demo_parameters(_args(), no_pretrained_files / "data")
    training = params["03_training"]
    assert (training["preset"], training["pretrained"], training["epochs"], training["batch_size"]) == (
        "latent-r18",
        "auto",
        80,
        4,
    )
    assert params["02_anchor_statistics"]["preset"] == "latent-r18"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "latent-r18 from scratch" in warnings[0]
    cfg = _config(params)
    assert (cfg.model.bridge, cfg.data.latent_crop, cfg.train.optimizer) == ("pixelshuffle", 12, "adamw")


def test_weights_in_dot_weights_select_latent_mnet(no_pretrained_files, caplog):
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


def test_pretrained_option_and_explicit_preset(no_pretrained_files):
    path = shared_path(PRETRAIN)
    training = demo.demo_parameters(_args(pretrained=path), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"]) == ("latent-mnet", str(path))
    # an explicit ResNet preset never receives the MobileNet file
    training = demo.demo_parameters(_args(pretrained=path, preset="latent-r34"), no_pretrained_files)["03_training"]
    assert (training["preset"], training["pretrained"]) == ("latent-r34", "auto")
    with pytest.raises(FileNotFoundError, match="nowhere.tar"):
        demo.demo_parameters(_args(pretrained=no_pretrained_files / "nowhere.tar"), no_pretrained_files)
