"""Data validation: every defect kind of `nbsrc.data.defects.KINDS` is built as a broken file and gives a clear
error (file, line or key, what was expected) under ``on_error="raise"``, is reported and counted under ``"skip"``,
and shows up in ``python -m nbsrc check-data``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from nbsrc.data.defects import KINDS, DataError, DefectLog
from nbsrc.data.label_frame import LabelFrameError
from nbsrc.data.latent_dataset import LatentWiderFace
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.records import ImageRecord
from nbsrc.data.rgb_dataset import WiderFaceRGB
from nbsrc.data.split_index import read_labels_checked
from nbsrc.data.validate import validate_dataset
from nbsrc.latents import load_latent

ROOT = Path(__file__).resolve().parents[1]
SIZE = (320, 240)  # original images (width, height)
NAMES = ("0--Parade/0_Parade_a", "0--Parade/0_Parade_b", "12--Group/12_Group_c")


def _records() -> list[ImageRecord]:
    def faces(boxes):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        points = boxes[:, None, :2] + np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * (
            boxes[:, None, 2:] - boxes[:, None, :2]
        )
        return dict(boxes=boxes, landmarks=points, landmarks_valid=np.ones(len(boxes), bool))

    return [
        ImageRecord(NAMES[0], **faces([[10, 20, 60, 80], [200, 100, 240, 150]])),
        ImageRecord(NAMES[1], **faces([[100, 50, 150, 110]])),
        ImageRecord(NAMES[2], **faces([])),
    ]


def make_split(root: Path, *, rates=(50, 75)) -> Path:
    """A clean nested split: labels.txt, images/ (320x240 JPEGs), latent/<basename>/latent_<rate>.npy."""
    split = root / "train"
    rng = np.random.default_rng(0)
    for name in NAMES:
        image = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        path = split / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        for rate in rates:
            latent = split / "latent" / name.split("/")[1] / f"latent_{rate}.npy"
            latent.parent.mkdir(parents=True, exist_ok=True)
            np.save(latent, rng.standard_normal((1, 256, 40, 40)).astype(np.float16))
    write_retinaface_labels(split / "labels.txt", _records())
    return split


def line_of(path: Path, text: str) -> int:
    """1-based number of the first line of `path` starting with `text`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(text):
            return number
    raise AssertionError(f"{text!r} not in {path}")


def replace_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def latent_path(split: Path, index: int, rate: int = 75) -> Path:
    return split / "latent" / NAMES[index].split("/")[1] / f"latent_{rate}.npy"


