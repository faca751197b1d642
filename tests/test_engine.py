"""The trainer on the demo dataset, on the CPU: a resumed run equals an uninterrupted one, the run folder holds
every promised file, freezing really freezes the latent model's pruned ResNet, a non-finite loss stops the run
naming the batch, validation scores detections as the class loss does (sigmoid for focal loss), and the
ancestors' command-line spellings map onto the config."""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import focal_model, tiny_training_config

import nbsrc.commands.train as train_command
import nbsrc.engine as engine
import nbsrc.model.build as model_build
import nbsrc.postprocess as postprocess_module
import nbsrc.runs as runs
from nbsrc.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from nbsrc.cli import main as cli_main
from nbsrc.commands.train import config_from_argv
from nbsrc.config import get_preset
from nbsrc.data.loaders import build_dataloaders
from nbsrc.engine import evaluate, fit, train_one_epoch
from nbsrc.loss import build_loss
from nbsrc.model import build_model
from nbsrc.utils import cuda_arch_supported, read_jsonl, seed_everything, select_device


def _state(path):
    return load_checkpoint(path)["model"]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return fit(tiny_training_config(demo_root, out, **{"train.epochs": 2, "train.run_name": "full"}))


def test_run_folder_contents(uninterrupted):
    run = uninterrupted
    for name in ("config.json", "metrics.jsonl", "epoch_001.pth", "epoch_002.pth", "last.pth", "best.pth"):
        assert (run / name).is_file(), name
    assert (run / "weight_final.pth").is_file()
    records = read_jsonl(run / "metrics.jsonl")
    starts = [r for r in records if r["kind"] == "start"]
    assert [(r["weights"], r["device"], r["processes"]) for r in starts] == [("random init", "cpu", 1)]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert steps and steps[-1]["step"] == 4
    for key in ("loss", "loss_box", "loss_cls", "loss_landm", "lr", "pos_per_image", "images_per_s", "gpu_mem_mib"):
        assert key in steps[0] and math.isfinite(steps[0][key]), key
    assert steps[0]["pos_per_image"] > 0  # the demo faces are matched to anchors
    for key in ("train_loss", "val_loss", "val_ap", "val_ap_face"):
        assert key in epochs[-1], key
    last = load_checkpoint(run / "last.pth")
    assert last["epoch"] == 2 and last["step"] == 4
    for key in ("optimizer", "scheduler", "scaler", "rng", "config"):
        assert last[key] is not None, key
    _assert_same_state(last["model"], _state(run / "epoch_002.pth"))
    _assert_same_state(last["model"], _state(run / "weight_final.pth"))
    best = load_checkpoint(run / "best.pth")
    assert best["best_key"] == "val_ap"
    scores = [r["val_ap"] for r in epochs]
    assert best["epoch"] == 1 + max(range(2), key=lambda i: (scores[i], -i))
    # learning-rate schedule: per step, warm-up of one step, x0.7 after every epoch
    assert [round(r["lr"] / 0.01, 6) for r in steps][-1] == 0.7


def test_resume_gives_the_same_weights(uninterrupted, demo_root, tmp_path):
    first = fit(tiny_training_config(demo_root, tmp_path, **{"train.epochs": 1, "train.run_name": "split"}))
    assert (first / "last.pth").is_file() and not (first / "epoch_002.pth").exists()
    resumed = fit(
        tiny_training_config(demo_root, tmp_path, **{"train.epochs": 2, "train.resume": str(first / "last.pth")})
    )
    assert resumed == first  # the run folder is reused
    _assert_same_state(_state(uninterrupted / "weight_final.pth"), _state(resumed / "weight_final.pth"))
    full = [r for r in read_jsonl(uninterrupted / "metrics.jsonl") if r["kind"] == "epoch"]
    split = [r for r in read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in split] == [1, 2]
    assert split[1]["train_loss"] == full[1]["train_loss"]
    assert load_checkpoint(resumed / "last.pth")["step"] == 4
    # the resumed run's schedule continues at its step: the same learning rates as the uninterrupted run's
    full_lrs = [(r["step"], r["lr"]) for r in read_jsonl(uninterrupted / "metrics.jsonl") if r["kind"] == "step"]
    split_lrs = [(r["step"], r["lr"]) for r in read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "step"]
    assert split_lrs == full_lrs and [step for step, _ in full_lrs] == [2, 4]


