"""Original image sizes from wherever they are: a WIDER FACE tree beside a latents-only dataset (the published
retina-modify shape), found per split, read from headers once and cached; bad trees named, never guessed."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbsrc import paths
from nbsrc.config import get_preset
from nbsrc.data import image_sizes
from nbsrc.data.demo import resolve_dataset_root
from nbsrc.data.image_sizes import ImageTreeError, find_split_trees, read_sizes_csv, split_sizes, tree_sizes
from nbsrc.data.label_frame import LabelFrameError
from nbsrc.data.loaders import build_dataset
from nbsrc.data.published_layout import split_as_published
from nbsrc.data.validate import check_label_frame, validate_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published(demo_root, tmp_path_factory) -> tuple[Path, Path]:
    """``(dataset, wider)``: the demo laid out as retina-modify (nested top folder) beside a WIDER FACE copy."""
    mount, wider = split_as_published(demo_root, tmp_path_factory.mktemp("inputs"))
    return mount / "retina-modify", wider


@pytest.fixture(autouse=True)
def fresh_memo():
    image_sizes._MEMO.clear()
    image_sizes._SAID.clear()


def _cfg(dataset: Path, **data):
    return get_preset("latent-r18", **{"data.dataset_root": str(dataset), **{f"data.{k}": v for k, v in data.items()}})


def _jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def test_the_published_shape_has_no_sizes_and_says_what_to_attach(published):
    dataset, _ = published
    assert not list(dataset.rglob("*.jpg")) and not list(dataset.rglob("*.csv"))
    with pytest.raises(LabelFrameError) as info:
        build_dataset(_cfg(dataset), "val", train=False)
    message = str(info.value)
    assert "original image size is unknown" in message
    assert "WIDER_<split>/images" in message and "attach a WIDER FACE dataset" in message
    assert "label_frame=640" in message and "image-sizes" in message


def test_sizes_come_from_the_wider_tree_of_each_split(published, demo_root, tmp_path, caplog):
    dataset, wider = published
    caplog.set_level(logging.INFO, logger="nbsrc.data.image_sizes")
    cfg = _cfg(dataset, images_root=str(wider.parent), cache_dir=str(tmp_path))  # the folder holding every input
    reference = _cfg(demo_root)  # the demo with its own images: the same sizes, so the same boxes
    for split in ("train", "val"):
        got = build_dataset(cfg, split, train=False)
        want = build_dataset(reference, split, train=False)
        assert [s.name for s in got.samples] == [s.name for s in want.samples]
        for a, b in zip(got.samples, want.samples):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            assert a.frame.orig_size == b.frame.orig_size
            # the original image for galleries: the tree's copy of the split's own image
            assert got.label_frame.sizes.image_path(a.name) == wider / f"WIDER_{split}" / "images" / f"{a.name}.jpg"
    said = [r.getMessage() for r in caplog.records if "original image sizes of" in r.getMessage()]
    assert any(f"{wider / 'WIDER_val' / 'images'}" in m for m in said)
    assert any(f"{wider / 'WIDER_train' / 'images'}" in m for m in said)  # train from train, val from val


@pytest.mark.parametrize("shape", ["wider", "split_images", "split_folder", "flat_events", "flat"])
def test_every_usual_tree_shape_is_found(tmp_path, shape):
    root = tmp_path / "images_root"
    names = {"0--Parade/0_Parade_a_1": (320, 200), "1--Handshaking/1_Handshaking_b_2": (200, 320)}
    prefix = {
        "wider": "WIDER_val/images/",
        "split_images": "val/images/",
        "split_folder": "WIDER_val/images/",  # given as images_root=<root>/WIDER_val below
        "flat_events": "",
        "flat": "",
    }[shape]
    for name, (w, h) in names.items():
        relative = name.rsplit("/", 1)[-1] if shape == "flat" else name
        _jpeg(root / f"{prefix}{relative}.jpg", w, h)
    given = root / "WIDER_val" if shape == "split_folder" else root
    split_dir = tmp_path / "dataset" / "val"
    split_dir.mkdir(parents=True)
    found = split_sizes(split_dir, images_root=given)
    assert found.tree is not None
    for name, size in names.items():
        assert found.sizes.get(name) == size  # by event/name, and by basename in a flat folder
        assert found.sizes.get(name + ".jpg") == size


def test_a_tree_of_another_split_only_is_not_used(tmp_path):
    _jpeg(tmp_path / "wider" / "WIDER_train" / "images" / "0--Parade" / "a.jpg", 64, 48)
    (tmp_path / "ds" / "val").mkdir(parents=True)
    with pytest.raises(ImageTreeError, match=r"holds no images of split 'val'.*WIDER_val/images"):
        split_sizes(tmp_path / "ds" / "val", images_root=tmp_path / "wider")
    assert find_split_trees(tmp_path / "wider", "train") == [tmp_path / "wider" / "WIDER_train" / "images"]


def test_two_trees_claiming_the_same_image_are_named(tmp_path):
    for mount, size in (("copy-a", (64, 48)), ("copy-b", (80, 60))):
        _jpeg(tmp_path / "inputs" / mount / "WIDER_val" / "images" / "0--Parade" / "a.jpg", *size)
    _jpeg(tmp_path / "inputs" / "copy-b" / "WIDER_val" / "images" / "0--Parade" / "b.jpg", 64, 48)
    (tmp_path / "ds" / "val").mkdir(parents=True)
    with pytest.raises(ImageTreeError) as info:
        split_sizes(tmp_path / "ds" / "val", images_root=tmp_path / "inputs")
    message = str(info.value)
    assert "copy-a" in message and "copy-b" in message and "0--Parade/a" in message and "images_root" in message


def test_identical_copies_of_a_tree_are_one_tree(tmp_path):
    for mount in ("wider", "wider-again"):
        _jpeg(tmp_path / "inputs" / mount / "WIDER_val" / "images" / "0--Parade" / "a.jpg", 64, 48)
    (tmp_path / "ds" / "val").mkdir(parents=True)
    found = split_sizes(tmp_path / "ds" / "val", images_root=tmp_path / "inputs")
    assert found.tree == tmp_path / "inputs" / "wider" / "WIDER_val" / "images"
    assert found.sizes.get("0--Parade/a") == (64, 48)


def test_images_missing_from_the_tree_are_named_never_guessed(published, tmp_path):
    dataset, wider = published
    tree = tmp_path / "partial"
    shutil.copytree(wider / "WIDER_val", tree / "WIDER_val")
    removed = sorted((tree / "WIDER_val" / "images").rglob("*.jpg"))[:2]
    for path in removed:
        path.unlink()
    # the same basename in another event must not stand in for a missing image
    stand_in = tree / "WIDER_val" / "images" / "99--Other" / removed[0].name
    _jpeg(stand_in, 999, 999)
    with pytest.raises(LabelFrameError) as info:
        build_dataset(_cfg(dataset, images_root=str(tree)), "val", train=False)
    message = str(info.value)
    assert "no size for 2 of the 8 images" in message
    for path in removed:
        assert f"{path.parent.name}/{path.stem}" in message
    assert "on_error=skip" in message
    skipped = build_dataset(_cfg(dataset, images_root=str(tree), on_error="skip"), "val", train=False)
    assert len(skipped) == 6 and len(skipped.log.of_kind("unknown_frame")) == 2


def test_sizes_are_read_once_cached_and_rebuilt_when_the_tree_changes(tmp_path, monkeypatch):
    tree = tmp_path / "WIDER_val" / "images"
    _jpeg(tree / "0--Parade" / "a.jpg", 64, 48)
    _jpeg(tree / "0--Parade" / "b.png", 32, 16)
    cache = tmp_path / "cache"
    first = tree_sizes(tree, cache)
    assert not first.reused and first.sizes == {"0--Parade/a": (64, 48), "0--Parade/b": (32, 16)}
    assert read_sizes_csv(first.cache_csv) == first.sizes
    with first.cache_csv.open() as fh:
        assert [row[0] for row in csv.reader(fh)][1:] == ["0--Parade/a.jpg", "0--Parade/b.png"]

    image_sizes._MEMO.clear()  # a new process: no header is read again
    monkeypatch.setattr(image_sizes, "read_image_size", lambda path: pytest.fail(f"header of {path} read again"))
    again = tree_sizes(tree, cache)
    assert again.reused and again.sizes == first.sizes
    monkeypatch.undo()

    _jpeg(tree / "1--Handshaking" / "c.jpg", 20, 10)  # the tree changes: rebuilt
    image_sizes._MEMO.clear()
    changed = tree_sizes(tree, cache)
    assert not changed.reused and changed.sizes["1--Handshaking/c"] == (20, 10)
    assert json.loads(changed.cache_csv.with_suffix(".json").read_text())["tree"] == str(tree.resolve())


def test_a_read_only_cache_costs_a_reread_only(tmp_path, caplog):
    tree = tmp_path / "images"
    _jpeg(tree / "a.jpg", 64, 48)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    result = tree_sizes(tree, blocker)
    assert result.sizes == {"a": (64, 48)} and result.cache_csv is None
    assert "cannot cache image sizes" in caplog.text


def test_an_explicit_sizes_csv_wins_and_the_tree_fills_in(tmp_path):
    tree = tmp_path / "wider" / "WIDER_val" / "images"
    _jpeg(tree / "0--Parade" / "a.jpg", 64, 48)
    _jpeg(tree / "0--Parade" / "b.jpg", 32, 16)
    sizes_csv = tmp_path / "sizes.csv"
    sizes_csv.write_text("name,width,height\n0--Parade/a.jpg,1000,800\n")
    (tmp_path / "ds" / "val").mkdir(parents=True)
    found = split_sizes(tmp_path / "ds" / "val", sizes_csv=sizes_csv, images_root=tmp_path / "wider")
    assert found.sizes.get("0--Parade/a") == (1000, 800) and found.sizes.get("0--Parade/b") == (32, 16)
    with pytest.raises(FileNotFoundError, match="data.sizes_csv"):
        split_sizes(tmp_path / "ds" / "val", sizes_csv=tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="data.images_root"):
        split_sizes(tmp_path / "ds" / "val", images_root=tmp_path / "nope")


def test_check_data_reports_the_frame_with_and_without_the_images(published, tmp_path):
    dataset, wider = published
    without = check_label_frame(dataset)
    assert without["val"].verdict == "original" and "reach past 640" in without["val"].message
    assert "images_root" in without["val"].message
    with_tree = check_label_frame(dataset, images_root=wider, sizes_cache=tmp_path)
    assert with_tree["val"].verdict == "original" and with_tree["val"].images_with_size == 8
    report = validate_dataset(dataset, images_root=wider, sizes_cache=tmp_path, check_values=False)
    assert report.ok and not report.defects

    def check_data(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "nbsrc", "check-data", str(dataset), "--quick", *extra]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    assert check_data().returncode == 1  # unknown frames stop training
    done = check_data("--images_root", str(wider))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "val: original" in done.stdout


def test_on_kaggle_the_attached_wider_copy_is_found_without_a_parameter(published, tmp_path, monkeypatch):
    dataset, wider = published
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv(paths.INPUT_ENV, str(wider.parent))
    monkeypatch.setenv(paths.WORKING_ENV, str(tmp_path / "working"))
    root = resolve_dataset_root(None)
    assert root == dataset  # the nested top folder
    settings = paths.data_settings(root)
    assert settings["data.images_root"] == str(wider.parent)
    assert settings["data.cache_dir"] == str(tmp_path / "working" / "cache")
    cfg = get_preset("latent-r18", **settings)
    assert len(build_dataset(cfg, "val", train=False)) == 8
    assert list((tmp_path / "working" / "cache" / "image-sizes").glob("WIDER_val-*.csv"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert paths.data_settings(root)["data.images_root"] is None  # locally nothing is searched


def test_image_sizes_command(published, tmp_path):
    _, wider = published
    out = tmp_path / "sizes.csv"
    command = [sys.executable, "-m", "nbsrc", "image-sizes", str(wider / "WIDER_val" / "images"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sizes of 8 images" in done.stdout
    sizes = read_sizes_csv(out)
    assert len(sizes) == 8
    for name, size in sizes.items():
        with Image.open(wider / "WIDER_val" / "images" / f"{name}.jpg") as image:
            assert image.size == size
    bad = subprocess.run(
        [sys.executable, "-m", "nbsrc", "image-sizes", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode != 0 and "nothing" in bad.stderr and "not found" in bad.stderr


def test_make_demo_data_lays_the_demo_out_as_published(tmp_path):
    command = [sys.executable, "-m", "nbsrc", "make-demo-data", str(tmp_path / "demo"), "--images", "8"]
    command += ["--published", str(tmp_path / "inputs")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    mount = tmp_path / "inputs" / "retina-modify"
    dataset = mount / "retina-modify"  # the uploaded top folder, as on Kaggle
    assert f"check-data {mount} --images_root" in done.stdout
    assert {p.suffix for p in dataset.rglob("*") if p.is_file()} == {".npy", ".txt"}
    assert len(list((tmp_path / "inputs" / "wider-face" / "WIDER_val" / "images").rglob("*.jpg"))) == 8
    check = [sys.executable, "-m", "nbsrc", "check-data", str(mount), "--quick"]  # enters the top folder
    check += ["--images_root", str(tmp_path / "inputs")]
    assert subprocess.run(check, capture_output=True, text=True, cwd=tmp_path, timeout=300).returncode == 0
