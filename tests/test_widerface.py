"""WIDER FACE evaluation: equality with the line-by-line oracle on the real val ground truth, perfect
predictions, the result-file format, bad input, the .mat writer and the CLI."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import wider_oracle
from conftest import shared_path

from nbsrc.cli import main as cli_main
from nbsrc.data.readers.retinaface_txt import read_retinaface_labels
from nbsrc.data.readers.wider_mat import GT_FILES, WiderGroundTruth, read_wider_gt, write_wider_gt
from nbsrc.evaluation.results import (
    read_result_file,
    read_result_folder,
    result_path,
    write_wider_results,
)
from nbsrc.evaluation.widerface import evaluate, evaluate_curves, evaluate_predictions, thresholds
from nbsrc.utils import atomic_write_text

SETTINGS = ("easy", "medium", "hard")
# A fixed subset of events for the oracle comparison: a crowd event (max face count), small and large events.
# (The full val set takes the oracle over a minute; bench/bench_eval.py compares the two on it.)
ORACLE_EVENTS = ("0--Parade", "21--Festival", "39--Ice_Skating", "44--Aerobics", "61--Street_Battle")


def subset(gt: WiderGroundTruth, events) -> WiderGroundTruth:
    index = [gt.events.index(e) for e in events]
    return WiderGroundTruth(
        events=[gt.events[i] for i in index],
        names=[gt.names[i] for i in index],
        boxes=[gt.boxes[i] for i in index],
        attributes={k: [v[i] for i in index] for k, v in gt.attributes.items()},
        keep={s: [gt.keep[s][i] for i in index] for s in gt.keep},
    )


def write_raw(pred_dir: Path, name: str, rows, basename: str | None = None, count: int | None = None) -> Path:
    """A result file in the reference writer's own style (ints or floats, one space, trailing space)."""
    lines = [basename or name.rsplit("/", 1)[-1], str(len(rows) if count is None else count)]
    lines += [" ".join(str(v) for v in row) + " " for row in rows]
    path = pred_dir / f"{name}.txt"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def make_predictions(gt: WiderGroundTruth, pred_dir: Path, seed: int = 0) -> None:
    """Jittered true faces (small ones often missed), duplicates, random false positives, a few images with no
    predictions; most files through our writer (sorted), some integer files and some unsorted files."""
    rng = np.random.default_rng(seed)
    for event, names, boxes in zip(gt.events, gt.names, gt.boxes):
        for name, faces in zip(names, boxes):
            key = f"{event}/{name}"
            if rng.random() < 0.03:
                write_wider_results(pred_dir, key, np.zeros((0, 4)), np.zeros(0))
                continue
            faces = faces.astype(np.float64)
            size = np.sqrt(np.maximum(faces[:, 2], 1) * np.maximum(faces[:, 3], 1))
            det = faces[rng.random(len(faces)) < np.clip(size / 30, 0.05, 0.97)]
            scale = np.maximum(det[:, 2:], 1)
            det[:, :2] += rng.normal(0, 0.08, (len(det), 2)) * scale
            det[:, 2:] = np.maximum(det[:, 2:] * np.exp(rng.normal(0, 0.1, (len(det), 2))), 0)
            score = np.clip(0.3 + 0.6 * np.tanh(np.sqrt(scale.prod(1)) / 40) + rng.normal(0, 0.1, len(det)), 0.02, 1)
            dup = rng.random(len(det)) < 0.08
            det = np.concatenate([det, det[dup] + rng.normal(0, 1.5, (int(dup.sum()), 4)).clip(0)])
            score = np.concatenate([score, score[dup] * 0.8])
            n_fp = int(rng.integers(0, 10))
            fp = np.concatenate([rng.random((n_fp, 2)) * 1000, rng.random((n_fp, 2)) * 60 + 2], 1)
            det, score = np.concatenate([det, fp]), np.concatenate([score, rng.random(n_fp) * 0.6])
            style = rng.random()
            if style < 0.1:  # integer coordinates, float32 scores, sorted (the published test script's files)
                order = np.argsort(-score, kind="stable")
                rows = [
                    [int(x), int(y), int(w), int(h), np.float32(s)] for (x, y, w, h), s in zip(det[order], score[order])
                ]
                write_raw(pred_dir, key, rows)
            elif style < 0.15:  # unsorted: the protocol takes file order as it is
                rows = [
                    [round(x, 1), round(y, 1), round(w, 1), round(h, 1), round(s, 4)]
                    for (x, y, w, h), s in zip(det, score)
                ]
                write_raw(pred_dir, key, rows)
            else:
                write_wider_results(pred_dir, key, np.concatenate([det[:, :2], det[:, :2] + det[:, 2:]], 1), score)


