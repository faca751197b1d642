"""The demo dataset: a small, deterministic dataset in the exact retina-modify layout.

``make_demo_data(root)`` (CLI: ``python -m nbsrc make-demo-data OUT``) writes::

    <root>/image_sizes.csv                                 name,width,height of every original image
    <root>/README.txt
    <root>/{train,val}/images/<event>/<basename>.jpg        RGB originals of varying sizes (1024x683, 800x800, ...)
    <root>/{train,val}/labels.txt                           RetinaFace format, ORIGINAL pixels, 5 landmarks per face
    <root>/{train,val}/labels_2cls.txt                      2-class format: each face and a person box under it
    <root>/{train,val}/latent/<basename>/latent_{12,25,50,75,100}.npy   [1, 256, 40, 40] float16
    <root>/val/ground_truth/wider_{face,easy,medium,hard}_val.mat       WIDER evaluation ground truth
    <root>/.nbsrc-demo-complete                             marker: a complete demo dataset built by this module

It is built in a temporary folder next to `root` and swapped in; a non-empty `root` without the marker is refused.

Scenes: scikit-image photos as backgrounds, a simple body under each face, and real faces (the 100 tinted
``skimage.data.lfw_subset()`` crops and the faces of ``astronaut()`` and ``camera()``) pasted at WIDER-like sizes
of the 640 frame (`SIZE_BINS`), with 5 landmarks at fixed fractions of the crop (some small faces have none);
about one image in twelve has no face. Easy / medium / hard keep faces at least 50 / 30 / 0 original px high.

Latents come from `StandInEncoder`, a **fixed, seeded stand-in for the JPEG AI encoder, not JPEG AI**: the
decoded JPEG is stretched to 640x640, every 16x16 patch averaged down to 8x8 RGB, projected to 256 channels by a
fixed random matrix, squashed by ``sign(y) log(1 + 3|y|)`` and quantized with a step that doubles at each lower
rate point (`QUANT_STEPS`). It exercises the latent pipeline end to end (shapes, rates, the label frame).

Everything follows from ``seed``: the same call gives byte-identical files (on the same library versions).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

from nbsrc import paths
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.readers.twoclass import write_twoclass_labels
from nbsrc.data.readers.wider_mat import WiderGroundTruth, write_wider_gt
from nbsrc.data.records import FACE, PERSON, ImageRecord
from nbsrc.data.transforms import MIRROR_ORDER

__all__ = [
    "DEMO_EVENTS",
    "DEMO_IMAGES",
    "DEMO_MARKER",
    "DEMO_RATES",
    "SMOKE_DEMO_IMAGES",
    "ORIGINAL_SIZES",
    "StandInEncoder",
    "demo_dataset",
    "demo_difficulty",
    "make_demo_data",
    "resolve_dataset_root",
]

logger = logging.getLogger(__name__)

DEMO_RATES = (12, 25, 50, 75, 100)
DEMO_MARKER = ".nbsrc-demo-complete"  # written last: the folder is a complete demo dataset
DEMO_IMAGES = 48  # training images of the on-demand demo dataset (`demo_dataset`)
SMOKE_DEMO_IMAGES = 8  # training images of the on-demand demo dataset in smoke runs
DEMO_EVENTS = (
    "0--Parade",
    "2--Demonstration",
    "12--Group",
    "20--Family_Group",
    "29--Students_Schoolkids",
    "50--Celebration_Or_Party",
)
ORIGINAL_SIZES = ((1024, 683), (800, 800), (683, 1024), (1024, 768), (1024, 576), (768, 1024))
NET_SIDE = 640
LATENT_STRIDE = 16
LATENT_CHANNELS = 256
ENCODER_SEED = 20240917  # the stand-in encoder is the same for every dataset seed
QUANT_STEPS = {100: 0.05, 75: 0.1, 50: 0.2, 25: 0.4, 12: 0.8}  # in units of the latent's standard deviation
EASY_MIN_HEIGHT, MEDIUM_MIN_HEIGHT = 50, 30  # original pixels
ZERO_FACE_PROB = 1 / 12
# face size in the 640 frame: (probability, min px, max px), log-uniform inside a bin
SIZE_BINS = ((0.25, 14.0, 32.0), (0.55, 32.0, 96.0), (0.20, 96.0, 220.0))
# landmarks (left eye, right eye, nose, left and right mouth corner) as fractions of a face crop
LFW_LANDMARKS = ((0.31, 0.38), (0.69, 0.38), (0.50, 0.58), (0.35, 0.78), (0.65, 0.78))
ASTRONAUT_BOX = (170, 72, 280, 182)  # x1, y1, x2, y2 in skimage.data.astronaut()
ASTRONAUT_LANDMARKS = ((0.30, 0.28), (0.70, 0.28), (0.50, 0.50), (0.35, 0.68), (0.66, 0.68))
CAMERA_BOX = (190, 92, 260, 178)  # in skimage.data.camera()
CAMERA_LANDMARKS = ((0.50, 0.46), (0.80, 0.44), (0.78, 0.62), (0.55, 0.80), (0.75, 0.80))
BACKGROUNDS = (
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "grass",
    "gravel",
    "brick",
    "coins",
    "moon",
    "clock",
    "text",
    "page",
    "colorwheel",
    "retina",
    "cell",
    "stereo_motorcycle",
)
MAT_HEADER_TEXT = 116  # bytes of descriptive text at the start of a MATLAB 5 file


def demo_difficulty(height: float) -> str:
    """``easy`` / ``medium`` / ``hard``: the hardest setting that a face of this original-pixel height is
    first kept by (easy faces are also in medium and hard)."""
    if height >= EASY_MIN_HEIGHT:
        return "easy"
    if height >= MEDIUM_MIN_HEIGHT:
        return "medium"
    return "hard"


# ---- the stand-in encoder ---------------------------------------------------------------------------------
class StandInEncoder:
    """A fixed, seeded stand-in for the JPEG AI encoder (see the module docstring): **not JPEG AI**.

    ``encode(image)`` maps an ``uint8 [H, W, 3]`` RGB image (H, W multiples of 16) to ``float32 [256, H/16,
    W/16]``; `quantize` rounds it to the step of a rate point.
    """

    def __init__(self, channels: int = LATENT_CHANNELS, seed: int = ENCODER_SEED) -> None:
        rng = np.random.default_rng(seed)
        inputs = 8 * 8 * 3
        self.channels = channels
        self.weight = (rng.standard_normal((inputs, channels)) / np.sqrt(inputs)).astype(np.float32)  # (192, C)
        self.bias = rng.uniform(-0.2, 0.2, channels).astype(np.float32)
        self.scale = float(np.std(self._raw(_calibration_image())))  # of the squashed output on a natural image

    def _raw(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if height % LATENT_STRIDE or width % LATENT_STRIDE:
            raise ValueError(f"image side must be a multiple of {LATENT_STRIDE}, got {width}x{height}")
        h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
        x = cv2.resize(image.astype(np.float32), (w * 8, h * 8), interpolation=cv2.INTER_AREA)  # 2x2 average
        x = x * np.float32(1 / 127.5) - np.float32(1.0)
        patches = x.reshape(h, 8, w, 8, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, 192)  # (h*w, 192)
        y = patches @ self.weight + self.bias  # (h*w, C)
        y = np.sign(y) * np.log1p(3.0 * np.abs(y))
        return y.T.reshape(self.channels, h, w)  # (C, h, w)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB -> ``float32 [C, H/16, W/16]`` (unquantized, unit scale)."""
        return (self._raw(image) / self.scale).astype(np.float32)

    @staticmethod
    def quantize(latent: np.ndarray, rate: int) -> np.ndarray:
        """Round to the step of `rate` (coarser at lower rates)."""
        step = QUANT_STEPS[rate]
        return (np.round(latent / step) * step).astype(np.float32)


