"""Datasets, collate and loaders: `LatentWiderFace` (nested / flat layouts, rates, dtypes, normalization, flip),
`WiderFaceRGB` (evaluation resize, augmentation), `detection_collate`, `build_dataset` / `build_dataloaders`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nbsrc.data.latent_dataset as latent_module
from nbsrc.config import get_preset
from nbsrc.data.collate import detection_collate
from nbsrc.data.demo import DEMO_RATES
from nbsrc.data.image_sizes import read_sizes_csv
from nbsrc.data.latent_dataset import LatentWiderFace
from nbsrc.data.loaders import build_dataloaders, build_dataset
from nbsrc.data.readers import read_labels
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.records import ImageRecord
from nbsrc.data.rgb_dataset import WiderFaceRGB
from nbsrc.data.transforms import Annotations, mirror, train_transform
from nbsrc.frame import FrameMap
from nbsrc.latents import load_latent

# landmark fractions of a face box, left/right symmetric: eyes, nose, mouth corners (image-left first)
FRACTIONS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)


def _record(name: str, boxes, *, landmarks: bool = True, size=(640, 640)) -> ImageRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    points = boxes[:, None, :2] + FRACTIONS[None] * wh[:, None]  # (N, 5, 2)
    n = len(boxes)
    return ImageRecord(
        name=name,
        boxes=boxes,
        landmarks=points if landmarks else np.zeros((n, 5, 2), np.float32),
        landmarks_valid=np.full(n, landmarks),
        image_size=size,
    )


def _latent(seed: int, shape=(256, 40, 40), dtype=np.float16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _nested_split(
    split: Path, records: list[ImageRecord], *, labels_at: str = "labels.txt", rates=(75,), dtype=np.float16
) -> dict[tuple[str, int], np.ndarray]:
    """A nested split with a RetinaFace label file at `labels_at`; returns the latents written."""
    written = {}
    for i, record in enumerate(records):
        for rate in rates:
            array = _latent(100 * i + rate, (1, 256, 40, 40), dtype)
            path = split / "latent" / record.basename / f"latent_{rate}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
            written[(record.name, rate)] = array
    write_retinaface_labels(split / labels_at, records)
    return written


RECORDS = [
    _record("0--Parade/0_Parade_a", [[10, 20, 110, 140], [300, 300, 340, 350]]),
    _record("0--Parade/0_Parade_b", []),
    _record("12--Group/12_Group_c", [[500, 100, 600, 220]], landmarks=False),
]


# ---- LatentWiderFace: layouts ---------------------------------------------------------------------------------
def test_nested_layout_of_the_demo(demo_root):
    dataset = LatentWiderFace(demo_root / "train")
    labelled = read_labels(demo_root / "train" / "labels.txt")
    assert dataset.layout == "nested"
    assert len(dataset) == len(labelled) == 24
    assert dataset.rates == [75]
    sample = dataset[0]
    assert sample["input"].shape == (256, 40, 40) and sample["input"].dtype == torch.float32
    assert sample["rate"] == 75 and sample["name"] == labelled[0].name
    assert isinstance(sample["frame"], FrameMap) and sample["frame"].net_size == (640, 640)
    stored = np.load(demo_root / "train" / "latent" / labelled[0].basename / "latent_75.npy")
    np.testing.assert_array_equal(sample["input"].numpy(), stored[0].astype(np.float32))
    faces = sum(len(dataset[i]["boxes"]) for i in range(len(dataset)))
    assert faces == sum(r.num_boxes for r in labelled) > 0
    for i in range(len(dataset)):
        boxes = dataset[i]["boxes"]
        assert boxes.dtype == torch.float32 and boxes.shape[1:] == (4,)
        assert (boxes >= 0).all() and (boxes <= 640).all()


def test_out_of_range_index_raises_index_error(demo_root):
    dataset = LatentWiderFace(demo_root / "train", max_images=3)
    assert len(dataset) == 3
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(IndexError):
        dataset[-4]
    assert dataset[-1]["name"] == dataset.names[2]
    assert [s["name"] for s in dataset] == dataset.names  # iteration stops at the end


def test_nested_layout_with_labels_inside_the_latent_folder(tmp_path):
    split = tmp_path / "train"
    written = _nested_split(split, RECORDS, labels_at="latent/labels.txt")
    dataset = LatentWiderFace(split, label_frame=640)
    assert dataset.label_path == split / "latent" / "labels.txt"
    assert dataset.names == [r.name for r in RECORDS]
    for i, record in enumerate(RECORDS):
        sample = dataset[i]
        np.testing.assert_array_equal(sample["input"].numpy(), written[(record.name, 75)][0].astype(np.float32))
        np.testing.assert_allclose(sample["boxes"].numpy(), record.boxes)
        assert sample["landmarks_valid"].tolist() == record.landmarks_valid.tolist()
    assert dataset[1]["boxes"].shape == (0, 4) and dataset[1]["landmarks"].shape == (0, 5, 2), "zero faces: a sample"
    assert not dataset[2]["landmarks_valid"].any()
    assert (dataset[2]["landmarks"] == 0).all(), "faces without landmarks carry no fake points"


def test_flat_layout_with_per_image_label_files(tmp_path):
    split = tmp_path / "val"
    (split / "latent").mkdir(parents=True)
    (split / "labelstxt").mkdir()
    sizes = {"img_a": (1280, 720), "img_b": (640, 640)}
    boxes = {"img_a": [[128, 72, 256, 216]], "img_b": []}
    for i, name in enumerate(sizes):
        np.save(split / "latent" / f"{name}.npy", _latent(i, (256, 40, 40), np.float32))
        lines = [f"{x1} {y1} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in boxes[name]]
        (split / "labelstxt" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    (split / "image_sizes.csv").write_text(
        "name,width,height\n" + "".join(f"{n},{w},{h}\n" for n, (w, h) in sizes.items())
    )

    dataset = LatentWiderFace(split)
    assert dataset.layout == "flat"
    assert sorted(dataset.names) == ["img_a", "img_b"]
    sample = dataset[dataset.names.index("img_a")]
    assert sample["rate"] is None
    # 1280x720 stretched to 640x640: x halves, y scales by 640/720
    np.testing.assert_allclose(sample["boxes"].numpy(), [[64, 64, 128, 192]], atol=1e-4)
    assert sample["frame"].orig_size == (1280, 720)
    assert len(dataset[dataset.names.index("img_b")]["boxes"]) == 0


def test_latent_suffix_selects_the_rate(demo_root):
    name = read_labels(demo_root / "train" / "labels.txt")[0].basename
    for rate in (12, 100):
        dataset = LatentWiderFace(demo_root / "train", latent_suffix=f"latent_{rate}.npy", max_images=2)
        assert dataset.rates == [rate]
        stored = np.load(demo_root / "train" / "latent" / name / f"latent_{rate}.npy")
        np.testing.assert_array_equal(dataset[0]["input"].numpy(), stored[0].astype(np.float32))
    coarse = LatentWiderFace(demo_root / "train", latent_suffix="latent_12.npy", max_images=1)[0]["input"]
    fine = LatentWiderFace(demo_root / "train", latent_suffix="latent_100.npy", max_images=1)[0]["input"]
    assert len(torch.unique(coarse)) < len(torch.unique(fine)), "lower rates are quantized more coarsely"


def test_all_rates_gives_every_rate_with_the_same_boxes(demo_root):
    one = LatentWiderFace(demo_root / "train", max_images=4)
    every = LatentWiderFace(demo_root / "train", all_rates=True, max_images=4)
    assert len(every) == len(DEMO_RATES) * len(one)
    assert every.rates == list(DEMO_RATES)
    by_name: dict[str, list[dict]] = {}
    for sample in every:
        by_name.setdefault(sample["name"], []).append(sample)
    assert sorted(by_name) == sorted(one.names)
    for i, name in enumerate(one.names):
        samples = by_name[name]
        assert sorted(s["rate"] for s in samples) == list(DEMO_RATES)
        for s in samples:
            torch.testing.assert_close(s["boxes"], one[i]["boxes"])
            torch.testing.assert_close(s["landmarks"], one[i]["landmarks"])
        inputs = {s["rate"]: s["input"] for s in samples}
        assert not torch.equal(inputs[12], inputs[100])


@pytest.mark.parametrize("shape", [(1, 256, 40, 40), (256, 40, 40)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_latent_shapes_and_dtypes_are_accepted(tmp_path, shape, dtype):
    split = tmp_path / "train"
    path = split / "latent" / "0_Parade_a" / "latent_75.npy"
    path.parent.mkdir(parents=True)
    array = _latent(3, shape, dtype)
    np.save(path, array)
    write_retinaface_labels(split / "labels.txt", RECORDS[:1])
    sample = LatentWiderFace(split, label_frame=640)[0]
    assert sample["input"].dtype == torch.float32 and sample["input"].shape == (256, 40, 40)
    np.testing.assert_array_equal(sample["input"].numpy(), array.reshape(256, 40, 40).astype(np.float32))
    sample["input"].add_(1.0)  # the sample owns its memory: the file is untouched
    np.testing.assert_array_equal(np.load(path), array)


@pytest.mark.parametrize(
    ("dtype", "fortran", "plain"),
    [("<f2", False, True), ("<f4", False, True), ("<f8", False, False), ("<f4", True, False)],
)
def test_latent_files_read_exactly(tmp_path, monkeypatch, dtype, fortran, plain):
    # plain float16 / float32 files are read straight into the tensor; any other layout goes through np.load
    values = np.random.default_rng(0).standard_normal((1, 256, 6, 5)).astype(dtype)
    path = tmp_path / "latent_50.npy"
    np.save(path, np.asfortranarray(values) if fortran else values)
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(k.get("mmap_mode")) or real_load(*a, **k))
    got = load_latent(path)
    assert got.dtype == torch.float32 and got.shape == (256, 6, 5)
    np.testing.assert_array_equal(got.numpy(), values[0].astype(np.float32))
    assert calls == ([] if plain else ["r"])  # the others are memory-mapped, never read whole by numpy


def test_latent_of_integers_is_refused(tmp_path):
    path = tmp_path / "latent_50.npy"
    np.save(path, np.zeros((256, 4, 4), np.int16))
    with pytest.raises(ValueError, match=rf"^{path}: expected float16 or float32 values, got dtype int16"):
        load_latent(path)


# ---- normalization statistics ----------------------------------------------------------------------------------
def _counting_stats(monkeypatch) -> list:
    calls = []
    real = latent_module.compute_latent_stats

    def counting(paths, **kwargs):
        calls.append(kwargs.get("rate"))
        return real(paths, **kwargs)

    monkeypatch.setattr(latent_module, "compute_latent_stats", counting)
    return calls


def test_normalization_statistics_are_computed_once_and_cached_next_to_the_data(tmp_path, monkeypatch):
    split = tmp_path / "train"
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-3, 3, 256).astype(np.float32)
    scales = rng.uniform(0.5, 4, 256).astype(np.float32)
    records = [_record(f"0--Parade/0_Parade_{i}", [[10, 10, 60, 60]]) for i in range(6)]
    _nested_split(split, records, rates=(50, 75))
    for path in (split / "latent").rglob("*.npy"):  # give the channels distinct means and scales
        array = np.load(path).astype(np.float32) * scales[None, :, None, None] + offsets[None, :, None, None]
        np.save(path, array.astype(np.float16))
    calls = _counting_stats(monkeypatch)

    dataset = LatentWiderFace(split, label_frame=640, normalize=True, all_rates=True)
    assert sorted(calls) == [50, 75]
    assert (split / "latent_stats_50.npz").is_file() and (split / "latent_stats_75.npz").is_file()
    stacked = torch.stack([dataset[i]["input"] for i in range(len(dataset)) if dataset[i]["rate"] == 75])
    mean = stacked.mean(dim=(0, 2, 3))
    std = stacked.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.02 and (std - 1).abs().max() < 0.02

    again = LatentWiderFace(split, label_frame=640, normalize=True, all_rates=True)
    assert sorted(calls) == [50, 75], "the cached statistics are reused"
    torch.testing.assert_close(again[0]["input"], dataset[0]["input"])

    (split / "latent" / records[0].basename / "latent_75.npy").unlink()  # another file list: recomputed
    LatentWiderFace(split, label_frame=640, normalize=True, on_error="skip")
    assert sorted(calls) == [50, 75, 75]


def test_statistics_go_to_the_run_folder_when_the_data_is_read_only(tmp_path, monkeypatch):
    split = tmp_path / "data" / "train"
    _nested_split(split, RECORDS)
    run = tmp_path / "run"
    real_save = latent_module.LatentStats.save

    def save(self, path):
        if Path(path).parent == split:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_save(self, path)

    os.chmod(split, 0o555)
    try:
        if os.access(split, os.W_OK):  # privileged users write anyway: refuse like a read-only mount
            monkeypatch.setattr(latent_module.LatentStats, "save", save)
        calls = _counting_stats(monkeypatch)
        first = LatentWiderFace(split, label_frame=640, normalize=True, stats_dir=run)
        assert calls == [75]
        assert (run / "latent_stats_75.npz").is_file() and not (split / "latent_stats_75.npz").exists()
        second = LatentWiderFace(split, label_frame=640, normalize=True, stats_dir=run)
        assert calls == [75]
        torch.testing.assert_close(first[0]["input"], second[0]["input"])
    finally:
        os.chmod(split, 0o755)


def test_validation_split_reuses_training_statistics(demo_root, tmp_path):
    train_copy = tmp_path / "train"
    shutil.copytree(demo_root / "train", train_copy, ignore=shutil.ignore_patterns("images"))
    shutil.copy(demo_root / "image_sizes.csv", tmp_path / "image_sizes.csv")
    train = LatentWiderFace(train_copy, normalize=True, max_images=6)
    val = LatentWiderFace(demo_root / "val", normalize=True, stats=train.stats, max_images=2)
    raw = LatentWiderFace(demo_root / "val", max_images=2)[0]["input"]
    stats = train.stats[75]
    expected = (raw - torch.from_numpy(stats.mean)[:, None, None]) / torch.from_numpy(stats.std)[:, None, None]
    torch.testing.assert_close(val[0]["input"], expected)
    assert not list((demo_root / "val").glob("latent_stats_*.npz"))


# ---- flip ----------------------------------------------------------------------------------------------------
def test_flip_is_off_by_default(demo_root):
    dataset = LatentWiderFace(demo_root / "train", max_images=3)
    assert dataset.flip is False
    torch.manual_seed(0)
    for _ in range(3):
        for i in range(len(dataset)):
            stored = np.load(dataset.samples[i].path)[0].astype(np.float32)
            np.testing.assert_array_equal(dataset[i]["input"].numpy(), stored)


def test_flip_mirrors_latent_boxes_and_swaps_landmarks(tmp_path):
    split = tmp_path / "train"
    written = _nested_split(split, RECORDS)
    dataset = LatentWiderFace(split, label_frame=640, flip=True, flip_prob=1.0)
    plain = LatentWiderFace(split, label_frame=640)
    sample, ref = dataset[0], plain[0]
    np.testing.assert_array_equal(sample["input"].numpy(), written[(RECORDS[0].name, 75)][0, :, :, ::-1])
    x1, y1, x2, y2 = ref["boxes"].unbind(1)
    torch.testing.assert_close(sample["boxes"], torch.stack([640 - x2, y1, 640 - x1, y2], 1))
    # image-left eye of the mirrored face = mirrored right eye, and the landmarks keep their place in the box
    torch.testing.assert_close(sample["landmarks"][:, 0, 0], 640 - ref["landmarks"][:, 1, 0])
    box = sample["boxes"]
    fractions = (sample["landmarks"] - box[:, None, :2]) / (box[:, None, 2:] - box[:, None, :2])
    torch.testing.assert_close(fractions, torch.from_numpy(FRACTIONS).expand_as(fractions), atol=1e-5, rtol=0)
    flipped_no_landmarks = dataset[2]
    assert not flipped_no_landmarks["landmarks_valid"].any() and (flipped_no_landmarks["landmarks"] == 0).all()
    assert len(dataset[1]["boxes"]) == 0

    half = LatentWiderFace(split, label_frame=640, flip=True)
    torch.manual_seed(0)
    widths = {float(half[0]["boxes"][0, 0]) for _ in range(40)}
    assert widths == {10.0, 640.0 - 110.0}, "flip_prob 0.5 gives both orientations"


# ---- WiderFaceRGB and augmentation -----------------------------------------------------------------------------
def test_rgb_eval_samples_map_back_to_the_original(demo_root):
    dataset = WiderFaceRGB(demo_root / "val", train=False)
    labelled = {r.name: r for r in read_labels(demo_root / "val" / "labels.txt")}
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    assert len(dataset) == len(labelled)
    for i in range(min(4, len(dataset))):
        sample = dataset[i]
        record = labelled[sample["name"]]
        assert sample["input"].shape == (3, 640, 640) and sample["input"].dtype == torch.float32
        assert sample["frame"].orig_size == sizes[sample["name"]]
        back = sample["frame"].to_original(sample["boxes"].numpy())
        np.testing.assert_allclose(back, np.clip(record.boxes, 0, None), atol=0.01)
        assert sample["rate"] is None
    # BGR minus (104, 117, 123), the biubug6 input
    expected = dataset.network_image(0)[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
    np.testing.assert_allclose(dataset[0]["input"].permute(1, 2, 0).numpy(), expected, atol=1e-4)


def test_rgb_train_samples_are_augmented_squares(demo_root):
    dataset = WiderFaceRGB(demo_root / "train", train=True, max_images=6)
    torch.manual_seed(1)
    seen = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["input"].shape == (3, 640, 640) and sample["frame"] is None
        boxes = sample["boxes"]
        assert (boxes >= 0).all() and (boxes <= 640).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert len(sample["labels"]) == len(boxes) == len(sample["landmarks"]) == len(sample["landmarks_valid"])
        seen.add(tuple(sample["input"][:, 320, 320].tolist()))
    assert len(seen) > 1


def _face_scene(rng: np.random.Generator) -> tuple[np.ndarray, Annotations]:
    """Black image with white rectangular 'faces' and landmarks at `FRACTIONS` of each box."""
    width, height = int(rng.integers(500, 900)), int(rng.integers(400, 800))
    image = np.zeros((height, width, 3), np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        side = int(rng.integers(40, 120))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        box = np.array([x, y, x + side, y + int(side * 1.2)], np.float32)
        box[3] = min(box[3], height)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        boxes.append(box)
        image[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = 255
    boxes = np.stack(boxes)
    wh = boxes[:, 2:] - boxes[:, :2]
    landmarks = boxes[:, None, :2] + FRACTIONS[None] * wh[:, None]  # (N, 5, 2)
    n = len(boxes)
    return image, Annotations(boxes, np.ones(n, np.int64), landmarks.astype(np.float32), np.ones(n, bool))


def test_augmentation_keeps_boxes_and_landmarks_on_the_faces():
    """Over many random crops / distortions / mirrors / resizes: inside every output box the image is face (white),
    and landmarks keep their place in their box (a mirror without the left/right swap would move point 0 to 0.7)."""
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        image, ann = _face_scene(rng)
        out, out_ann = train_transform(image, ann, np.random.default_rng(trial), 640, (123.0, 117.0, 104.0))
        assert out.shape == (640, 640, 3)
        grey = out.astype(np.float32).mean(axis=2)
        assert len(out_ann.boxes) >= 1, "a crop keeps at least one face"
        for box, points in zip(out_ann.boxes, out_ann.landmarks):
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            assert w > 0 and h > 0
            inner = grey[
                int(y1 + 0.25 * h) : int(np.ceil(y2 - 0.25 * h)), int(x1 + 0.25 * w) : int(np.ceil(x2 - 0.25 * w))
            ]
            if inner.size:
                assert inner.mean() > 90, f"trial {trial}: box {box} is not on a face"
            clipped = x1 <= 0.5 or y1 <= 0.5 or x2 >= 639.5 or y2 >= 639.5
            if not clipped:
                np.testing.assert_allclose((points - box[:2]) / (box[2:] - box[:2]), FRACTIONS, atol=0.02)
                checked += 1
    assert checked > 30


def test_mirror_swaps_left_and_right_landmarks():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :10] = 255
    box = np.array([[20, 10, 60, 60]], np.float32)
    points = box[:, None, :2] + FRACTIONS[None] * (box[:, None, 2:] - box[:, None, :2])
    ann = Annotations(box, np.ones(1, np.int64), points.astype(np.float32), np.ones(1, bool))
    flipped, out = mirror(image, ann)
    assert flipped[:, -10:].min() == 255 and flipped[:, :10].max() == 0
    np.testing.assert_allclose(out.boxes, [[140, 10, 180, 60]])
    np.testing.assert_allclose(out.landmarks[0, 0], [200 - points[0, 1, 0], points[0, 1, 1]])
    np.testing.assert_allclose(out.landmarks[0, 3], [200 - points[0, 4, 0], points[0, 4, 1]])
    np.testing.assert_allclose(out.landmarks[0, 2], [200 - points[0, 2, 0], points[0, 2, 1]])


# ---- collate -------------------------------------------------------------------------------------------------------
def _sample(n: int, name: str, shape=(256, 40, 40)) -> dict:
    return {
        "input": torch.randn(shape),
        "boxes": torch.arange(4 * n, dtype=torch.float32).view(n, 4) + 1,  # (n, 4)
        "labels": torch.ones(n, dtype=torch.int64),
        "landmarks": torch.ones(n, 5, 2),
        "landmarks_valid": torch.ones(n, dtype=torch.bool),
        "name": name,
        "rate": 75,
        "frame": None,
    }


def test_collate_pads_to_the_largest_box_count():
    batch = detection_collate([_sample(3, "a"), _sample(0, "b"), _sample(1, "c")])
    assert batch["inputs"].shape == (3, 256, 40, 40)
    assert batch["boxes"].shape == (3, 3, 4) and batch["labels"].shape == (3, 3)
    assert batch["landmarks"].shape == (3, 3, 5, 2) and batch["landmarks_valid"].shape == (3, 3)
    assert batch["num_boxes"].tolist() == [3, 0, 1]
    assert batch["labels"].tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert batch["landmarks_valid"].tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    assert (batch["boxes"][1] == 0).all() and (batch["boxes"][2, 1:] == 0).all()
    torch.testing.assert_close(batch["boxes"][0], _sample(3, "a")["boxes"])
    assert batch["names"] == ["a", "b", "c"] and batch["rates"] == [75, 75, 75] and batch["frames"] == [None] * 3


def test_collate_of_a_batch_without_boxes():
    batch = detection_collate([_sample(0, "a"), _sample(0, "b")])
    assert batch["boxes"].shape == (2, 0, 4)
    assert batch["labels"].shape == (2, 0) and batch["landmarks"].shape == (2, 0, 5, 2)
    assert batch["landmarks_valid"].shape == (2, 0) and batch["num_boxes"].tolist() == [0, 0]


def test_collate_rejects_mixed_shapes_and_empty_batches():
    with pytest.raises(ValueError, match=r"different shapes.*a \[256, 40, 40\].*b \[256, 30, 40\]"):
        detection_collate([_sample(1, "a"), _sample(1, "b", (256, 30, 40))])
    with pytest.raises(ValueError, match="empty batch"):
        detection_collate([])


# ---- factories -----------------------------------------------------------------------------------------------------
def test_build_dataloaders_for_a_latent_preset(demo_root, tmp_path):
    cfg = get_preset(
        "latent-r18",
        **{
            "data.dataset_root": str(demo_root),
            "data.num_workers": 2,
            "data.max_images": 8,
            "train.batch_size": 4,
            "eval.batch_size": 3,
            "train.out": str(tmp_path / "runs"),
        },
    )
    train_loader, val_loader = build_dataloaders(cfg)
    assert isinstance(train_loader.dataset, LatentWiderFace) and isinstance(val_loader.dataset, LatentWiderFace)
    assert train_loader.num_workers == 2 and train_loader.persistent_workers
    assert train_loader.collate_fn is detection_collate
    names = []
    for batch in train_loader:
        assert batch["inputs"].shape[1:] == (256, 40, 40)
        assert batch["boxes"].shape[:2] == batch["labels"].shape
        names += batch["names"]
    assert sorted(names) == sorted(train_loader.dataset.names) and len(names) == 8
    batch = next(iter(val_loader))
    assert batch["inputs"].shape == (3, 256, 40, 40) and all(f is not None for f in batch["frames"])
    assert train_loader.dataset.flip is False and val_loader.dataset.flip is False

    flip_cfg = cfg.replace(**{"data.latent_flip": True, "data.num_workers": 0})
    assert build_dataset(flip_cfg, "train", train=True).flip is True
    assert build_dataset(flip_cfg, "val", train=False).flip is False


def test_build_dataset_for_an_rgb_preset(demo_root):
    cfg = get_preset("mnet-biubug6", **{"data.dataset_root": str(demo_root), "data.max_images": 3})
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    assert isinstance(train, WiderFaceRGB) and isinstance(val, WiderFaceRGB)
    assert len(train) == len(val) == 3
    side = cfg.data.image_size
    assert train[0]["input"].shape == (3, side, side) and val[0]["input"].shape == (3, side, side)
    assert val[0]["frame"] is not None and train[0]["frame"] is None
    with pytest.raises(FileNotFoundError, match="nope"):
        build_dataset(cfg, "nope", train=False)


def test_latent_crop_windows_the_latent_and_moves_the_faces_with_it(demo_root):
    whole = LatentWiderFace(demo_root / "train", max_images=6)
    cropped = LatentWiderFace(demo_root / "train", max_images=6, crop=16)
    torch.manual_seed(0)
    for i in range(len(whole)):
        full, sample = whole[i], cropped[i]
        assert sample["input"].shape == (256, 16, 16) and sample["frame"] is None
        # find the window: the crop is grid-aligned, so it equals exactly one slice of the whole latent
        windows = full["input"].unfold(1, 16, 1).unfold(2, 16, 1)  # (C, 25, 25, 16, 16)
        match = (windows == sample["input"][:, None, None]).flatten(3).all(-1).all(0).nonzero()  # (1, 2)
        assert len(match) == 1
        y0, x0 = (int(v) * 16 for v in match[0])
        centres = (full["boxes"][:, :2] + full["boxes"][:, 2:]) / 2  # (N, 2)
        inside = ((centres >= torch.tensor([x0, y0])) & (centres < torch.tensor([x0, y0]) + 256)).all(1)
        shifted = (full["boxes"][inside] - torch.tensor([x0, y0, x0, y0])).clamp(0, 256)  # (K, 4)
        torch.testing.assert_close(sample["boxes"], shifted)
        assert torch.equal(sample["labels"], full["labels"][inside])
        if len(full["boxes"]):
            assert len(sample["boxes"]) >= 1  # windows holding a face are preferred
    cfg = get_preset("latent-r18", **{"data.dataset_root": str(demo_root), "data.latent_crop": 16})
    assert build_dataset(cfg, "train", train=True).crop == 16
    assert build_dataset(cfg, "val", train=False).crop is None  # evaluation always sees whole latents


def test_latent_whose_header_promises_more_than_the_file_holds(tmp_path):
    # a corrupt header must not make the reader allocate what it promises: the file size is checked first
    path = tmp_path / "latent_50.npy"
    np.save(path, np.zeros((256, 4, 4), np.float32))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"'shape': (256, 4, 4), }  ", b"'shape': (256, 400, 4), }", 1))  # same length
    promised = 256 * 400 * 4 * 4
    with pytest.raises(
        ValueError,
        match=rf"^{path}: unreadable or truncated \.npy file \(16384 data bytes, the header promises {promised}\)",
    ):
        load_latent(path)


def test_label_files_given_in_the_config_are_used(demo_root, tmp_path):
    root = tmp_path / "bb"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / split / "images").symlink_to(demo_root / split / "images")
        shutil.copy(demo_root / split / "labels.txt", root / split / "labels.txt")  # found in the folder: all images
    for split, name, count in (("train", "wider_train_gt.txt", 3), ("val", "gt.txt", 2)):  # a subset: not labels.txt
        blocks = (demo_root / split / "labels.txt").read_text().split("# ")[1:]
        (root / split / name).write_text("".join("# " + b for b in blocks[:count]))
    cfg = get_preset("mnet-biubug6", **{"data.dataset_root": str(root)})
    given = cfg.replace(**{"data.train_labels": str(root / "train" / "wider_train_gt.txt")})
    given = given.replace(**{"data.val_labels": str(root / "val" / "gt.txt")})
    assert len(build_dataset(cfg, "train", train=True)) == 24
    train = build_dataset(given, "train", train=True)
    assert train.label_path == root / "train" / "wider_train_gt.txt" and len(train) == 3
    assert len(build_dataset(given, "val", train=False)) == 2
    assert len(build_dataset(given, "train", train=False)) == 3  # the split decides, not the mode
    missing = cfg.replace(**{"data.train_labels": str(root / "train" / "nope.txt")})
    with pytest.raises(FileNotFoundError, match=r"data\.train_labels.*nope\.txt"):
        build_dataset(missing, "train", train=True)


def test_rgb_dataset_on_latent_only_data_hints_at_latent_input(demo_root, tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    (split / "latent").symlink_to(demo_root / "train" / "latent")
    shutil.copy(demo_root / "train" / "labels.txt", split / "labels.txt")
    with pytest.raises(FileNotFoundError, match="images not found.*use_latent"):
        WiderFaceRGB(split)
