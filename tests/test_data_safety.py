"""Runs never start on data they have not checked, and nothing is silently capped or replaced.

- NaN/Inf latents are found when a split is indexed (cached by path, size and modification time), with the
  ``on_error=skip`` / ``check-data`` hint; under ``skip`` they are left out and counted.
- A sample that fails when it is loaded is left out of its batch under ``skip`` (counted and logged), never
  replaced by another sample.
- Prediction does not inherit a checkpoint's training-only data settings; a cap is asked for and reported.
- ``key=value`` overrides stand anywhere among the options of ``train`` and ``predict``.
- Box defects name the box's own ``file:line``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nbsrc.checkpoint import save_checkpoint
from nbsrc.cli import main as cli_main
from nbsrc.commands.train import config_from_argv
from nbsrc.config import get_preset
from nbsrc.data import latent_values
from nbsrc.data.collate import detection_collate
from nbsrc.data.defects import DataError, DefectLog, check_boxes
from nbsrc.data.latent_dataset import LatentWiderFace
from nbsrc.data.loaders import build_dataset
from nbsrc.data.readers import read_labels
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.records import ImageRecord
from nbsrc.data.rgb_dataset import WiderFaceRGB
from nbsrc.detector import Detector
from nbsrc.engine import evaluate, train_one_epoch
from nbsrc.evaluation.predict import build_predict_dataset, predict_dataset
from nbsrc.loss import build_loss
from nbsrc.model import build_model

NAMES = ("0--Parade/0_Parade_a", "0--Parade/0_Parade_b", "12--Group/12_Group_c", "12--Group/12_Group_d")
SIDE = 8  # latent cells: 8x8 latents describe a 128x128 frame
FRAME = SIDE * 16
TINY = {
    "model.pretrained": "none",
    "model.out_channels": 8,
    "data.image_size": FRAME,
    "data.label_frame": FRAME,
    "eval.keep_top_k": 20,
}


def make_split(root: Path, names=NAMES) -> Path:
    """A nested latent split (labels in the 128 frame, one face per image, 8x8 float16 latents)."""
    split = root / "val"
    rng = np.random.default_rng(0)
    records = []
    for name in names:
        path = latent_file(split, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.standard_normal((1, 256, SIDE, SIDE)).astype(np.float16))
        records.append(ImageRecord(name, boxes=[[10, 20, 60, 90]]))
    write_retinaface_labels(split / "labels.txt", records)
    return split


def latent_file(split: Path, name: str) -> Path:
    return split / "latent" / name.split("/")[1] / "latent_75.npy"


def put_nan(path: Path) -> None:
    array = np.load(path)
    array[0, 5, 1, 2] = np.nan
    np.save(path, array)


def count_reads(monkeypatch) -> list[Path]:
    reads: list[Path] = []
    real = latent_values.count_file_non_finite

    def counting(path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(latent_values, "count_file_non_finite", counting)
    return reads


# ---- values checked when a split is indexed ----------------------------------------------------------------
def test_a_nan_latent_stops_indexing_with_the_hint(tmp_path, caplog):
    split = make_split(tmp_path)
    bad = latent_file(split, NAMES[2])
    put_nan(bad)
    with pytest.raises(DataError) as error:
        LatentWiderFace(split, label_frame=FRAME)
    message = str(error.value)
    assert message.startswith(f"{bad}: 1 NaN/Inf values in the latent")
    assert "data.on_error=skip" in message and "check-data" in message
    assert error.value.defect.kind == "non_finite"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nbsrc"):
        skipping = LatentWiderFace(split, label_frame=FRAME, on_error="skip")
    assert skipping.names == [NAMES[0], NAMES[1], NAMES[3]]  # left out, not replaced
    assert [d.path for d in skipping.log.of_kind("non_finite")] == [str(bad)]
    assert "1 non_finite" in caplog.text and "left out" in caplog.text
    assert NAMES[2] in LatentWiderFace(split, label_frame=FRAME, check_values=False).names  # headers only


def test_value_check_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    split = make_split(tmp_path)
    reads = count_reads(monkeypatch)
    LatentWiderFace(split, label_frame=FRAME)
    assert len(reads) == len(NAMES)
    cache = json.loads((split / latent_values.CACHE_NAME).read_text())
    assert sorted(cache["files"]) == sorted(latent_file(split, n).relative_to(split).as_posix() for n in NAMES)
    reads.clear()
    LatentWiderFace(split, label_frame=FRAME)
    assert reads == [], "a second run reads no latent values"

    changed = latent_file(split, NAMES[1])
    put_nan(changed)  # same size: the modification time tells
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="NaN/Inf"):
        LatentWiderFace(split, label_frame=FRAME)
    assert reads == [changed]
    reads.clear()
    with pytest.raises(DataError, match="NaN/Inf"):  # the verdict is cached too
        LatentWiderFace(split, label_frame=FRAME)
    assert reads == []


def test_value_cache_goes_to_the_cache_folder(tmp_path, monkeypatch):
    split = make_split(tmp_path)
    reads = count_reads(monkeypatch)
    cache_dir = tmp_path / "cache"
    LatentWiderFace(split, label_frame=FRAME, values_cache=cache_dir)
    [written] = list((cache_dir / "latent-values").glob("val-*.json"))
    assert not (split / latent_values.CACHE_NAME).exists()
    assert len(json.loads(written.read_text())["files"]) == len(NAMES)
    reads.clear()
    LatentWiderFace(split, label_frame=FRAME, values_cache=cache_dir)
    assert reads == []


# ---- load-time failures under skip: left out of the batch, counted, never replaced -----------------------------
def test_a_latent_broken_after_indexing_is_left_out_of_its_batch(tmp_path, caplog):
    split = make_split(tmp_path)
    dataset = LatentWiderFace(split, label_frame=FRAME, on_error="skip")
    raising = LatentWiderFace(split, label_frame=FRAME)
    bad = latent_file(split, NAMES[1])
    put_nan(bad)
    with pytest.raises(ValueError, match=rf"^{bad}: 1 NaN/Inf values"):
        raising[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        assert dataset[1] is None
    assert "left out of its batch" in caplog.text and str(bad) in caplog.text and "1 non_finite" in caplog.text
    assert dataset.log.at_load == {"non_finite": 1} and dataset.log.of_kind("non_finite")
    latent_file(split, NAMES[3]).unlink()
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=detection_collate))
    assert [b["names"] for b in batches] == [[NAMES[0]], [NAMES[2]]]  # smaller batches, no stand-in
    assert [b["left_out"] for b in batches] == [1, 1] and batches[0]["inputs"].shape[0] == 1
    assert dataset.log.at_load == {"non_finite": 2, "unreadable_latent": 1}


def test_training_and_validation_pass_over_a_batch_left_out_entirely(tmp_path):
    split = make_split(tmp_path)
    dataset = LatentWiderFace(split, label_frame=FRAME, on_error="skip")
    for name in NAMES[:2]:
        latent_file(split, name).unlink()
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=detection_collate))
    assert batches[0] is None and batches[1]["names"] == list(NAMES[2:])
    torch.manual_seed(0)
    cfg = get_preset("latent-mnet").replace(**TINY)
    model, cpu = build_model(cfg), torch.device("cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, build_loss(cfg), batches, optimizer, device=cpu, progress=False)
    assert (stats["steps"], stats["images"]) == (1, 2)
    assert evaluate(model, batches, device=cpu, progress=False)["images"] == 2


def test_collate_leaves_out_none():
    sample = {
        "input": torch.zeros(256, SIDE, SIDE),
        "boxes": torch.zeros(1, 4),
        "labels": torch.ones(1, dtype=torch.int64),
        "landmarks": torch.zeros(1, 5, 2),
        "landmarks_valid": torch.zeros(1, dtype=torch.bool),
        "name": "a",
    }
    assert detection_collate([None, None]) is None
    batch = detection_collate([None, sample])
    assert batch["names"] == ["a"] and batch["left_out"] == 1 and batch["inputs"].shape == (1, 256, SIDE, SIDE)


def test_an_image_gone_after_indexing_is_left_out(tmp_path, caplog):
    import cv2

    split = tmp_path / "val"
    for name in NAMES[:2]:
        path = split / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((100, 120, 3), 128, np.uint8))
    write_retinaface_labels(split / "labels.txt", [ImageRecord(n, boxes=[[10, 10, 50, 60]]) for n in NAMES[:2]])
    dataset = WiderFaceRGB(split, train=False, image_size=64, on_error="skip")
    (split / "images" / f"{NAMES[0]}.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        assert dataset[0] is None
    assert dataset[1]["name"] == NAMES[1]
    assert dataset.log.at_load == {"missing_image": 1} and "left out of its batch" in caplog.text
    with pytest.raises(DataError, match="no image file"):
        WiderFaceRGB(split, train=False, image_size=64)  # indexing names the missing file under raise


# ---- prediction: no inherited cap, explicit caps reported, left-out images counted ---------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A latent model for 8x8 latents, saved with training-only data settings (a cap, crops, flips)."""
    torch.manual_seed(0)
    cfg = get_preset("latent-mnet").replace(**TINY)
    trained = cfg.replace(**{"data.max_images": 1, "data.latent_crop": 4, "data.latent_flip": True})
    path = tmp_path_factory.mktemp("tiny") / "latent.pth"
    save_checkpoint(path, model=build_model(cfg), config=trained)
    return path


