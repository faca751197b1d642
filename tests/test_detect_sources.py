"""``detect --source``: a folder of images (recursively), a video, one image; batching in input order, the
reader and writer threads, unreadable files reported, JSON lines, bad sources (`nbsrc.detect_sources`)."""

from __future__ import annotations

import json
import logging
import threading

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from nbsrc.cli import main
from nbsrc.detect_sources import (
    Source,
    _detect_in_order,
    _Item,
    _Reader,
    check_source_save,
    detect_source,
    face_record,
    open_source,
)
from nbsrc.detector import Detector

SIZE = 256  # the astronaut at 256x256: one face, about 46 px wide
FACE = np.array([177, 56, 270, 176]) * SIZE / 512  # its box in the published detector's output, xyxy


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.published()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.resize(skdata.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)  # (256, 256, 3) RGB


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


@pytest.fixture
def folder(tmp_path, astronaut):
    """Nested images (two of one size, one of another), an unreadable .jpg, a text file, a hidden file."""
    root = tmp_path / "photos"
    _write(root / "a.png", astronaut)
    _write(root / "trip" / "b.png", astronaut[:, ::-1])
    _write(root / "trip" / "day 2" / "c.jpg", astronaut[:200, :240])
    (root / "trip" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "trip" / "notes.txt").write_text("no image here\n")
    (root / ".hidden.png").write_bytes(b"")
    return root


def _iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    w, h = np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2])
    inter = max(w, 0) * max(h, 0)
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def _read_jsonl(path) -> list[dict]:
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == {"source", "width", "height", "faces"}
        for face in record["faces"]:
            assert set(face) == {"box", "score", "label", "landmarks"}
            assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0.6 < face["score"] <= 1
    return records


def test_folder(tmp_path, folder, detector, caplog):
    out, jsonl = tmp_path / "annotated", tmp_path / "faces.jsonl"
    with caplog.at_level(logging.INFO, logger="nbsrc"):
        rc = main(["detect", "--source", str(folder), "--save", str(out), "--json", str(jsonl), "--batch-size", "1"])
    assert rc == 0
    assert "1 unreadable, skipped: trip/broken.jpg" in caplog.text
    assert "1 file(s) without an image extension left out: trip/notes.txt" in caplog.text
    assert "images/s" in caplog.text
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "trip/b.png", "trip/day 2/c.jpg"]  # same relative paths, nothing else
    records = _read_jsonl(jsonl)
    assert [r["source"] for r in records] == ["a.png", "trip/b.png", "trip/day 2/c.jpg"]
    for record in records:
        image = cv2.imread(str(folder / record["source"]))[:, :, ::-1]
        assert (record["height"], record["width"]) == image.shape[:2]
        # batch size 1: exactly what Detector.detect gives, in the format detect --image prints
        assert record["faces"] == [face_record(d) for d in detector.detect(image, conf=0.6, nms=0.4)]
        assert cv2.imread(str(out / record["source"])).shape == image.shape
    assert _iou(records[0]["faces"][0]["box"], FACE) > 0.8

    # detect --image prints the same faces for the same file
    capsys_out = tmp_path / "one.json"
    assert main(["detect", "--image", str(folder / "a.png"), "--json", str(capsys_out)]) == 0
    assert json.loads(capsys_out.read_text())["detections"] == records[0]["faces"]


def test_folder_batched_equals_one_by_one(folder, detector):
    source = open_source(folder)
    assert source.kind == "folder" and len(source) == 4 and source.ignored == ("trip/notes.txt",)
    stats = detect_source(detector, source, batch_size=8, progress=False)
    assert (stats.items, [n for n, _ in stats.unreadable]) == (3, ["trip/broken.jpg"])
    assert stats.unreadable[0][1] == "not an image OpenCV can decode" and stats.images_per_s > 0


def test_batches_hold_equal_sizes_in_input_order():
    """The look-ahead groups equal shapes (at most batch_size), yields every item in input order."""
    calls = []

    class Fake:
        def detect_batch(self, images, conf, nms):
            assert len({im.shape for im in images}) == 1 and len(images) <= 2
            calls.append([int(im[0, 0, 0]) for im in images])
            return [[{"box": (0.0, 0.0, 1.0, 1.0), "score": float(im[0, 0, 0]), "label": 1}] for im in images]

    shapes = [(4, 4), (5, 5), (4, 4), None, (6, 6), (4, 4), (5, 5), (6, 6), (7, 7)]
    items = [
        _Item(i, i, None if s is None else np.full((*s, 3), i, np.uint8), None if s else "broken")
        for i, s in enumerate(shapes)
    ]
    done = list(_detect_in_order(Fake(), iter(items), batch_size=2, conf=0.5, nms=0.4))
    assert [it.index for it in done] == list(range(len(shapes)))
    assert all(it.faces[0]["score"] == it.index for it in done if it.image is not None)
    assert calls[0] == [0, 2]  # the two 4x4 images ran together
    assert sorted(i for call in calls for i in call) == [0, 1, 2, 4, 5, 6, 7, 8]