@pytest.fixture(scope="module")
def real_gt() -> WiderGroundTruth:
    return read_wider_gt(shared_path("data/widerface_val_gt"))


@pytest.fixture(scope="module")
def oracle_case(real_gt, tmp_path_factory):
    root = tmp_path_factory.mktemp("wider_oracle")
    gt = subset(real_gt, ORACLE_EVENTS)
    write_wider_gt(root / "gt", gt)
    make_predictions(gt, root / "pred")
    return gt, root / "gt", root / "pred"


# ------------------------------------------------------------------------------------------- ground truth


def test_real_ground_truth_counts(real_gt):
    assert len(real_gt.events) == 61
    assert real_gt.num_images == 3226
    assert real_gt.num_faces == 39708
    assert [real_gt.num_kept(s) for s in SETTINGS] == [7211, 13319, 31958]
    assert real_gt.events[:3] == ["0--Parade", "1--Handshaking", "10--People_Marching"]
    assert real_gt.names[0][0] == "0_Parade_marchingband_1_465"
    assert real_gt.boxes[0][0].dtype == np.int32 and real_gt.boxes[0][0].shape[1] == 4
    for s in ("easy", "medium"):  # the settings nest
        inner, outer = {"easy": "medium", "medium": "hard"}[s], s
        for per_event_a, per_event_b in zip(real_gt.keep[outer], real_gt.keep[inner]):
            for a, b in zip(per_event_a, per_event_b):
                assert set(a.tolist()) <= set(b.tolist())


def test_write_wider_gt_round_trip_and_nesting(real_gt, tmp_path):
    gt = subset(real_gt, ["0--Parade", "21--Festival"])
    write_wider_gt(tmp_path, gt)
    back = read_wider_gt(tmp_path)
    assert back.events == gt.events and back.names == gt.names
    for s in SETTINGS:
        for a_event, b_event in zip(gt.keep[s], back.keep[s]):
            for a, b in zip(a_event, b_event):
                np.testing.assert_array_equal(a, b)
    for a_event, b_event in zip(gt.boxes, back.boxes):
        for a, b in zip(a_event, b_event):
            np.testing.assert_array_equal(a, b)
    # Same nesting as the real files under scipy.io.loadmat.
    real = sio.loadmat(shared_path("data/widerface_val_gt/wider_hard_val.mat"))
    ours = sio.loadmat(tmp_path / "wider_hard_val.mat")
    assert {k for k in real if not k.startswith("__")} == {k for k in ours if not k.startswith("__")}
    assert ours["event_list"].shape == (2, 1)
    assert str(ours["event_list"][0][0][0]) == "0--Parade"
    assert str(ours["file_list"][0][0][0][0][0]) == gt.names[0][0]
    assert ours["face_bbx_list"][0][0][0][0].dtype == np.int32
    assert ours["face_bbx_list"][0][0][0][0].shape == (len(gt.boxes[0][0]), 4)
    assert ours["gt_list"][0][0][0][0].shape[1] == 1 and ours["gt_list"][0][0][0][0].dtype == np.uint8
    big = [x[0] for x in ours["gt_list"][1][0][:, 0] if x.size and x.max() > 255]
    assert all(x.dtype == np.uint16 for x in big)


def test_demo_style_ground_truth_round_trip(tmp_path):
    gt = WiderGroundTruth(
        events=["0--Demo", "1--Demo"],
        names=[["0_Demo_a", "0_Demo_b"], ["1_Demo_c"]],
        boxes=[[np.array([[10, 10, 20, 20], [50, 50, 8, 8]]), np.zeros((0, 4))], [np.array([[1, 2, 30, 40]])]],
        keep={
            "easy": [[np.array([1]), np.zeros(0)], [np.array([1])]],
            "medium": [[np.array([1]), np.zeros(0)], [np.array([1])]],
            "hard": [[np.array([1, 2]), np.zeros(0)], [np.array([1])]],
        },
    )
    write_wider_gt(tmp_path, gt)
    back = read_wider_gt(tmp_path)
    assert back.events == gt.events and back.names == gt.names
    assert back.num_faces == 3 and [back.num_kept(s) for s in SETTINGS] == [2, 2, 3]
    np.testing.assert_array_equal(back.keep["hard"][0][0], [1, 2])
    assert back.boxes[0][1].shape == (0, 4)
    mat = sio.loadmat(tmp_path / "wider_face_val.mat")
    assert mat["face_bbx_list"][0][0][0][0].tolist() == [[10, 10, 20, 20], [50, 50, 8, 8]]