def test_prediction_does_not_inherit_training_only_settings(tmp_path, tiny_checkpoint):
    split = make_split(tmp_path)
    detector = Detector.from_checkpoint(tiny_checkpoint)
    d = detector.cfg.data
    assert (d.max_images, d.latent_crop, d.latent_flip, d.augment) == (None, None, False, False)
    dataset = build_predict_dataset(detector.cfg, tmp_path, "val")
    assert dataset.names == list(NAMES)

    detector.cfg = detector.cfg.replace(**{"data.on_error": "skip"})
    dataset = build_predict_dataset(detector.cfg, tmp_path, "val")
    put_nan(latent_file(split, NAMES[2]))  # broken after indexing: left out under skip, counted
    stats = predict_dataset(detector, dataset, tmp_path / "pred", batch_size=1, progress=False)
    assert stats.left_out == [NAMES[2]] and stats.written == 3 and not stats.capped
    assert "1 left out (failed to load)" in stats.summary()


def test_predict_command_caps_only_when_asked(tmp_path, tiny_checkpoint, capsys):
    make_split(tmp_path)
    base = ["predict", "--weight", str(tiny_checkpoint), "--device", "cpu", "--no-progress"]
    # options and key=value overrides intermixed
    args = [*base, "eval.keep_top_k=10", "--dataset_root", str(tmp_path), "data.max_images=2", "--out"]
    assert cli_main([*args, str(tmp_path / "a"), "--batch_size", "2"]) == 0
    assert "predicted 2 of 4 images (max_images=2)" in capsys.readouterr().out
    assert len(list((tmp_path / "a").rglob("*.txt"))) == 2
    assert cli_main([*base, "--dataset_root", str(tmp_path), "--out", str(tmp_path / "b"), "--max_images", "3"]) == 0
    assert "predicted 3 of 4 images (max_images=3)" in capsys.readouterr().out
    assert cli_main([*base, "--dataset_root", str(tmp_path), "--out", str(tmp_path / "c"), "model.bridge=nearest"]) == 2
    assert "eval.* and data.* config overrides" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--dataset_root", str(tmp_path), "--out", str(tmp_path / "d"), "--bogus", "1"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ---- train: overrides anywhere among the options ---------------------------------------------------------------