def test_a_run_resumed_from_a_read_only_folder_continues_in_the_output_folder(
    uninterrupted, demo_root, tmp_path, monkeypatch
):
    # Kaggle: the version stopped at the time limit is attached read-only under /kaggle/input; the next version
    # continues in /kaggle/working under the same name, with the earlier metrics, and ends where 2 epochs end
    first = fit(tiny_training_config(demo_root, tmp_path / "input", **{"train.epochs": 1, "train.run_name": "split"}))
    before = sorted(p.name for p in first.iterdir())
    real_access = runs.os.access
    monkeypatch.setattr(runs.os, "access", lambda p, mode: False if Path(p) == first else real_access(p, mode))
    resumed = fit(
        tiny_training_config(
            demo_root, tmp_path / "working", **{"train.epochs": 2, "train.resume": str(first / "last.pth")}
        )
    )
    assert resumed == tmp_path / "working" / "split"
    assert sorted(p.name for p in first.iterdir()) == before  # nothing written next to the checkpoint
    _assert_same_state(_state(uninterrupted / "weight_final.pth"), _state(resumed / "weight_final.pth"))
    assert [r["epoch"] for r in read_jsonl(resumed / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]
    assert (resumed / "best.pth").is_file()


def test_worker_processes_and_resuming_change_nothing(uninterrupted, demo_root, tmp_path):
    # Augmentation is seeded per sample from (seed, epoch, index): persistent workers, which live across
    # epochs, and a resumed run draw what the single-process uninterrupted run drew.
    workers = {"data.num_workers": 1}
    first = fit(tiny_training_config(demo_root, tmp_path, **workers, **{"train.epochs": 1, "train.run_name": "w1"}))
    resumed = fit(
        tiny_training_config(
            demo_root, tmp_path, **workers, **{"train.epochs": 2, "train.resume": str(first / "last.pth")}
        )
    )
    _assert_same_state(_state(uninterrupted / "weight_final.pth"), _state(resumed / "weight_final.pth"))


def test_freeze_backbone_freezes_the_pruned_resnet(demo_root, tmp_path):
    latent = {"train.epochs": 1, "train.freeze_backbone": True, "train.run_name": "f", "data.image_size": 640}
    latent.update({"model.bridge": "nearest", "train.max_steps_per_epoch": 1, "data.max_images": 2})
    cfg = tiny_training_config(demo_root, tmp_path, "latent-r18", **latent)
    model = build_model(cfg)
    model.freeze_backbone(True)
    trunk = [model.backbone.layer2, model.backbone.layer3, model.backbone.layer4]
    assert all(not p.requires_grad for m in trunk for p in m.parameters())
    assert all(p.requires_grad for p in model.backbone.bridge.parameters())
    assert all(p.requires_grad for p in model.fpn.parameters())

    seed_everything(cfg.train.seed)
    initial = build_model(cfg).state_dict()  # fit builds its model from the same seed
    trained = _state(fit(cfg) / "weight_final.pth")
    trunk_keys = [k for k in initial if k.startswith(("body.layer2.", "body.layer3.", "body.layer4."))]
    assert trunk_keys
    moved = [k for k in trunk_keys if not torch.equal(initial[k], trained[k])]
    assert not moved, f"frozen tensors changed (BN statistics included): {moved[:3]}"
    bridge = [k for k in initial if k.startswith("body.bridge.") and k.endswith("weight")]
    assert any(not torch.equal(initial[k], trained[k]) for k in bridge), "the bridge did not train"


class _NanAfter(torch.nn.Module):
    """A loss that turns NaN from the second call on (as a diverging run would)."""

    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn, self.calls = loss_fn, 0

    def forward(self, outputs, anchors, targets):
        parts = self.loss_fn(outputs, anchors, targets)
        self.calls += 1
        if self.calls >= 2:
            parts["loss"] = parts["loss"] * float("nan")
        return parts


def test_non_finite_loss_stops_with_the_batch_names(demo_root, tmp_path, monkeypatch):
    real_build_loss = engine.build_loss
    monkeypatch.setattr(engine, "build_loss", lambda cfg: _NanAfter(real_build_loss(cfg)))
    cfg = tiny_training_config(demo_root, tmp_path, **{"train.epochs": 1, "train.run_name": "nan"})
    with pytest.raises(FloatingPointError) as info:
        fit(cfg)
    message = str(info.value)
    assert "step 2" in message and "loss_cls" in message and "nan" in message

    names = set(build_dataloaders(cfg)[0].dataset.names)
    assert any(name in message for name in names), message
    assert not (tmp_path / "nan" / "last.pth").exists()  # nothing of the failed epoch was saved


def test_train_one_epoch_on_synthetic_batches_and_rng_roundtrip():
    cfg = get_preset("mnet-biubug6", **{"model.pretrained": "none", "data.image_size": 64})
    model = build_model(cfg)

    batch = {
        "inputs": torch.randn(2, 3, 64, 64),
        "boxes": torch.tensor([[[8.0, 8.0, 40.0, 44.0]], [[0.0, 0.0, 0.0, 0.0]]]),
        "labels": torch.tensor([[1], [0]]),
        "landmarks": torch.full((2, 1, 5, 2), 20.0),
        "landmarks_valid": torch.tensor([[True], [False]]),
        "num_boxes": torch.tensor([1, 0]),
        "names": ["a/one", "a/empty"],
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    records = []
    stats = train_one_epoch(
        model,
        build_loss(cfg),
        [batch] * 3,
        optimizer,
        device=torch.device("cpu"),
        log_every=2,
        log_fn=records.append,
        progress=False,
    )
    assert stats["steps"] == 3 and stats["images"] == 6 and math.isfinite(stats["loss"])
    assert [r["step"] for r in records] == [2, 3]
    state = get_rng_state()
    first = (torch.rand(3), torch.randint(0, 100, (1,)))
    set_rng_state(state)
    assert torch.equal(first[0], torch.rand(3))


def test_cli_ancestor_spellings(tmp_path):
    root = tmp_path / "retina-modify"
    cfg, start = config_from_argv(
        [
            "--use_latent",
            "--model",
            "resnet18",
            "--latent_dir",
            str(root / "train" / "latent"),
            "--label_dir",
            str(root / "train"),
            "--val_latent_dir",
            str(root / "val" / "latent"),
            "--latent_type",
            "latent_50.npy",
            "--batchsize",
            "4",
            "--epoch",
            "3",
            "--no_wandb",
            "--device",
            "",
            "--resume_epoch",
            "5",
            "lr=0.02",
        ]
    )
    assert cfg.preset == "latent-r18" and cfg.data.dataset_root == str(root.resolve())
    assert (cfg.data.train_split, cfg.data.val_split, cfg.data.latent_suffix) == ("train", "val", "latent_50.npy")
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.wandb, cfg.train.device) == (4, 3, "disabled", "auto")
    assert cfg.train.lr == 0.02 and start == 5

    assert config_from_argv(["--model", "resnet50", "--use_latent"])[0].preset == "latent-r50"
    assert config_from_argv(["--model", "resnet34"])[0].preset == "r34-p2p6"
    assert config_from_argv(["--model", "mobilenet0.25", "--use_latent"])[0].preset == "latent-mnet"
    assert config_from_argv(["--network", "mobile0.25"])[0].preset == "mnet-biubug6"
    assert config_from_argv(["--network", "resnet50"])[0].preset == "r50-biubug6"
    assert config_from_argv([])[0].preset == "latent-r50"
    cfg, _ = config_from_argv(
        ["--preset", "r18-p2p6", "--training_dataset", str(root / "train" / "label.txt"), "--amp", "--freeze"]
    )
    assert cfg.data.dataset_root == str(root.resolve()) and cfg.train.amp == "auto" and cfg.train.freeze_backbone
    cfg, _ = config_from_argv(
        ["--device", "0", "--run", "exp", "--save_folder", "w", "--amp", "fp16", "--workers", "0"]
    )
    assert (cfg.train.device, cfg.train.run_name, cfg.train.out, cfg.train.amp) == ("cuda:0", "exp", "w", "fp16")
    assert cfg.data.num_workers == 0


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--preset", "latent-r18", "--model", "resnet50", "--use_latent"], "conflicts"),
        (["--model", "vgg16", "--use_latent"], "--model"),
        (["--network", "resnet18"], "--network"),
        (["--latent_dir", "/data/train/latents"], "latent_dir"),
        (["--dataset_root", "/a", "--latent_dir", "/b/train/latent"], "dataset root"),
        (["--no_wandb", "--wandb", "online"], "no_wandb"),
        (["bogus_key=1"], "bogus_key"),
    ],
)
def test_cli_rejects_contradictions(argv, match):
    with pytest.raises(ValueError, match=match):
        config_from_argv(argv)