@lru_cache(maxsize=1)
def _calibration_image() -> np.ndarray:
    return cv2.resize(skimage_data.coffee(), (NET_SIDE, NET_SIDE), interpolation=cv2.INTER_AREA)


# ---- scene material -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceCrop:
    pixels: np.ndarray  # uint8 [h, w, 3] RGB
    landmarks: np.ndarray  # float32 [5, 2] fractions of the crop


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@lru_cache(maxsize=1)
def _face_crops() -> tuple[FaceCrop, ...]:
    lfw = skimage_data.lfw_subset()[:100]  # the first 100 of the 200 crops are faces, float in [0, 1]
    crops = [FaceCrop(_to_rgb(face), np.asarray(LFW_LANDMARKS, np.float32)) for face in lfw]
    x1, y1, x2, y2 = ASTRONAUT_BOX
    crops.append(FaceCrop(_to_rgb(skimage_data.astronaut()[y1:y2, x1:x2]), np.asarray(ASTRONAUT_LANDMARKS, np.float32)))
    x1, y1, x2, y2 = CAMERA_BOX
    crops.append(FaceCrop(_to_rgb(skimage_data.camera()[y1:y2, x1:x2]), np.asarray(CAMERA_LANDMARKS, np.float32)))
    return tuple(crops)


@lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    out = []
    for name in BACKGROUNDS:
        image = getattr(skimage_data, name)()
        if isinstance(image, tuple):
            image = image[0]
        out.append(_to_rgb(image))
    return tuple(out)


# ---- one scene ---------------------------------------------------------------------------------------------
@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3] RGB original
    boxes: np.ndarray  # float32 [N, 4] xyxy integer-valued original pixels
    landmarks: np.ndarray  # float32 [N, 5, 2]
    landmarks_valid: np.ndarray  # bool [N]
    persons: np.ndarray  # float32 [N, 4] xyxy


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    backgrounds = _backgrounds()
    source = backgrounds[int(rng.integers(len(backgrounds)))]
    sh, sw = source.shape[:2]
    aspect = width / height
    crop_w = min(sw, int(sh * aspect))
    crop_w = int(crop_w * rng.uniform(0.6, 1.0))
    crop_h = max(8, min(sh, int(round(crop_w / aspect))))
    crop_w = max(8, crop_w)
    x = int(rng.integers(sw - crop_w + 1))
    y = int(rng.integers(sh - crop_h + 1))
    image = cv2.resize(source[y : y + crop_h, x : x + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gain = rng.uniform(0.7, 1.2, size=3)
    return cv2.multiply(np.ascontiguousarray(image), (float(gain[0]), float(gain[1]), float(gain[2]), 0.0))


def _face_size_net(rng: np.random.Generator) -> float:
    probs = np.asarray([b[0] for b in SIZE_BINS])
    _, lo, hi = SIZE_BINS[int(rng.choice(len(SIZE_BINS), p=probs / probs.sum()))]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _overlaps(box: np.ndarray, others: list[np.ndarray], margin: float) -> bool:
    for other in others:
        mx = margin * (other[2] - other[0])
        my = margin * (other[3] - other[1])
        if box[0] < other[2] + mx and box[2] > other[0] - mx and box[1] < other[3] + my and box[3] > other[1] - my:
            return True
    return False


def _paste(image: np.ndarray, crop: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    h, w = crop.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2)
    alpha = np.clip((1.08 - r) / 0.16, 0.0, 1.0)[:, :, None]  # soft elliptical mask
    region = image[y : y + h, x : x + w].astype(np.float32)
    blended = alpha * crop.astype(np.float32) + (1 - alpha) * region
    image[y : y + h, x : x + w] = np.clip(blended, 0, 255).astype(np.uint8)


def _tint(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey crops get a skin tone; every crop a small brightness change."""
    crop = crop.astype(np.float32)
    if np.allclose(crop[:, :, 0], crop[:, :, 1]) and np.allclose(crop[:, :, 1], crop[:, :, 2]):
        tone = np.array([1.0, rng.uniform(0.72, 0.86), rng.uniform(0.55, 0.72)], np.float32)
        crop = crop * tone * rng.uniform(0.9, 1.15)
    else:
        crop = crop * rng.uniform(0.85, 1.15)
    return np.clip(crop, 0, 255).astype(np.uint8)


def make_scene(rng: np.random.Generator) -> Scene:
    """One original image with faces, landmarks and person boxes (see the module docstring)."""
    width, height = ORIGINAL_SIZES[int(rng.integers(len(ORIGINAL_SIZES)))]
    image = _background(rng, width, height)
    crops = _face_crops()
    n_faces = 0 if rng.random() < ZERO_FACE_PROB else int(1 + min(rng.poisson(2.5), 9))
    scale = np.sqrt((NET_SIDE / width) * (NET_SIDE / height))
    placed: list[np.ndarray] = []
    faces: list[tuple[FaceCrop, np.ndarray, bool, bool]] = []
    for _ in range(n_faces):
        face_h = max(8, int(round(_face_size_net(rng) / scale)))
        face_w = max(6, int(round(face_h * rng.uniform(0.78, 0.92))))
        if face_w >= width or face_h >= height:
            continue
        for _try in range(60):
            x = int(rng.integers(0, width - face_w))
            y = int(rng.integers(0, height - face_h))
            box = np.array([x, y, x + face_w, y + face_h], np.float32)
            if not _overlaps(box, placed, 0.15):
                break
        else:
            continue
        placed.append(box)
        crop = crops[int(rng.integers(len(crops)))]
        flip = bool(rng.random() < 0.5)
        has_landmarks = not (face_h < 24 and rng.random() < 0.5)
        faces.append((crop, box, flip, has_landmarks))

    persons = []
    for _, box, _, _ in faces:  # bodies first, faces on top
        x1, y1, x2, y2 = box
        fw, fh = x2 - x1, y2 - y1
        cx = (x1 + x2) / 2
        axes = (int(max(2, 1.15 * fw)), int(max(2, 1.7 * fh)))
        centre = (int(round(cx)), int(round(y2 + 1.45 * fh)))
        colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
        cv2.ellipse(image, centre, axes, 0.0, 0.0, 360.0, colour, thickness=-1, lineType=cv2.LINE_AA)
        persons.append(
            [
                max(0.0, cx - axes[0]),
                max(0.0, y1 - 0.12 * fh),
                min(float(width), cx + axes[0]),
                min(float(height), centre[1] + axes[1]),
            ]
        )

    boxes, landmarks, valid = [], [], []
    for crop, box, flip, has_landmarks in faces:
        x1, y1, x2, y2 = (int(v) for v in box)
        fw, fh = x2 - x1, y2 - y1
        pixels = crop.pixels[:, ::-1] if flip else crop.pixels
        relative = crop.landmarks.copy()
        if flip:
            relative[:, 0] = 1.0 - relative[:, 0]
            relative = relative[MIRROR_ORDER]
        shrinking = fw < pixels.shape[1]
        resized = cv2.resize(
            np.ascontiguousarray(pixels), (fw, fh), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
        _paste(image, _tint(resized, rng), x1, y1, rng)
        boxes.append(box)
        points = np.round(np.asarray([x1, y1], np.float32) + relative * np.asarray([fw, fh], np.float32), 1)
        landmarks.append(points if has_landmarks else np.zeros((5, 2), np.float32))
        valid.append(has_landmarks)
    n = len(boxes)
    return Scene(
        image=image,
        boxes=np.asarray(boxes, np.float32).reshape(n, 4),
        landmarks=np.asarray(landmarks, np.float32).reshape(n, 5, 2),
        landmarks_valid=np.asarray(valid, bool).reshape(n),
        persons=np.asarray(persons, np.float32).reshape(n, 4),
    )


# ---- writing ---------------------------------------------------------------------------------------------
def _jpeg_roundtrip(image: np.ndarray) -> tuple[bytes, np.ndarray]:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return encoded.tobytes(), cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def encode_original(image: np.ndarray, encoder: StandInEncoder | None = None) -> np.ndarray:
    """The unquantized stand-in latent ``float32 [256, 40, 40]`` of an original RGB image (stretched to 640)."""
    encoder = encoder or _encoder()
    stretched = cv2.resize(image, (NET_SIDE, NET_SIDE), interpolation=cv2.INTER_AREA)
    return encoder.encode(stretched)


@lru_cache(maxsize=1)
def _encoder() -> StandInEncoder:
    return StandInEncoder()


def _write_split(
    root: Path, split: str, seeds: list[np.random.SeedSequence], first_index: int, sizes: list[tuple[str, int, int]]
) -> list[ImageRecord]:
    split_dir = root / split
    encoder = _encoder()
    records, twoclass = [], []
    for offset, seed in enumerate(seeds):
        index = first_index + offset
        event = DEMO_EVENTS[index % len(DEMO_EVENTS)]
        number, _, label = event.partition("--")
        basename = f"{number}_{label}_demo_{index}"
        scene = make_scene(np.random.default_rng(seed))
        jpeg, decoded = _jpeg_roundtrip(scene.image)
        (split_dir / "images" / event).mkdir(parents=True, exist_ok=True)
        (split_dir / "images" / event / f"{basename}.jpg").write_bytes(jpeg)
        latent = encode_original(decoded, encoder)
        (split_dir / "latent" / basename).mkdir(parents=True, exist_ok=True)
        for rate in DEMO_RATES:
            quantized = encoder.quantize(latent, rate)[None].astype(np.float16)  # (1, C, 40, 40)
            np.save(split_dir / "latent" / basename / f"latent_{rate}.npy", quantized, allow_pickle=False)
        height, width = scene.image.shape[:2]
        name = f"{event}/{basename}"
        sizes.append((name, width, height))
        n = len(scene.boxes)
        record = ImageRecord(
            name=name,
            boxes=scene.boxes,
            landmarks=scene.landmarks,
            landmarks_valid=scene.landmarks_valid,
            labels=np.full(n, FACE, np.int64),
            image_size=(width, height),
            attributes={
                "landmark_flags": np.where(scene.landmarks_valid[:, None], 0.0, -1.0).repeat(5, 1).astype(np.float32),
                "score": np.where(scene.landmarks_valid, 1.0, -1.0).astype(np.float32),
            },
        )
        records.append(record)
        twoclass.append(
            ImageRecord(
                name=basename,
                boxes=np.concatenate([scene.boxes, scene.persons], axis=0),
                labels=np.concatenate([np.full(n, FACE), np.full(n, PERSON)]).astype(np.int64),
                image_size=(width, height),
            )
        )
    write_retinaface_labels(split_dir / "labels.txt", records)
    write_twoclass_labels(split_dir / "labels_2cls.txt", twoclass)
    return records


def _write_ground_truth(gt_dir: Path, records: list[ImageRecord]) -> None:
    by_event: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_event.setdefault(record.name.split("/", 1)[0], []).append(record)
    events = sorted(by_event, key=lambda e: int(e.split("--", 1)[0]))
    names = [[r.basename for r in by_event[event]] for event in events]
    boxes: list[list[np.ndarray]] = []
    keep: dict[str, list[list[np.ndarray]]] = {"easy": [], "medium": [], "hard": []}
    for event in events:
        event_boxes, per_setting = [], {s: [] for s in keep}
        for record in by_event[event]:
            xyxy = record.boxes.astype(np.float64)
            xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)  # (N, 4)
            event_boxes.append(np.rint(xywh).astype(np.int32))
            heights = xywh[:, 3]
            per_setting["easy"].append(np.flatnonzero(heights >= EASY_MIN_HEIGHT) + 1)
            per_setting["medium"].append(np.flatnonzero(heights >= MEDIUM_MIN_HEIGHT) + 1)
            per_setting["hard"].append(np.arange(1, len(heights) + 1))
        boxes.append(event_boxes)
        for setting in keep:
            keep[setting].append(per_setting[setting])
    write_wider_gt(gt_dir, WiderGroundTruth(events=events, names=names, boxes=boxes, keep=keep))
    for path in sorted(gt_dir.glob("*.mat")):  # fixed header text, not the creation time: same seed, same bytes
        data = path.read_bytes()
        if data.startswith(b"MATLAB 5.0 MAT-file"):
            text = b"MATLAB 5.0 MAT-file, nbsrc demo ground truth".ljust(MAT_HEADER_TEXT, b" ")
            path.write_bytes(text + data[MAT_HEADER_TEXT:])


def make_demo_data(root: str | Path, images: int = 160, seed: int = 0, val_images: int | None = None) -> Path:
    """Build the demo dataset (see the module docstring) in `root`, returned: a new or empty folder, or an earlier
    demo dataset (with `DEMO_MARKER`), replaced whole. `val_images` defaults to ``max(8, images // 4)``.

    Raises ValueError for bad counts, or a `root` that is a file or a non-empty folder without `DEMO_MARKER`
    (nothing in it is touched).
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    val_images = max(8, images // 4) if val_images is None else int(val_images)
    if val_images < 1:
        raise ValueError(f"val_images must be >= 1, got {val_images}")
    given = root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; expected a new or empty folder for the demo dataset")
    if root.is_dir() and any(root.iterdir()) and not (root / DEMO_MARKER).is_file():
        raise ValueError(
            f"{root} is not empty and is not a demo dataset built by make-demo-data (no {DEMO_MARKER}); refusing to "
            "overwrite it: choose a new or empty folder"
        )
    root = Path(os.path.abspath(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    building = root.with_name(f".{root.name}.building-{tag}")
    building.mkdir()
    try:
        faces = _build(building, images, seed, val_images)
        _swap_in(building, root, root.with_name(f".{root.name}.old-{tag}"))
    finally:
        shutil.rmtree(building, ignore_errors=True)
    logger.info(
        "demo dataset in %s: %d train + %d val images, %d faces (%.1f s)",
        root,
        images,
        val_images,
        faces,
        time.perf_counter() - start,
    )
    return given


def _swap_in(built: Path, root: Path, old: Path) -> None:
    """Put the complete build `built` at `root`: a missing `root` is the renamed build; an empty one receives the
    build's entries, the marker last (the folder itself, perhaps the working directory, stays); an earlier demo
    dataset is moved to `old` and deleted once the build has taken its place, so none of its files survive."""
    if not root.exists():
        built.rename(root)
        return
    if not any(root.iterdir()):
        for entry in sorted(built.iterdir(), key=lambda p: p.name == DEMO_MARKER):
            entry.rename(root / entry.name)
        return
    root.rename(old)
    built.rename(root)
    shutil.rmtree(old)


def demo_dataset(images: int = DEMO_IMAGES, seed: int = 0, root: str | Path | None = None) -> Path:
    """The demo dataset of `images` training images, built once under `root` (default: a folder of
    `nbsrc.paths.cache_dir` named after `images` and `seed`) and reused while it holds `DEMO_MARKER`."""
    folder = (Path(root) if root is not None else paths.cache_dir() / f"demo-{images}img-seed{seed}").resolve()
    if not (folder / DEMO_MARKER).is_file():
        logger.info("building the demo dataset (%d images per split, seed %d) in %s", images, seed, folder)
        make_demo_data(folder, images=images, seed=seed)
    return folder


def resolve_dataset_root(
    dataset_root: str | Path | None,
    *,
    slug: str = paths.DATASET_SLUG,
    smoke: bool = False,
    demo_images: int | None = None,
    input_root: str | Path | None = None,
) -> Path:
    """Turn a notebook's ``dataset_root`` parameter into an existing dataset folder: the folder or attached
    dataset it names (`nbsrc.paths.find_dataset_root`), else the demo dataset (``"demo"``, or None off Kaggle;
    `demo_images` images, default `DEMO_IMAGES`, `SMOKE_DEMO_IMAGES` when `smoke`), built on demand.

    Raises:
        FileNotFoundError: the folder does not exist, or the dataset is not attached, naming what was searched.
    """
    found = paths.find_dataset_root(dataset_root, slug=slug, input_root=input_root)
    if found is not None:
        return found
    return demo_dataset(demo_images or (SMOKE_DEMO_IMAGES if smoke else DEMO_IMAGES))


def _build(root: Path, images: int, seed: int, val_images: int) -> int:
    """Write the whole demo dataset into the empty folder `root`, `DEMO_MARKER` last; returns the number of faces."""
    seeds = np.random.SeedSequence(seed).spawn(images + val_images)
    sizes: list[tuple[str, int, int]] = []
    train = _write_split(root, "train", seeds[:images], 0, sizes)
    val = _write_split(root, "val", seeds[images:], images, sizes)
    _write_ground_truth(root / "val" / "ground_truth", val)
    with (root / "image_sizes.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("name", "width", "height"), *sizes])
    faces = sum(r.num_boxes for r in train + val)
    (root / "README.txt").write_text(
        f"nbsrc demo dataset (seed {seed}): {images} train + {val_images} val images, {faces} faces.\n"
        "Layout and content: see the docstring of nbsrc/data/demo.py. The latents come from a fixed stand-in\n"
        "encoder that exercises the pipeline; they are not JPEG AI latents. Labels are in original-image pixels;\n"
        "image_sizes.csv gives the original sizes that map them into the 640x640 latent frame (stretch policy).\n",
    )
    (root / DEMO_MARKER).write_text("ok\n")
    return faces