def test_ground_truth_folder_missing_a_file(tmp_path, real_gt):
    write_wider_gt(tmp_path, subset(real_gt, ["0--Parade"]))
    (tmp_path / "wider_medium_val.mat").unlink()
    with pytest.raises(FileNotFoundError, match="wider_medium_val.mat"):
        read_wider_gt(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_wider_gt(tmp_path / "nowhere")


def test_kept_index_outside_the_image_faces_is_named(tmp_path):
    gt = WiderGroundTruth(
        events=["0--Demo"],
        names=[["0_Demo_a", "0_Demo_b", "0_Demo_c"]],
        boxes=[[np.array([[10, 10, 20, 20]]), np.array([[1, 1, 5, 5], [9, 9, 5, 5]]), np.zeros((0, 4))]],
        keep={s: [[np.array([1]), np.array([1, 2]), np.zeros(0)]] for s in SETTINGS},
    )
    gt.keep["hard"][0][1] = np.array([2, 3])  # the second image has 2 faces
    write_wider_gt(tmp_path, gt)
    with pytest.raises(
        ValueError, match=r"wider_hard_val.mat: gt_list of 0--Demo/0_Demo_b holds indices outside 1\.\.2: 2\.\.3"
    ):
        read_wider_gt(tmp_path)


def _demo_gt_with_box(tmp_path: Path, box) -> Path:
    """A valid two-image ground truth whose face 1 of image 0_Demo_b is then replaced by `box` (float64)."""
    gt = WiderGroundTruth(
        events=["0--Demo"],
        names=[["0_Demo_a", "0_Demo_b"]],
        boxes=[[np.array([[10, 10, 20, 20]]), np.array([[1, 1, 5, 5], [9, 9, 5, 5]])]],
        keep={s: [[np.array([1]), np.array([1, 2])]] for s in SETTINGS},
    )
    write_wider_gt(tmp_path, gt)
    path = tmp_path / "wider_face_val.mat"
    mat = sio.loadmat(path)
    boxes = mat["face_bbx_list"][0][0][1][0].astype(np.float64)  # (2, 4) of 0_Demo_b
    boxes[1] = box
    mat["face_bbx_list"][0][0][1][0] = boxes
    sio.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    return tmp_path


@pytest.mark.parametrize(
    "box, problem",
    [
        ([9, 9, np.nan, 5], "a NaN or infinite value"),
        ([9, 9, 5, np.inf], "a NaN or infinite value"),
        ([9, 9, -30, 5], "a negative width or height"),
        ([9, 9, 5, -1], "a negative width or height"),
    ],
)
def test_invalid_ground_truth_box_names_file_image_and_face(tmp_path, box, problem):
    gt_dir = _demo_gt_with_box(tmp_path, box)
    with pytest.raises(ValueError, match=problem) as info:
        read_wider_gt(gt_dir)
    message = str(info.value)
    assert message.startswith(f"{gt_dir / 'wider_face_val.mat'}: image 0--Demo/0_Demo_b, face 1 "), message


def test_zero_size_ground_truth_boxes_stay(tmp_path, real_gt):
    """The protocol keeps zero-size boxes (11 in the real file) and the real file's one w = -2 box (hard)."""
    assert read_wider_gt(_demo_gt_with_box(tmp_path, [9, 9, 0, 0])).boxes[0][1][1].tolist() == [9, 9, 0, 0]
    i = real_gt.events.index("39--Ice_Skating")
    j = real_gt.names[i].index("39_Ice_Skating_iceskiing_39_583")
    assert real_gt.boxes[i][j][7].tolist() == [1026, 474, -2, 23] and 8 in real_gt.keep["hard"][i][j]


@pytest.mark.parametrize("event, image", [("..", "0_Demo_a"), ("0--Demo", "../0_Demo_a"), ("0--Demo", "/tmp/x")])
def test_ground_truth_names_that_leave_a_folder_are_refused(tmp_path, event, image):
    gt = WiderGroundTruth(
        events=[event],
        names=[[image]],
        boxes=[[np.array([[10, 10, 20, 20]])]],
        keep={s: [[np.array([1])]] for s in SETTINGS},
    )
    write_wider_gt(tmp_path, gt)
    with pytest.raises(ValueError, match="is not a plain file or folder name") as info:
        read_wider_gt(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "wider_face_val.mat"))