def test_cli_trains_and_resumes_with_published_spellings(demo_root, tmp_path, capsys):
    common = ["--dataset_root", str(demo_root), "--out", str(tmp_path), "--device", "cpu", "--workers", "0"]
    tiny = ["model.pretrained=none", "model.out_channels=16", "data.image_size=128", "train.max_steps_per_epoch=1"]
    tiny += ["data.max_images=2", "train.progress=False", "train.keep_epochs=1"]
    code = cli_main(
        ["train", "--network", "mobile0.25", "--epochs", "1", "--batch_size", "2", "--run_name", "cli", *common, *tiny]
    )
    assert code == 0
    assert "run folder" in capsys.readouterr().out
    run = tmp_path / "cli"
    assert (run / "weight_final.pth").is_file()
    # biubug6-style: --resume_net on our checkpoint continues the run (optimizer state included)
    code = cli_main(
        ["train", "--resume_net", str(run / "last.pth"), "--epoch", "2", "--batchsize", "2", *common, *tiny]
    )
    assert code == 0
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    assert sorted(p.name for p in run.glob("epoch_*.pth")) == ["epoch_002.pth"]  # train.keep_epochs=1
    # an unreadable checkpoint is one clear error line and exit code 2
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    code = cli_main(["train", "--weight", str(tmp_path / "broken.pth"), "--preset", "mnet-biubug6", *common, *tiny])
    assert code == 2
    assert "broken.pth" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="needs a C++ compiler")
