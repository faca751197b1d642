"""Open Images CSV -> 2-class records: the real CSV gives the real 2-class file's boxes, the cleaning steps do
what they say, other classes are reported, and the CLI writes a file the 2-class reader reads back."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from conftest import shared_path

from nbsrc.cli import main
from nbsrc.data.readers import read_labels
from nbsrc.data.readers.common import drop_degenerate
from nbsrc.data.readers.openimages import (
    clean_records,
    clip_boxes,
    convert_openimages,
    drop_duplicates,
    read_openimages_csv,
)
from nbsrc.data.readers.twoclass import read_twoclass_labels
from nbsrc.data.records import FACE, PERSON, ImageRecord

CSV = (
    "data/wider_oi_personface_val/"
    "sub-validation-annotations-bbox_faceCorrection_personMWBG_cleanedGT_cleanedBoundary_1203.csv"
)
TXT = "data/wider_oi_personface_val/wider_val_gt_cleanedBoundary_1203.txt"

HEADER = ",Unnamed: 0,ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside,id,ClassName\n"


def csv_row(i: int, image: str, cls: str, xmin, xmax, ymin, ymax, occluded: int = 0) -> str:
    return f"{i},{i},{image},freeform,/m/x,1,{xmin},{xmax},{ymin},{ymax},{occluded},0,0,0,0,/m/x,{cls}\n"


@pytest.fixture
def nbsrc_logging(caplog):
    """Capture ``nbsrc`` log records, and undo the CLI's logging setup (a stdout handler, no propagation)."""
    logger = logging.getLogger("nbsrc")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture(scope="module")
def real_csv_records():
    return read_openimages_csv(shared_path(CSV))


@pytest.fixture(scope="module")
def real_txt_records():
    return read_twoclass_labels(shared_path(TXT))


def box_multiset(record: ImageRecord) -> np.ndarray:
    """``[N, 5]`` (label, x1, y1, x2, y2) rows sorted lexicographically (order-free comparison)."""
    rows = np.c_[record.labels.astype(np.float64), record.boxes.astype(np.float64)]  # (N, 5)
    return rows[np.lexsort(rows.T[::-1])]


def assert_same_boxes(a: list[ImageRecord], b: list[ImageRecord], atol: float = 1e-6) -> None:
    by_name = {r.name: r for r in b}
    assert len(a) == len(b) and set(by_name) == {r.name for r in a}
    for record in a:
        x, y = box_multiset(record), box_multiset(by_name[record.name])
        assert x.shape == y.shape, record.name
        assert np.array_equal(x[:, 0], y[:, 0]), record.name
        np.testing.assert_allclose(x[:, 1:], y[:, 1:], atol=atol, rtol=0, err_msg=record.name)


def test_real_csv_counts(real_csv_records):
    labels = real_csv_records
    assert len(labels) == 7572
    assert labels.class_counts == Counter(
        {"Human face": 13964, "Person": 8983, "Man": 3591, "Woman": 1651, "Girl": 1438, "Boy": 428}
    )
    assert not labels.unmapped and labels.unmapped_images == 0
    all_labels = np.concatenate([r.labels for r in labels])
    assert len(all_labels) == 30055
    assert int((all_labels == FACE).sum()) == 13964 and int((all_labels == PERSON).sum()) == 16091
    first = labels[0]
    assert first.name == "54f31bcf003f3c33" and first.normalized and first.source.endswith(".csv:2")
    np.testing.assert_allclose(first.boxes, [[0.272921, 0.366866, 0.555688, 0.967143]], atol=1e-7)
    assert first.attributes["occluded"].tolist() == [0]


def test_real_csv_gives_the_real_txt_boxes(real_csv_records, real_txt_records):
    """The CSV stores corners, the txt x y w h: per image the same multiset of (class, box) within 1e-6."""
    assert_same_boxes(real_csv_records, real_txt_records)


def test_convert_real_csv_reproduces_txt(tmp_path, real_txt_records):
    out = tmp_path / "converted.txt"
    report = convert_openimages(shared_path(CSV), out)
    assert report.images == 7572 and report.boxes == {FACE: 13964, PERSON: 16091}
    assert report.clipped == report.degenerate == report.duplicates == 0
    converted = read_twoclass_labels(out)
    assert converted.duplicates == {}
    assert_same_boxes(converted, real_txt_records)


def test_dedup_on_real_csv_removes_exact_repeats(real_csv_records):
    """The 5 repeated headers of the txt come from repeated CSV rows: IoU 1 duplicates within a class."""
    cleaned, report = clean_records(real_csv_records, dedup_iou=1.0)
    assert report.duplicates == 13 and report.total_boxes == 30055 - 13
    record = next(r for r in cleaned if r.name == "07b8901bbee71a36")
    assert record.num_boxes == 2 and sorted(record.labels.tolist()) == [FACE, PERSON]


