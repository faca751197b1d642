"""Config: every preset round-trips through JSON; bad values and unknown keys raise naming the key."""

from __future__ import annotations

import pytest

from nbsrc.config import Config, get_preset, list_presets


@pytest.mark.parametrize("preset", list_presets())
def test_json_round_trip(preset, tmp_path):
    cfg = get_preset(preset)
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert Config.from_json(path) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.preset == preset


def test_preset_contents():
    assert get_preset("mnet-biubug6").model.channel_order == "bgr"
    assert get_preset("mnet-biubug6").model.pixel_mean == (104.0, 117.0, 123.0)
    r50 = get_preset("r50-biubug6")
    assert (r50.model.backbone, r50.model.out_channels, r50.data.image_size) == ("resnet50", 256, 840)
    two = get_preset("mnet-2cls")
    assert (two.model.num_classes, two.model.landmarks, two.anchors.clip) == (3, False, True)
    latent = get_preset("latent-r50")
    assert (latent.model.input_kind, latent.model.bridge, latent.model.neck) == ("latent", "deconv", "p2p6")


def test_overrides():
    cfg = get_preset("mnet-biubug6", **{"train.lr": 0.01})
    assert cfg.train.lr == 0.01
    assert cfg.replace(lr=0.5).train.lr == 0.5
    assert cfg.override_pairs(["epochs=3", "model.bridge=nearest"]).train.epochs == 3
    assert cfg.override_pairs(["anchors.clip=true"]).anchors.clip is True


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train.lr": -1}, "train.lr"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"model.backbone": "vgg16"}, "model.backbone"),
        ({"model.bridge": "transformer"}, "model.bridge"),
        ({"model.out_channels": 30}, "model.out_channels"),
        ({"model.num_classes": 1}, "model.num_classes"),
        ({"loss.pos_iou": 1.5}, "loss.pos_iou"),
        ({"eval.nms_thresh": 0}, "eval.nms_thresh"),
        ({"data.image_size": 10}, "data.image_size"),
        ({"train.batch_size": "many"}, "train.batch_size"),
        ({"anchors.variances": (0.1,)}, "anchors.variances"),
        ({"train.device": "tpu"}, "train.device"),
    ],
)
def test_bad_values_raise_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        get_preset("mnet-biubug6", **overrides)


def test_latent_input_takes_every_backbone_but_only_the_p2p6_neck():
    assert get_preset("latent-mnet").model.backbone == "mobilenet0.25"
    assert get_preset("latent-r50", **{"model.backbone": "resnet18"}).model.backbone == "resnet18"
    with pytest.raises(ValueError, match=r"model\.neck"):
        get_preset("latent-r50", **{"model.neck": "biubug6"})


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("train.learning_rate", None), ("train.epoch", "train.epochs"), ("modle.backbone", None), ("bachsize", None)],
)
def test_unknown_keys_raise_with_did_you_mean(key, suggestion):
    with pytest.raises(ValueError, match="unknown config key") as info:
        get_preset("mnet-biubug6", **{key: 1})
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(info.value)


def test_unknown_key_in_dict_suggests():
    data = get_preset("mnet-biubug6").to_dict()
    data["model"]["backbnoe"] = "resnet50"
    with pytest.raises(ValueError, match=r"model\.backbnoe.*did you mean 'model\.backbone'"):
        Config.from_dict(data)
    with pytest.raises(ValueError, match="did you mean 'train'"):
        Config.from_dict({"trian": {}})


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="did you mean 'mnet-2cls'"):
        get_preset("mnet-2class")


def test_bad_json_names_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        Config.from_json(path)