def test_compiled_training_computes_the_eager_loss_and_saves_plain_checkpoints(demo_root, tmp_path):
    # one step each: its loss depends only on the (seeded) initial weights and the first batch
    one_step = {"train.epochs": 1, "train.max_steps_per_epoch": 1}
    eager = fit(tiny_training_config(demo_root, tmp_path, **one_step, **{"train.run_name": "eager"}))
    compiled = fit(
        tiny_training_config(demo_root, tmp_path, **one_step, **{"train.run_name": "compiled", "train.compile": True})
    )
    losses = [
        [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"] for run in (eager, compiled)
    ]
    assert len(losses[0]) == len(losses[1]) == 1
    assert math.isfinite(losses[1][0])
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-4)
    a, b = _state(eager / "weight_final.pth"), _state(compiled / "weight_final.pth")
    assert a.keys() == b.keys()  # no "_orig_mod." prefix: the checkpoint loads into a plain model
    build_model(tiny_training_config(demo_root, tmp_path)).load_state_dict(b, strict=True)
    seed_everything(7)  # train.seed: the initial weights of both runs
    initial = build_model(tiny_training_config(demo_root, tmp_path)).state_dict()
    moved = [k for k in b if b[k].is_floating_point() and not torch.equal(b[k], initial[k])]
    assert len(moved) > len(b) // 2  # the compiled backward and optimizer step updated the weights


