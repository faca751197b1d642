"""Face + person evaluation on the real 2-class ground truth: perfect, perturbed and disjoint predictions,
normalized and pixel result files, bad input, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from test_detection_ap import reference_ap

from nbsrc.cli import main as cli_main
from nbsrc.data.readers.twoclass import read_twoclass_labels
from nbsrc.data.records import ImageRecord
from nbsrc.evaluation.results import write_wider_results
from nbsrc.evaluation.twoclass import evaluate_twoclass, evaluate_twoclass_predictions, read_image_sizes
from nbsrc.utils import atomic_write_text

GT_FILE = "data/wider_oi_personface_val/wider_val_gt_cleanedBoundary_1203.txt"


@pytest.fixture(scope="module")
def gt_subset(tmp_path_factory) -> tuple[Path, list[ImageRecord]]:
    """The first ~1,000 images of the real file (including one repeated header), as a label file."""
    lines = shared_path(GT_FILE).read_text().split("\n")
    cut = 5000
    while not lines[cut].startswith("#"):
        cut += 1
    path = tmp_path_factory.mktemp("twoclass") / "gt.txt"
    path.write_text("\n".join(lines[:cut]) + "\n")
    return path, list(read_twoclass_labels(path))


def unique_boxes(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([record.boxes.astype(np.float64), record.labels[:, None]], 1)
    _, first = np.unique(both, axis=0, return_index=True)
    first = np.sort(first)
    return record.boxes[first].astype(np.float64), record.labels[first]


def test_subset_is_real(gt_subset):
    _, records = gt_subset
    assert len(records) > 900
    labels = np.concatenate([r.labels for r in records])
    assert set(labels.tolist()) == {1, 2}
    assert all(r.normalized for r in records)


def test_perfect_predictions_normalized_and_pixels(gt_subset, tmp_path):
    path, records = gt_subset
    rng = np.random.default_rng(0)
    sizes = {}
    for r in records:
        boxes, labels = unique_boxes(r)
        scores = rng.random(len(boxes)) * 0.9 + 0.05
        write_wider_results(tmp_path / "norm", r.name, boxes, scores, labels=labels, decimals=7)
        w, h = int(rng.integers(300, 1500)), int(rng.integers(300, 1500))
        sizes[r.name] = (w, h)
        write_wider_results(tmp_path / "pix", r.name, boxes * [w, h, w, h], scores, labels=labels, decimals=3)
    for folder, extra in (("norm", {}), ("pix", {"image_sizes": sizes})):
        result = evaluate_twoclass(tmp_path / folder, path, **extra)
        assert result.coords == ("normalized" if folder == "norm" else "pixels")
        for name in ("face", "person"):
            for t in (0.5, 0.3):
                assert math.isclose(result.ap[name][t], 1.0, abs_tol=1e-9), (folder, name, t, result.ap)
        assert math.isclose(result.map[0.5], 1.0, abs_tol=1e-9)
    csv_path = tmp_path / "sizes.csv"
    csv_path.write_text("name,width,height\n" + "".join(f"{n}.jpg,{w},{h}\n" for n, (w, h) in sizes.items()))
    result = evaluate_twoclass(tmp_path / "pix", path, coords="pixels", image_sizes=csv_path)
    assert math.isclose(result.map[0.3], 1.0, abs_tol=1e-9)


def test_perturbed_predictions(gt_subset, tmp_path):
    path, records = gt_subset
    rng = np.random.default_rng(1)
    boxes_all, scores_all, labels_all = [], [], []
    for r in records:
        boxes, labels = unique_boxes(r)
        keep = rng.random(len(boxes)) < 0.85
        boxes, labels = boxes[keep], labels[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes + rng.normal(0, 0.12, boxes.shape) * np.tile(wh, 2)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        scores = np.clip(rng.normal(0.7, 0.15, len(boxes)), 0.01, 1)
        n_fp = int(rng.integers(0, 3))
        fp = rng.random((n_fp, 2)) * 0.8
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + 0.1], 1)])
        scores = np.concatenate([scores, rng.random(n_fp) * 0.6])
        labels = np.concatenate([labels, rng.integers(1, 3, n_fp)])
        write_wider_results(tmp_path, r.name, boxes, scores, labels=labels, decimals=6)
        boxes_all.append(boxes)
        scores_all.append(scores)
        labels_all.append(labels)
    result = evaluate_twoclass(tmp_path, path, coords="normalized")
    for name, cls in (("face", 1), ("person", 2)):
        assert 0.2 < result.ap[name][0.5] < result.ap[name][0.3] < 1.0
        # Same number as the per-detection reference loop (on the deduplicated ground truth).
        gt = [unique_boxes(r) for r in records]
        expected = reference_ap(
            [np.round(b[lab == cls], 6) for b, lab in zip(boxes_all, labels_all)],
            [np.float32(s[lab == cls]).astype(np.float64) for s, lab in zip(scores_all, labels_all)],
            [b[lab == cls] for b, lab in gt],
            0.5,
            [np.zeros(int((lab == cls).sum()), bool) for _, lab in gt],
        )
        assert result.ap[name][0.5] == pytest.approx(expected, abs=2e-3)
    assert result.map[0.5] == pytest.approx((result.ap["face"][0.5] + result.ap["person"][0.5]) / 2)


def test_disjoint_boxes_never_match():
    """With the +1-pixel formula on [0, 1] coordinates these boxes would have IoU 0.503 and match at 0.5."""
    gt = [ImageRecord("a", boxes=[[0.1, 0.1, 0.2, 0.2], [0.6, 0.6, 0.7, 0.7]], labels=[1, 2], normalized=True)]
    preds = [np.array([[0.3, 0.3, 0.4, 0.4], [0.8, 0.8, 0.9, 0.9]])]
    result = evaluate_twoclass_predictions(gt, preds, [np.array([0.9, 0.8])], [np.array([1, 2])])
    for name in ("face", "person"):
        assert result.ap[name][0.5] == 0.0 and result.ap[name][0.3] == 0.0
    # A person box on a face: the other class is not a match (and not an ignore region).
    result = evaluate_twoclass_predictions(gt, [gt[0].boxes], [np.array([0.9, 0.8])], [np.array([2, 1])])
    assert result.ap["face"][0.5] == 0.0 and result.ap["person"][0.5] == 0.0


def write_file(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.txt"
    atomic_write_text(path, "\n".join([name, str(sum(1 for x in lines if x))] + lines) + "\n")
    return path


def test_bad_input(tmp_path):
    gt = [
        ImageRecord("a", boxes=[[0.1, 0.1, 0.2, 0.2]], labels=[1], normalized=True),
        ImageRecord("b", boxes=[[0.5, 0.5, 0.7, 0.7]], labels=[2], normalized=True),
    ]
    write_file(tmp_path, "a", ["0.1 0.1 0.1 0.1 0.9 1"])
    path = write_file(tmp_path, "b", ["0.5 0.5 0.2 0.2 0.9 2", "0.5 0.5 0.2 0.2 0.8 3"])
    with pytest.raises(ValueError, match=rf"{path}:4: class must be 1 \(face\) or 2 \(person\)"):
        evaluate_twoclass(tmp_path, gt)
    path = write_file(tmp_path, "b", ["0.5 0.5 0.2 0.2 0.9 2", "", "320 200 40 50 0.8 2"])
    with pytest.raises(ValueError, match=rf"{path}:5: box .* outside the normalized range"):
        evaluate_twoclass(tmp_path, gt, coords="normalized")
    with pytest.raises(ValueError, match="pixel coordinates need the image sizes"):
        evaluate_twoclass(tmp_path, gt)  # auto -> pixels
    with pytest.raises(ValueError, match=r"image sizes lack 1 image"):
        evaluate_twoclass(tmp_path, gt, image_sizes={"a": (100, 100)})
    path = write_file(tmp_path, "b", ["0.5 0.5 0.2 0.2 0.9"])
    with pytest.raises(ValueError, match=rf"{path}:3: expected 6"):
        evaluate_twoclass(tmp_path, gt)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 images have no result file"):
        evaluate_twoclass(tmp_path, gt)
    result = evaluate_twoclass(tmp_path, gt, missing="empty")
    assert result.missing == ["b"] and result.ap["face"][0.5] == 1.0 and result.ap["person"][0.5] == 0.0


@pytest.mark.parametrize(
    "line, message",
    [
        ("3 0.8 0.3 0.04 0.04", r"class 3; expected 1 \(face\) or 2 \(person\)"),
        ("1 0.8 0.3 -0.04 0.04", "negative width or height"),
        ("1 80 30 40 40", "outside the normalized range"),
    ],
)
def test_bad_ground_truth_is_an_error_not_a_dropped_box(tmp_path, capsys, line, message):
    """A GT box of an unknown class, a negative size or pixel values would change AP silently: file:line, rc 2."""
    write_file(tmp_path / "pred", "a", ["0.1 0.1 0.1 0.1 0.9 1"])
    gt = tmp_path / "gt.txt"
    gt.write_text(f"# a.jpg\n1 0.1 0.1 0.1 0.1\n{line}\n")
    with pytest.raises(ValueError, match=message) as info:
        evaluate_twoclass(tmp_path / "pred", gt)
    assert str(info.value).startswith(f"{gt}:3: ")
    assert cli_main(["evaluate-2cls", "--pred", str(tmp_path / "pred"), "--gt", str(gt)]) == 2
    assert f"{gt}:3: " in capsys.readouterr().err


def test_ground_truth_records_of_an_unknown_class_are_refused(tmp_path):
    write_file(tmp_path, "a", ["0.1 0.1 0.1 0.1 0.9 1"])
    gt = [ImageRecord("a", boxes=[[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6]], labels=[1, 3], source="gt.txt:7")]
    with pytest.raises(ValueError, match=r"gt.txt:7: ground-truth box 1 of image 'a' has class 3; expected 1"):
        evaluate_twoclass(tmp_path, gt)


def test_cli_evaluate_2cls(gt_subset, tmp_path, capsys):
    path, records = gt_subset
    for r in records:
        boxes, labels = unique_boxes(r)
        write_wider_results(
            tmp_path / "pred", r.name, boxes, np.linspace(1, 0.1, len(boxes)), labels=labels, decimals=7
        )
    code = cli_main(
        ["evaluate-2cls", "--pred", str(tmp_path / "pred"), "--gt", str(path), "--json", str(tmp_path / "out.json")]
    )
    assert code == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["Face"], ["Person"], ["mAP"])]
    assert [row[0] for row in table] == ["Face", "Person", "mAP"]
    assert all(float(v) == pytest.approx(1.0, abs=1e-4) for row in table for v in row[1:])
    assert "IoU 0.5" in out and "IoU 0.3" in out
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["mAP"]["0.5"] == pytest.approx(1.0) and data["coords"] == "normalized"
    assert cli_main(["evaluate-2cls", "--pred", str(tmp_path / "none"), "--gt", str(path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_wider_layout_pixel_files_on_the_demo_labels(demo_root, tmp_path, capsys):
    """WIDER-layout result files (``<event>/<basename>.txt``, pixels, class column), as dataset-wide prediction
    writes them, against the demo's 2-class labels: the labels as predictions give mAP 1.0 at both IoUs."""
    gt_path = demo_root / "val" / "labels_2cls.txt"
    records = list(read_twoclass_labels(gt_path))
    sizes_csv = demo_root / "image_sizes.csv"
    full_names = {n.rsplit("/", 1)[-1]: n for n in (line.split(",")[0] for line in sizes_csv.read_text().split()[1:])}
    sizes = read_image_sizes(sizes_csv)
    pred = tmp_path / "pred"
    rng = np.random.default_rng(0)
    for r in records:
        w, h = sizes[r.name]
        boxes, labels = unique_boxes(r)
        write_wider_results(pred, full_names[r.name], boxes * [w, h, w, h], rng.random(len(boxes)), labels=labels)
    assert all("/" in str(p.relative_to(pred)) for p in pred.rglob("*.txt"))
    result = evaluate_twoclass(pred, gt_path, image_sizes=sizes_csv)
    assert result.coords == "pixels" and result.missing == []
    assert result.num_gt["face"] > 0 and result.num_gt["person"] > 0
    for t in (0.5, 0.3):
        assert math.isclose(result.map[t], 1.0, abs_tol=1e-6), result.ap
    args = ["evaluate-2cls", "--pred", str(pred), "--gt", str(gt_path), "--image-sizes", str(sizes_csv)]
    assert cli_main(args) == 0
    assert "mAP" in capsys.readouterr().out
    # A missing file is reported by its ground-truth name; two files with one basename are ambiguous.
    first = pred / f"{full_names[records[0].name]}.txt"
    first.unlink()
    with pytest.raises(FileNotFoundError, match=records[0].name):
        evaluate_twoclass(pred, gt_path, image_sizes=sizes_csv)
    assert evaluate_twoclass(pred, gt_path, image_sizes=sizes_csv, missing="empty").missing == [records[0].name]
    other = pred / "other" / f"{records[1].name}.txt"
    other.parent.mkdir()
    other.write_text((pred / f"{full_names[records[1].name]}.txt").read_text())
    with pytest.raises(ValueError, match="same basename"):
        evaluate_twoclass(pred, gt_path, image_sizes=sizes_csv, missing="empty")
