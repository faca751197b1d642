"""DistributedDataParallel on the CPU: two processes (gloo) train a couple of steps through `engine.fit`; the
replicas end with identical parameters, and only rank 0 writes the run folder."""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from nbsrc import distributed, engine, launch
from nbsrc.checkpoint import load_checkpoint
from nbsrc.config import Config, get_preset
from nbsrc.distributed import DistInfo, any_rank, cleanup, init_distributed
from nbsrc.utils import read_jsonl


def _free_port() -> int:
    """A free TCP port on localhost (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn_entry(local_rank: int, fn: Callable[..., Any], nprocs: int, port: int, args: tuple) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nprocs),
            "LOCAL_WORLD_SIZE": str(nprocs),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    fn(*args)


def spawn(fn: Callable[..., Any], nprocs: int, args: tuple = ()) -> None:
    """Run ``fn(*args)`` in `nprocs` fresh processes with the ``torchrun`` environment set (`fn` must be
    importable; the ``spawn`` start method inherits nothing of this process's CUDA state)."""
    mp.start_processes(
        _spawn_entry, args=(fn, nprocs, _free_port(), tuple(args)), nprocs=nprocs, join=True, start_method="spawn"
    )


def _worker(config: dict, out_dir: str) -> None:
    """One process: fit, then save this replica's parameters (captured from the model `fit` builds)."""
    torch.set_num_threads(1)

    built = []
    real_build_model = engine.build_model

    def capture(cfg):
        model = real_build_model(cfg)
        built.append(model)
        return model

    engine.build_model = capture
    try:
        engine.fit(Config.from_dict(config))
    finally:
        engine.build_model = real_build_model
    rank = int(os.environ["RANK"])
    params = {k: v.detach().clone() for k, v in built[0].named_parameters()}
    torch.save({"params": params, "world_size": int(os.environ["WORLD_SIZE"])}, os.path.join(out_dir, f"rank{rank}.pt"))

    cleanup()


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == DistInfo(rank=0, world_size=1, local_rank=0)


def test_process_group_waits_out_a_long_rank0_validation(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    assert init_distributed("cpu") == DistInfo(rank=0, world_size=2, local_rank=0)
    assert calls[0]["backend"] == "gloo" and calls[0]["timeout"] >= datetime.timedelta(minutes=30)


def _cfg(preset: str, demo_root, tmp_path, **overrides):
    """Two small steps per epoch of batch 1 on the demo data, on the CPU, writing under ``tmp_path/runs``."""
    small = {
        "model.pretrained": "none",
        "model.out_channels": 16,
        "data.dataset_root": str(demo_root),
        "data.num_workers": 0,
        "data.max_images": 4,
        "train.batch_size": 1,
        "train.epochs": 1,
        "train.max_steps_per_epoch": 2,
        "train.lr": 0.01,
        "train.device": "cpu",
        "train.wandb": "disabled",
        "train.progress": False,
        "train.out": str(tmp_path / "runs"),
    }
    return get_preset(preset, **{**small, **overrides})


def test_two_process_gloo_training(demo_root, tmp_path):
    cfg = _cfg("latent-r18", demo_root, tmp_path, **{"train.run_name": "ddp"})
    spawn(_worker, 2, (cfg.to_dict(), str(tmp_path)))
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0["world_size"] == rank1["world_size"] == 2
    differ = [k for k in rank0["params"] if not torch.equal(rank0["params"][k], rank1["params"][k])]
    assert not differ, f"replicas diverged: {differ[:3]}"

    run = tmp_path / "runs" / "ddp"
    for name in ("config.json", "metrics.jsonl", "epoch_001.pth", "last.pth", "weight_final.pth"):
        assert (run / name).is_file(), name
    saved = load_checkpoint(run / "weight_final.pth")["model"]
    assert all(torch.equal(saved[k], v) for k, v in rank0["params"].items())
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == [2]  # one writer, no duplicated lines
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    # images are counted over all processes: 2 steps x 1 image x 2 processes
    assert [r["train_images"] for r in records if r["kind"] == "epoch"] == [4]


def test_resumed_two_process_run_equals_the_uninterrupted_one(demo_root, tmp_path):
    # RGB with augmentation: each rank's samples are augmented from (seed, epoch, index), so the ranks' random
    # streams, which a checkpoint does not hold beyond rank 0's, do not matter
    common = {"data.image_size": 128}
    full = _cfg("mnet-biubug6", demo_root, tmp_path, **common, **{"train.epochs": 2, "train.run_name": "full"})
    spawn(_worker, 2, (full.to_dict(), str(tmp_path)))
    first = _cfg("mnet-biubug6", demo_root, tmp_path, **common, **{"train.run_name": "split"})
    spawn(_worker, 2, (first.to_dict(), str(tmp_path)))
    last = tmp_path / "runs" / "split" / "last.pth"
    resumed = _cfg("mnet-biubug6", demo_root, tmp_path, **common, **{"train.epochs": 2, "train.resume": str(last)})
    spawn(_worker, 2, (resumed.to_dict(), str(tmp_path)))
    a = load_checkpoint(tmp_path / "runs" / "full" / "weight_final.pth")["model"]
    b = load_checkpoint(tmp_path / "runs" / "split" / "weight_final.pth")["model"]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def test_a_notebook_trains_on_every_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # Kaggle T4 x2
    assert launch.training_processes("auto") == launch.training_processes("cuda", 0) == 2
    assert launch.training_processes("auto", gpus=1) == 1
    assert launch.training_processes("auto", gpus=4) == 2
    assert launch.training_processes("cuda:1") == launch.training_processes("cpu") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch.training_processes("auto") == 1
    try:
        launch.training_processes("auto", gpus=-1)
    except ValueError as exc:
        assert "gpus" in str(exc)
    else:
        raise AssertionError("gpus=-1 accepted")


def test_notebook_launcher_trains_in_torchrun_processes(demo_root, tmp_path, capfd):
    """What notebook 03 runs with two GPUs: a ``torchrun`` child of two processes (here gloo on the CPU) whose
    log streams into the cell; the run folder is the one named before the launch."""
    cfg = _cfg("latent-r18", demo_root, tmp_path, **{"train.run_name": "launched", "train.max_steps_per_epoch": 1})
    run = launch.train(cfg, processes=2)
    assert run == tmp_path / "runs" / "launched"
    for name in ("config.json", "metrics.jsonl", "last.pth", "weight_final.pth"):
        assert (run / name).is_file(), name
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["train_images"] for r in epochs] == [2]  # 1 step x 1 image x 2 processes
    assert "2 process(es)" in capfd.readouterr().out


def test_launch_continues_a_resumed_run_in_its_checkpoint_folder(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "myrun"
    run.mkdir(parents=True)
    get_preset("mnet-biubug6").to_json(run / "config.json")
    (run / "last.pth").write_bytes(b"")
    seen = {}

    def fake_torchrun(command, env):
        seen.update(json.loads(open(command[command.index("--config") + 1]).read())["train"])
        return 0

    monkeypatch.setattr(launch, "_stream", fake_torchrun)
    monkeypatch.chdir(tmp_path)
    cfg = get_preset("mnet-biubug6", **{"train.resume": str(run / "last.pth"), "train.out": "elsewhere"})
    assert launch.launch(cfg, 2) == run
    assert (seen["out"], seen["run_name"]) == (str(run.parent), "myrun")


def _any_rank_worker(out_dir: str) -> None:
    """Rank 1 alone has an empty batch at step 1: both ranks learn it and skip that step together."""
    init_distributed("cpu")
    rank = int(os.environ["RANK"])
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
    batches = [torch.ones(2, 2), None if rank == 1 else torch.ones(2, 2), torch.ones(2, 2)]
    steps = []
    for step, batch in enumerate(batches):
        if any_rank(batch is None):
            continue
        model(batch).sum().backward()  # a gradient all-reduce: hangs if the ranks' steps differ
        steps.append(step)
    torch.save({"steps": steps, "none": any_rank(False)}, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


def test_a_batch_one_rank_could_not_load_is_skipped_by_every_rank(tmp_path):
    spawn(_any_rank_worker, 2, (str(tmp_path),))
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result == {"steps": [0, 2], "none": False}
