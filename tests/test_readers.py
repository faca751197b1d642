"""Label readers: the real files parse exactly, synthetic files cover every layout and trap, round trips are
exact, and every malformed input raises a ValueError naming the file and the line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import shared_path

from nbsrc.data.readers import (
    LabelParseError,
    detect_format,
    drop_degenerate,
    read_labels,
    select_boxes,
)
from nbsrc.data.readers.per_image import read_per_image_labels
from nbsrc.data.readers.retinaface_txt import read_retinaface_labels, write_retinaface_labels
from nbsrc.data.readers.twoclass import TwoClassLabels, read_twoclass_labels, write_twoclass_labels
from nbsrc.data.readers.wider_bbx import read_wider_bbx_gt
from nbsrc.data.records import FACE, PERSON, ImageRecord

TWOCLASS_TXT = "data/wider_oi_personface_val/wider_val_gt_cleanedBoundary_1203.txt"
WIDER_MAT_DIR = "data/widerface_val_gt"

RETINAFACE_TRAIN = """\
# 0--Parade/0_Parade_marchingband_1_849.jpg
449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.174 425.893 0.0 538.357 431.491 0.0 0.82
84 92 16 22 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0
# 0--Parade/0_Parade_Parade_0_904.jpg
# 1--Handshaking/1_Handshaking_Handshaking_1_35.jpg
10.5 20 30 40 15 25 1.0 35 25 0.0 25 35 0.0 18 45 0.0 32 45 1.0 0.5
"""

RETINAFACE_VAL = """\
# 0--Parade/0_Parade_marchingband_1_465.jpg
345 211 4 4
331 126 3 3