def assert_skip_reports(split: Path, kind: str, caplog, *, dataset=LatentWiderFace, **kwargs) -> object:
    """Under ``skip`` the dataset builds, the defect is in its log and a warning names the kind."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nbsrc"):
        built = dataset(split, on_error="skip", **kwargs)
    assert built.log.of_kind(kind), f"{kind} not recorded under skip: {built.log.summary()}"
    assert kind in caplog.text, f"no summary naming {kind} was logged"
    return built


def assert_reported(split: Path, kind: str, fragment: str, **kwargs) -> None:
    """`validate_dataset` (check-data) lists the defect."""
    report = validate_dataset(split.parent, **kwargs)
    found = [d for d in report.defects if d.kind == kind]
    assert found, f"check-data missed {kind}: {report.to_text()}"
    assert fragment in str(found[0]), str(found[0])
    if kind != "degenerate_box":
        assert not report.ok


# ---- the clean split -----------------------------------------------------------------------------------------
def test_clean_split_has_no_defect(tmp_path):
    split = make_split(tmp_path)
    report = validate_dataset(tmp_path)
    assert report.ok and report.defects == [], report.to_text()
    assert len(LatentWiderFace(split)) == 3 and len(WiderFaceRGB(split, train=False)) == 3


def test_on_error_must_be_known():
    with pytest.raises(ValueError, match=r"on_error must be one of \['raise', 'skip', 'report'\], got 'ignore'"):
        DefectLog("ignore")


# ---- latents --------------------------------------------------------------------------------------------------
def test_missing_latent(tmp_path, caplog):
    split = make_split(tmp_path)
    for rate in (50, 75):
        latent_path(split, 1, rate).unlink()
    latent_path(split, 1).parent.rmdir()
    header = line_of(split / "labels.txt", f"# {NAMES[1]}")
    with pytest.raises(DataError) as info:
        LatentWiderFace(split)
    message = str(info.value)
    assert message.startswith(f"{split / 'labels.txt'}:{header}: no latent for '{NAMES[1]}'")
    assert f"expected {latent_path(split, 1)}" in message
    dataset = assert_skip_reports(split, "missing_latent", caplog)
    assert NAMES[1] not in dataset.names and len(dataset) == 2
    assert_reported(split, "missing_latent", f"{split / 'labels.txt'}:{header}")


def test_missing_rate_file(tmp_path, caplog):
    split = make_split(tmp_path)
    latent_path(split, 0, 75).unlink()  # latent_50.npy stays
    with pytest.raises(
        DataError, match=r"labels.txt:1: '0--Parade/0_Parade_a' has a latent folder .* but no latent_75"
    ):
        LatentWiderFace(split)
    assert len(LatentWiderFace(split, latent_suffix="latent_50.npy")) == 3
    dataset = assert_skip_reports(split, "missing_latent", caplog)
    assert dataset.names == [NAMES[1], NAMES[2]]
    every = LatentWiderFace(split, all_rates=True)
    assert sorted((s.name, s.rate) for s in every.samples).count((NAMES[0], 50)) == 1
    assert (NAMES[0], 75) not in {(s.name, s.rate) for s in every.samples}
    assert_reported(split, "missing_latent", "no latent_75.npy")


def test_latent_without_labels(tmp_path, caplog):
    split = make_split(tmp_path)
    stray = split / "latent" / "0_Parade_unlabelled" / "latent_75.npy"
    stray.parent.mkdir()
    np.save(stray, np.zeros((1, 256, 40, 40), np.float16))
    with pytest.raises(
        DataError, match=rf"^{stray}: latent of '0_Parade_unlabelled', which has no entry in the labels"
    ):
        LatentWiderFace(split)
    dataset = assert_skip_reports(split, "latent_without_labels", caplog)
    assert len(dataset) == 3
    assert_reported(split, "latent_without_labels", str(stray))


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_unreadable_or_truncated_latent(tmp_path, caplog, how):
    split = make_split(tmp_path)
    path = latent_path(split, 0)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"this is not an array" * 10, "truncated": data[: len(data) // 2], "empty": b""}[how])
    expected = "truncated .npy file: .* data bytes, the header promises 819200" if how == "truncated" else "unreadable"
    with pytest.raises(DataError, match=rf"^{path}: {expected}"):
        LatentWiderFace(split)
    dataset = assert_skip_reports(split, "unreadable_latent", caplog)
    assert NAMES[0] not in dataset.names
    with pytest.raises(ValueError, match=rf"^{path}: unreadable or truncated \.npy file"):
        load_latent(path)
    assert_reported(split, "unreadable_latent", str(path))


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 128, 40, 40), r"shape \[1, 128, 40, 40\] \(expected \[256, h, w\] or \[1, 256, h, w\]\)"),
        ((256, 1600), r"shape \[256, 1600\] \(expected \[256, h, w\] or \[1, 256, h, w\]\)"),
        ((2, 256, 40, 40), r"shape \[2, 256, 40, 40\] \(expected"),
    ],
)
def test_latent_of_the_wrong_shape(tmp_path, caplog, shape, expected):
    split = make_split(tmp_path)
    path = latent_path(split, 2)
    np.save(path, np.zeros(shape, np.float16))
    with pytest.raises(DataError, match=rf"^{path}: {expected}"):
        LatentWiderFace(split)
    assert_skip_reports(split, "bad_shape", caplog)
    assert_reported(split, "bad_shape", str(path))


def test_latent_of_another_spatial_size(tmp_path, caplog):
    split = make_split(tmp_path)
    path = latent_path(split, 1)
    np.save(path, np.zeros((1, 256, 30, 40), np.float16))
    with pytest.raises(
        DataError, match=rf"^{path}: shape \[1, 256, 30, 40\]: spatial size 30x40 differs from the expected 40x40"
    ):
        LatentWiderFace(split, spatial=(40, 40))
    assert_skip_reports(split, "bad_shape", caplog, spatial=(40, 40))
    assert_reported(split, "bad_shape", "differs from the expected 40x40")


def test_latent_of_the_wrong_dtype(tmp_path, caplog):
    split = make_split(tmp_path)
    path = latent_path(split, 0)
    np.save(path, np.zeros((1, 256, 40, 40), np.int16))
    with pytest.raises(DataError, match=rf"^{path}: dtype int16 \(expected float16 or float32\)"):
        LatentWiderFace(split)
    assert_skip_reports(split, "bad_dtype", caplog)
    assert_reported(split, "bad_dtype", "dtype int16")


def test_latent_with_nan_or_inf(tmp_path, caplog):
    split = make_split(tmp_path)
    path = latent_path(split, 1)
    array = np.zeros((1, 256, 40, 40), np.float16)
    array[0, 3, 4, 5] = np.nan
    array[0, 7, 1, 1] = np.inf
    np.save(path, array)
    with pytest.raises(DataError, match=rf"^{path}: 2 NaN/Inf values in the latent \(set data.on_error=skip"):
        LatentWiderFace(split)  # the values are checked when the split is indexed
    dataset = assert_skip_reports(split, "non_finite", caplog)
    assert NAMES[1] not in dataset.names  # left out, counted, never replaced
    with pytest.raises(ValueError, match=rf"^{path}: 2 NaN/Inf values in the latent"):
        load_latent(path)
    assert_reported(split, "non_finite", f"{path}: 2 NaN/Inf values")


# ---- labels ------------------------------------------------------------------------------------------------------
def test_box_outside_the_image(tmp_path, caplog):
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    replace_line(labels, line_of(labels, "100 50 50 60"), "300 50 50 60")  # the face of 0_Parade_b: x2 = 350 > 320
    number = line_of(labels, "300 50 50 60")  # box defects name the box's own line and the face index
    with pytest.raises(
        DataError,
        match=rf"^{labels}:{number}: face 0 of '{NAMES[1]}': box \(300, 50, 350, 110\) reaches outside the 320x240 image",
    ):
        LatentWiderFace(split)
    dataset = assert_skip_reports(split, "box_outside_frame", caplog)
    assert len(dataset[dataset.names.index(NAMES[1])]["boxes"]) == 0  # the box is left out, the image stays
    assert_reported(split, "box_outside_frame", f"{labels}:{number}")


def test_degenerate_boxes_are_dropped_and_counted(tmp_path, caplog):
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    number = line_of(labels, "200 100 40 50")
    replace_line(labels, number, "200 100 0 50")  # second face of 0_Parade_a: w = 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nbsrc"):
        dataset = LatentWiderFace(split)  # dropped even under raise, never silently
    assert len(dataset[0]["boxes"]) == 1
    [defect] = dataset.log.of_kind("degenerate_box")
    assert str(defect).startswith(f"{labels}:{number}: face 1 of '{NAMES[0]}': degenerate box (200, 100, 200, 150)")
    assert "expected w > 0 and h > 0" in str(defect)
    assert "1 degenerate_box" in caplog.text
    skipping = assert_skip_reports(split, "degenerate_box", caplog)
    assert len(skipping[0]["boxes"]) == 1
    rgb = WiderFaceRGB(split, train=False)
    assert len(rgb[0]["boxes"]) == 1 and rgb.log.of_kind("degenerate_box")
    assert_reported(split, "degenerate_box", f"{labels}:{number}")
    assert validate_dataset(tmp_path).ok, "dropped degenerate boxes alone do not stop training"


def test_duplicated_image_name(tmp_path, caplog):
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    text = labels.read_text()
    labels.write_text(text + f"# {NAMES[1]}.jpg\n1 2 3 4\n")
    first = line_of(labels, f"# {NAMES[1]}")
    again = len(text.splitlines()) + 1
    with pytest.raises(DataError, match=rf"^{labels}:{again}: image '{NAMES[1]}' already listed at {labels}:{first}"):
        LatentWiderFace(split)
    dataset = assert_skip_reports(split, "duplicate_name", caplog)
    assert dataset.names.count(NAMES[1]) == 1
    assert len(dataset[dataset.names.index(NAMES[1])]["boxes"]) == 1  # the first entry is kept
    assert_reported(split, "duplicate_name", f"{labels}:{again}")


def test_same_basename_in_two_events(tmp_path, caplog):
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    labels.write_text(labels.read_text() + "# 2--Demonstration/0_Parade_a.jpg\n")
    with pytest.raises(DataError, match=r"basename '0_Parade_a' of '2--Demonstration/0_Parade_a' is also used by"):
        LatentWiderFace(split)
    assert_skip_reports(split, "duplicate_name", caplog)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("10 20 abc 40", "abc"),
        ("10 20 30", "3"),
        ("10 20 30 40 50 60", "6"),
    ],
)
def test_unparseable_label_line(tmp_path, caplog, bad, reason):
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    number = line_of(labels, "100 50 50 60")
    replace_line(labels, number, bad)
    with pytest.raises(DataError) as info:
        LatentWiderFace(split)
    message = str(info.value)
    assert message.startswith(f"{labels}:{number}: "), message
    assert reason in message and "4 numbers" in message and "20 numbers" in message, message
    dataset = assert_skip_reports(split, "unparseable_line", caplog)
    assert len(dataset[dataset.names.index(NAMES[1])]["boxes"]) == 0  # the line is left out, the image stays
    assert_reported(split, "unparseable_line", f"{labels}:{number}")


@pytest.mark.parametrize("header", ["# ../../../0_Parade_b.jpg", "# /tmp/0_Parade_b.jpg"])
def test_image_name_leaving_the_dataset_is_reported(tmp_path, caplog, header):
    """A header with '..' or an absolute path would make predict write outside --out: raise / skip / check-data."""
    split = make_split(tmp_path)
    labels = split / "labels.txt"
    number = line_of(labels, f"# {NAMES[1]}")
    replace_line(labels, number, header)
    with pytest.raises(DataError) as info:
        LatentWiderFace(split)
    assert str(info.value).startswith(f"{labels}:{number}: image name "), str(info.value)
    dataset = assert_skip_reports(split, "unparseable_line", caplog)
    assert NAMES[1] not in dataset.names and all(".." not in n and not n.startswith("/") for n in dataset.names)
    assert_reported(split, "unparseable_line", f"{labels}:{number}: image name")
    report = validate_dataset(tmp_path)
    assert any(d.line == number + 1 and "rejected header" in d.message for d in report.defects), report.to_text()


def test_labels_whose_frame_cannot_be_determined(tmp_path, caplog):
    split = make_split(tmp_path)
    images = split / "images"
    images.rename(tmp_path / "elsewhere")
    with pytest.raises(LabelFrameError) as info:
        LatentWiderFace(split)
    message = str(info.value)
    assert message.startswith(f"{split / 'labels.txt'}:1: cannot map the labels of '{NAMES[0]}'")
    assert "original image size is unknown" in message
    assert "name,width,height" in message and "images" in message and "label_frame=640" in message
    dataset = assert_skip_reports(split, "unknown_frame", caplog)
    assert len(dataset) == 0 and len(dataset.log.of_kind("unknown_frame")) == 3, "no guessing, even without faces"
    assert str(dataset.log.defects[0]).startswith(f"{split / 'labels.txt'}:1: cannot map the labels of")
    assert len(LatentWiderFace(split, images_dir=tmp_path / "elsewhere")) == 3
    assert_reported(split, "unknown_frame", "a sizes CSV (name,width,height)")


def test_missing_labels(tmp_path):
    split = make_split(tmp_path)
    (split / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no label file found; looked for .*labels.txt.*labelstxt"):
        LatentWiderFace(split)
    assert_reported(split, "missing_labels", "no label file found")


# ---- images --------------------------------------------------------------------------------------------------------
def test_missing_image(tmp_path, caplog):
    split = make_split(tmp_path)
    (split / "images" / f"{NAMES[2]}.jpg").unlink()
    header = line_of(split / "labels.txt", f"# {NAMES[2]}")
    with pytest.raises(DataError, match=rf"^{split / 'labels.txt'}:{header}: no image file for '{NAMES[2]}'"):
        WiderFaceRGB(split, train=False)
    dataset = assert_skip_reports(split, "missing_image", caplog, dataset=WiderFaceRGB, train=False)
    assert NAMES[2] not in dataset.names and len(dataset) == 2
    assert_reported(split, "missing_image", f"expected {split / 'images' / NAMES[2]}.jpg")


def test_unreadable_image(tmp_path, caplog):
    split = make_split(tmp_path)
    path = split / "images" / f"{NAMES[1]}.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=rf"^{path}: not a readable image"):
        WiderFaceRGB(split, train=False)
    dataset = assert_skip_reports(split, "unreadable_image", caplog, dataset=WiderFaceRGB, train=False)
    assert NAMES[1] not in dataset.names
    assert_reported(split, "unreadable_image", str(path))
    with pytest.raises(LabelFrameError, match=rf"its image gave no size \({path}: not a readable image"):
        LatentWiderFace(split)  # the latent needs the original size the image cannot give


def test_every_kind_has_a_test():
    source = Path(__file__).read_text()
    missing = [kind for kind in KINDS if f'assert_reported(split, "{kind}"' not in source]
    assert not missing, f"defect kinds without a test: {missing}"


# ---- check-data CLI ----------------------------------------------------------------------------------------------
def _check_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbsrc", "check-data", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_check_data_cli_on_the_demo(demo_root):
    result = _check_data(str(demo_root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no defects" in result.stdout
    assert "train: images 24, boxes" in result.stdout and "latent_hw 40x40" in result.stdout
    assert "label frame of train: original" in result.stdout


def test_check_data_cli_on_broken_data(tmp_path):
    split = make_split(tmp_path)
    latent_path(split, 0).write_bytes(b"broken")
    labels = split / "labels.txt"
    number = line_of(labels, "100 50 50 60")
    replace_line(labels, number, "10 20 abc 40")
    (split / "images" / f"{NAMES[2]}.jpg").unlink()
    result = _check_data(str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"{latent_path(split, 0)}: [unreadable_latent]" in out
    assert f"{labels}:{number}: [unparseable_line]" in out
    assert "[missing_image]" in out and f"{NAMES[2]}" in out
    assert "defects: 1 missing_image, 1 unparseable_line, 1 unreadable_latent" in out


def test_repeated_two_class_header_is_reported_and_merged(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("# a.jpg\n1 0.1 0.1 0.2 0.2\n# b.jpg\n2 0.3 0.3 0.4 0.4\n# a.jpg\n2 0.5 0.5 0.1 0.1\n")
    log = DefectLog("raise")
    records = read_labels_checked(labels, log)
    assert [r.name for r in records] == ["a", "b"]
    assert len(records[0].boxes) == 2  # the repeat's boxes are merged into the first record
    [defect] = log.of_kind("duplicate_name")
    assert str(defect).startswith(f"{labels}:5: image 'a' has another header at {labels}:1; boxes merged")
