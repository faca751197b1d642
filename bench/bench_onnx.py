"""CPU detection: our exported detector run by onnxruntime against biubug6's eager PyTorch pipeline.

Both run the published RetinaFace MobileNet-0.25 (``mobilenet0.25_Final.pth``, shipped with nbsrc) on one 1024x768
photo at its own size (biubug6's ``detect.py`` does not resize), side by side in one process with the same number
of threads, in alternating order, each timed from the decoded image to the final detections:

- reference: biubug6's ``detect.py`` test-time steps, reimplemented below as they are written (cv2 BGR image ->
  float32, minus (104, 117, 123), HWC -> CHW, eager forward of their network with its test-phase softmax, PriorBox
  rebuilt for the image size, decode, decode_landm, score threshold, top-k, the numpy ``py_cpu_nms`` loop,
  keep-top-k). Their network is our ``mnet-biubug6`` model loaded from the published weights, in eager mode.
- ours: ``Detector.from_onnx(file).detect(image_rgb)`` on the file ``python -m nbsrc export`` writes (preprocess,
  onnxruntime forward, anchors for the size, decode, NMS, Python results).
- ours in PyTorch: ``Detector.published().detect(image_rgb)``, for context.

All use biubug6's settings (score > 0.02, top-k 5000, NMS 0.4, keep-top-k 750). The faces drawn by ``detect.py``
(score >= 0.6) must be the same: every reference face matched by one of ours with IoU >= 0.9, and no other.

    python bench/bench_onnx.py [--repeat 20] [--threads 2] [--image PHOTO.jpg] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from math import ceil
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nbsrc.detector import Detector
from nbsrc.export import export_checkpoint
from nbsrc.model.loading import load_model
from nbsrc.weights import PUBLISHED_DETECTOR, PUBLISHED_PRESET

CONF, TOP_K, NMS, KEEP_TOP_K, VIS_THRES = 0.02, 5000, 0.4, 750, 0.6  # biubug6 detect.py defaults


# ==== REFERENCE: biubug6's test-time pipeline (Pytorch_Retinaface detect.py), written as they wrote it ==========
REF_CFG_MNET = {
    "min_sizes": [[16, 32], [64, 128], [256, 512]],
    "steps": [8, 16, 32],
    "variance": [0.1, 0.2],
    "clip": False,
}


class RefPriorBox:
    """biubug6 ``layers/functions/prior_box.py``: Python loops over every location, rebuilt for each image."""

    def __init__(self, cfg, image_size=None):
        self.min_sizes = cfg["min_sizes"]
        self.steps = cfg["steps"]
        self.clip = cfg["clip"]
        self.image_size = image_size
        self.feature_maps = [[ceil(self.image_size[0] / step), ceil(self.image_size[1] / step)] for step in self.steps]

    def forward(self):
        anchors = []
        for k, f in enumerate(self.feature_maps):
            min_sizes = self.min_sizes[k]
            for i, j in itertools.product(range(f[0]), range(f[1])):
                for min_size in min_sizes:
                    s_kx = min_size / self.image_size[1]
                    s_ky = min_size / self.image_size[0]
                    dense_cx = [x * self.steps[k] / self.image_size[1] for x in [j + 0.5]]
                    dense_cy = [y * self.steps[k] / self.image_size[0] for y in [i + 0.5]]
                    for cy, cx in itertools.product(dense_cy, dense_cx):
                        anchors += [cx, cy, s_kx, s_ky]
        output = torch.Tensor(anchors).view(-1, 4)
        if self.clip:
            output.clamp_(max=1, min=0)
        return output


def ref_decode(loc, priors, variances):
    """biubug6 ``utils/box_utils.py::decode``."""
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1]),
        ),
        1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def ref_decode_landm(pre, priors, variances):
    """biubug6 ``utils/box_utils.py::decode_landm``."""
    return torch.cat(
        (
            priors[:, :2] + pre[:, :2] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 2:4] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 4:6] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 6:8] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 8:10] * variances[0] * priors[:, 2:],
        ),
        dim=1,
    )


def ref_py_cpu_nms(dets, thresh):
    """biubug6 ``utils/nms/py_cpu_nms.py`` (Fast R-CNN's pure Python NMS, +1-pixel areas)."""
    x1 = dets[:, 0]
    y1 = dets[:, 1]
    x2 = dets[:, 2]
    y2 = dets[:, 3]
    scores = dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]
    return keep


