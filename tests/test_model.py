"""Model family: every preset runs forward and backward, head outputs line up with anchors one for one, the
published key schemas (biubug6 mobilenet / resnet50, 2-class) are reproduced exactly, and a fresh focal-loss model
starts at the prior."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import focal_model, shared_path
from torch import nn

from nbsrc.config import get_preset, list_presets
from nbsrc.model import RetinaFace, build_model, flatten_head
from nbsrc.model.bridge import make_bridge
from nbsrc.model.heads import FOCAL_PRIOR
from nbsrc.model.necks import FPN, SSH
from nbsrc.postprocess import postprocess

PRESETS = list_presets()
PRIOR_BIAS = -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR)  # -4.595


pytestmark = pytest.mark.usefixtures("one_thread")


LATENT = [p for p in PRESETS if p.startswith("latent-")]
RGB = [p for p in PRESETS if p not in LATENT]


def _build(preset: str, **overrides) -> RetinaFace:
    torch.manual_seed(0)
    return build_model(get_preset(preset, **{"model.pretrained": "none", **overrides}))


def _meta(preset: str, **overrides) -> RetinaFace:
    with torch.device("meta"):
        return build_model(get_preset(preset, **{"model.pretrained": "none", **overrides})).eval()


def _input(model: RetinaFace, hw: tuple[int, int], batch: int = 2, device: str = "cpu") -> torch.Tensor:
    return torch.randn(batch, model.in_channels, *hw, device=device)


def test_all_presets_listed():
    assert set(PRESETS) >= {
        "mnet-biubug6",
        "r50-biubug6",
        "mnet-2cls",
        "r18-p2p6",
        "r34-p2p6",
        "r50-p2p6",
        "mnet-p2p6",
        "latent-r50",
        "latent-r18",
        "latent-r34",
        "latent-mnet",
    }


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_backward_finite(preset):
    model = _build(preset).train()
    hw = (2, 3) if preset in LATENT else (32, 48)
    x = _input(model, hw)
    out = model(x)
    num_anchors = model.anchors(x).shape[0]
    assert out["loc"].shape == (2, num_anchors, 4)
    assert out["conf"].shape == (2, num_anchors, model.num_classes)
    if model.has_landmarks:
        assert out["landm"].shape == (2, num_anchors, 10)
    else:
        assert out["landm"] is None
    for value in out.values():
        if value is not None:
            assert torch.isfinite(value).all()
    loss = out["loc"].square().mean() + out["conf"].logsumexp(-1).mean()
    if out["landm"] is not None:
        loss = loss + out["landm"].abs().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.body.strides[0] < model.strides[-1]


@pytest.mark.parametrize("preset", RGB)
@pytest.mark.parametrize("hw", [(32, 32), (100, 75), (63, 130), (640, 640), (840, 840), (480, 320)])
def test_output_count_equals_anchor_count_rgb(preset, hw):
    model = _meta(preset)
    out = model(torch.empty(1, 3, *hw, device="meta"))
    expected = model.anchor_generator.num_anchors(hw)
    assert out["loc"].shape[1] == out["conf"].shape[1] == expected


@pytest.mark.parametrize("preset", LATENT)
@pytest.mark.parametrize("hw", [(40, 40), (48, 64), (5, 7), (1, 1)])
def test_output_count_equals_anchor_count_latent(preset, hw):
    model = _meta(preset)
    x = torch.empty(1, 256, *hw, device="meta")
    assert model.image_size(x) == (hw[0] * 16, hw[1] * 16)
    out = model(x)
    assert out["loc"].shape[1] == model.anchor_generator.num_anchors(model.image_size(x))


def test_latent_pyramid_sizes_at_40x40():
    model = _meta("latent-r50")
    x = torch.empty(1, 256, 40, 40, device="meta")
    features = model.body(x)
    assert [tuple(f.shape[1:]) for f in features] == [(256, 160, 160), (512, 80, 80), (1024, 40, 40), (2048, 20, 20)]
    pyramid = model.fpn(features)
    assert [tuple(f.shape[1:]) for f in pyramid] == [(64, s, s) for s in (160, 80, 40, 20, 10)]
    assert model.strides == [4, 8, 16, 32, 64]
    # anchors follow the P2-P6 design in the 640 frame: 204,600 of them
    assert model.anchor_generator.num_anchors(model.image_size(x)) == 204_600


def test_latent_48x64_runs_for_real():
    # a 48x64 latent is a 768x1024 image; run a real forward (small bridge width keeps this fast)
    model = _build("latent-r18", **{"model.bridge": "nearest"}).eval()
    x = torch.randn(1, 256, 48, 64)
    with torch.no_grad():
        out = model(x)
    assert model.image_size(x) == (768, 1024)
    assert out["conf"].shape[1] == model.anchors(x).shape[0] == model.anchor_generator.num_anchors((768, 1024))
    assert torch.isfinite(out["loc"]).all()


@pytest.mark.parametrize(
    ("variant", "params"),
    [("deconv", 7_474_944), ("bilinear", 590_336), ("nearest", 1_180_160), ("pixelshuffle", 1_049_088)],
)
def test_bridge_variants_match_the_described_layers(variant, params):
    bridge = make_bridge(variant, 256, 256)
    assert sum(p.numel() for p in bridge.parameters()) == params
    out = bridge(torch.randn(1, 256, 3, 5))
    assert out.shape == (1, 256, 12, 20)
    layers = [type(m).__name__ for m in bridge]
    if variant == "deconv":
        assert layers.count("ConvTranspose2d") == 2 and layers.count("BatchNorm2d") == 3
    elif variant == "bilinear":
        assert layers[1:] == ["Conv2d", "BatchNorm2d", "ReLU"]
    elif variant == "pixelshuffle":
        assert layers == ["Conv2d", "PixelShuffle", "BatchNorm2d", "ReLU"]
    else:
        assert layers.count("Conv2d") == 2 and "BatchNorm2d" not in layers


def test_pixelshuffle_bridge_unfolds_each_latent_cell_into_its_own_block():
    bridge = make_bridge("pixelshuffle", 8, 4).eval()
    x = torch.randn(1, 8, 5, 6)
    y = x.clone()
    y[0, :, 2, 3] += 5.0  # change one latent cell
    diff = (bridge(y) - bridge(x)).abs().sum(dim=(0, 1))  # [20, 24]
    changed = diff > 0
    assert changed[8:12, 12:16].any()  # its 4x4 block at stride 4 ...
    changed[8:12, 12:16] = False
    assert not changed.any()  # ... and nothing else


def test_latent_mobilenet_keeps_the_blocks_from_stride_4_on():
    model = _meta("latent-mnet", **{"model.bridge": "pixelshuffle"})
    features = model.body(torch.empty(1, 256, 40, 40, device="meta"))
    assert [tuple(f.shape[1:]) for f in features] == [(32, 160, 160), (64, 80, 80), (128, 40, 40), (256, 20, 20)]
    assert model.strides == [4, 8, 16, 32, 64]
    keys = {k.removeprefix("body.") for k in model.state_dict() if k.startswith("body.")}
    assert not any(k.startswith(("stage1.0.", "stage1.1.", "stage1.2.")) for k in keys)  # before stride 4: removed
    assert {k.split(".")[0] for k in keys} == {"bridge", "stage1", "stage2", "stage3"}


def test_latent_bridge_output_channels_follow_the_resnet():
    assert _meta("latent-r50").body.out_channels[0] == 256
    assert _meta("latent-r18").body.out_channels[0] == 64
    assert _meta("latent-r34", **{"model.latent_channels": 192}).in_channels == 192
    keys = _meta("latent-r50").state_dict()
    assert not any(k.startswith(("body.conv1", "body.bn1", "body.layer1")) for k in keys)  # stem + layer1 pruned


@pytest.mark.parametrize("preset", PRESETS)
def test_anchor_strides_are_the_feature_strides(preset):
    model = _meta(preset)
    assert model.anchor_generator.strides == model.strides == model.fpn.strides
    assert model.fpn.strides[: len(model.body.strides)] == model.body.strides
    x = torch.empty(1, model.in_channels, 8, 8, device="meta")
    image_h, image_w = model.image_size(x)
    sizes = [tuple(f.shape[-2:]) for f in model.fpn(model.body(x))]
    assert sizes == [(math.ceil(image_h / s), math.ceil(image_w / s)) for s in model.strides]


def test_p2p6_design_has_one_shared_ssh_and_configurable_width():
    model = _meta("r18-p2p6", **{"model.out_channels": 96})
    assert model.shared_context and isinstance(model.ssh, SSH)
    assert not any(k.startswith("ssh1.") for k in model.state_dict())
    assert model.strides == [4, 8, 16, 32, 64]
    assert all(head.conv1x1.in_channels == 96 for head in model.ClassHead)
    assert [h.conv1x1.out_channels for h in model.ClassHead] == [12] * 5  # 6 anchors x 2 classes
    mnet = _meta("mnet-p2p6")
    assert mnet.body.strides == [4, 8, 16, 32] and mnet.body.out_channels == [32, 64, 128, 256]


def test_activation_rule_follows_width():
    def slopes(module: nn.Module) -> set[float]:
        return {m.negative_slope for m in module.modules() if isinstance(m, nn.LeakyReLU)}

    assert slopes(FPN([64, 128, 256], 64)) == {0.1}
    assert slopes(FPN([512, 1024, 2048], 256)) == {0.0}
    assert slopes(SSH(64, 64)) == {0.1}
    assert slopes(SSH(256, 256)) == {0.0}
    assert slopes(_meta("mnet-biubug6").body) == {0.1}


def test_ssh_ends_with_relu_of_concat():
    ssh = SSH(16, 16).eval()
    out = ssh(torch.randn(1, 16, 5, 5))
    assert out.shape == (1, 16, 5, 5) and (out >= 0).all()


def test_flatten_head_order():
    # channel k*C + c at (y, x) -> row (y*W + x)*K + k, column c
    k, c, h, w = 3, 2, 2, 4
    x = torch.arange(2 * k * c * h * w, dtype=torch.float32).reshape(2, k * c, h, w)  # (B, K*C, H, W)
    flat = flatten_head(x, c)
    assert flat.shape == (2, h * w * k, c)
    for y, xx, kk, cc in [(0, 0, 0, 0), (1, 3, 2, 1), (1, 0, 1, 0), (0, 2, 2, 1)]:
        assert flat[1, (y * w + xx) * k + kk, cc] == x[1, kk * c + cc, y, xx]


def _one_hot_hooks(model: RetinaFace, level: int, y: int, x: int, k: int, cls: int, delta: tuple[float, ...]):
    """Replace every head output: zero logits/regressions except one anchor (level, y, x, k)."""
    handles = []

    def make(head_kind: str, lvl: int):
        def hook(module, inputs, output):
            out = torch.zeros_like(output)
            if head_kind == "class":
                out[:, 0 :: model.num_classes] = 5.0  # background everywhere
                if lvl == level:
                    out[:, k * model.num_classes + cls, y, x] = 20.0
            elif head_kind == "bbox" and lvl == level:
                out[:, k * 4 : k * 4 + 4, y, x] = torch.tensor(delta)
            return out

        return hook

    for lvl in range(model.num_levels):
        handles.append(model.ClassHead[lvl].conv1x1.register_forward_hook(make("class", lvl)))
        handles.append(model.BboxHead[lvl].conv1x1.register_forward_hook(make("bbox", lvl)))
    return handles


@pytest.mark.parametrize(
    ("preset", "hw", "where"),
    [
        ("mnet-biubug6", (96, 160), (1, 3, 7, 1, 1)),
        ("mnet-2cls", (70, 100), (0, 8, 12, 5, 2)),
        ("mnet-p2p6", (64, 96), (4, 0, 1, 3, 1)),
        ("mnet-p2p6", (64, 96), (0, 15, 23, 5, 1)),
        ("latent-r18", (3, 5), (0, 11, 17, 4, 1)),
        ("latent-r18", (3, 5), (3, 1, 2, 0, 1)),
    ],
)
def test_one_hot_logit_decodes_onto_its_anchor(preset, hw, where):
    level, y, x, k, cls = where
    model = _build(preset, **({"model.bridge": "nearest"} if preset.startswith("latent") else {})).eval()
    delta = (1.0, -0.5, 0.0, 0.0)  # centre shifted by +0.1 w and -0.05 h; size unchanged
    handles = _one_hot_hooks(model, level, y, x, k, cls, delta)
    inp = _input(model, hw, batch=1)
    with torch.no_grad():
        out = model(inp)
    for handle in handles:
        handle.remove()
    image_h, image_w = model.image_size(inp)
    stride = model.strides[level]
    anchors = model.anchors(inp)
    index = int(out["conf"][0, :, cls].argmax())
    counts = model.anchor_generator.per_level_counts((image_h, image_w))
    fh, fw = math.ceil(image_h / stride), math.ceil(image_w / stride)
    k_level = model.anchor_generator.num_anchors_per_location[level]
    assert index == sum(counts[:level]) + (y * fw + x) * k_level + k
    assert y < fh
    cx, cy = (x + 0.5) * stride / image_w, (y + 0.5) * stride / image_h
    assert torch.allclose(anchors[index, :2], torch.tensor([cx, cy]), atol=1e-6)
    dets = postprocess(out, anchors, (image_h, image_w), conf_thresh=0.5, nms_thresh=0.4, top_k=100, keep_top_k=10)
    assert len(dets[0]["scores"]) == 1 and int(dets[0]["labels"][0]) == cls
    box = dets[0]["boxes"][0]
    aw, ah = anchors[index, 2] * image_w, anchors[index, 3] * image_h
    expected_centre = torch.tensor([cx * image_w + 0.1 * aw, cy * image_h - 0.05 * ah])
    assert torch.allclose((box[:2] + box[2:]) / 2, expected_centre, atol=1e-3)
    assert torch.allclose(box[2:] - box[:2], torch.stack([aw, ah]), atol=1e-3)


# ---- published key schemas -------------------------------------------------------------------------
def test_key_schema_counts():
    assert len(_meta("mnet-biubug6").state_dict()) == 300
    assert len(_meta("r50-biubug6").state_dict()) == 456
    assert len(_meta("mnet-2cls").state_dict()) == 294


def test_r50_key_layout_matches_published_schema():
    from torchvision.models import resnet50

    keys = {k: tuple(v.shape) for k, v in _meta("r50-biubug6").state_dict().items()}
    order = list(keys)
    # body: torchvision resnet50 names (IntermediateLayerGetter up to layer4), no fc: 320 - 2 = 318
    with torch.device("meta"):
        tv = {f"body.{k}": tuple(v.shape) for k, v in resnet50().state_dict().items() if not k.startswith("fc.")}
    body = {k: v for k, v in keys.items() if k.startswith("body.")}
    assert body == tv and len(body) == 318
    # fpn: 30 tensors
    fpn = {k: v for k, v in keys.items() if k.startswith("fpn.")}
    assert len(fpn) == 30
    assert fpn["fpn.output1.0.weight"] == (256, 512, 1, 1)
    assert fpn["fpn.output2.0.weight"] == (256, 1024, 1, 1)
    assert fpn["fpn.output3.0.weight"] == (256, 2048, 1, 1)
    assert fpn["fpn.merge1.0.weight"] == fpn["fpn.merge2.0.weight"] == (256, 256, 3, 3)
    # ssh1..3: 30 tensors each
    for level in (1, 2, 3):
        ssh = {k: v for k, v in keys.items() if k.startswith(f"ssh{level}.")}
        assert len(ssh) == 30
        assert ssh[f"ssh{level}.conv3X3.0.weight"] == (128, 256, 3, 3)
        assert ssh[f"ssh{level}.conv5X5_1.0.weight"] == (64, 256, 3, 3)
        for name in ("conv5X5_2", "conv7X7_2", "conv7x7_3"):
            assert ssh[f"ssh{level}.{name}.0.weight"] == (64, 64, 3, 3)
            assert f"ssh{level}.{name}.1.num_batches_tracked" in ssh
    # heads: 18 tensors
    for head, channels in (("ClassHead", 4), ("BboxHead", 8), ("LandmarkHead", 20)):
        for i in range(3):
            assert keys[f"{head}.{i}.conv1x1.weight"] == (channels, 256, 1, 1)
            assert keys[f"{head}.{i}.conv1x1.bias"] == (channels,)
    # key order: body, fpn, ssh1..3, ClassHead, BboxHead, LandmarkHead
    groups = [k.split(".")[0] for k in order]
    firsts = [groups.index(g) for g in ("body", "fpn", "ssh1", "ssh2", "ssh3", "ClassHead", "BboxHead", "LandmarkHead")]
    assert firsts == sorted(firsts)


def test_mnet_schema_equals_published_file():
    published = torch.load(shared_path("weights/mobilenet0.25_Final.pth"), map_location="cpu", weights_only=True)
    ours = _meta("mnet-biubug6").state_dict()
    assert list(published) == list(ours)
    assert all(tuple(published[k].shape) == tuple(ours[k].shape) for k in ours)
    two = torch.load(
        shared_path("weights/mobilenet0.25_2cls6anchors_130324_epoch_295.pth"), map_location="cpu", weights_only=True
    )
    ours2 = _meta("mnet-2cls").state_dict()
    assert list(two) == list(ours2) and all(tuple(two[k].shape) == tuple(ours2[k].shape) for k in ours2)
    assert tuple(ours2["ClassHead.0.conv1x1.weight"].shape) == (18, 64, 1, 1)
    assert tuple(ours2["BboxHead.0.conv1x1.weight"].shape) == (24, 64, 1, 1)


# ---- input validation and training helpers ---------------------------------------------------------
def test_forward_rejects_bad_inputs_with_expected_vs_got():
    model = _build("mnet-biubug6").eval()
    with pytest.raises(ValueError, match=r"expected 3 input channels.*got 4"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"4-D.*got shape \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    latent = _meta("latent-r18")
    with pytest.raises(ValueError, match=r"expected 256 input channels \(latent model\), got 3"):
        latent(torch.empty(1, 3, 64, 64, device="meta"))


@pytest.mark.parametrize(
    ("preset", "kept"),
    [("latent-r18", ("layer2", "layer3", "layer4")), ("latent-mnet", ("stage1", "stage2", "stage3"))],
)
def test_freeze_backbone_latent_freezes_the_kept_part_and_trains_the_bridge(preset, kept):
    model = _build(preset)
    model.freeze_backbone(True)
    assert all(p.requires_grad for p in model.body.bridge.parameters())
    for name in kept:
        assert not any(p.requires_grad for p in getattr(model.body, name).parameters())
    assert all(p.requires_grad for p in model.fpn.parameters())
    first_bn = next(m for m in getattr(model.body, kept[0]).modules() if isinstance(m, torch.nn.BatchNorm2d))
    bridge_bn = next(m for m in model.body.bridge.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.train()
    assert not first_bn.training and bridge_bn.training
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters()) and first_bn.training


def test_freeze_backbone_rgb():
    model = _build("mnet-biubug6")
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.body.parameters())
    assert all(p.requires_grad for p in model.ClassHead.parameters())


def test_fresh_focal_model_starts_at_the_prior():
    model, _ = focal_model()
    with torch.no_grad():
        conf = model(torch.randn(2, 3, 64, 64))["conf"]  # (B, A, 2)
    face = torch.sigmoid(conf[..., 1])
    assert abs(float(face.mean()) - FOCAL_PRIOR) < 2e-3 and float(face.max()) < 0.02
    for head in model.ClassHead:
        bias = head.conv1x1.bias.view(-1, 2)  # (K, C)
        assert torch.all(bias[:, 0] == 0) and torch.allclose(bias[:, 1], torch.tensor(PRIOR_BIAS))
    plain = build_model(get_preset("mnet-biubug6", **{"model.pretrained": "none"}))
    assert not torch.allclose(plain.ClassHead[0].conv1x1.bias.view(-1, 2)[:, 1], torch.tensor(PRIOR_BIAS))