def test_other_classes_are_counted_and_reported(tmp_path, nbsrc_logging):
    caplog = nbsrc_logging
    path = tmp_path / "oi.csv"
    path.write_text(
        HEADER
        + csv_row(0, "img1", "Human face", 0.1, 0.2, 0.1, 0.2)
        + csv_row(1, "img1", "Dog", 0.3, 0.5, 0.3, 0.5)
        + csv_row(2, "img2", "Dog", 0.3, 0.5, 0.3, 0.5)
        + csv_row(3, "img3", "Car", 0.0, 0.5, 0.0, 0.5)
        + csv_row(4, "img4", "Boy", 0.0, 0.5, 0.0, 0.5, occluded=1)
    )
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        labels = read_openimages_csv(path)
    assert [r.name for r in labels] == ["img1", "img4"]
    assert labels[1].labels.tolist() == [PERSON] and labels[1].attributes["occluded"].tolist() == [1]
    assert labels.unmapped == Counter({"Dog": 2, "Car": 1}) and labels.unmapped_images == 2
    assert "Dog" in caplog.text and "Car" in caplog.text
    report = convert_openimages(path, tmp_path / "out.txt")
    assert report.unmapped == {"Dog": 2, "Car": 1} and report.unmapped_images == 2


def test_label_name_only_csv(tmp_path):
    """Official Open Images CSVs have machine ids (LabelName) and no ClassName column."""
    path = tmp_path / "oidv6.csv"
    path.write_text(
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax\n"
        "a,xclick,/m/0dzct,1,0.1,0.2,0.3,0.4\n"
        "a,xclick,/m/05r655,1,0.0,0.5,0.0,0.9\n"
        "a,xclick,/m/0bt9lr,1,0.0,0.5,0.0,0.9\n"
    )
    labels = read_openimages_csv(path)
    assert labels[0].labels.tolist() == [FACE, PERSON] and labels.unmapped == Counter({"/m/0bt9lr": 1})
    np.testing.assert_allclose(labels[0].boxes[0], [0.1, 0.3, 0.2, 0.4], atol=1e-7)


def test_clip_boxes():
    record = ImageRecord("a", [[-0.1, 0.2, 0.5, 1.3], [0.1, 0.1, 0.2, 0.2]], normalized=True)
    clipped, n = clip_boxes(record)
    assert n == 1
    np.testing.assert_allclose(clipped.boxes, [[0, 0.2, 0.5, 1.0], [0.1, 0.1, 0.2, 0.2]], atol=1e-7)
    assert record.boxes[0, 0] < 0  # input untouched
    pixels, n = clip_boxes(ImageRecord("b", [[-3, 5, 120, 90]], image_size=(100, 80)))
    assert n == 1 and pixels.boxes.tolist() == [[0, 5, 100, 80]]
    with pytest.raises(ValueError, match="image size"):
        clip_boxes(ImageRecord("c", [[0, 0, 1, 1]], source="x.csv:7"))


def test_drop_degenerate_after_clip():
    record = ImageRecord("a", [[1.2, 0.1, 1.5, 0.3], [0.1, 0.1, 0.1, 0.4], [0.1, 0.1, 0.3, 0.4]], normalized=True)
    cleaned, report = clean_records([record])
    assert report.clipped == 1 and report.degenerate == 2 and cleaned[0].num_boxes == 1
    kept, report = clean_records([record], clip=False, drop_degenerate_boxes=False)
    assert kept[0].num_boxes == 3 and report.degenerate == 0
    _, dropped = drop_degenerate(record)
    assert dropped == 1  # without clipping only the zero-width box is degenerate


def test_drop_duplicates_threshold_and_classes():
    boxes = [
        [0.0, 0.0, 0.4, 0.4],  # 0 face
        [0.0, 0.0, 0.4, 0.4],  # 1 person, same box: another class, kept
        [0.0, 0.0, 0.4, 0.5],  # 2 face, IoU 0.8 with box 0
        [0.0, 0.0, 0.4, 0.8],  # 3 face, IoU 0.5 with box 0, 0.625 with box 2
        [0.6, 0.6, 0.9, 0.9],  # 4 face, no overlap
    ]
    record = ImageRecord("a", boxes, labels=[1, 2, 1, 1, 1], normalized=True, attributes={"occluded": np.arange(5)})
    kept, n = drop_duplicates(record, 0.8)  # IoU >= threshold drops: box 2 (0.8 exactly)
    assert n == 1 and kept.attributes["occluded"].tolist() == [0, 1, 3, 4]
    kept, n = drop_duplicates(record, 0.5)  # box 2 and box 3 overlap box 0 enough
    assert n == 2 and kept.labels.tolist() == [1, 2, 1]
    kept, n = drop_duplicates(record, 0.81)
    assert n == 0 and kept is record
    with pytest.raises(ValueError, match="iou_thresh"):
        drop_duplicates(record, 0.0)


