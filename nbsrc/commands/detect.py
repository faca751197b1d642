"""``python -m nbsrc detect``: detect faces on one image or one latent with a checkpoint (default: the published
MobileNet-0.25 detector, for images), printing JSON (or writing it with ``--json``) and optionally saving a
visualisation. ``--source`` runs over a folder of images, a video or one image (`nbsrc.detect_sources`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from nbsrc.commands import check_output_file
from nbsrc.detect_sources import check_source_save, detect_source, open_source
from nbsrc.detector import Detector, check_thresholds
from nbsrc.draw import draw_detections
from nbsrc.latents import load_latent
from nbsrc.utils import atomic_path, atomic_write_text
from nbsrc.weights import PUBLISHED_DETECTOR, PUBLISHED_PRESET

HELP = "detect faces on one image or one latent"

logger = logging.getLogger(__name__)

# Architecture names of the published detect scripts -> presets.
NETWORK_ALIASES = {
    "mobile0.25": "mnet-biubug6",
    "mobilenet0.25": "mnet-biubug6",
    "resnet50": "r50-biubug6",
    "Resnet50": "r50-biubug6",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weight",
        "--trained_model",
        "-m",
        dest="weight",
        default=None,
        help="checkpoint: ours, or a published state dict (mobilenet0.25_Final.pth, 2-class .pth), or an .onnx file "
        "written by 'nbsrc export' (run with onnxruntime); default: the published MobileNet-0.25 detector shipped "
        "with nbsrc (preset mnet-biubug6, RGB images)",
    )
    parser.add_argument(
        "--preset",
        "--network",
        dest="preset",
        default=None,
        help="preset of a published state dict (inferred from its keys when omitted); "
        "mobile0.25 / resnet50 are accepted as in the published scripts",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="image file (any format OpenCV reads)")
    source.add_argument("--latent", type=Path, help="latent .npy, [C, h, w] or [1, C, h, w]")
    source.add_argument(
        "--source",
        type=Path,
        help="a folder of images (searched recursively), a video file (OpenCV) or one image: annotated outputs "
        "with --save, one JSON line per image or frame with --json",
    )
    parser.add_argument(
        "--conf", "--confidence_threshold", dest="conf", type=float, default=0.6, help="score threshold"
    )
    parser.add_argument("--nms", "--nms_threshold", dest="nms", type=float, default=0.4, help="NMS IoU threshold")
    parser.add_argument(
        "--orig-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        default=None,
        help="latent only: original image size; boxes are mapped to it (config resize policy)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the detections here instead of stdout (--source: a JSON-lines file, one line per image/frame)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="save a visualisation image (e.g. VIS.png); --source: the output folder (same relative paths), video "
        "file (.mp4, same fps and size) or image",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="--source: images of equal size per forward pass (default: the checkpoint's eval.batch_size; 1 gives "
        "one-by-one results bit for bit, a batch equal up to float32 rounding)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")


def read_image_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file; raises naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (expected a JPEG/PNG/... file OpenCV can decode)")
    return np.ascontiguousarray(image[:, :, ::-1])  # (H, W, 3) BGR -> RGB


def check_save_path(path: Path) -> str:
    """The image suffix `path` is written with (``.png`` when it has none); `ValueError` when OpenCV cannot write
    it or it cannot become a file."""
    check_output_file(path, "--save")
    suffix = path.suffix or ".png"
    if not cv2.haveImageWriter(f"image{suffix}"):
        raise ValueError(f"--save {path}: OpenCV cannot write {suffix!r} images (expected e.g. .png or .jpg)")
    return suffix


def run(args: argparse.Namespace) -> int:
    # Bad options stop here, before the checkpoint is read or anything is written.
    check_thresholds({"conf": "--conf", "nms": "--nms"}, conf=args.conf, nms=args.nms)
    check_output_file(args.json, "--json")
    suffix = check_save_path(args.save) if args.save is not None and args.source is None else None
    media = _open_source(args) if args.source is not None else None
    # Logging shares stdout with the JSON when no --json is given: keep stdout parseable then.
    log = logger.info if args.json is not None else logger.debug
    detector = _load_detector(args, log)
    if media is not None:
        return _run_source(args, detector, media)
    item, source = _read_input(args, detector)
    detections = detector.detect(
        item, conf=args.conf, nms=args.nms, orig_size=tuple(args.orig_size) if args.orig_size else None
    )
    log("%s: %d detections (conf > %.2f)", source, len(detections), args.conf)
    report = {
        "input": str(source),
        "weight": str(args.weight),
        "preset": detector.cfg.preset,
        "detections": [
            {**d, "box": [round(v, 2) for v in d["box"]], "score": round(d["score"], 5)} for d in detections
        ],
    }
    text = json.dumps(report, indent=2) + "\n"
    # encoded before anything is written: a failure leaves no output behind
    encoded = _encode_visualisation(args, detector, item, detections, suffix) if args.save is not None else None
    if args.json is not None:
        atomic_write_text(args.json, text)
        logger.info("detections written to %s", args.json)
    else:
        sys.stdout.write(text)
    if encoded is not None:
        with atomic_path(args.save) as tmp:
            tmp.write_bytes(encoded.tobytes())
        log("visualisation saved to %s", args.save)
    return 0


def _load_detector(args: argparse.Namespace, log) -> Detector:
    """The detector of ``--weight`` (an .onnx file runs with onnxruntime); without it the published detector, whose
    file becomes ``args.weight``."""
    preset = NETWORK_ALIASES.get(args.preset, args.preset) if args.preset else None
    if args.weight is None:
        if args.latent is not None:
            raise ValueError(
                "--latent needs --weight (a latent checkpoint); without --weight detect runs the "
                "published RGB detector on --image"
            )
        if preset not in (None, PUBLISHED_PRESET):
            raise ValueError(f"--preset {args.preset} needs --weight (without it: the published {PUBLISHED_PRESET})")
        args.weight, preset = PUBLISHED_DETECTOR, PUBLISHED_PRESET
        log(
            "no --weight: the published RetinaFace MobileNet-0.25 detector (preset %s) shipped with nbsrc, %s",
            preset,
            args.weight,
        )
    if Path(args.weight).suffix.lower() == ".onnx":  # an exported file, run with onnxruntime
        return Detector.from_onnx(args.weight, preset=preset, device=args.device)
    return Detector.from_checkpoint(args.weight, preset=preset, device=args.device)


def _read_input(args: argparse.Namespace, detector: Detector) -> tuple[np.ndarray, Path]:
    """``(image [H, W, 3] RGB or latent [C, h, w], its path)`` of ``--image`` / ``--latent``."""
    if args.image is not None:
        if detector.input_kind != "rgb":
            raise ValueError(f"{args.weight}: preset '{detector.cfg.preset}' takes latents; use --latent")
        if args.orig_size is not None:
            raise ValueError("--orig-size applies to --latent only")
        return read_image_rgb(args.image), args.image
    if detector.input_kind != "latent":
        raise ValueError(f"{args.weight}: preset '{detector.cfg.preset}' takes RGB images; use --image")
    return load_latent(args.latent, detector.model.in_channels), args.latent


def _encode_visualisation(
    args: argparse.Namespace, detector: Detector, item: np.ndarray, detections: list[dict], suffix: str
) -> np.ndarray:
    """The ``--save`` image: the detections drawn on the image, or for a latent on a grey canvas of the original
    size (``--orig-size``, else the latent's frame)."""
    if args.image is not None:
        canvas = item
    else:
        stride = detector.model.latent_stride
        width, height = args.orig_size or (item.shape[-1] * stride, item.shape[-2] * stride)
        canvas = np.full((height, width, 3), 127, dtype=np.uint8)  # (H, W, 3)
    vis = draw_detections(canvas, detections)
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(vis[:, :, ::-1]))
    if not ok:
        raise ValueError(f"{args.save}: cannot encode an image with suffix {suffix!r}")
    return encoded