def test_train_overrides_stand_anywhere(tmp_path, capsys):
    argv = ["--preset", "latent-r50", "model.pretrained=none", "--dataset_root", str(tmp_path), "lr=0.01"]
    cfg, _ = config_from_argv([*argv, "--epochs", "3", "train.schedule=cosine"])
    assert (cfg.model.pretrained, cfg.train.lr, cfg.train.epochs, cfg.train.schedule) == ("none", 0.01, 3, "cosine")
    assert cfg.data.dataset_root == str(tmp_path.resolve())
    missing = tmp_path / "missing"
    argv = ["train", "--preset", "latent-r50", "model.pretrained=none", "--dataset_root", str(missing), "--check_only"]
    assert cli_main(argv) == 2
    assert f"data.dataset_root {missing} not found" in capsys.readouterr().err  # parsed, then the data is checked
    with pytest.raises(SystemExit):
        cli_main(["train", "model.pretrained=none", "--bogus", "lr=0.1"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ---- box defects name the box's own line ---------------------------------------------------------------------
def test_box_defects_name_the_box_line(tmp_path):
    labels = tmp_path / "label.txt"
    labels.write_text("# 0--Parade/a.jpg\n10 10 20 20\n\n300 10 20 20\n# 0--Parade/b.jpg\n5 5 0 9\n")
    a, b = read_labels(labels)
    assert a.box_lines.tolist() == [2, 4] and a.source == f"{labels}:1"
    log = DefectLog("skip")
    check_boxes(a, log, (100, 100))
    check_boxes(b, log, (100, 100))
    assert [(d.kind, d.where) for d in log.defects] == [
        ("box_outside_frame", f"{labels}:4"),
        ("degenerate_box", f"{labels}:6"),
    ]

    bbx = tmp_path / "wider_face_val_bbx_gt.txt"
    bbx.write_text("0--Parade/a.jpg\n2\n1 1 5 5 0 0 0 0 0 0\n1 1 0 5 0 0 0 0 0 0\n")
    [record] = read_labels(bbx, "wider_bbx")
    log = DefectLog("skip")
    check_boxes(record, log, None)
    assert [d.where for d in log.defects] == [f"{bbx}:4"]

    per_image = tmp_path / "labelstxt"
    per_image.mkdir()
    (per_image / "x.txt").write_text("1 1 5 5\n\n1 1 5 -1\n")
    [record] = read_labels(per_image, "per_image")
    assert record.box_source(1) == f"{per_image / 'x.txt'}:3"

    twoclass = tmp_path / "twoclass.txt"
    twoclass.write_text("# a.jpg\n1 0.1 0.1 0.2 0.2\n# b.jpg\n2 0.1 0.1 0.5 0.5\n# a.jpg\n1 0.5 0.5 0 0.1\n")
    [a, _] = read_labels(twoclass, "twoclass")
    log = DefectLog("skip")
    check_boxes(a, log, (1, 1))
    assert a.box_lines.tolist() == [2, 6] and [d.where for d in log.defects] == [f"{twoclass}:6"]


def test_dataset_raise_names_the_box_line(tmp_path):
    split = make_split(tmp_path, NAMES[:2])
    labels = split / "labels.txt"
    lines = labels.read_text().splitlines()
    lines[3] = lines[3].replace("10 20 50 70", "100 20 50 70", 1)  # the face of 0_Parade_b: x2 = 150 > 128
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{labels}:4: face 0 of '{NAMES[1]}': box \(100, 20, 150, 90\) reaches"):
        LatentWiderFace(split, label_frame=FRAME)


def test_which_splits_are_value_checked_when_indexed(tmp_path, monkeypatch):
    """``data.check_values=eval`` (default): the validation split is checked when indexed; training latents are
    checked as they load (they are read then anyway), with the same hint; ``all`` checks both up front."""
    split = make_split(tmp_path)
    shutil.copytree(split, tmp_path / "train")
    put_nan(latent_file(split, NAMES[2]))
    put_nan(latent_file(tmp_path / "train", NAMES[2]))
    cfg = get_preset("latent-r18", **TINY, **{"data.dataset_root": str(tmp_path), "data.cache_dir": str(tmp_path)})
    reads = count_reads(monkeypatch)
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == len(NAMES) and reads == []  # nothing read while indexing the training split
    with pytest.raises(ValueError, match=r"NaN/Inf.*data.on_error=skip.*check-data"):
        train[train.names.index(NAMES[2])]
    with pytest.raises(DataError, match="NaN/Inf"):
        build_dataset(cfg, "val", train=False)
    with pytest.raises(DataError, match="NaN/Inf"):
        build_dataset(cfg.replace(**{"data.check_values": "all"}), "train", train=True)
    assert len(build_dataset(cfg.replace(**{"data.check_values": "none"}), "val", train=False)) == len(NAMES)
    with pytest.raises(ValueError, match="data.check_values"):
        get_preset("latent-r18", **{"data.check_values": "yes"})