def test_drop_duplicates_compares_with_kept_boxes_only():
    # Box 1 overlaps box 0 (dropped); box 2 overlaps only box 1, which is gone, so box 2 stays.
    record = ImageRecord("a", [[0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 10, 19]], labels=[1, 1, 1])
    kept, n = drop_duplicates(record, 0.7)
    assert n == 1 and kept.boxes[:, 3].tolist() == [10, 19]


def test_malformed_csv_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        HEADER + csv_row(0, "a", "Human face", 0.1, 0.2, 0.1, 0.2) + csv_row(1, "a", "Man", "x", 0.2, 0.1, 0.2)
    )
    with pytest.raises(ValueError, match="XMin = 'x' is not a number") as info:
        read_openimages_csv(path)
    assert str(info.value).startswith(f"{path}:3: ")
    path.write_text(HEADER + csv_row(0, "a", "Human face", 0.1, "inf", 0.1, 0.2))
    with pytest.raises(ValueError, match="not finite") as info:
        read_openimages_csv(path)
    assert str(info.value).startswith(f"{path}:2: ")
    path.write_text("ImageID,ClassName,XMin,XMax,YMin\na,Human face,0.1,0.2,0.3\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['YMax'\]") as info:
        read_openimages_csv(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_openimages_csv(tmp_path / "nope.csv")


def test_cli_convert(tmp_path, capsys, nbsrc_logging):
    path = tmp_path / "oi.csv"
    path.write_text(
        HEADER
        + csv_row(0, "img1", "Human face", 0.1, 0.2, 0.1, 0.2)
        + csv_row(1, "img1", "Human face", 0.1, 0.2, 0.1, 0.21)
        + csv_row(2, "img1", "Woman", -0.1, 0.6, 0.0, 1.2)
        + csv_row(3, "img2", "Person", 0.5, 0.5, 0.0, 1.0)
        + csv_row(4, "img3", "Cat", 0.0, 0.5, 0.0, 0.5)
    )
    out = tmp_path / "out" / "labels.txt"
    assert main(["convert-openimages", str(path), str(out), "--dedup-iou", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "images: 2" in printed and "boxes: 2 (1 face, 1 person)" in printed
    assert "clipped: 1" in printed and "dropped degenerate: 1" in printed and "dropped duplicates: 1" in printed
    assert "Cat: 1" in printed
    labels = read_labels(out)
    assert [r.name for r in labels] == ["img1", "img2"] and labels[1].num_boxes == 0  # emptied, still listed
    np.testing.assert_allclose(labels[0].boxes[1], [0, 0, 0.6, 1.0], atol=1e-7)

    assert main(["convert-openimages", str(path), str(tmp_path / "raw.txt"), "--no-clip", "--keep-degenerate"]) == 0
    raw = read_twoclass_labels(tmp_path / "raw.txt")
    assert [r.num_boxes for r in raw] == [3, 1]
    np.testing.assert_allclose(raw[0].boxes[2], [-0.1, 0.0, 0.6, 1.2], atol=1e-7)

    assert main(["convert-openimages", str(tmp_path / "missing.csv"), str(tmp_path / "x.txt")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["convert-openimages", str(path), str(tmp_path / "x.txt"), "--dedup-iou", "1.5"]) == 2
    assert not (tmp_path / "x.txt").exists()


@pytest.mark.parametrize("found", [18, 16])
def test_row_with_a_wrong_field_count_is_an_error_not_an_unmapped_class(tmp_path, capsys, found):
    """An extra (or missing) field shifts the columns: file:line with the expected and found counts, rc 2."""
    path = tmp_path / "oi.csv"
    bad = csv_row(1, "img1", "Person", 0.1, 0.3, 0.5, 0.9).rstrip("\n")
    bad = bad.replace(",freeform,", ",freeform,extra,") if found == 18 else bad.rsplit(",", 1)[0]
    path.write_text(HEADER + csv_row(0, "img1", "Human face", 0.1, 0.2, 0.1, 0.2) + bad + "\n")
    with pytest.raises(ValueError, match=f"expected 17 comma-separated fields .*, found {found}") as info:
        read_openimages_csv(path)
    assert str(info.value).startswith(f"{path}:3: ")
    out = tmp_path / "out.txt"
    assert main(["convert-openimages", str(path), str(out)]) == 2
    assert f"{path}:3: expected 17" in capsys.readouterr().err and not out.exists()


def test_image_id_that_leaves_the_folder_is_an_error(tmp_path):
    path = tmp_path / "oi.csv"
    path.write_text(HEADER + csv_row(0, "../img1", "Human face", 0.1, 0.2, 0.1, 0.2))
    with pytest.raises(ValueError, match=r"ImageID '\.\./img1' has a '\.\.' component") as info:
        read_openimages_csv(path)
    assert str(info.value).startswith(f"{path}:2: ")