# 0--Parade/0_Parade_Parade_0_901.jpg
"""

# The official files end face lines with a space; the dummy line follows the zero count.
WIDER_BBX = (
    "\n".join(
        [
            "0--Parade/0_Parade_marchingband_1_849.jpg",
            "1",
            "449 330 122 149 0 0 0 0 0 0 ",
            "0--Parade/0_Parade_Parade_0_904.jpg",
            "0",
            "0 0 0 0 0 0 0 0 0 0 ",
            "0--Parade/0_Parade_marchingband_1_799.jpg",
            "2",
            "78 221 7 8 2 0 0 0 0 0",
            "78 238 14 17 2 0 0 1 2 1",
        ]
    )
    + "\n"
)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_records_equal(a: list[ImageRecord], b: list[ImageRecord]) -> None:
    """Every field but ``source`` identical (bit for bit for the arrays)."""
    assert [r.name for r in a] == [r.name for r in b]
    for x, y in zip(a, b):
        assert x.normalized == y.normalized and x.image_size == y.image_size, x.name
        for field in ("boxes", "landmarks", "landmarks_valid", "labels"):
            got, want = getattr(x, field), getattr(y, field)
            assert got.dtype == want.dtype and np.array_equal(got, want), (x.name, field)
        assert sorted(x.attributes) == sorted(y.attributes), x.name
        for key in x.attributes:
            assert np.array_equal(x.attributes[key], y.attributes[key]), (x.name, key)


# --------------------------------------------------------------------------------------------- format 1


def test_retinaface_train_lines(tmp_path):
    path = write(tmp_path, "label.txt", RETINAFACE_TRAIN)
    records = read_retinaface_labels(path)
    assert [r.name for r in records] == [
        "0--Parade/0_Parade_marchingband_1_849",
        "0--Parade/0_Parade_Parade_0_904",
        "1--Handshaking/1_Handshaking_Handshaking_1_35",
    ]
    first, empty, third = records
    assert first.source == f"{path}:1" and empty.source == f"{path}:4" and third.source == f"{path}:5"
    np.testing.assert_array_equal(first.boxes, np.array([[449, 330, 571, 479], [84, 92, 100, 114]], np.float32))
    assert first.boxes.dtype == np.float32 and first.labels.tolist() == [FACE, FACE]
    assert first.landmarks_valid.tolist() == [True, False]
    np.testing.assert_allclose(first.landmarks[0, 0], [488.906, 373.643], rtol=1e-6)
    np.testing.assert_allclose(first.landmarks[0, 4], [538.357, 431.491], rtol=1e-6)
    # No fake landmarks: the face without landmarks has zeros and is marked invalid.
    np.testing.assert_array_equal(first.landmarks[1], np.zeros((5, 2)))
    np.testing.assert_allclose(first.attributes["score"], [0.82, -1.0], rtol=1e-6)
    assert first.attributes["landmark_flags"].shape == (2, 5)
    # A header without face lines is a valid zero-face image.
    assert empty.num_boxes == 0 and empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2)
    np.testing.assert_array_equal(third.boxes, [[10.5, 20, 40.5, 60]])
    assert third.attributes["landmark_flags"].tolist() == [[1, 0, 0, 0, 1]]
    assert not any(r.normalized for r in records)


def test_retinaface_val_lines(tmp_path):
    records = read_retinaface_labels(write(tmp_path, "val/label.txt", RETINAFACE_VAL))
    assert [r.num_boxes for r in records] == [2, 0]
    np.testing.assert_array_equal(records[0].boxes, [[345, 211, 349, 215], [331, 126, 334, 129]])
    assert not records[0].landmarks_valid.any()
    np.testing.assert_array_equal(records[0].attributes["score"], [-1, -1])


def test_retinaface_round_trip_is_exact(tmp_path):
    original = read_retinaface_labels(
        write(tmp_path, "label.txt", RETINAFACE_TRAIN + RETINAFACE_VAL.replace("0--", "9--"))
    )
    out = write_retinaface_labels(tmp_path / "out" / "label.txt", original)
    again = read_retinaface_labels(out)
    assert_records_equal(again, original)
    assert all(len(line.split()) == 20 for line in out.read_text().splitlines() if not line.startswith("#"))
    assert [p.name for p in out.parent.iterdir()] == ["label.txt"]  # atomic: no temporary left behind


def test_retinaface_round_trip_random_floats(tmp_path):
    """Arbitrary float32 boxes and landmarks (sub-pixel, large, tiny) survive write + read bit for bit."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(-5, 3000, (n, 2)) * rng.choice([1e-3, 1, 1], (n, 1))
        wh = rng.uniform(0, 400, (n, 2)) * rng.choice([1e-4, 1, 1], (n, 1))
        valid = rng.random(n) < 0.6
        landmarks = np.where(valid[:, None, None], rng.uniform(0, 3000, (n, 5, 2)), 0)
        records.append(
            ImageRecord(f"{i % 3}--Event/img_{i}", np.c_[xy, xy + wh], landmarks=landmarks, landmarks_valid=valid)
        )
    # x1 + (x2 - x1) rounded to float32 cannot reach this x2 (every sum is a float32 tie): still exact.
    records.append(ImageRecord("9--Ties/tie", [[8.4191589, 8.4191589, 535.97906, 535.97906]]))
    again = read_retinaface_labels(write_retinaface_labels(tmp_path / "label.txt", records))
    for x, y in zip(records, again):
        assert np.array_equal(x.boxes, y.boxes) and np.array_equal(x.landmarks, y.landmarks), x.name
        assert np.array_equal(x.landmarks_valid, y.landmarks_valid)
    # Written without flags / score: faces with landmarks get flag 0 and score 1, the others -1.
    for record in again:
        assert np.array_equal(record.attributes["score"], np.where(record.landmarks_valid, 1.0, -1.0))


def test_retinaface_writer_refuses_normalized(tmp_path):
    record = ImageRecord("a", [[0.1, 0.1, 0.2, 0.2]], normalized=True, source="x.txt:3")
    with pytest.raises(ValueError, match="normalized"):
        write_retinaface_labels(tmp_path / "label.txt", [record])
    assert not (tmp_path / "label.txt").exists()