def test_reader_thread_hands_on_errors():
    def items():
        yield 1
        raise OSError("disk gone")

    reader = _Reader(items(), depth=1)
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for value in reader:
            got.append(value)
    reader.close()
    assert got == [1]
    assert not any(t.name == "nbsrc-detect-reader" for t in threading.enumerate())


def test_video(tmp_path, astronaut, caplog):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (SIZE, SIZE))
    assert writer.isOpened()
    for shift in range(5):
        writer.write(np.ascontiguousarray(np.roll(astronaut, 4 * shift, axis=1)[:, :, ::-1]))
    writer.release()

    out, jsonl = tmp_path / "out" / "clip.mp4", tmp_path / "clip.jsonl"
    with caplog.at_level(logging.INFO, logger="nbsrc"):
        rc = main(["detect", "--source", str(video), "--save", str(out), "--json", str(jsonl), "--batch-size", "2"])
    assert rc == 0 and "5 frames in" in caplog.text and "frames/s" in caplog.text
    records = _read_jsonl(jsonl)
    assert [r["source"] for r in records] == [0, 1, 2, 3, 4]
    for shift, record in enumerate(records):
        assert (record["width"], record["height"]) == (SIZE, SIZE)
        best = max(_iou(f["box"], FACE + [4 * shift, 0, 4 * shift, 0]) for f in record["faces"])
        assert best > 0.6, record
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    capture.release()
    assert len(frames) == 5 and frames[0].shape == (SIZE, SIZE, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]  # no temporary file left


def test_one_image(tmp_path, folder):
    out, jsonl = tmp_path / "vis.jpg", tmp_path / "one.jsonl"
    assert main(["detect", "--source", str(folder / "a.png"), "--save", str(out), "--json", str(jsonl)]) == 0
    (record,) = _read_jsonl(jsonl)
    assert record["source"] == "a.png" and len(record["faces"]) == 1 and cv2.imread(str(out)).shape == (256, 256, 3)


def test_bad_sources(tmp_path, folder, capsys):
    missing = tmp_path / "no such folder"
    # the source is checked before the checkpoint is read: the missing weight file is not what is reported
    rc = main(["detect", "--source", str(missing), "--save", str(tmp_path / "out"), "--weight", "nope.pth"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"--source {missing}: no such file or folder (expected a folder of images, a video file or an image)" in err
    assert not (tmp_path / "out").exists()

    cases = [
        (["--source", str(folder)], "--source needs --save OUT"),
        (["--source", str(folder), "--save", str(folder)], "is the source folder"),
        (["--source", str(folder), "--save", str(folder / "a.png")], "exists and is not a folder"),
        (["--source", str(folder / "a.png"), "--save", str(tmp_path / "x.txt")], "cannot write '.txt' images"),
        (["--source", str(folder / "trip" / "notes.txt"), "--json", str(tmp_path / "x.jsonl")], "not a video"),
        (["--source", str(folder / "trip" / "broken.jpg"), "--json", str(tmp_path / "x.jsonl")], "not an image Open"),
        (["--source", str(folder), "--json", str(tmp_path / "x.jsonl"), "--orig-size", "4", "4"], "--latent only"),
        (["--source", str(folder), "--json", str(tmp_path / "x.jsonl"), "--batch-size", "0"], "--batch-size must"),
    ]
    for argv, message in cases:
        assert main(["detect", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.jsonl").exists()  # nothing half-written by the unreadable image
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files in this folder or below"):
        open_source(empty)


def test_outputs_never_replace_inputs(tmp_path, folder):
    _write(folder / "trip" / "a.png", np.zeros((8, 8, 3), np.uint8))
    # into <folder>/trip, the annotated a.png would be written over the input trip/a.png
    with pytest.raises(ValueError, match=r"the annotated a.png would replace the input image .*trip/a.png"):
        check_source_save(open_source(folder), folder / "trip")
    check_source_save(open_source(folder), tmp_path / "elsewhere")


def test_output_folder_inside_source_is_not_searched(tmp_path, folder):
    (folder / "annotated").mkdir()
    _write(folder / "annotated" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert "annotated/a.png" in open_source(folder).files
    source = open_source(folder, save=folder / "annotated")
    assert isinstance(source, Source) and not any(f.startswith("annotated/") for f in source.files)
