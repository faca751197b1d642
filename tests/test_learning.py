"""Proof that training learns: a few minutes of CPU training on the demo dataset take the face AP on its val
split far above the untrained model's, for an RGB and a latent preset. Run alone with
``python -m pytest -m learning``."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import shared_path

from nbsrc.config import EvalConfig, get_preset
from nbsrc.data.loaders import build_dataloaders
from nbsrc.engine import evaluate_ap, fit
from nbsrc.model import build_model
from nbsrc.model.loading import load_model

pytestmark = pytest.mark.learning
logger = logging.getLogger(__name__)


def _val_ap(model, cfg) -> float:
    _, val_loader = build_dataloaders(cfg)
    eval_cfg = EvalConfig(conf_thresh=cfg.eval.conf_thresh, nms_thresh=cfg.eval.nms_thresh, iou_thresh=0.5)
    result = evaluate_ap(model, val_loader, eval_cfg, device=torch.device("cpu"), progress=False)
    return float(result["ap_face"])


def _train_and_check(cfg, min_ap: float = 0.5) -> tuple[float, float]:
    """Train `cfg`; assert the face AP of the final weights; return ``(trained AP, untrained AP)``."""
    torch.manual_seed(0)
    untrained = _val_ap(build_model(cfg).eval(), cfg)

    run = fit(cfg)
    model, _ = load_model(run / "weight_final.pth", device="cpu")
    trained = _val_ap(model.eval(), cfg)

    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    logger.info("%s: face AP %.3f after training, %.4f untrained", cfg.train.run_name, trained, untrained)
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert trained >= min_ap, f"face AP after training {trained:.3f} (untrained {untrained:.4f})"
    assert trained >= 5 * untrained, f"face AP after training {trained:.3f} vs untrained {untrained:.4f}"
    return trained, untrained


def _recipe(demo_root, tmp_path, run_name: str) -> dict:
    """Settings both tests share: the published ImageNet MobileNet backbone, AdamW with cosine decay, CPU."""
    return {
        "model.pretrained": str(shared_path("weights/mobilenetV1X0.25_pretrain.tar")),
        "data.dataset_root": str(demo_root),
        "data.num_workers": 0,
        "loss.landm_weight": 0.25,
        "train.batch_size": 8,
        "train.optimizer": "adamw",
        "train.weight_decay": 1e-4,
        "train.schedule": "cosine",
        "train.warmup_epochs": 1.0,
        "train.device": "cpu",
        "train.progress": False,
        "train.out": str(tmp_path),
        "train.run_name": run_name,
        "train.seed": 0,
    }


def test_rgb_model_learns_to_find_the_demo_faces(demo_root, tmp_path):
    settings = {"data.image_size": 320, "train.epochs": 25, "train.lr": 2e-3}
    _train_and_check(get_preset("mnet-biubug6", **_recipe(demo_root, tmp_path, "rgb"), **settings))


def test_latent_model_learns_to_find_the_demo_faces(demo_root, tmp_path):
    # latent-mnet: the pixel-shuffle bridge feeds the ImageNet MobileNet blocks from stride 4 on; training on
    # random 12x12-cell latent crops, evaluation on whole 40x40 latents (about 70 s on 2 CPU cores)
    settings = {
        "model.bridge": "pixelshuffle",
        "model.out_channels": 16,
        "data.latent_crop": 12,
        "train.epochs": 160,
        "train.eval_every": 160,
        "train.lr": 4e-3,
        "train.keep_epochs": 1,
    }
    _train_and_check(get_preset("latent-mnet", **_recipe(demo_root, tmp_path, "latent"), **settings))