def test_result_path_refuses_names_that_leave_the_folder(tmp_path):
    for name in ("../../../12_Group_demo_8", "0--Parade/../../x", "/tmp/x", "..\\x"):
        with pytest.raises(ValueError, match=r"would lie outside"):
            result_path(tmp_path / "out", name)
        with pytest.raises(ValueError, match=r"would lie outside"):
            write_wider_results(tmp_path / "out", name, np.zeros((0, 4)), np.zeros(0))
    assert not any(tmp_path.parent.glob("*.txt")) and not (tmp_path / "out").exists()
    assert result_path(tmp_path, "0--Parade/a..b.jpg") == tmp_path / "0--Parade" / "a..b.txt"


def test_reading_without_attributes_gives_the_same_faces(real_gt):
    light = read_wider_gt(shared_path("data/widerface_val_gt"), attributes=False)
    assert light.attributes == {} and real_gt.attributes
    assert light.names == real_gt.names and light.events == real_gt.events
    for setting in SETTINGS:
        assert all(
            np.array_equal(a, b) for ea, eb in zip(light.keep[setting], real_gt.keep[setting]) for a, b in zip(ea, eb)
        )
    assert all(np.array_equal(a, b) for ea, eb in zip(light.boxes, real_gt.boxes) for a, b in zip(ea, eb))


# --------------------------------------------------------------------------------- protocol vs the oracle


def test_equal_to_oracle(oracle_case):
    gt, gt_dir, pred_dir = oracle_case
    t0 = time.perf_counter()
    expected = wider_oracle.evaluation(str(pred_dir), str(gt_dir))
    oracle_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = evaluate(pred_dir, gt_dir)
    ours_s = time.perf_counter() - t0
    for s in SETTINGS:
        assert abs(ours[s] - expected[s]) <= 1e-9, (s, ours[s], expected[s])
        assert 0.3 < ours[s] < 1.0  # a meaningful, imperfect detector
    assert ours_s < oracle_s


def test_iou_threshold_equal_to_oracle(real_gt, tmp_path):
    gt = subset(real_gt, ["39--Ice_Skating", "61--Street_Battle"])
    gt_dir, pred_dir = write_wider_gt(tmp_path / "gt", gt), tmp_path / "pred"
    make_predictions(gt, pred_dir, seed=2)
    expected = wider_oracle.evaluation(str(pred_dir), str(gt_dir), iou_thresh=0.7)
    ours = evaluate(pred_dir, gt_dir, iou_thresh=0.7)
    for s in SETTINGS:
        assert abs(ours[s] - expected[s]) <= 1e-9


def test_perfect_predictions(real_gt):
    """Every face predicted exactly (distinct scores): AP 1 in all settings. Two faces of the real file cannot be
    recalled by the protocol (a w = -2 box, and an exact duplicate that the first copy's match shadows); without
    those two images the result is exactly perfect, with them only Hard (which keeps both) loses them."""
    rng = np.random.default_rng(0)

    def perfect(gt):
        boxes, counts = [], []
        for per_event in gt.boxes:
            for b in per_event:
                b = b[(b[:, 2] >= 0) & (b[:, 3] >= 0)]
                boxes.append(b)
                counts.append(len(b))
        boxes = np.concatenate(boxes).astype(np.float64)
        return boxes, rng.random(len(boxes)) + 0.1, counts

    defective = {"21_Festival_Festival_21_604", "39_Ice_Skating_iceskiing_39_583"}
    clean = WiderGroundTruth(
        events=real_gt.events,
        names=[[n for n in names if n not in defective] for names in real_gt.names],
        boxes=[[b for n, b in zip(names, bs) if n not in defective] for names, bs in zip(real_gt.names, real_gt.boxes)],
        keep={
            s: [
                [k for n, k in zip(names, ks) if n not in defective]
                for names, ks in zip(real_gt.names, real_gt.keep[s])
            ]
            for s in SETTINGS
        },
    )
    result = evaluate_predictions(clean, *perfect(clean))
    assert all(math.isclose(result.ap[s], 1.0, abs_tol=1e-12) for s in SETTINGS), result.ap
    assert np.all(result.precision["hard"][result.recall["hard"] > 0] == 1.0)

    full = evaluate_predictions(real_gt, *perfect(real_gt))
    assert math.isclose(full.ap["easy"], 1.0, abs_tol=1e-12) and math.isclose(full.ap["medium"], 1.0, abs_tol=1e-12)
    assert full.recall["hard"][-1] == (31958 - 2) / 31958
    assert 0.999 < full.ap["hard"] < 1.0