MALFORMED_RETINAFACE = {
    "wrong count": ("# a/b.jpg\n1 2 3 4\n1 2 3 4 5\n", 3, "expected 4 numbers"),
    "not a number": ("# a/b.jpg\n1 2 3 x4\n", 2, "'x4' is not a number"),
    "non-finite": ("# a/b.jpg\n1 2 nan 4\n", 2, "non-finite"),
    "face before header": ("\n1 2 3 4\n# a/b.jpg\n", 2, "before any"),
    "empty header": ("# a/b.jpg\n1 2 3 4\n#\n", 3, "empty header"),
    "20-number line cut short": ("# a/b.jpg\n" + " ".join(["1"] * 19) + "\n", 2, "got 19 values"),
}


@pytest.mark.parametrize("case", list(MALFORMED_RETINAFACE))
def test_retinaface_malformed(tmp_path, case):
    text, line, message = MALFORMED_RETINAFACE[case]
    path = write(tmp_path, "label.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_retinaface_labels(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert isinstance(info.value, LabelParseError) and info.value.line == line


def test_retinaface_collects_errors_when_asked(tmp_path):
    path = write(tmp_path, "label.txt", "1 2 3 4\n# a/b.jpg\n1 2 3 4\n1 2 3\n# a/c.jpg\n5 6 7 x\n1 1 2 2\n")
    errors: list[LabelParseError] = []
    records = read_retinaface_labels(path, errors=errors)
    assert [(e.path, e.line) for e in errors] == [(str(path), 1), (str(path), 4), (str(path), 6)]
    assert [r.num_boxes for r in records] == [1, 1]


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_retinaface_labels(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        read_labels(tmp_path / "nope")


def test_not_utf8_names_file(tmp_path):
    path = tmp_path / "label.txt"
    path.write_bytes(b"# a/b.jpg\n\xff\xfe 1 2 3\n")
    with pytest.raises(ValueError, match="not UTF-8") as info:
        read_retinaface_labels(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------- format 2


def test_wider_bbx_skips_dummy_line_and_keeps_attributes(tmp_path):
    path = write(tmp_path, "wider_face_val_bbx_gt.txt", WIDER_BBX)
    records = read_wider_bbx_gt(path)
    assert [r.name for r in records] == [
        "0--Parade/0_Parade_marchingband_1_849",
        "0--Parade/0_Parade_Parade_0_904",
        "0--Parade/0_Parade_marchingband_1_799",
    ]
    assert [r.num_boxes for r in records] == [1, 0, 2]
    assert [r.source for r in records] == [f"{path}:1", f"{path}:4", f"{path}:7"]
    np.testing.assert_array_equal(records[2].boxes, [[78, 221, 85, 229], [78, 238, 92, 255]])
    assert records[2].attributes["blur"].tolist() == [2, 2]
    assert records[2].attributes["invalid"].tolist() == [0, 1]
    assert records[2].attributes["occlusion"].tolist() == [0, 2]
    assert records[2].attributes["pose"].tolist() == [0, 1]
    assert records[1].attributes["blur"].shape == (0,)
    assert not any(r.landmarks_valid.any() for r in records)


def test_wider_bbx_zero_count_at_end_without_dummy(tmp_path):
    records = read_wider_bbx_gt(write(tmp_path, "gt.txt", "a/b.jpg\n0\n"))
    assert len(records) == 1 and records[0].num_boxes == 0


MALFORMED_WIDER = {
    "count not an integer": ("a/b.jpg\n1.5\n1 2 3 4 0 0 0 0 0 0\n", 2, "face count"),
    "negative count": ("a/b.jpg\n-1\n", 2, "face count"),
    "file ends early": ("a/b.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 2, "declares 2 faces but the file ends after 1"),
    "fewer faces than count": ("a/b.jpg\n2\n1 2 3 4 0 0 0 0 0 0\nc/d.jpg\n0\n", 4, "only 1 face line"),
    "more faces than count": ("a/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n5 6 7 8 0 0 0 0 0 0\n", 4, "expected an image name"),
    "wrong number count": ("a/b.jpg\n1\n1 2 3 4\n", 3, "expected 10 numbers"),
    "non-number in a face line": ("a/b.jpg\n1\n1 2 3 4 0 0 0 0 0 blur\n", 3, "'blur' is not a number"),
    "non-zero dummy": ("a/b.jpg\n0\n1 2 3 4 0 0 0 0 0 0\n", 3, "dummy line of zeros"),
    "non-integer attribute": ("a/b.jpg\n1\n1 2 3 4 0.5 0 0 0 0 0\n", 3, "must be integers"),
    "name without count": ("a/b.jpg\n", 1, "not followed by its face count"),
    "numbers first": ("1 2 3 4 0 0 0 0 0 0\n", 1, "expected an image name"),
}


@pytest.mark.parametrize("case", list(MALFORMED_WIDER))
def test_wider_bbx_malformed(tmp_path, case):
    text, line, message = MALFORMED_WIDER[case]
    path = write(tmp_path, "gt.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_wider_bbx_gt(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_wider_bbx_collects_bad_face_lines_when_asked(tmp_path):
    path = write(tmp_path, "gt.txt", "a/b.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0\n5 6 7 8 0 0 0 0 0 x\nc/d.jpg\n0\n")
    errors: list[LabelParseError] = []
    records = read_wider_bbx_gt(path, errors=errors)
    assert [e.line for e in errors] == [4, 5] and [r.num_boxes for r in records] == [1, 0]
    with pytest.raises(ValueError, match="face count"):  # structure defects raise even when collecting
        read_wider_bbx_gt(write(tmp_path, "bad.txt", "a/b.jpg\nx\n"), errors=[])


# --------------------------------------------------------------------------------------------- format 3


def test_per_image_tree(tmp_path):
    root = tmp_path / "labels"
    write(root, "label.txt", RETINAFACE_TRAIN)  # the combined file the tree is made from: skipped
    write(root, "0--Parade/0_Parade_a.txt", RETINAFACE_TRAIN.splitlines()[1] + "\n" + RETINAFACE_TRAIN.splitlines()[2])
    write(root, "0--Parade/0_Parade_empty.txt", "")
    write(root, "1--Handshaking/1_b.txt", "1 2 3 4\n\n5 6 7 8\n")
    write(root, ".ipynb_checkpoints/x.txt", "garbage")
    records = read_per_image_labels(root)
    assert [r.name for r in records] == ["0--Parade/0_Parade_a", "0--Parade/0_Parade_empty", "1--Handshaking/1_b"]
    a, empty, b = records
    assert a.landmarks_valid.tolist() == [True, False] and a.num_boxes == 2
    np.testing.assert_array_equal(a.boxes[1], [84, 92, 100, 114])
    assert empty.num_boxes == 0
    np.testing.assert_array_equal(b.boxes, [[1, 2, 4, 6], [5, 6, 12, 14]])
    assert a.source == f"{root / '0--Parade/0_Parade_a.txt'}:1"


def test_per_image_flat_with_wider_attribute_lines(tmp_path):
    root = tmp_path / "labelstxt"
    write(root, "img1.txt", "10 20 30 40 2 0 1 0 1 0\n")
    write(root, "img2.txt", "1 1 2 2\n")
    records = read_per_image_labels(root)
    assert [r.name for r in records] == ["img1", "img2"]
    assert records[0].attributes["blur"].tolist() == [2] and records[0].attributes["occlusion"].tolist() == [1]
    assert "blur" not in records[1].attributes


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("1 2 3 4\n1 2 3\n", 2, "got 3 values"),
        ("# 0--Parade/x.jpg\n1 2 3 4\n", 1, "header line"),
        ("1 2 3 4\n\n1 2 y 4\n", 3, "'y' is not a number"),
    ],
)
def test_per_image_malformed(tmp_path, text, line, message):
    path = write(tmp_path / "labels", "ev/img.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_per_image_labels(tmp_path / "labels")
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_per_image_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="labelstxt"):
        read_per_image_labels(tmp_path / "labelstxt")


# --------------------------------------------------------------------------------------------- format 4


def test_twoclass_real_file_counts():
    labels = read_twoclass_labels(shared_path(TWOCLASS_TXT))
    assert isinstance(labels, TwoClassLabels) and isinstance(labels, list)
    assert len(labels) == 7572 and len({r.name for r in labels}) == 7572
    all_labels = np.concatenate([r.labels for r in labels])
    assert len(all_labels) == 30055
    assert int((all_labels == FACE).sum()) == 13964 and int((all_labels == PERSON).sum()) == 16091
    assert len(labels.duplicates) == 5 and "07b8901bbee71a36" in labels.duplicates
    assert [s.rsplit(":", 1)[1] for s in labels.duplicates["07b8901bbee71a36"]] == ["25885", "37534"]
    # Merged: both occurrences' boxes (2 + 2) under one record.
    merged = next(r for r in labels if r.name == "07b8901bbee71a36")
    assert merged.num_boxes == 4 and merged.labels.tolist() == [2, 1, 2, 1]
    np.testing.assert_allclose(
        merged.boxes[0], [0.399527, 0.355353, 0.399527 + 0.188328, 0.355353 + 0.170109], atol=1e-6
    )
    first = labels[0]
    assert first.name == "54f31bcf003f3c33" and first.normalized and not first.landmarks_valid.any()
    boxes = np.concatenate([r.boxes for r in labels])
    assert boxes.min() >= 0 and boxes.max() <= 1 + 1e-6


def test_twoclass_duplicates_are_logged(tmp_path, caplog):
    path = write(tmp_path, "gt.txt", "# a.jpg\n1 0.1 0.1 0.2 0.2\n# b.jpg\n# a.jpg\n2 0 0 1 1\n")
    logger = logging.getLogger("nbsrc")  # attached directly: works whatever logging setup ran before
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="nbsrc"):
            labels = read_twoclass_labels(path)
    finally:
        logger.removeHandler(caplog.handler)
    assert labels.duplicates == {"a": [f"{path}:1", f"{path}:4"]}
    assert [r.name for r in labels] == ["a", "b"] and labels[0].labels.tolist() == [1, 2] and labels[1].num_boxes == 0
    assert "repeated" in caplog.text and "'a'" in caplog.text


def test_twoclass_round_trip_real_file(tmp_path):
    original = read_twoclass_labels(shared_path(TWOCLASS_TXT))
    out = write_twoclass_labels(tmp_path / "gt.txt", original)
    again = read_twoclass_labels(out)
    assert again.duplicates == {}  # merged on read, written once
    assert_records_equal(again, original)


def test_twoclass_writer_normalizes_pixel_records(tmp_path):
    record = ImageRecord("x", [[10, 20, 60, 120]], labels=[PERSON], image_size=(100, 200))
    again = read_twoclass_labels(write_twoclass_labels(tmp_path / "gt.txt", [record]))
    np.testing.assert_allclose(again[0].boxes, [[0.1, 0.1, 0.6, 0.6]], atol=1e-7)
    with pytest.raises(ValueError, match="image_size"):
        write_twoclass_labels(tmp_path / "bad.txt", [ImageRecord("x", [[1, 2, 3, 4]])])


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("# a.jpg\n1 0.1 0.1 0.2\n", 2, "expected 5 numbers"),
        ("# a.jpg\n1.5 0.1 0.1 0.2 0.2\n", 2, "class 1.5"),
        ("# a.jpg\n0 0.1 0.1 0.2 0.2\n", 2, "class 0"),
        ("1 0.1 0.1 0.2 0.2\n# a.jpg\n", 1, "before any"),
        ("# a.jpg\n1 0.1 0.1 0.2 0.2\n2 0.1 abc 0.2 0.2\n", 3, "'abc' is not a number"),
    ],
)
def test_twoclass_malformed(tmp_path, text, line, message):
    path = write(tmp_path, "gt.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_twoclass_labels(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


# --------------------------------------------------------------------------------------------- dispatch


def test_read_labels_detects_every_format(tmp_path):
    retina = write(tmp_path, "label.txt", RETINAFACE_TRAIN)
    wider = write(tmp_path, "wider_face_val_bbx_gt.txt", WIDER_BBX)
    twoclass = write(tmp_path, "gt2.txt", "# a.jpg\n1 0.1 0.1 0.2 0.2\n")
    per_image = tmp_path / "labelstxt"
    write(per_image, "a.txt", "1 2 3 4\n")
    csv_path = write(tmp_path, "oi.csv", "ImageID,ClassName,XMin,XMax,YMin,YMax\nabc,Human face,0.1,0.2,0.3,0.4\n")
    expected = {
        retina: "retinaface",
        wider: "wider_bbx",
        twoclass: "twoclass",
        per_image: "per_image",
        csv_path: "openimages",
    }
    for path, name in expected.items():
        assert detect_format(path) == name, path
        records = read_labels(path)
        assert records and all(isinstance(r, ImageRecord) for r in records), path
    assert read_labels(twoclass)[0].normalized and not read_labels(retina)[0].normalized
    assert read_labels(retina, format="retinaface")[0].num_boxes == 2


def test_read_labels_bad_format(tmp_path):
    path = write(tmp_path, "x.txt", "hello world\nnot labels\n")
    with pytest.raises(ValueError, match="unknown label format") as info:
        read_labels(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        read_labels(write(tmp_path, "label.txt", RETINAFACE_TRAIN), format="yolo")
    with pytest.raises(ValueError, match="per-image label file"):
        read_labels(write(tmp_path, "one.txt", "1 2 3 4\n"))


def test_read_labels_wider_mat_and_degenerate_boxes():
    records = read_labels(shared_path(WIDER_MAT_DIR))
    assert len(records) == 3226 and sum(r.num_boxes for r in records) == 39708
    assert records[0].name == "0--Parade/0_Parade_marchingband_1_465"
    assert set(records[0].attributes) == {"blur", "expression", "illumination", "invalid", "occlusion", "pose"}
    # The readers keep the 11 degenerate boxes of the real val GT; drop_degenerate removes and counts them.
    results = [drop_degenerate(r) for r in records]
    assert sum(n for _, n in results) == 11
    cleaned = [r for r, _ in results]
    assert sum(r.num_boxes for r in cleaned) == 39708 - 11
    assert all(((r.boxes[:, 2:] - r.boxes[:, :2]) > 0).all() for r in cleaned)


def test_drop_degenerate_filters_every_per_box_field():
    record = ImageRecord(
        "a",
        [[0, 0, 10, 10], [5, 5, 5, 9], [3, 3, 1, 8], [1, 1, 2, 2]],
        landmarks=np.arange(40).reshape(4, 5, 2),
        landmarks_valid=[True, False, True, False],
        labels=[1, 2, 1, 2],
        attributes={"blur": np.array([0, 1, 2, 3]), "note": "kept as is"},
    )
    cleaned, dropped = drop_degenerate(record)
    assert dropped == 2 and cleaned.num_boxes == 2
    assert cleaned.labels.tolist() == [1, 2] and cleaned.landmarks_valid.tolist() == [True, False]
    np.testing.assert_array_equal(cleaned.landmarks[1], np.arange(30, 40).reshape(5, 2))
    assert cleaned.attributes["blur"].tolist() == [0, 3] and cleaned.attributes["note"] == "kept as is"
    assert record.num_boxes == 4  # input untouched
    same, none = drop_degenerate(cleaned)
    assert none == 0 and same is cleaned
    assert select_boxes(record, np.array([3])).labels.tolist() == [2]


# --------------------------------------------------------------------------------------------- unsafe names

UNSAFE_HEADERS = ["../../../12_Group_demo_8.jpg", "0--Parade/../../x.jpg", "/etc/x.jpg", "./../x.jpg", "..\\x.jpg"]


@pytest.mark.parametrize("header", UNSAFE_HEADERS)
def test_image_names_that_leave_their_folder_are_refused(tmp_path, header):
    """A '..' component or an absolute path would put result files outside --out: file:line, every text reader."""
    cases = [
        (read_retinaface_labels, f"# 0--Parade/a.jpg\n1 2 3 4\n# {header}\n5 6 7 8\n", 3),
        (read_twoclass_labels, f"# a.jpg\n1 0.1 0.1 0.2 0.2\n# {header}\n1 0.1 0.1 0.2 0.2\n", 3),
        (read_wider_bbx_gt, f"a/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n{header}\n1\n1 2 3 4 0 0 0 0 0 0\n", 4),
    ]
    for reader, text, line in cases:
        path = write(tmp_path, f"{reader.__name__}.txt", text)
        with pytest.raises(
            LabelParseError, match=r"image name .* (has a '\.\.' component|is an absolute path)"
        ) as info:
            reader(path)
        assert str(info.value).startswith(f"{path}:{line}: "), reader.__name__
        errors: list[LabelParseError] = []  # collecting: the image is left out and its face line reported
        records = reader(path, errors=errors)
        assert [e.line for e in errors] == [line, line + 1 + (reader is read_wider_bbx_gt)], reader.__name__
        assert "rejected" in errors[1].reason and [r.num_boxes for r in records] == [1], reader.__name__


def test_safe_names_still_read(tmp_path):
    path = write(tmp_path, "label.txt", "# ./0--Parade/a..b.jpg\n1 2 3 4\n# 0--Parade/..c.jpg\n")
    assert [r.name for r in read_retinaface_labels(path)] == ["0--Parade/a..b", "0--Parade/..c"]


# --------------------------------------------------------------------------------------------- 2-class values


@pytest.mark.parametrize(
    "line, message",
    [
        ("3 0.8 0.3 0.04 0.04", r"class 3; expected 1 \(face\) or 2 \(person\)"),
        ("1 0.8 0.3 -0.04 0.04", "negative width or height"),
        ("2 0.8 0.3 0.04 -0.5", "negative width or height"),
        ("1 80 30 40 40", "outside the normalized range"),
        ("1 0.5 0.5 0.2 1.2", "outside the normalized range"),
    ],
)
def test_twoclass_bad_values_name_the_line(tmp_path, line, message):
    path = write(tmp_path, "gt.txt", f"# a.jpg\n1 0.1 0.1 0.2 0.2\n{line}\n")
    with pytest.raises(LabelParseError, match=message) as info:
        read_twoclass_labels(path)
    assert str(info.value).startswith(f"{path}:3: ")
    errors: list[LabelParseError] = []
    assert read_twoclass_labels(path, errors=errors)[0].num_boxes == 1 and [e.line for e in errors] == [3]


def test_twoclass_keeps_unclipped_and_zero_size_boxes(tmp_path):
    """Boxes a little outside [0, 1] (convert-openimages --no-clip) and zero-size ones stay readable."""
    path = write(tmp_path, "gt.txt", "# a.jpg\n2 -0.1 0 0.7 1.2\n1 0.5 0.5 0 0.1\n")
    np.testing.assert_allclose(read_twoclass_labels(path)[0].boxes, [[-0.1, 0, 0.6, 1.2], [0.5, 0.5, 0.5, 0.6]])


def test_twoclass_writer_refuses_what_the_reader_would(tmp_path):
    out = tmp_path / "gt.txt"
    for record, message in [
        (ImageRecord("a", [[0.1, 0.1, 0.2, 0.2]], labels=[3], normalized=True), "class 3"),
        (ImageRecord("a", [[0.3, 0.1, 0.2, 0.2]], labels=[1], normalized=True), "negative width"),
        (ImageRecord("a", [[10, 10, 20, 20]], labels=[1], normalized=True), "normalized range"),
        (ImageRecord("../a", [[0.1, 0.1, 0.2, 0.2]], labels=[1], normalized=True), "cannot be written"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_twoclass_labels(out, [record])
        assert not out.exists()