def test_an_fp16_run_resumes_a_checkpoint_saved_without_fp16(demo_root, tmp_path, monkeypatch):
    # a bf16 or float32 run saves an empty GradScaler state; resumed where amp means fp16 (a T4), it continues
    first = fit(tiny_training_config(demo_root, tmp_path, **{"train.epochs": 1, "train.run_name": "fp32"}))
    assert load_checkpoint(first / "last.pth")["scaler"] == {}
    monkeypatch.setattr(engine, "resolve_amp", lambda amp, device: torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(
            tiny_training_config(demo_root, tmp_path, **{"train.epochs": 2, "train.resume": str(first / "last.pth")})
        )
    scaler = load_checkpoint(resumed / "last.pth")["scaler"]
    assert scaler and scaler["scale"] > 0  # the fp16 run's scaler state is saved from then on
    # the first fp16 steps overflow and the GradScaler skips them: the schedule advances with the optimizer only
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    state = load_checkpoint(resumed / "last.pth")
    assert state["scheduler"]["last_epoch"] < state["step"] == 4
    # resumed again, the schedule goes on where it stood: the rates of an uninterrupted fp16 run
    again = {"train.epochs": 3, "train.resume": str(resumed / "last.pth")}
    whole = {"train.epochs": 3, "train.resume": str(first / "epoch_001.pth"), "train.run_name": "whole"}
    folders = [fit(tiny_training_config(demo_root, tmp_path, **overrides)) for overrides in (again, whole)]
    lrs = [[(r["step"], r["lr"]) for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"] for run in folders]
    assert lrs[0] == lrs[1] and len(lrs[0]) == 3


# ---- the train command: resumed run folder, label files, presets, errors, warnings ----------------------------------
def _resumable_run(folder, cfg):
    """A run folder with config.json and a last.pth holding training state (enough for the CLI's config)."""
    folder.mkdir(parents=True)
    cfg.to_json(folder / "config.json")
    layer = torch.nn.Linear(2, 2)

    return save_checkpoint(
        folder / "last.pth", model=layer, config=cfg, epoch=1, optimizer=torch.optim.SGD(layer.parameters(), lr=0.1)
    )


def test_cli_resume_continues_in_the_checkpoint_folder_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_training_config(tmp_path, "runs", **{"train.run_name": "rc"})  # train.out relative, as by default
    _resumable_run(tmp_path / "runs" / "rc", cfg)
    shutil.copytree(tmp_path / "runs" / "rc", tmp_path / "runs" / "copy")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")

    def folder(argv):
        return runs.resolve_run_folder(config_from_argv(argv)[0])[1].resolve()

    assert folder(["--resume", "../runs/rc/last.pth"]) == tmp_path / "runs" / "rc"
    assert folder(["--resume_net", "../runs/rc/last.pth"]) == tmp_path / "runs" / "rc"
    assert folder(["--resume", "../runs/copy/last.pth"]) == tmp_path / "runs" / "copy"  # not into the original
    # an explicit name or parent folder is kept
    assert folder(["--resume", "../runs/rc/last.pth", "--run_name", "again"]) == tmp_path / "sub" / "runs" / "again"
    assert folder(["--resume", "../runs/rc/last.pth", "train.run_name=again"]) == tmp_path / "sub" / "runs" / "again"
    assert folder(["--resume", "../runs/rc/last.pth", "--out", "elsewhere"]) == tmp_path / "sub" / "elsewhere" / "rc"


def test_cli_label_files_are_used_as_given(demo_root, tmp_path, capsys):
    root = tmp_path / "bb"
    (root / "train").mkdir(parents=True)
    (root / "train" / "images").symlink_to(demo_root / "train" / "images")
    text = (demo_root / "train" / "labels.txt").read_text()
    (root / "train" / "wider_train_gt.txt").write_text(text)  # biubug6 / NN-RTK name, no labels.txt beside it
    gt = str(root / "train" / "wider_train_gt.txt")
    cfg, _ = config_from_argv(["--network", "mobile0.25", "--training_dataset", gt])
    assert (cfg.data.dataset_root, cfg.data.train_split, cfg.data.train_labels) == (str(root), "train", gt)
    for flag in ("--train_label_file", "--label_dir"):
        assert config_from_argv([flag, gt])[0].data.train_labels == gt
    assert config_from_argv(["--label_dir", str(root / "train")])[0].data.train_labels is None  # a folder: found there
    val = config_from_argv(["--val_label_file", str(root / "val" / "gt.txt")])[0].data
    assert (val.val_split, val.val_labels, val.train_labels) == ("val", str(root / "val" / "gt.txt"), None)
    with pytest.raises(ValueError, match="label file differs"):
        config_from_argv(["--training_dataset", gt, "--train_label_file", str(root / "train" / "other.txt")])

    argv = ["train", "--network", "mobile0.25", "--training_dataset", gt, "--check_only", "--workers", "0"]
    assert cli_main(argv) == 0
    assert "train: 24 samples" in capsys.readouterr().out


def test_cli_model_flag_picks_the_latent_preset_for_latent_only_data(tmp_path):
    latent_only, both = tmp_path / "lonly", tmp_path / "both"
    (latent_only / "train" / "latent").mkdir(parents=True)
    for sub in ("latent", "images"):
        (both / "train" / sub).mkdir(parents=True)
    assert config_from_argv(["--dataset_root", str(latent_only), "--model", "resnet50"])[0].preset == "latent-r50"
    assert config_from_argv(["--dataset_root", str(latent_only), "--model", "mobilenet0.25"])[0].preset == "latent-mnet"
    assert config_from_argv(["--dataset_root", str(both), "--model", "resnet50"])[0].preset == "r50-p2p6"
    assert config_from_argv(["--network", "resnet50", "--use_latent"])[0].preset == "latent-r50"
    assert config_from_argv(["--network", "mobile0.25", "--use_latent"])[0].preset == "latent-mnet"


def test_bare_amp_keeps_the_following_override():
    cfg, _ = config_from_argv(["--preset", "latent-r50", "--amp", "lr=0.01"])
    assert cfg.train.amp == "auto" and cfg.train.lr == 0.01
    cfg, _ = config_from_argv(["--preset", "latent-r50", "--amp", "lr=0.01", "momentum=0.8"])
    assert (cfg.train.amp, cfg.train.lr, cfg.train.momentum) == ("auto", 0.01, 0.8)


def test_cli_reports_a_non_finite_loss_in_one_line(monkeypatch, capsys):
    def diverge(cfg, start_epoch=None):
        raise FloatingPointError("non-finite loss at epoch 1, step 2 (images a, b): loss=nan loss_cls=nan")

    monkeypatch.setattr(train_command, "fit", diverge)
    assert cli_main(["train", "--preset", "mnet-biubug6", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite loss at epoch 1, step 2") and "Traceback" not in err


def test_pretrained_warnings_with_full_weights_and_a_frozen_random_backbone(
    demo_root, tmp_path, no_pretrained_files, monkeypatch, caplog
):
    monkeypatch.setattr(model_build, "_WARNED", set())  # the "no pretrained" warning is once per process
    one_step = {"train.epochs": 1, "train.max_steps_per_epoch": 1, "data.max_images": 2, "model.pretrained": "auto"}
    weight = save_checkpoint(
        tmp_path / "w.pth",
        model=build_model(tiny_training_config(demo_root, tmp_path)),
        config=tiny_training_config(demo_root, tmp_path),
    )
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        fit(
            tiny_training_config(
                demo_root, tmp_path, **one_step, **{"train.weight": str(weight), "train.freeze_backbone": True}
            )
        )
    assert "random init" not in caplog.text and "stays random" not in caplog.text  # full weights are loaded
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nbsrc"):  # auto: the shipped ImageNet MobileNet, nothing to say
        fit(tiny_training_config(demo_root, tmp_path, **one_step, **{"train.freeze_backbone": True}))
    assert "random init" not in caplog.text and "stays random" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="nbsrc"):
        fit(
            tiny_training_config(
                demo_root, tmp_path, **{**one_step, "model.pretrained": "none", "train.freeze_backbone": True}
            )
        )
    assert "random init" in caplog.text and "frozen backbone stays random" in caplog.text


def test_a_gpu_this_torch_cannot_run_is_refused_with_what_to_choose(monkeypatch):
    built = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
    assert cuda_arch_supported((7, 5), built) and cuda_arch_supported((8, 9), built)  # T4; L4 runs sm_86
    assert cuda_arch_supported((12, 1), built) and not cuda_arch_supported((6, 0), built)  # P100: no sm_6x
    assert cuda_arch_supported((6, 1), ["sm_50", "compute_50"]) and not cuda_arch_supported((8, 0), ["sm_90a"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: built)
    for device in ("auto", "cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match=r"Tesla P100.*6\.0.*T4"):
            select_device(device)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")


def test_a_new_run_never_writes_over_an_earlier_one(uninterrupted, demo_root):
    before = {p.name: p.read_bytes() for p in uninterrupted.iterdir() if p.is_file()}
    again = tiny_training_config(
        demo_root, uninterrupted.parent, **{"train.epochs": 1, "train.run_name": uninterrupted.name}
    )
    with pytest.raises(
        FileExistsError,
        match=r"holds an earlier run \(epoch_001.pth, epoch_002.pth, last.pth, weight_final.pth\).*train.resume=.*last.pth",
    ):
        fit(again)
    assert {p.name: p.read_bytes() for p in uninterrupted.iterdir() if p.is_file()} == before
    # nor does a run resumed from another folder into this one
    other = fit(tiny_training_config(demo_root, uninterrupted.parent, **{"train.epochs": 1, "train.run_name": "other"}))
    into = {"train.epochs": 2, "train.resume": str(other / "last.pth"), "train.run_name": uninterrupted.name}
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        fit(tiny_training_config(demo_root, uninterrupted.parent, **into))
    assert {p.name: p.read_bytes() for p in uninterrupted.iterdir() if p.is_file()} == before


def test_a_start_that_failed_before_its_first_checkpoint_can_be_retried(demo_root, tmp_path):
    # e.g. a typo in a label file, or CUDA out of memory in the first step: the folder holds no checkpoint yet
    failed = tmp_path / "retry"
    with pytest.raises(FileNotFoundError):
        fit(
            tiny_training_config(
                demo_root, tmp_path, **{"train.run_name": "retry", "data.train_labels": str(tmp_path / "typo.txt")}
            )
        )
    assert (failed / "config.json").is_file() and not list(failed.glob("*.pth"))
    run = fit(tiny_training_config(demo_root, tmp_path, **{"train.epochs": 1, "train.run_name": "retry"}))
    assert run == failed and (run / "last.pth").is_file()


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(uninterrupted, demo_root, tmp_path):
    # another model size: the run folder is neither created (train.weight) nor touched (train.resume)
    wider = {"model.out_channels": 32, "train.epochs": 2}
    with pytest.raises(ValueError, match="does not fit the model"):
        fit(
            tiny_training_config(
                demo_root, tmp_path, **wider, **{"train.run_name": "w", "train.weight": str(uninterrupted / "best.pth")}
            )
        )
    assert not (tmp_path / "w").exists()
    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted, copy)
    config = (copy / "config.json").read_bytes()
    with pytest.raises(ValueError, match="does not fit the model"):
        fit(tiny_training_config(demo_root, tmp_path, **wider, **{"train.resume": str(copy / "last.pth")}))
    assert (copy / "config.json").read_bytes() == config
    # a checkpoint with training state but no epoch count
    state = load_checkpoint(copy / "last.pth")
    torch.save({**state, "epoch": None}, copy / "noepoch.pth")
    with pytest.raises(ValueError, match="noepoch.pth: cannot resume: key .epoch."):
        fit(tiny_training_config(demo_root, tmp_path, **{"train.resume": str(copy / "noepoch.pth")}))
    assert (copy / "config.json").read_bytes() == config


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "make_run_name", lambda cfg: "latent-r18-20261202-113818")
    cfg = get_preset("latent-r18", **{"train.out": str(tmp_path)})
    names = []
    for _ in range(3):
        named, folder = runs.resolve_run_folder(cfg)
        folder.mkdir()
        names.append(named.train.run_name)
    assert names == ["latent-r18-20261202-113818", "latent-r18-20261202-113818-2", "latent-r18-20261202-113818-3"]


def test_cli_label_files_outside_the_dataset_are_used_as_given(tmp_path):
    # NN-RTK / biubug6 users pass wider_face_train_bbx_gt.txt from wider_face_split/, beside the data, not in it
    root = tmp_path / "data"
    (root / "train" / "latent").mkdir(parents=True)
    labels = tmp_path / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    labels.parent.mkdir()
    labels.write_text("")
    for argv in (
        ["--latent_dir", str(root / "train" / "latent"), "--train_label_file", str(labels)],
        ["--dataset_root", str(root), "--preset", "latent-r18", "--train_label_file", str(labels)],
        ["--dataset_root", str(root), "--preset", "latent-r18", "--training_dataset", str(labels)],
    ):
        data = config_from_argv(argv)[0].data
        assert (data.dataset_root, data.train_split, data.train_labels) == (str(root), "train", str(labels)), argv
    # only a label file names the data: its folder is the split (biubug6: ROOT/train/label.txt beside images/)
    data = config_from_argv(["--network", "mobile0.25", "--training_dataset", str(root / "train" / "label.txt")])[
        0
    ].data
    assert (data.dataset_root, data.train_split) == (str(root), "train")


# ---- validation scores detections as the class loss does -------------------------------------------------------------
def _spy_class_scores(monkeypatch) -> list[str]:
    """The cls_loss of every `class_scores` call from now on."""
    seen: list[str] = []
    real = postprocess_module.class_scores

    def spy(conf, cls_loss="ohem"):
        seen.append(cls_loss)
        return real(conf, cls_loss)

    monkeypatch.setattr(postprocess_module, "class_scores", spy)
    return seen


def test_validation_ap_scores_like_the_loss(monkeypatch):
    model, _ = focal_model()
    seen = _spy_class_scores(monkeypatch)
    batch = {
        "inputs": torch.randn(1, 3, 64, 64),
        "boxes": torch.tensor([[[8.0, 8.0, 40.0, 44.0]]]),
        "labels": torch.tensor([[1]]),
        "num_boxes": torch.tensor([1]),
        "names": ["a/one"],
    }
    result = evaluate(model, [batch], device=torch.device("cpu"), cls_loss="focal", progress=False)
    assert seen == ["focal"] and "ap_face" in result


def test_fit_validates_a_focal_run_with_sigmoid_scores(demo_root, tmp_path, monkeypatch):
    cfg = get_preset(
        "mnet-biubug6",
        **{
            "loss.cls_loss": "focal",
            "model.pretrained": "none",
            "model.out_channels": 16,
            "data.image_size": 128,
            "data.dataset_root": str(demo_root),
            "data.num_workers": 0,
            "data.max_images": 4,
            "train.out": str(tmp_path),
            "train.run_name": "focal",
            "train.epochs": 1,
            "train.max_steps_per_epoch": 1,
            "train.batch_size": 2,
            "train.device": "cpu",
            "train.wandb": "disabled",
            "train.progress": False,
        },
    )
    seen = _spy_class_scores(monkeypatch)
    fit(cfg)
    assert seen and set(seen) == {"focal"}
