"""Scores follow the class loss: softmax over (background, face[, person]) for softmax CE (the published,
bit-for-bit unchanged path), sigmoid of the foreground logits for focal loss (whose background logit is never
trained), in postprocess, `Detector`, and the trainer's validation AP. A fresh focal model starts at the prior."""

from __future__ import annotations

import math

import pytest
import torch

import nbsrc.postprocess as postprocess_module
from nbsrc.config import get_preset
from nbsrc.detector import Detector
from nbsrc.engine import evaluate, fit
from nbsrc.model import build_model
from nbsrc.model.heads import FOCAL_PRIOR
from nbsrc.postprocess import class_scores, postprocess

PRIOR_BIAS = -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR)  # -4.595
ANCHORS = torch.tensor([[0.25, 0.5, 0.1, 0.2], [0.75, 0.5, 0.1, 0.2], [0.5, 0.2, 0.05, 0.1]])  # (3, 4) cxcywh
# background logits far above the face logits: softmax scores small, sigmoid(face) scores large
CONF = torch.tensor([[[3.0, 1.0], [4.0, 0.5], [2.5, -0.25]]])  # (1, 3, 2)


def _outputs(conf: torch.Tensor) -> dict:
    batch, anchors = conf.shape[:2]
    return {"loc": torch.zeros(batch, anchors, 4), "conf": conf, "landm": torch.zeros(batch, anchors, 10)}


def _run(conf: torch.Tensor, **kw) -> list[dict]:
    args = {"conf_thresh": 0.0, "nms_thresh": 0.4, "top_k": 100, "keep_top_k": 100, **kw}
    return postprocess(_outputs(conf), ANCHORS, (100, 200), **args)


def test_class_scores_per_loss():
    conf = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))  # (B, A, C) 3-class
    assert torch.equal(class_scores(conf), torch.softmax(conf, dim=-1)[..., 1:])
    assert torch.equal(class_scores(conf, "ohem"), class_scores(conf))
    assert torch.equal(class_scores(conf, "focal"), torch.sigmoid(conf[..., 1:]))
    assert class_scores(conf.half(), "focal").dtype == torch.float32
    with pytest.raises(ValueError, match="cls_loss"):
        class_scores(conf, "softmax")


def test_postprocess_focal_scores_are_sigmoid_of_the_face_logit():
    result = _run(CONF, cls_loss="focal")[0]
    expected = torch.sigmoid(CONF[0, :, 1]).sort(descending=True).values  # (3,)
    assert torch.equal(result["scores"], expected)
    assert not torch.allclose(result["scores"], torch.softmax(CONF[0], -1)[:, 1].sort(descending=True).values)
    # the background logit plays no part
    shifted = CONF.clone()
    shifted[..., 0] = -10.0
    assert torch.equal(_run(shifted, cls_loss="focal")[0]["scores"], result["scores"])


def test_published_softmax_path_is_unchanged():
    conf = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1))  # (B, A, 2)
    default = _run(conf)
    explicit = _run(conf, cls_loss="ohem")
    reference = torch.softmax(conf.float(), dim=-1)[..., 1]  # (B, A) the published score
    for b in range(2):
        assert torch.equal(default[b]["scores"], explicit[b]["scores"])
        assert torch.equal(default[b]["boxes"], explicit[b]["boxes"])
        assert torch.equal(default[b]["scores"], reference[b].sort(descending=True).values)


def _focal_model():
    torch.manual_seed(0)
    cfg = get_preset("mnet-biubug6", **{"model.pretrained": "none", "loss.cls_loss": "focal"})
    return build_model(cfg), cfg


def test_fresh_focal_model_starts_at_the_prior():
    model, _ = _focal_model()
    with torch.no_grad():
        conf = model(torch.randn(2, 3, 64, 64))["conf"]  # (B, A, 2)
    face = torch.sigmoid(conf[..., 1])
    assert abs(float(face.mean()) - FOCAL_PRIOR) < 2e-3 and float(face.max()) < 0.02
    for head in model.ClassHead:
        bias = head.conv1x1.bias.view(-1, 2)  # (K, C)
        assert torch.all(bias[:, 0] == 0) and torch.allclose(bias[:, 1], torch.tensor(PRIOR_BIAS))
    plain = build_model(get_preset("mnet-biubug6", **{"model.pretrained": "none"}))
    assert not torch.allclose(plain.ClassHead[0].conv1x1.bias.view(-1, 2)[:, 1], torch.tensor(PRIOR_BIAS))


def test_detector_scores_a_focal_model_with_sigmoid():
    model, cfg = _focal_model()
    with torch.no_grad():
        head = model.ClassHead[0].conv1x1
        head.bias.view(-1, 2)[:, 0] = 5.0  # an untrained background logit must not matter
        head.bias.view(-1, 2)[:, 1] = 0.5
    detector = Detector(model, cfg)
    x = torch.randn(1, 3, 64, 64)
    detections = detector.predict_batch(x, conf=0.05)[0]
    with torch.no_grad():
        face = torch.sigmoid(model(x)["conf"][0, :, 1])  # (A,)
    assert len(detections["scores"]) > 0
    assert torch.allclose(detections["scores"][0], face.max())


def _spy(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = postprocess_module.class_scores

    def spy(conf, cls_loss="ohem"):
        seen.append(cls_loss)
        return real(conf, cls_loss)

    monkeypatch.setattr(postprocess_module, "class_scores", spy)
    return seen


def test_validation_ap_scores_like_the_loss(monkeypatch):
    model, _ = _focal_model()
    seen = _spy(monkeypatch)
    batch = {
        "inputs": torch.randn(1, 3, 64, 64),
        "boxes": torch.tensor([[[8.0, 8.0, 40.0, 44.0]]]),
        "labels": torch.tensor([[1]]),
        "num_boxes": torch.tensor([1]),
        "names": ["a/one"],
    }
    result = evaluate(model, [batch], device=torch.device("cpu"), cls_loss="focal", progress=False)
    assert seen == ["focal"] and "ap_face" in result


def test_fit_validates_a_focal_run_with_sigmoid_scores(demo_root, tmp_path, monkeypatch):
    cfg = get_preset(
        "mnet-biubug6",
        **{
            "loss.cls_loss": "focal",
            "model.pretrained": "none",
            "model.out_channels": 16,
            "data.image_size": 128,
            "data.dataset_root": str(demo_root),
            "data.num_workers": 0,
            "data.max_images": 4,
            "train.out": str(tmp_path),
            "train.run_name": "focal",
            "train.epochs": 1,
            "train.max_steps_per_epoch": 1,
            "train.batch_size": 2,
            "train.device": "cpu",
            "train.wandb": "disabled",
            "train.progress": False,
        },
    )
    seen = _spy(monkeypatch)
    fit(cfg)
    assert seen and set(seen) == {"focal"}