class RefRetinaFace(nn.Module):
    """biubug6 ``RetinaFace(cfg_mnet, phase="test")``: the same network (our ``mnet-biubug6`` with the published
    weights, which load key for key) returning ``(bbox_regressions, softmax(classifications), ldm_regressions)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out["loc"], F.softmax(out["conf"], dim=-1), out["landm"]


def ref_detect(net, img_raw, cfg=REF_CFG_MNET, device=torch.device("cpu")):
    """One iteration of biubug6's ``detect.py`` loop (``resize = 1``) on a cv2 BGR image: ``dets [N, 15]``
    (x1, y1, x2, y2, score, 5 landmark points)."""
    resize = 1
    img = np.float32(img_raw)
    im_height, im_width, _ = img.shape
    scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    img -= (104, 117, 123)
    img = img.transpose(2, 0, 1)
    img = torch.from_numpy(img).unsqueeze(0)
    img = img.to(device)
    scale = scale.to(device)

    loc, conf, landms = net(img)  # forward pass

    priorbox = RefPriorBox(cfg, image_size=(im_height, im_width))
    priors = priorbox.forward()
    priors = priors.to(device)
    prior_data = priors.data
    boxes = ref_decode(loc.data.squeeze(0), prior_data, cfg["variance"])
    boxes = boxes * scale / resize
    boxes = boxes.cpu().numpy()
    scores = conf.squeeze(0).data.cpu().numpy()[:, 1]
    landms = ref_decode_landm(landms.data.squeeze(0), prior_data, cfg["variance"])
    scale1 = torch.Tensor([img.shape[3], img.shape[2]] * 5)
    scale1 = scale1.to(device)
    landms = landms * scale1 / resize
    landms = landms.cpu().numpy()

    # ignore low scores
    inds = np.where(scores > CONF)[0]
    boxes = boxes[inds]
    landms = landms[inds]
    scores = scores[inds]

    # keep top-K before NMS
    order = scores.argsort()[::-1][:TOP_K]
    boxes = boxes[order]
    landms = landms[order]
    scores = scores[order]

    # do NMS
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = ref_py_cpu_nms(dets, NMS)
    dets = dets[keep, :]
    landms = landms[keep]

    # keep top-K faster NMS
    dets = dets[:KEEP_TOP_K, :]
    landms = landms[:KEEP_TOP_K, :]
    return np.concatenate((dets, landms), axis=1)


# ==== end of the reference ========================================================================================


def composite_photo() -> np.ndarray:
    """``[768, 1024, 3]`` uint8 RGB: real photos with faces of about 180, 60, 40 and 25 pixels (scikit-image's
    astronaut at three scales and the cameraman), on grey."""
    from skimage import data

    astronaut, camera = data.astronaut(), data.camera()
    canvas = np.full((768, 1024, 3), 127, np.uint8)
    canvas[:, :768] = cv2.resize(astronaut, (768, 768), interpolation=cv2.INTER_AREA)
    canvas[:256, 768:] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    canvas[256:512, 768:] = cv2.resize(camera, (256, 256), interpolation=cv2.INTER_AREA)[:, :, None]
    canvas[512:640, 768:896] = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    return canvas


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of xyxy boxes (no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def match(reference: np.ndarray, ours: np.ndarray, min_iou: float = 0.9) -> dict:
    """Greedy one-to-one matching by IoU: how many of each were matched and the worst matched IoU."""
    if len(reference) == 0 or len(ours) == 0:
        return {"reference": len(reference), "ours": len(ours), "matched": 0, "min_iou": None}
    overlaps = iou(reference, ours)
    matched, worst, used = 0, 1.0, set()
    for r in range(len(reference)):
        candidates = [(overlaps[r, o], o) for o in range(len(ours)) if o not in used and overlaps[r, o] >= min_iou]
        if candidates:
            best, o = max(candidates)
            used.add(o)
            matched += 1
            worst = min(worst, float(best))
    return {"reference": len(reference), "ours": len(ours), "matched": matched, "min_iou": worst if matched else None}


def cpu_busy_s() -> float | None:
    """Seconds of CPU time spent by every process of the machine so far (Linux ``/proc/stat``), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each pipeline (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--image", type=Path, default=None, help="a photo (default: a 1024x768 composite of faces)")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)  # as detect.py does

    if args.image is not None:
        image_bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if image_bgr is None:
            parser.error(f"--image {args.image}: not a readable image")
    else:
        image_bgr = np.ascontiguousarray(composite_photo()[:, :, ::-1])
    image_rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])  # what Detector.detect takes

    net, _ = load_model(PUBLISHED_DETECTOR, preset=PUBLISHED_PRESET)
    reference_net = RefRetinaFace(net).eval()
    with tempfile.TemporaryDirectory() as folder:
        export_s, onnx_path = timed(export_checkpoint, PUBLISHED_DETECTOR, Path(folder) / "retinaface.onnx")
        ours = Detector.from_onnx(onnx_path, threads=args.threads)
    ours_torch = Detector.published()

    reference_input = torch.from_numpy((np.float32(image_bgr) - (104, 117, 123)).astype(np.float32).transpose(2, 0, 1))
    prepared = ours.prepare(image_rgb)[None]  # (1, 3, H, W)
    pipelines = {
        "reference": lambda: ref_detect(reference_net, image_bgr),
        "ours_onnx": lambda: ours.detect(image_rgb, conf=CONF, nms=NMS),
        "ours_torch": lambda: ours_torch.detect(image_rgb, conf=CONF, nms=NMS),
        # parts, for where the time goes
        "reference_forward": lambda: reference_net(reference_input[None]),
        "ours_preprocess": lambda: ours.prepare(image_rgb),
        "ours_forward": lambda: ours.model(prepared),
    }
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    busy_start, own_start, wall_start = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    outputs = {}
    names = list(pipelines)
    for round_ in range(args.repeat + 2):  # the first two rounds warm up
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate the order
            ms, outputs[name] = timed(pipelines[name])
            if round_ >= 2:
                times[name].append(ms)

    # other work on the machine meanwhile (CPU of every process minus ours), in cores: 0 on a quiet machine
    busy_end = cpu_busy_s()
    others = None
    if busy_start is not None and busy_end is not None:
        own = sum(os.times()[:2]) - own_start
        others = max(0.0, (busy_end - busy_start - own) / (time.perf_counter() - wall_start))

    def faces(detections, threshold):
        return np.array([d["box"] for d in detections if d["score"] >= threshold], np.float32).reshape(-1, 4)

    reference = outputs["reference"]
    result = {
        "image": str(args.image) if args.image else "composite 1024x768 (scikit-image astronaut x3, camera)",
        "size": [int(image_bgr.shape[1]), int(image_bgr.shape[0])],
        "threads": args.threads,
        "other_load_cores": None if others is None else round(others, 2),
        "repeat": args.repeat,
        "export_s": round(export_s / 1000, 2),
        "median_ms": {name: round(statistics.median(t), 1) for name, t in times.items()},
        "faces": match(reference[reference[:, 4] >= VIS_THRES, :4], faces(outputs["ours_onnx"], VIS_THRES)),
        "all_detections": match(reference[:, :4], faces(outputs["ours_onnx"], CONF)),
    }
    median = result["median_ms"]
    result["speedup"] = round(median["reference"] / median["ours_onnx"], 2)
    rest = median["ours_onnx"] - median["ours_preprocess"] - median["ours_forward"]
    f, a = result["faces"], result["all_detections"]
    same = f["reference"] == f["ours"] == f["matched"] > 0
    lines = [
        f"image {result['image']} ({result['size'][0]}x{result['size'][1]}), {args.threads} threads, "
        f"median of {args.repeat}; export {result['export_s']} s; other processes meanwhile: "
        + ("unknown" if others is None else f"{others:.2f} cores busy on average"),
        "| pipeline | ms |",
        "|---|---:|",
        f"| reference: biubug6 detect.py steps, eager PyTorch (forward {median['reference_forward']:.1f}) "
        f"| {median['reference']:.1f} |",
        f"| ours: Detector.from_onnx, onnxruntime (preprocess {median['ours_preprocess']:.1f}, forward "
        f"{median['ours_forward']:.1f}, the rest {rest:.1f}) | {median['ours_onnx']:.1f} |",
        f"| ours: Detector.published(), PyTorch | {median['ours_torch']:.1f} |",
        f"speed-up (reference / ours onnx): {result['speedup']:.2f}x",
        f"faces (score >= {VIS_THRES}): reference {f['reference']}, ours {f['ours']}, matched {f['matched']} "
        f"(min IoU {f['min_iou'] if f['min_iou'] is None else round(f['min_iou'], 4)}): "
        + ("the same faces" if same else "DIFFERENT faces"),
        f"all detections (score > {CONF}): reference {a['reference']}, ours {a['ours']}, matched {a['matched']}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        from nbsrc.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
