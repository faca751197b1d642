"""Bad input to the commands and the library gives one clear error naming the path, key or option and what was
expected, before any work is done and without leaving files behind (review of the CLI's error paths)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from nbsrc import kaggle, nbrun
from nbsrc.checkpoint import check_resumable, load_checkpoint
from nbsrc.cli import describe_error
from nbsrc.cli import main as cli_main
from nbsrc.config import get_preset
from nbsrc.data.demo import make_demo_data
from nbsrc.detector import Detector, check_thresholds
from nbsrc.evaluation.rates import evaluate_rates


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


# ---- 1. path errors: one line naming the path, exit 2 ---------------------------------------------------
def test_os_error_names_path_and_expectation(tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    assert cli_main(["train", "--config", str(folder)]) == 2  # read_text() on a folder: IsADirectoryError
    assert _error_line(capsys) == f"error: {folder}: is a directory (expected a file)"
    afile = tmp_path / "afile"
    afile.write_text("")
    exists = FileExistsError(17, "File exists", str(afile))
    assert (
        describe_error(exists)
        == f"{afile}: exists and is not a directory (expected a directory, or a path that does not exist yet)"
    )
    below = NotADirectoryError(20, "Not a directory", str(afile / "sub"))
    assert describe_error(below) == f"{afile / 'sub'}: a component of the path is a file (expected a directory)"
    assert describe_error(FileNotFoundError("x.pth: checkpoint file not found")) == "x.pth: checkpoint file not found"


def test_output_paths_checked_before_any_work(tmp_path, capsys):
    folder, afile = tmp_path / "adir", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("")
    missing = str(tmp_path / "missing")
    cases = [
        (["evaluate", "--pred", missing, "--gt", missing, "--json", str(folder)], f"--json {folder}: is a directory"),
        (["evaluate", "--pred", missing, "--gt", missing, "--plot", str(folder)], f"--plot {folder}: is a directory"),
        (["evaluate-2cls", "--pred", missing, "--gt", missing, "--json", str(folder)], "is a directory"),
        (["convert-openimages", missing, str(folder)], f"output file {folder}: is a directory"),
        (["make-demo-data", str(afile)], f"{afile}: exists and is not a directory"),
        (["kaggle-build", "--owner", "me", "--out", str(afile)], f"--out {afile}: exists and is not a directory"),
        (["predict", "--weight", missing, "--dataset_root", missing, "--out", str(afile)], "exists and is not a dir"),
        (
            ["predict", "--weight", missing, "--dataset_root", missing, "--out", str(afile / "sub")],
            f"{afile} is a file (expected a directory)",
        ),
        (["evaluate-rates", "--weight", missing, "--dataset_root", missing, "--out", str(afile)], "not a directory"),
    ]
    for argv, expected in cases:
        assert cli_main(argv) == 2, argv
        assert expected in _error_line(capsys), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] and not any(folder.iterdir())


def test_detect_save_suffix_checked_before_anything_is_written(small_checkpoints, tmp_path, capsys):
    _, rgb = small_checkpoints
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 100, dtype=np.uint8))
    base = ["detect", "--weight", str(rgb), "--image", str(image), "--json", str(tmp_path / "d.json")]
    assert cli_main(base + ["--save", str(tmp_path / "vis.unknown")]) == 2
    assert "--save" in (line := _error_line(capsys)) and "'.unknown'" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]
    assert cli_main(base + ["--save", str(tmp_path / "vis.jpg")]) == 0
    assert (tmp_path / "vis.jpg").is_file() and isinstance(
        json.loads((tmp_path / "d.json").read_text())["detections"], list
    )


# ---- 2. checkpoints ---------------------------------------------------------------------------------------
def test_junk_checkpoint_is_named(small_checkpoints, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    for text, error in [("junk\n", "KeyError"), ("junk", "error: unpack requires")]:  # as the pickle VM trips
        junk.write_text(text)
        with pytest.raises(ValueError, match=rf"junk\.pth: not a readable PyTorch checkpoint \(.*{error}"):
            load_checkpoint(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth: not a readable PyTorch checkpoint \(.*empty or truncated"):
        load_checkpoint(empty)
    assert cli_main(["detect", "--weight", str(junk), "--image", str(tmp_path / "x.jpg")]) == 2
    assert f"{junk}: not a readable PyTorch checkpoint" in _error_line(capsys)


def test_resume_without_epoch_is_rejected_up_front(small_checkpoints, demo_root, tmp_path, capsys):
    latent, rgb = small_checkpoints
    checkpoint = load_checkpoint(latent)
    checkpoint["optimizer"] = {"state": {}, "param_groups": []}
    check_resumable(checkpoint, "ok.pth")
    del checkpoint["epoch"]
    noepoch = tmp_path / "noepoch.pth"
    torch.save(checkpoint, noepoch)
    with pytest.raises(ValueError, match=r"noepoch\.pth: cannot resume: key 'epoch'.* got None"):
        check_resumable(load_checkpoint(noepoch), noepoch)
    with pytest.raises(ValueError, match=r"rgb\.pth: holds no training state"):
        check_resumable(load_checkpoint(rgb), rgb)
    out = tmp_path / "runs"
    argv = ["train", "--resume", str(noepoch), "--dataset_root", str(demo_root), "--out", str(out), "--device", "cpu"]
    for extra in (["--check_only"], []):
        assert cli_main(argv + extra) == 2
        assert "cannot resume: key 'epoch'" in _error_line(capsys)
    assert not out.exists()  # no run folder left behind


# ---- 6. train --check_only loads the checkpoints; a config JSON must hold every group ---------------------
def test_check_only_checks_the_weight_fits(small_checkpoints, demo_root, tmp_path, capsys):
    latent, rgb = small_checkpoints
    base = ["train", "--check_only", "--dataset_root", str(demo_root), "--device", "cpu", "--preset", "mnet-biubug6"]
    assert cli_main(base + ["--weight", str(latent)]) == 2
    err = capsys.readouterr().err
    assert f"error: {latent}: the checkpoint does not fit the model" in err
    assert "missing keys" in err and "Traceback" not in err
    assert cli_main(base + ["--weight", str(rgb), "data.max_images=2", "model.out_channels=8"]) == 0


def test_config_json_without_model_group(tmp_path, capsys):
    data = get_preset("latent-r18").to_dict()
    del data["model"]
    path = tmp_path / "nomodel.json"
    path.write_text(json.dumps(data))
    assert cli_main(["train", "--check_only", "--config", str(path)]) == 2
    line = _error_line(capsys)
    assert f"--config {path}: no 'model' group" in line and "expected all of model, anchors" in line


# ---- 3. parameter sections of notebooks that are not selected ---------------------------------------------
def test_sections_of_unselected_notebooks_are_ignored():
    available = nbrun.list_notebooks()
    one = nbrun.select_notebooks(["01_data_inspection"], available)
    two = nbrun.select_notebooks(["01", "02"], available)
    section = {"03_training": {"epochs": 1}}
    assert [(n, p) for n, _, p in nbrun.plan_parameters(one, section)] == [("01_data_inspection", {})]
    plan = nbrun.plan_parameters(two, {"dataset_root": "/data", **section})
    assert [(n, p) for n, _, p in plan] == [
        ("01_data_inspection", {"dataset_root": "/data"}),
        ("02_anchor_statistics", {"dataset_root": "/data"}),
    ]
    with pytest.raises(ValueError, match="'bogus' is declared by none of the notebooks"):
        nbrun.plan_parameters(two, {"bogus": 1, **section})
    with pytest.raises(ValueError, match="03_training does not declare parameter 'bogus'"):
        nbrun.plan_parameters(nbrun.select_notebooks(["03"], available), {"03_training": {"bogus": 1}})


def test_kaggle_build_with_a_section_of_another_notebook(tmp_path):
    result = kaggle.build("me", tmp_path / "build", parameters={"03_training": {"epochs": 1}}, notebooks=["01"])
    assert list(result["kernels"]) == ["01_data_inspection"]


# ---- 4. thresholds out of range ---------------------------------------------------------------------------
def test_thresholds_out_of_range(small_checkpoints, tmp_path, capsys):
    _, rgb = small_checkpoints
    detector = Detector.from_checkpoint(rgb)
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    for kwargs, message in [
        ({"conf": -1}, r"conf must be in \[0, 1\], got -1"),
        ({"conf": math.nan}, r"conf must be in \[0, 1\], got nan"),
        ({"nms": 5}, r"nms must be in \(0, 1\], got 5"),
    ]:
        with pytest.raises(ValueError, match=message):
            detector.detect(image, **kwargs)
    batch = detector.prepare(image)[None]
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        detector.predict_batch(batch, top_k=0)
    with pytest.raises(ValueError, match="keep_top_k must be an integer >= 1"):
        detector.predict_batch(batch, keep_top_k=2.5)
    check_thresholds(conf=0.0, nms=1.0, top_k=1, keep_top_k=1)
    picture = tmp_path / "x.png"
    cv2.imwrite(str(picture), image)
    for option, value, expected in [("--conf", "nan", "--conf must be in [0, 1]"), ("--nms", "5", "--nms must be")]:
        assert cli_main(["detect", "--weight", str(rgb), "--image", str(picture), option, value]) == 2
        assert expected in _error_line(capsys)
    predict = ["predict", "--weight", str(rgb), "--dataset_root", str(tmp_path), "--out", str(tmp_path / "p")]
    assert cli_main(predict + ["--top_k", "0"]) == 2
    assert "--top_k must be >= 1, got 0" in _error_line(capsys)
    assert cli_main(predict + ["--keep_top_k", "0"]) == 2
    assert "--keep_top_k must be >= 1, got 0" in _error_line(capsys)
    assert not (tmp_path / "p").exists()


# ---- 5. evaluate-rates checks the RGB model before predicting anything -----------------------------------
def test_evaluate_rates_checks_rgb_model_first(small_checkpoints, demo_root, tmp_path):
    latent, _ = small_checkpoints
    out = tmp_path / "rates"
    with pytest.raises(ValueError, match=r"rgb_weight .*latent\.pth must be an RGB model, got a latent model"):
        evaluate_rates(latent, demo_root, out, rgb_weight=latent, rates=[12], device="cpu", progress=False)
    assert not out.exists()


# ---- 7. check-data takes the root positionally or as --dataset_root ---------------------------------------
def test_check_data_dataset_root_alias(tmp_path, capsys):
    root = make_demo_data(tmp_path / "demo", images=2, val_images=1, seed=0)
    assert cli_main(["check-data", "--dataset_root", str(root), "--quick"]) == 0
    by_option = capsys.readouterr().out
    assert cli_main(["check-data", str(root), "--quick"]) == 0
    assert capsys.readouterr().out == by_option
    assert cli_main(["check-data", str(root), "--dataset_root", str(tmp_path)]) == 2
    assert "two dataset roots given" in _error_line(capsys)
    assert cli_main(["check-data"]) == 2
    assert "no dataset root" in _error_line(capsys)