def test_perfect_prediction_files_give_one(real_gt, tmp_path):
    gt = subset(real_gt, ["0--Parade", "44--Aerobics"])
    rng = np.random.default_rng(1)
    for event, names, boxes in zip(gt.events, gt.names, gt.boxes):
        for name, b in zip(names, boxes):
            b = b.astype(np.float64)
            write_wider_results(
                tmp_path,
                f"{event}/{name}",
                np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1),
                rng.random(len(b)) * 0.9 + 0.1,
            )
    ap = evaluate(tmp_path, gt)
    assert all(math.isclose(ap[s], 1.0, abs_tol=1e-12) for s in SETTINGS), ap


def test_protocol_details_on_a_tiny_case(tmp_path):
    """Hand-checked: ignore faces drop a prediction, a second hit on a recalled face is a false positive,
    images without faces add nothing, every kept face counts in the recall."""
    gt = WiderGroundTruth(
        events=["0--A"],
        names=[["a", "b", "c"]],
        boxes=[
            [np.array([[0, 0, 9, 9], [100, 100, 9, 9], [200, 200, 9, 9]]), np.array([[0, 0, 19, 19]]), np.zeros((0, 4))]
        ],
        keep={s: [[np.array([1, 2]), np.array([1]), np.zeros(0)]] for s in SETTINGS},
    )
    boxes = np.array(
        [[0, 0, 9, 9], [200, 200, 9, 9], [0, 0, 9, 9], [500, 500, 5, 5], [0, 0, 19, 19], [1, 1, 5, 5]], dtype=np.float64
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95])
    result = evaluate_predictions(gt, boxes, scores, [4, 1, 1])
    # Image a, file order: TP (face 1), dropped (ignored face 3), FP (face 1 again), FP; image b: TP; image c: none.
    # Normalized scores: (s - 0.5) / 0.45. Kept faces: 3 (a:1, a:2, b:1).
    assert thresholds()[-1] == 0.0  # the last threshold passes every prediction
    rec, prec = result.recall["easy"], result.precision["easy"]
    assert rec[-1] == pytest.approx(2 / 3) and prec[-1] == pytest.approx(2 / 4)
    oracle_dir = tmp_path / "pred"
    for name, rows in (
        ("a", [[0, 0, 9, 9, 0.9], [200, 200, 9, 9, 0.8], [0, 0, 9, 9, 0.7], [500, 500, 5, 5, 0.6]]),
        ("b", [[0, 0, 19, 19, 0.5]]),
        ("c", [[1, 1, 5, 5, 0.95]]),
    ):
        write_raw(oracle_dir, f"0--A/{name}", rows)
    write_wider_gt(tmp_path / "gt", gt)
    expected = wider_oracle.evaluation(str(oracle_dir), str(tmp_path / "gt"))
    ours = evaluate(oracle_dir, tmp_path / "gt")
    assert all(abs(ours[s] - expected[s]) <= 1e-12 for s in SETTINGS)
    assert ours["easy"] == pytest.approx(result.ap["easy"])


# ------------------------------------------------------------------------------------------ result files