def _open_source(args: argparse.Namespace):
    """The `nbsrc.detect_sources.Source` of ``--source``, its options checked before the checkpoint is read."""
    if args.save is None and args.json is None:
        raise ValueError("--source needs --save OUT (annotated output) and/or --json OUT.jsonl (detections)")
    if args.orig_size is not None:
        raise ValueError("--orig-size applies to --latent only")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    media = open_source(args.source, save=args.save)
    if args.save is not None:
        check_source_save(media, args.save)
    return media


def _run_source(args: argparse.Namespace, detector, media) -> int:
    """``detect --source``: every image or frame of `media` (`nbsrc.detect_sources.detect_source`)."""
    if detector.input_kind != "rgb":
        raise ValueError(f"{args.weight}: preset '{detector.cfg.preset}' takes latents; --source takes images")
    logger.info("%s: %s of %d %s", args.source, media.kind, len(media), "frames" if media.kind == "video" else "images")
    detect_source(
        detector, media, save=args.save, jsonl=args.json, conf=args.conf, nms=args.nms, batch_size=args.batch_size
    )
    if args.json is not None:
        logger.info("detections written to %s", args.json)
    if args.save is not None:
        logger.info("annotated %s written to %s", "video" if media.kind == "video" else "images", args.save)
    return 0
