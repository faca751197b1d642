"""On CUDA (skipped without it): mixed-precision training runs and logs GPU memory, post-processing on the GPU keeps
the same detections as on the CPU, and the published detector finds the same faces on both devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import shared_path, tiny_training_config

from nbsrc.detector import Detector
from nbsrc.engine import fit
from nbsrc.postprocess import postprocess
from nbsrc.utils import read_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize(("preset", "amp"), [("mnet-biubug6", "fp16"), ("latent-r18", "fp16"), ("latent-r18", "auto")])
def test_mixed_precision_training_on_cuda(demo_root, tmp_path, preset, amp):
    cfg = tiny_training_config(
        demo_root,
        tmp_path,
        preset,
        **{"train.device": "cuda", "train.amp": amp, "train.epochs": 2, "train.run_name": f"{preset}-{amp}"},
    )
    run = fit(cfg)
    records = list(read_jsonl(run / "metrics.jsonl"))
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    assert steps and len(epochs) == 2
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["gpu_mem_mib"] > 0 for r in steps)  # peak GPU memory is logged
    assert (run / "weight_final.pth").is_file() and (run / "last.pth").is_file()


def test_postprocess_on_cuda_keeps_the_cpu_detections():
    torch.manual_seed(0)
    anchors = torch.rand(4000, 4) * torch.tensor([1.0, 1.0, 0.1, 0.1]) + torch.tensor([0.0, 0.0, 0.02, 0.02])
    outputs = {
        "loc": torch.randn(3, 4000, 4) * 0.3,
        "conf": torch.randn(3, 4000, 2),
        "landm": torch.randn(3, 4000, 10),
    }
    cpu = postprocess(outputs, anchors, (640, 640), keep_top_k=300)
    gpu = postprocess({k: v.cuda() for k, v in outputs.items()}, anchors.cuda(), (640, 640), keep_top_k=300)
    for c, g in zip(cpu, gpu):
        assert g["boxes"].is_cuda
        assert len(g["scores"]) == len(c["scores"])
        torch.testing.assert_close(g["scores"].cpu(), c["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g["boxes"].cpu(), c["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g["landmarks"].cpu(), c["landmarks"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("amp", [False, True])
def test_published_detector_finds_the_same_faces_on_cuda(demo_root, amp):
    import cv2

    weight = shared_path("weights/mobilenet0.25_Final.pth")
    image = sorted((demo_root / "val").rglob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    cpu = Detector.from_checkpoint(weight, preset="mnet-biubug6", device="cpu").detect(rgb, conf=0.5)
    detector = Detector.from_checkpoint(weight, preset="mnet-biubug6", device="cuda")
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        gpu = detector.detect(rgb, conf=0.5)
    assert cpu, "the published detector finds faces in the demo image"
    assert len(gpu) == len(cpu)
    tol = 2.0 if amp else 0.05  # pixels
    np.testing.assert_allclose([d["box"] for d in gpu], [d["box"] for d in cpu], atol=tol)
    np.testing.assert_allclose([d["score"] for d in gpu], [d["score"] for d in cpu], atol=0.02 if amp else 1e-4)