def test_writer_sorts_and_reads_back(tmp_path):
    boxes = np.array([[10.0, 20.0, 30.5, 60.25], [0.0, 0.0, 5.0, 5.0], [100.0, 100.0, 180.0, 150.0]])
    scores = np.array([0.5, 0.99, 0.0213])
    path = write_wider_results(tmp_path, "7--Cheering/7_Cheering_1.jpg", boxes, scores)
    assert path == tmp_path / "7--Cheering" / "7_Cheering_1.txt" == result_path(tmp_path, "7--Cheering/7_Cheering_1")
    lines = path.read_text().splitlines()
    assert lines[:2] == ["7_Cheering_1", "3"]
    name, rows = read_result_file(path)
    assert name == "7_Cheering_1"
    np.testing.assert_allclose(rows[:, 4], [0.99, 0.5, 0.0213], rtol=1e-6)
    np.testing.assert_allclose(rows[1, :4], [10, 20, 20.5, 40.25])
    assert not list(tmp_path.rglob(".*tmp"))  # atomic: no temp file left


BAD_FILES = [
    ("4 values", "a\n1\n1 2 3 4\n", ":3: expected"),
    ("not a number", "a\n2\n1 2 3 4 0.5\n1 2 3 x 0.5\n", ":4: not a number"),
    ("nan score", "a\n1\n1 2 3 4 nan\n", ":3: NaN or infinite score"),
    ("inf coordinate", "a\n1\n1 inf 3 4 0.5\n", ":3: NaN or infinite coordinate"),
    ("negative width", "a\n1\n1 2 -3 4 0.5\n", ":3: negative width or height"),
    ("negative height", "a\n1\n10 20 3 -0.5 0.5\n", ":3: negative width or height"),
    ("count mismatch", "a\n3\n1 2 3 4 0.5\n", ":2: declares 3 boxes but the file has 1"),
    ("bad count", "a\nthree\n", ":2: expected the number of boxes"),
    ("wrong name", "zzz\n0\n", ":1: name line 'zzz' does not match"),
    ("no count line", "a\n", "expected a name line and a count line"),
    ("inconsistent columns", "a\n2\n1 2 3 4 0.5\n1 2 3 4 0.5 1\n", ":4: expected 5 values"),
]


@pytest.mark.parametrize("label,text,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_result_files_name_file_and_line(tmp_path, label, text, message):
    good = "b\n1\n1 2 3 4 0.5\n"
    (tmp_path / "0--A").mkdir()
    (tmp_path / "0--A" / "a.txt").write_text(text)
    (tmp_path / "0--A" / "b.txt").write_text(good)
    with pytest.raises(ValueError) as info:
        read_result_folder(tmp_path, ["0--A/b", "0--A/a"])
    assert str(tmp_path / "0--A" / "a.txt") in str(info.value)
    assert message in str(info.value)


def test_missing_and_unknown_files(tmp_path, real_gt, caplog):
    gt = subset(real_gt, ["0--Parade"])
    write_wider_gt(tmp_path / "gt", gt)
    pred = tmp_path / "pred"
    make_predictions(gt, pred)
    names = [f"0--Parade/{n}" for n in gt.names[0]]
    full = evaluate(pred, tmp_path / "gt")
    (pred / f"{names[3]}.txt").unlink()
    (pred / f"{names[7]}.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        evaluate(pred, tmp_path / "gt")
    assert "2 of 115 images have no result file" in str(info.value)
    assert names[3] in str(info.value) and names[7] in str(info.value)
    with caplog.at_level(logging.WARNING, logger="nbsrc.evaluation.results"):
        allowed = evaluate_curves(pred, tmp_path / "gt", missing="empty")
    assert allowed.missing == [names[3], names[7]]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 of 115 images have no result file" in m and "counted as empty" in m for m in warned)
    for name in (names[3], names[7]):
        write_wider_results(pred, name, np.zeros((0, 4)), np.zeros(0))
    assert evaluate(pred, tmp_path / "gt") == allowed.ap
    assert allowed.ap != full
    write_raw(pred, "0--Parade/not_an_image", [[1, 2, 3, 4, 0.5]])
    with pytest.raises(ValueError, match=r"match no ground-truth image.*not_an_image\.txt"):
        evaluate(pred, tmp_path / "gt")


def test_class_column_files_evaluate_faces_only(oracle_case, tmp_path):
    gt, gt_dir, pred_dir = oracle_case
    expected = evaluate(pred_dir, gt_dir)
    rng = np.random.default_rng(5)
    for event, names in zip(gt.events, gt.names):
        for name in names:
            _, rows = read_result_file(pred_dir / event / f"{name}.txt")
            persons = np.concatenate([rng.random((3, 2)) * 500, rng.random((3, 2)) * 100 + 1, rng.random((3, 1))], 1)
            both = np.concatenate([np.c_[rows, np.ones(len(rows))], np.c_[persons, np.full(3, 2.0)]])
            lines = [name, str(len(both))] + [" ".join(repr(float(v)) for v in r[:5]) + f" {int(r[5])}" for r in both]
            atomic_write_text(tmp_path / event / f"{name}.txt", "\n".join(lines) + "\n")
    # Person rows are left out before the score normalization: the same AP as the face-only files.
    ours = evaluate(tmp_path, gt_dir)
    for s in SETTINGS:
        assert abs(ours[s] - expected[s]) <= 1e-9


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate(oracle_case, tmp_path, capsys):
    _, gt_dir, pred_dir = oracle_case
    out_json, out_png = tmp_path / "ap.json", tmp_path / "pr.png"
    code = cli_main(
        ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out_json), "--plot", str(out_png)]
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "Val AP" in line]
    ap = evaluate(pred_dir, gt_dir)
    assert lines[0] == f"Easy   Val AP: {ap['easy']:.4f}"
    assert lines[1] == f"Medium Val AP: {ap['medium']:.4f}"
    assert lines[2] == f"Hard   Val AP: {ap['hard']:.4f}"
    data = json.loads(out_json.read_text())
    assert data["hard"] == pytest.approx(ap["hard"]) and len(data["precision"]["easy"]) == 1000
    assert out_png.stat().st_size > 1000


