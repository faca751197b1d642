"""Which WIDER val ground truth an evaluation uses (`nbsrc.evaluation.ground_truth`), the shipped official files,
subset evaluation of a split holding part of the ground truth's images, and notebook 02's default faces."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wider_oracle
from conftest import shared_path

from nbsrc import face_stats, nbrun
from nbsrc.cli import main as cli_main
from nbsrc.config import get_preset
from nbsrc.data.readers.wider_mat import GT_FILES, read_wider_gt, write_wider_gt
from nbsrc.evaluation.ground_truth import SHIPPED_GT_DIR, resolve_gt_dir
from nbsrc.evaluation.results import MANIFEST
from nbsrc.evaluation.widerface import evaluate_curves, format_table, subset_ground_truth

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("easy", "medium", "hard")


@pytest.fixture(scope="module")
def official():
    """The shipped official WIDER FACE val ground truth, read once."""
    return read_wider_gt(SHIPPED_GT_DIR, attributes=False)


@pytest.fixture
def not_on_kaggle(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)


def copy_gt(folder: Path, source: Path = SHIPPED_GT_DIR, skip: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in GT_FILES:
        if name not in skip:
            shutil.copyfile(source / name, folder / name)
    return folder


def other_gt(folder: Path, official) -> Path:
    """A valid ground truth that differs from the official one (its first two events only)."""
    return write_wider_gt(folder, subset_ground_truth(official, official.image_names()[:5]))


def make_dataset(root: Path) -> Path:
    (root / "val" / "latent").mkdir(parents=True)
    (root / "val" / "labels.txt").write_text("")
    return root


# ---------------------------------------------------------------------------------------------- shipped files


def test_shipped_files_are_the_official_ones():
    for name in GT_FILES:
        assert (SHIPPED_GT_DIR / name).read_bytes() == shared_path(f"data/widerface_val_gt/{name}").read_bytes(), name


def test_shipped_files_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"nbsrc.evaluation" = ["wider_val_gt/*.mat"]' in pyproject
    assert SHIPPED_GT_DIR == ROOT / "nbsrc" / "evaluation" / "wider_val_gt"


def test_official_counts(official):
    assert (official.num_images, official.num_faces, len(official.events)) == (3226, 39708, 61)


# ----------------------------------------------------------------------------------------------- resolution


def test_nothing_found_gives_the_shipped_files(tmp_path, not_on_kaggle):
    source = resolve_gt_dir(None, make_dataset(tmp_path / "data" / "retina-modify"))
    assert (source.folder, source.kind) == (SHIPPED_GT_DIR, "shipped")
    assert str(source) == f"ground truth: {SHIPPED_GT_DIR} (the official WIDER FACE val files shipped with nbsrc)"
    assert resolve_gt_dir().kind == "shipped"  # no dataset at all


def test_given_folder_wins(tmp_path, not_on_kaggle):
    root = make_dataset(tmp_path / "data" / "ds")
    copy_gt(root / "val" / "ground_truth")
    given = copy_gt(tmp_path / "mine")
    source = resolve_gt_dir(given, root)
    assert (source.folder, source.kind, source.description) == (given.resolve(), "given", "gt_dir")


def test_given_folder_without_the_four_files(tmp_path, not_on_kaggle):
    partial = copy_gt(tmp_path / "partial", skip=("wider_easy_val.mat", "wider_hard_val.mat"))
    with pytest.raises(FileNotFoundError) as info:
        resolve_gt_dir(partial)
    message = str(info.value)
    assert str(partial) in message and "lacks wider_easy_val.mat, wider_hard_val.mat" in message
    assert "wider_medium_val.mat" not in message.split("(")[0]
    with pytest.raises(FileNotFoundError, match=r"gt_dir .*nowhere: no such folder \(expected a folder holding"):
        resolve_gt_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"not a folder .*its folder"):
        resolve_gt_dir(partial / "wider_face_val.mat")


def test_the_datasets_own_ground_truth(tmp_path, not_on_kaggle, official):
    root = make_dataset(tmp_path / "data" / "ds")
    own = copy_gt(root / "val" / "ground_truth")
    other_gt(tmp_path / "data" / "wider" / "eval_tools" / "ground_truth", official)  # beside: not looked at
    source = resolve_gt_dir(None, root, "val")
    assert (source.folder, source.kind, source.description) == (own, "dataset", "the dataset's val/ground_truth")
    (own / "wider_medium_val.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"ground_truth lacks wider_medium_val\.mat"):
        resolve_gt_dir(None, root, "val")


def test_found_beside_the_dataset(tmp_path, not_on_kaggle, official):
    # The published layout: retina-modify in an uploaded top folder, a WIDER FACE copy next to it.
    root = make_dataset(tmp_path / "data" / "retina-modify" / "retina-modify")
    wider = other_gt(tmp_path / "data" / "wider-face" / "eval_tools" / "ground_truth", official)
    copy_gt(tmp_path / "data" / "wider-face" / "WIDER_val" / "images" / "gt")  # inside images/: never entered
    copy_gt(tmp_path / "data" / "old" / ".hidden")  # hidden: never entered
    source = resolve_gt_dir(None, root)
    assert (source.folder, source.kind, source.description) == (wider, "found", "found beside the dataset")


def test_found_among_the_kaggle_inputs(tmp_path, monkeypatch, official):
    inputs = tmp_path / "input"
    monkeypatch.setenv("NBSRC_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    root = make_dataset(inputs / "retina-modify" / "retina-modify")
    wider = other_gt(inputs / "datasets" / "someone" / "wider-face" / "top" / "eval_tools" / "ground_truth", official)
    copy_gt(inputs / "nbsrc-code" / "nbsrc" / "evaluation" / "wider_val_gt")  # the package's own copy: skipped
    source = resolve_gt_dir(None, root)
    assert (source.folder, source.kind, source.description) == (wider, "found", "found among the Kaggle inputs")
    assert resolve_gt_dir(None, root, search_inputs=False).kind == "shipped"  # not searched: the fallback
    # The dataset's own ground truth still comes first.
    copy_gt(root / "val" / "ground_truth")
    assert resolve_gt_dir(None, root).kind == "dataset"


def test_an_input_mount_given_is_searched(tmp_path, not_on_kaggle, official):
    wider = other_gt(tmp_path / "input" / "wider-face" / "eval_tools" / "ground_truth", official)
    assert resolve_gt_dir(None, None).kind == "shipped"  # not on Kaggle: no input mount
    assert resolve_gt_dir(None, None, input_root=tmp_path / "input").folder == wider


def test_identical_candidates_are_one(tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    monkeypatch.setenv("NBSRC_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    first = copy_gt(inputs / "a-wider" / "eval_tools" / "ground_truth")
    second = copy_gt(inputs / "b-wider" / "ground_truth")
    source = resolve_gt_dir(None, None)
    assert source.folder == first and source.kind == "found"
    assert source.description == f"found among the Kaggle inputs; identical to {second}"


def test_differing_candidates_are_an_error(tmp_path, monkeypatch, official):
    inputs = tmp_path / "input"
    monkeypatch.setenv("NBSRC_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    first = copy_gt(inputs / "a-wider" / "eval_tools" / "ground_truth")
    second = other_gt(inputs / "b-wider" / "ground_truth", official)
    with pytest.raises(ValueError) as info:
        resolve_gt_dir(None, None)
    message = str(info.value)
    assert "2 WIDER ground-truth folders with different files" in message
    assert str(first) in message and str(second) in message and "set gt_dir" in message
    assert resolve_gt_dir(second, None).folder == second  # the way out the message names


# ----------------------------------------------------------------------------------------- subset evaluation


def synthetic_predictions(gt, out: Path, seed: int = 0) -> None:
    """Per image: most faces, jittered, plus two false positives; random scores; result files written fast."""
    rng = np.random.default_rng(seed)
    for event, names, boxes in zip(gt.events, gt.names, gt.boxes):
        (out / event).mkdir(parents=True, exist_ok=True)
        for name, xywh in zip(names, boxes):
            xywh = np.asarray(xywh, np.float64).reshape(-1, 4)[rng.random(len(xywh)) < 0.7]  # (n, 4)
            xywh = xywh + rng.normal(0, 1.5, xywh.shape) * np.r_[1, 1, 0.5, 0.5]
            xywh[:, 2:] = np.maximum(xywh[:, 2:], 0)
            fp = np.c_[rng.random((2, 2)) * 900, rng.random((2, 2)) * 60 + 5]
            rows = np.c_[np.concatenate([xywh, fp]), rng.random(len(xywh) + 2)]
            rows = rows[np.argsort(-rows[:, 4], kind="stable")]
            lines = [name, str(len(rows))] + [" ".join(f"{v:.3f}" for v in row) for row in rows]
            (out / event / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_subset_of_the_official_ground_truth(official, tmp_path):
    names = official.image_names()[:7] + official.image_names()[-5:]  # 12 images of the first and last events
    part = subset_ground_truth(official, names + [names[0] + ".jpg"])  # extensions and repeats are ignored
    assert part.image_names() == names and part.events == [official.events[0], official.events[-1]]
    pred = tmp_path / "pred"
    synthetic_predictions(part, pred)
    result = evaluate_curves(pred, official, images=names)
    assert (result.images_evaluated, result.images_in_gt, result.is_subset) == (12, 3226, True)
    assert result.coverage == "12 of 3,226 images; not comparable with published full-set numbers"
    table = format_table(result).splitlines()
    assert table[0].startswith("Easy   Val AP: ") and table[3] == f"({result.coverage})"
    assert result.to_dict()["images_evaluated"] == 12 and result.to_dict()["images_in_gt"] == 3226
    # Only the faces of those images count: the protocol on a ground truth holding just them, the oracle's too.
    assert result.num_faces == {s: part.num_kept(s) for s in SETTINGS}
    gt_dir = write_wider_gt(tmp_path / "gt12", part)
    alone = evaluate_curves(pred, gt_dir)
    expected = wider_oracle.evaluation(str(pred), str(gt_dir))
    for s in SETTINGS:
        assert result.ap[s] == alone.ap[s] and abs(result.ap[s] - expected[s]) <= 1e-9
        assert np.array_equal(result.precision[s], alone.precision[s])
    assert not alone.is_subset and format_table(alone).count("\n") == 3
    # Result files of other ground-truth images are left unread; a file matching no image is still an error.
    synthetic_predictions(subset_ground_truth(official, official.image_names()[100:102]), pred)
    assert evaluate_curves(pred, official, images=names).ap == result.ap
    (pred / "0--Parade" / "not_an_image.txt").write_text("not_an_image\n0\n")
    with pytest.raises(ValueError, match=r"match no ground-truth image.*not_an_image\.txt"):
        evaluate_curves(pred, official, images=names)


def test_images_unknown_to_the_ground_truth(official, tmp_path):
    unknown = [f"0--Parade/made_up_{i:02d}" for i in range(14)]
    with pytest.raises(ValueError) as info:
        evaluate_curves(tmp_path, official, images=official.image_names()[:3] + unknown)
    message = str(info.value)
    assert message.startswith("14 image(s) unknown to the ground truth (3,226 images): 0--Parade/made_up_00, ")
    assert "made_up_09 ..." in message and "made_up_10" not in message
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate_curves(tmp_path, official, images=[])


def test_every_image_is_the_full_protocol(official, tmp_path):
    pred = tmp_path / "pred"
    synthetic_predictions(official, pred, seed=3)
    full = evaluate_curves(pred, official)
    named = evaluate_curves(pred, official, images=reversed(official.image_names()))
    assert not full.is_subset and not named.is_subset and full.coverage == "all 3,226 images"
    assert subset_ground_truth(official, official.image_names()) is official
    for s in SETTINGS:
        assert named.ap[s] == full.ap[s] and 0.2 < full.ap[s] < 1
        assert np.array_equal(named.precision[s], full.precision[s])
        assert np.array_equal(named.recall[s], full.recall[s])
    assert format_table(full) == format_table(full.ap)  # the official three lines, unchanged


def test_cli_subset_and_ground_truth_line(official, tmp_path, capsys, not_on_kaggle):
    names = official.image_names()[:12]
    pred = tmp_path / "pred"
    synthetic_predictions(subset_ground_truth(official, names), pred)
    expected = evaluate_curves(pred, official, images=names)
    # Without --subset the full protocol wants every image, and says how to evaluate a partial split.
    assert cli_main(["evaluate", "--pred", str(pred)]) == 2
    assert "3214 of 3226 images have no result file" in capsys.readouterr().err
    assert cli_main(["evaluate", "--pred", str(pred), "--subset"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Easy   Val AP: {expected.ap['easy']:.4f}"
    assert out[3] == "(12 of 3,226 images; not comparable with published full-set numbers)"
    assert out[4] == f"ground truth: {SHIPPED_GT_DIR} (the official WIDER FACE val files shipped with nbsrc)"
    # A prediction manifest names the split's images: one of them without a file is missing, not left out.
    (pred / MANIFEST).write_text(json.dumps({"settings": {}, "names": [n + ".jpg" for n in names]}))
    (pred / f"{names[3]}.txt").unlink()
    assert cli_main(["evaluate", "--pred", str(pred), "--subset"]) == 2
    assert f"1 of 12 images have no result file in {pred}: {names[3]}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ notebook 02


def test_notebook_02_studies_the_wider_faces_by_default(not_on_kaggle):
    declared = nbrun.declared_parameters(nbrun.read_notebook(ROOT / "notebooks" / "02_anchor_statistics.py"))
    assert ast.literal_eval(declared["faces"].default) == "wider" and declared["gt_dir"].default == "None"
    assert "wider_gt_dir" not in declared
    faces = face_stats.load_faces(get_preset("latent-r50"), faces="wider")
    assert (faces["images"], len(faces["boxes"])) == (3226, 39708 - 11)  # the degenerate boxes dropped
    assert faces["source"] == "WIDER FACE val (the official WIDER FACE val files shipped with nbsrc)"
    assert len(faces["per_image"]) == 3226 and sum(len(b) for b in faces["per_image"]) == len(faces["boxes"])
    sizes = faces["boxes"][:, 2:] - faces["boxes"][:, :2]
    assert (sizes > 0).all() and faces["boxes"][:, 2].max() <= 640 * 1.01  # 1024 px wide originals -> 640
    with pytest.raises(ValueError, match="faces must be one of wider, dataset; got 'both'"):
        face_stats.load_faces(get_preset("latent-r50"), faces="both")
