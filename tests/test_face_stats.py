"""Faces in the network frame, loaded from dataset labels, and summarized per split (`nbsrc.face_stats`)."""

from __future__ import annotations

import numpy as np
import pytest

from nbsrc import face_stats
from nbsrc.config import get_preset
from nbsrc.data.defects import DataError
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.records import ImageRecord


def test_face_boxes_net_maps_frames():
    stretched = ImageRecord("a/b", boxes=[[100, 50, 300, 250]], image_size=(1000, 500))
    normalized = ImageRecord("c", boxes=[[0.5, 0.5, 1.0, 1.0]], normalized=True)
    other_class = ImageRecord("d", boxes=[[0, 0, 10, 10]], labels=[2], image_size=(640, 640))
    boxes = face_stats.face_boxes_net([stretched, normalized, other_class], net_size=(640, 640))
    np.testing.assert_allclose(boxes, [[64, 64, 192, 320], [320, 320, 640, 640]])
    letterbox = face_stats.face_boxes_net([stretched], policy="letterbox")
    np.testing.assert_allclose(letterbox, [[64, 192, 192, 320]])  # scale 0.64, pad (0, 160)
    in_frame = face_stats.face_boxes_net([ImageRecord("e", boxes=[[10, 10, 20, 20]])], label_frame=640)
    np.testing.assert_allclose(in_frame, [[10, 10, 20, 20]])
    sizes = face_stats.face_boxes_net([ImageRecord("e", boxes=[[0, 0, 100, 100]])], image_sizes={"e": (200, 100)})
    np.testing.assert_allclose(sizes, [[0, 0, 320, 640]])
    assumed = face_stats.face_boxes_net([ImageRecord("e", boxes=[[0, 0, 512, 512]])], assume_width=1024)
    np.testing.assert_allclose(assumed, [[0, 0, 320, 320]])
    with pytest.raises(ValueError, match="labels.txt:7.*original image size"):
        face_stats.face_boxes_net([ImageRecord("x/y", boxes=[[0, 0, 5, 5]], source="labels.txt:7")])


def test_load_faces_from_dataset_labels(tmp_path):
    records = [
        ImageRecord("0--a/x", boxes=[[100, 100, 200, 300], [0, 0, 0, 5]]),  # the second is degenerate
        ImageRecord("0--a/y", boxes=np.zeros((0, 4))),
    ]
    (tmp_path / "val").mkdir()
    write_retinaface_labels(tmp_path / "val" / "labels.txt", records)
    (tmp_path / "image_sizes.csv").write_text("name,width,height\n0--a/x,1000,500\n0--a/y,640,640\n")
    faces = face_stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="val")
    assert faces["images"] == 2 and [len(b) for b in faces["per_image"]] == [1, 0]
    np.testing.assert_allclose(faces["boxes"], [[64, 128, 128, 384]])
    with pytest.raises(FileNotFoundError, match="no label file found"):
        face_stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="train")
    (tmp_path / "image_sizes.csv").unlink()
    with pytest.raises(ValueError, match="original image size is unknown"):  # never guessed for dataset labels
        face_stats.load_faces(get_preset("latent-r18"), dataset_root=tmp_path, split="val")


def test_load_faces_checks_labels_as_the_datasets_do(tmp_path):
    """A repeated image name is a data defect (`nbsrc.data.split_index.index_split`), under data.on_error."""
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "labels.txt").write_text("# 0--a/x.jpg\n10 10 20 20\n# 0--a/x.jpg\n5 5 9 9\n")
    (tmp_path / "image_sizes.csv").write_text("name,width,height\n0--a/x,1000,500\n")
    cfg = get_preset("latent-r18")
    with pytest.raises(DataError, match=r"labels.txt:3: image '0--a/x' already listed"):
        face_stats.load_faces(cfg, dataset_root=tmp_path)
    faces = face_stats.load_faces(cfg.replace(**{"data.on_error": "skip"}), dataset_root=tmp_path)
    assert faces["images"] == 1
    np.testing.assert_allclose(faces["boxes"], [[6.4, 12.8, 19.2, 38.4]], rtol=1e-6)


def test_dataset_summary():
    per_image = [np.array([[0, 0, 10, 10], [0, 0, 40, 40]]), np.zeros((0, 4)), np.array([[0, 0, 100, 100]])]
    (row,) = face_stats.dataset_summary({"val": per_image}, {"val": {75: 3, 12: 2}})
    assert row["images"] == 3 and row["faces"] == 3 and row["images without faces"] == 1
    assert row["faces/image"] == pytest.approx(1.0) and row["faces < 16 px"] == 1
    assert row["median size (px)"] == pytest.approx(40.0)
    assert row["latent_12"] == 2 and row["latent_75"] == 3