def test_cli_evaluate_errors(oracle_case, tmp_path, capsys):
    _, gt_dir, pred_dir = oracle_case
    assert cli_main(["evaluate", "--pred", str(tmp_path), "--gt", str(gt_dir)]) == 2
    assert "have no result file" in capsys.readouterr().err
    for name in GT_FILES:
        (tmp_path / "gt").mkdir(exist_ok=True)
        if name != "wider_easy_val.mat":
            (tmp_path / "gt" / name).write_bytes((Path(gt_dir) / name).read_bytes())
    assert cli_main(["evaluate", "--pred", str(pred_dir), "--gt", str(tmp_path / "gt")]) == 2
    assert "wider_easy_val.mat" in capsys.readouterr().err
    assert cli_main(["evaluate", "--pred", str(tmp_path), "--gt", str(gt_dir), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "Easy   Val AP: 0.0000" in out and "without a result file" in out


# ------------------------------------------------------------------------------------- demo dataset .mat


def test_demo_dataset_ground_truth(demo_root, tmp_path, capsys):
    """The demo's .mat files hold its val labels: the labels as predictions give 1.0; the CLI reads them too."""
    gt_dir = demo_root / "val" / "ground_truth"
    gt = read_wider_gt(gt_dir)
    records = read_retinaface_labels(demo_root / "val" / "labels.txt")
    assert sorted(gt.image_names()) == sorted(r.name.rsplit(".", 1)[0] for r in records)
    assert gt.num_faces == sum(len(r.boxes) for r in records) > 0
    rng = np.random.default_rng(0)
    for r in records:
        write_wider_results(tmp_path / "perfect", r.name, r.boxes, rng.random(len(r.boxes)) * 0.9 + 0.1)
    ap = evaluate(tmp_path / "perfect", gt_dir)
    assert all(math.isclose(ap[s], 1.0, abs_tol=1e-12) for s in SETTINGS), ap
    # Half of the faces found, plus false positives: the oracle agrees on the demo files as well.
    for r in records:
        keep = rng.random(len(r.boxes)) < 0.5
        fp = np.concatenate([rng.random((3, 2)) * 500, rng.random((3, 2)) * 500 + 20], 1)
        boxes = np.concatenate([r.boxes[keep], np.sort(fp.reshape(3, 2, 2), axis=1).reshape(3, 4)])
        write_wider_results(tmp_path / "half", r.name, boxes, rng.random(len(boxes)))
    ours = evaluate(tmp_path / "half", gt_dir)
    expected = wider_oracle.evaluation(str(tmp_path / "half"), str(gt_dir))
    assert all(abs(ours[s] - expected[s]) <= 1e-9 for s in SETTINGS)
    assert all(0.0 < ours[s] < 1.0 for s in SETTINGS)
    assert cli_main(["evaluate", "--pred", str(tmp_path / "perfect"), "--gt", str(gt_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "Easy   Val AP: 1.0000",
        "Medium Val AP: 1.0000",
        "Hard   Val AP: 1.0000",
    ]
