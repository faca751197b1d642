"""The demo dataset: deterministic for a seed, the retina-modify layout, readable ground truth, sizes that match
the images, and a default build in under a minute."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nbsrc.cli import main
from nbsrc.data import demo
from nbsrc.data.demo import DEMO_RATES, EASY_MIN_HEIGHT, MEDIUM_MIN_HEIGHT, QUANT_STEPS, make_demo_data
from nbsrc.data.image_sizes import read_image_size, read_sizes_csv
from nbsrc.data.readers import read_labels
from nbsrc.data.readers.twoclass import read_twoclass_labels
from nbsrc.data.readers.wider_mat import GT_FILES, read_wider_gt
from nbsrc.data.records import FACE, PERSON
from nbsrc.data.validate import validate_dataset
from nbsrc.frame import FrameMap

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUILD_LIMIT_S = 60.0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes(tmp_path):
    first = make_demo_data(tmp_path / "a", images=3, val_images=2, seed=7)
    time.sleep(1.1)  # a clock in any file (e.g. a .mat header) would now differ
    second = make_demo_data(tmp_path / "b", images=3, val_images=2, seed=7)
    files_a, files_b = _files(first), _files(second)
    assert sorted(files_a) == sorted(files_b)
    assert len([f for f in files_a if f.endswith(".npy")]) == 5 * len(DEMO_RATES)
    different = [name for name in files_a if files_a[name] != files_b[name]]
    assert not different, f"files differ between two builds with the same seed: {different[:5]}"

    other = make_demo_data(tmp_path / "c", images=3, val_images=2, seed=8)
    assert _files(other)["train/labels.txt"] != files_a["train/labels.txt"], "another seed gives other scenes"


def test_demo_fixture_matches_a_fresh_build(demo_root, tmp_path):
    """The session fixture (24 images, seed 0) is rebuilt identically: arrays and labels."""
    again = make_demo_data(tmp_path / "again", images=24, seed=0)
    for split in ("train", "val"):
        assert (again / split / "labels.txt").read_text() == (demo_root / split / "labels.txt").read_text()
    for path in sorted((demo_root / "val" / "latent").rglob("*.npy"))[:10]:
        np.testing.assert_array_equal(np.load(path), np.load(again / path.relative_to(demo_root)))


def test_layout(demo_root):
    assert (demo_root / "image_sizes.csv").is_file()
    for split, count in (("train", 24), ("val", 8)):
        folder = demo_root / split
        records = read_labels(folder / "labels.txt")
        assert len(records) == count
        latent_dirs = sorted(p.name for p in (folder / "latent").iterdir())
        assert latent_dirs == sorted(r.basename for r in records)
        for record in records:
            event, basename = record.name.split("/")
            assert (folder / "images" / event / f"{basename}.jpg").is_file()
            rates = sorted(p.name for p in (folder / "latent" / basename).iterdir())
            assert rates == sorted(f"latent_{r}.npy" for r in DEMO_RATES)
        latent = np.load(folder / "latent" / records[0].basename / "latent_75.npy", mmap_mode="r")
        assert latent.shape == (1, 256, 40, 40) and latent.dtype == np.float16
        assert (folder / "labels_2cls.txt").is_file()
    assert sorted(p.name for p in (demo_root / "val" / "ground_truth").iterdir()) == sorted(GT_FILES)
    header = (demo_root / "train" / "labels.txt").read_text().splitlines()[0]
    assert header.startswith("# ") and header.endswith(".jpg")


def test_labels_carry_landmarks_in_original_pixels(demo_root):
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    records = read_labels(demo_root / "train" / "labels.txt")
    faces = sum(r.num_boxes for r in records)
    valid = sum(int(r.landmarks_valid.sum()) for r in records)
    assert faces > 24 and 0.7 * faces <= valid < faces, "most faces have 5 landmarks, some small ones none"
    net_heights = []
    for record in records:
        w, h = sizes[record.name]
        assert record.image_size is None or tuple(record.image_size) == (w, h)
        b = record.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        points = record.landmarks[record.landmarks_valid]  # (V, 5, 2)
        boxes = b[record.landmarks_valid]
        assert (points >= boxes[:, None, :2] - 1).all() and (points <= boxes[:, None, 2:] + 1).all()
        assert (record.landmarks[~record.landmarks_valid] == 0).all()
        if record.num_boxes:
            net = FrameMap((w, h), (640, 640)).to_net(b)
            net_heights += list(net[:, 3] - net[:, 1])
    assert max(max(r.boxes[:, 2].max() for r in records if r.num_boxes), 0) > 640, "original pixels, not 640"
    net_heights = np.asarray(net_heights)
    assert (net_heights < 32).mean() > 0.1 and (net_heights > 96).any(), "WIDER-like sizes, many under 32 px"


def test_sizes_csv_matches_the_images(demo_root):
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    names = [r.name for s in ("train", "val") for r in read_labels(demo_root / s / "labels.txt")]
    assert sorted(sizes) == sorted(names)
    assert len({sizes[n] for n in names}) > 1 and any(w != h for w, h in sizes.values())
    for split in ("train", "val"):
        for path in sorted((demo_root / split / "images").rglob("*.jpg")):
            name = path.relative_to(demo_root / split / "images").with_suffix("").as_posix()
            assert read_image_size(path) == sizes[name], name


def test_ground_truth_mat_files_read_back(demo_root):
    gt = read_wider_gt(demo_root / "val" / "ground_truth")
    records = {r.name: r for r in read_labels(demo_root / "val" / "labels.txt")}
    seen = set()
    for e, event in enumerate(gt.events):
        for j, basename in enumerate(gt.names[e]):
            record = records[f"{event}/{basename}"]
            seen.add(record.name)
            xywh = np.asarray(gt.boxes[e][j], np.float64).reshape(-1, 4)
            expected = np.concatenate([record.boxes[:, :2], record.boxes[:, 2:] - record.boxes[:, :2]], axis=1)
            np.testing.assert_allclose(xywh, np.rint(expected))
            heights = xywh[:, 3]
            easy, medium, hard = (
                set(np.asarray(gt.keep[s][e][j]).ravel().tolist()) for s in ("easy", "medium", "hard")
            )
            assert hard == set(range(1, len(heights) + 1))
            assert easy == {i + 1 for i in np.flatnonzero(heights >= EASY_MIN_HEIGHT)}
            assert medium == {i + 1 for i in np.flatnonzero(heights >= MEDIUM_MIN_HEIGHT)}
            assert easy <= medium <= hard
    assert seen == set(records)
    assert [int(e.split("--")[0]) for e in gt.events] == sorted(int(e.split("--")[0]) for e in gt.events)


def test_twoclass_labels_put_a_person_under_each_face(demo_root):
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    faces = {r.basename: r for r in read_labels(demo_root / "val" / "labels.txt")}
    twoclass = read_twoclass_labels(demo_root / "val" / "labels_2cls.txt")
    assert not twoclass.duplicates and len(twoclass) == len(faces)
    for record in twoclass:
        face = faces[record.name]
        w, h = sizes[face.name]
        assert record.normalized
        face_boxes = record.boxes[record.labels == FACE] * np.array([w, h, w, h], np.float32)
        persons = record.boxes[record.labels == PERSON] * np.array([w, h, w, h], np.float32)
        assert len(face_boxes) == len(persons) == face.num_boxes
        np.testing.assert_allclose(face_boxes, face.boxes, atol=0.6)
        for f, p in zip(face_boxes, persons):
            centre = (f[0] + f[2]) / 2
            assert p[0] <= centre <= p[2] and p[1] <= f[1] + 1 and p[3] > f[3], "person box holds and extends below"


def test_latents_quantize_one_encoding_more_coarsely_at_lower_rates(demo_root):
    folder = demo_root / "train" / "latent" / read_labels(demo_root / "train" / "labels.txt")[0].basename
    latents = {r: np.load(folder / f"latent_{r}.npy")[0].astype(np.float32) for r in DEMO_RATES}
    uniques = [len(np.unique(latents[r])) for r in DEMO_RATES]
    assert uniques == sorted(uniques) and uniques[0] < uniques[-1]
    for rate in DEMO_RATES:
        step = QUANT_STEPS[rate]
        assert np.allclose(latents[rate] / step, np.round(latents[rate] / step), atol=0.02)  # on the rate's grid
        gap = np.abs(latents[rate] - latents[100]).max()
        assert gap <= step / 2 + QUANT_STEPS[100] / 2 + 0.02, f"rate {rate} is not a quantization of one latent"
    assert 0.3 < latents[100].std() < 3.0 and np.isfinite(latents[100]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="images must be >= 1"):
        make_demo_data("/nonexistent-never-created", images=0)
    with pytest.raises(ValueError, match="val_images must be >= 1"):
        make_demo_data("/nonexistent-never-created", images=2, val_images=0)


def test_default_build_with_the_cli_takes_under_a_minute(tmp_path):
    """The default build (160 + 40 images, ~0.8 GB of latents) takes under a minute of one core. The limit is on
    the CPU time of the command (user + system, load-independent: the build is single-threaded); the wall time
    on a busy shared machine can be longer and is only reported."""
    out = tmp_path / "demo"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "nbsrc", "make-demo-data", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        assert result.returncode == 0, result.stderr
        assert f"demo dataset written to {out}" in result.stdout
        assert len(read_labels(out / "train" / "labels.txt")) == 160
        assert len(read_labels(out / "val" / "labels.txt")) == 40
        assert len(list((out / "train" / "latent").glob("*/latent_*.npy"))) == 160 * len(DEMO_RATES)
        assert cpu < DEMO_BUILD_LIMIT_S, f"the default demo build took {cpu:.1f} s of CPU ({wall:.1f} s wall)"
    finally:
        shutil.rmtree(out, ignore_errors=True)  # ~0.8 GB of latents


def test_refuses_a_folder_that_is_not_a_demo_dataset(tmp_path, capsys):
    """Someone's own data is never overwritten: a clear error, every file as it was."""
    real = tmp_path / "real"
    (real / "train").mkdir(parents=True)
    (real / "train" / "labels.txt").write_text("# mine/a.jpg\n")
    (real / "README.txt").write_text("my data\n")
    with pytest.raises(ValueError, match=r"real is not empty and is not a demo dataset built by make-demo-data"):
        make_demo_data(real, images=1, val_images=1)
    assert main(["make-demo-data", str(real), "--images", "1", "--val-images", "1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.relative_to(real).as_posix() for p in real.rglob("*")) == [
        "README.txt",
        "train",
        "train/labels.txt",
    ]
    assert (real / "train" / "labels.txt").read_text() == "# mine/a.jpg\n"
    with pytest.raises(ValueError, match="is a file"):
        make_demo_data(real / "README.txt", images=1, val_images=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]  # no temporary folder left


def test_rebuild_replaces_the_demo_dataset_whole(tmp_path, monkeypatch):
    empty = tmp_path / "demo"
    empty.mkdir()  # an empty folder is fine
    root = make_demo_data(empty, images=3, val_images=2)
    assert (root / demo.DEMO_MARKER).is_file() and len(list((root / "train" / "latent").iterdir())) == 3
    assert demo.demo_dataset(1, root=root) == root.resolve()  # a marked demo dataset is reused as it is
    assert len(list((root / "train" / "latent").iterdir())) == 3
    make_demo_data(root, images=1, val_images=1)
    assert len(list((root / "train" / "latent").iterdir())) == 1  # no stale latents of the first build
    assert validate_dataset(root).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_write_ground_truth", broken)
    before = _files(root)
    with pytest.raises(RuntimeError, match="disk full"):
        make_demo_data(root, images=2, val_images=1)
    assert _files(root) == before  # a failed rebuild leaves the old dataset as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
