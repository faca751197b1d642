"""Runs never clobber each other and never lose their best model.

Training runs are real processes (forked from a server that imported torch once, one thread each, so that their
weights compare exactly): two runs started together into one folder, two runs started in the same second, a run
resumed while its original still runs, and runs SIGKILLed right after each step of an epoch's end (and in the
middle of writing ``last.pth``), then resumed: ``best.pth`` is the best epoch's weights, ``metrics.jsonl`` has each
epoch once, the final weights equal an uninterrupted run's, and no temporary file or lock is left.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_training_config

import nbsrc.commands.train as train_command
from nbsrc import checkpoint, engine, runs, utils
from nbsrc.checkpoint import load_checkpoint, save_checkpoint
from nbsrc.cli import main as cli_main
from nbsrc.config import Config, get_preset
from nbsrc.detector import Detector
from nbsrc.distributed import DistInfo
from nbsrc.evaluation.predict import build_predict_dataset, predict_dataset
from nbsrc.evaluation.results import result_path
from nbsrc.model import build_model
from nbsrc.utils import append_jsonl, atomic_path, atomic_write_text, read_jsonl

EPOCHS = 3
SCORES = {1: 0.1, 2: 0.3, 3: 0.2}  # validation score per epoch: epoch 2 is the best, and a later epoch follows it
_SERVER = None


def _server() -> multiprocessing.context.BaseContext:
    """Processes forked from one server that imported torch and nbsrc once (a fresh interpreter costs seconds)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = multiprocessing.get_context("forkserver")
        _SERVER.set_forkserver_preload(["torch", "nbsrc.engine", "nbsrc.model", "nbsrc.data.loaders"])
    return _SERVER


# ---- what the processes run ---------------------------------------------------------------------------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, epoch: int) -> None:
    """SIGKILL this process at `point` of the end of epoch `epoch`: right after the epoch's checkpoint, its metrics
    line, ``last.pth`` or ``best.pth`` is written, or in the middle of writing ``last.pth``."""
    ending = {"epoch": 0}
    real_save, real_append, real_copy = engine.save_checkpoint, engine.append_jsonl, engine.atomic_copy

    def save_checkpoint(path, **kwargs):
        result = real_save(path, **kwargs)
        if Path(path).name.startswith("epoch_"):
            ending["epoch"] = kwargs["epoch"]
            if point == "epoch file" and ending["epoch"] == epoch:
                _die()
        return result

    def append_jsonl(path, record):
        real_append(path, record)
        if point == "metrics line" and record.get("kind") == "epoch" and record["epoch"] == epoch:
            _die()

    def copy_atomic(source, destination):
        if point == f"inside {destination.name}" and ending["epoch"] == epoch:
            with utils.atomic_path(destination) as tmp:
                tmp.write_bytes(Path(source).read_bytes()[:4096])
                _die()
        real_copy(source, destination)
        if point == destination.name and ending["epoch"] == epoch:
            _die()

    engine.save_checkpoint, engine.append_jsonl, engine.atomic_copy = save_checkpoint, append_jsonl, copy_atomic


def _train(config: dict, result: str, kill: tuple[str, int] | None = None, start=None, fixed_name=None) -> None:
    """One training process: `fit` (after `start`, a barrier shared with another process), its outcome to `result`."""
    torch.set_num_threads(1)

    engine._score = lambda record, key: SCORES.get(record["epoch"], 0.0)  # the same best epoch on any machine
    if kill is not None:
        _arm(*kill)
    if fixed_name is not None:  # every run starts "in the same second"
        runs.make_run_name = lambda cfg: fixed_name
    if start is not None:
        start.wait()
    try:
        run = engine.fit(Config.from_dict(config))
    except Exception as exc:
        Path(result).write_text(json.dumps({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}))
        os._exit(3)
    Path(result).write_text(json.dumps({"pid": os.getpid(), "run": str(run)}))


def _hold(folder: str, ready, done) -> None:
    """Hold `folder` as a live run would until `done` is set."""
    with runs.claim(folder):
        ready.set()
        done.wait(60)


def _start(target, *args, **kwargs):
    process = _server().Process(target=target, args=args, kwargs=kwargs)
    process.start()
    return process


def _finish(process, result: Path | None = None) -> dict:
    process.join(120)
    assert process.exitcode is not None, "the training process did not end"
    outcome = json.loads(result.read_text()) if result is not None and result.is_file() else {}
    return {"exitcode": process.exitcode, **outcome}


def _run(config: Config, result: Path, **kwargs) -> dict:
    return _finish(_start(_train, config.to_dict(), str(result), **kwargs), result)


def _model(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == runs.LOCK_NAME)


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory):
    """An uninterrupted run of `EPOCHS` epochs and the epoch that is its best (by `SCORES`)."""
    out = tmp_path_factory.mktemp("reference")
    outcome = _run(
        tiny_training_config(demo_root, out, **{"train.epochs": EPOCHS, "train.run_name": "full"}), out / "result.json"
    )
    assert outcome["exitcode"] == 0, outcome
    run = Path(outcome["run"])
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    best = max(r["epoch"] for r in epochs if r["best"])
    assert best == max(SCORES, key=SCORES.get) and [r["best"] for r in epochs] == [True, True, False]
    assert load_checkpoint(run / "best.pth")["epoch"] == best
    return run, best


# ---- 1. one folder, one run ---------------------------------------------------------------------------------------
def test_two_runs_started_together_into_one_folder(demo_root, tmp_path):
    start = _server().Barrier(2)
    results = [tmp_path / f"seed{seed}.json" for seed in (1, 2)]
    processes = [
        _start(
            _train,
            tiny_training_config(
                demo_root, tmp_path, **{"train.run_name": "same", "train.seed": seed, "train.epochs": 1}
            ).to_dict(),
            str(result),
            start=start,
        )
        for seed, result in zip((1, 2), results)
    ]
    outcomes = [_finish(p, r) for p, r in zip(processes, results)]
    assert sorted(o["exitcode"] for o in outcomes) == [0, 3], outcomes
    winner, loser = sorted(outcomes, key=lambda o: o["exitcode"])
    # refused, naming the run that holds the folder (or, had it ended first, its checkpoints)
    assert re.search(
        rf"same: in use by another run \(PID {winner['pid']}, started \d{{4}}-\d\d-\d\d", loser["error"]
    ) or ("holds an earlier run" in loser["error"]), loser
    run = tmp_path / "same"
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["kind"] for r in records].count("start") == 1
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    seed = 1 if outcomes[0] is winner else 2
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == seed
    assert load_checkpoint(run / "last.pth")["config"]["train"]["seed"] == seed
    assert _leftovers(run) == []


def test_runs_started_in_the_same_second_get_two_folders(demo_root, tmp_path):
    start = _server().Barrier(2)
    results = [tmp_path / f"seed{seed}.json" for seed in (1, 2)]
    processes = [
        _start(
            _train,
            tiny_training_config(demo_root, tmp_path / "runs", **{"train.seed": seed, "train.epochs": 1}).to_dict(),
            str(result),
            start=start,
            fixed_name="mnet-biubug6-20261204-120000",
        )
        for seed, result in zip((1, 2), results)
    ]
    outcomes = [_finish(p, r) for p, r in zip(processes, results)]
    assert [o["exitcode"] for o in outcomes] == [0, 0], outcomes
    folders = {Path(o["run"]).name: o for o in outcomes}
    assert sorted(folders) == ["mnet-biubug6-20261204-120000", "mnet-biubug6-20261204-120000-2"]
    for name in folders:
        run = tmp_path / "runs" / name
        records = read_jsonl(run / "metrics.jsonl")
        assert [r["kind"] for r in records].count("start") == 1
        assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
    seeds = {json.loads((tmp_path / "runs" / n / "config.json").read_text())["train"]["seed"] for n in folders}
    assert seeds == {1, 2}


def test_a_claimed_folder_is_refused_in_one_line_naming_its_holder(reference, demo_root, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(reference[0], copy)
    new = ["train", "--preset", "mnet-biubug6", "--dataset_root", str(demo_root), "--epochs", "1", "--no_wandb"]
    new += ["--device", "cpu", "model.pretrained=none", "model.out_channels=16", "max_steps_per_epoch=1"]
    for argv, folder in (
        (new + ["--out", str(tmp_path), "--run_name", "held"], tmp_path / "held"),  # a new run into it
        (["train", "--resume", str(copy / "last.pth"), "--epochs", "4"], copy),  # a resume while the run goes on
    ):
        ready, done = _server().Event(), _server().Event()
        holder = _start(_hold, str(folder), ready, done)
        try:
            assert ready.wait(60)
            before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
            assert cli_main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err, err
            assert re.fullmatch(
                rf"error: {re.escape(str(folder))}: in use by another run \(PID {holder.pid}, started "
                r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); .*--run_name.*run\.lock",
                err,
            ), err
            assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing touched
        finally:
            done.set()
            holder.join(60)
        assert not (folder / runs.LOCK_NAME).exists()  # released when the holder ended


def test_only_rank_zero_claims_and_the_other_ranks_follow(tmp_path, monkeypatch):
    cfg = get_preset("mnet-biubug6", **{"train.out": str(tmp_path), "train.run_name": "ddp"})
    monkeypatch.setattr(runs, "broadcast_object", lambda obj: ("ok", str(tmp_path), "ddp"))  # rank 0's answer
    named, folder, held = runs.claim_run_folder(cfg, DistInfo(rank=1, world_size=2))
    assert (named.train.run_name, folder, held) == ("ddp", tmp_path / "ddp", None)
    assert not folder.exists()  # rank 1 created and locked nothing
    refusal = "x: in use by another run (PID 12, started 2026-12-04 10:00:00)"
    monkeypatch.setattr(runs, "broadcast_object", lambda obj: ("error", True, refusal))
    with pytest.raises(runs.RunFolderBusy, match=re.escape(refusal)):
        runs.claim_run_folder(cfg, DistInfo(rank=1, world_size=2))
    # rank 0 tells the other ranks what stopped it, rather than leaving them waiting
    told = []
    monkeypatch.setattr(runs, "broadcast_object", lambda obj: told.append(obj) or obj)
    with runs.claim(tmp_path / "ddp"):
        with pytest.raises(runs.RunFolderBusy):
            runs.claim_run_folder(cfg, DistInfo(rank=0, world_size=2))
    assert told[0][:2] == ("error", True) and f"PID {os.getpid()}" in told[0][2]


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / runs.LOCK_NAME
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    me = json.loads(json.dumps(runs._holder_record()))
    cases = {
        "dead": {**me, "pid": ended.pid, "proc_start": None},  # its process has ended
        "reused": {**me, "proc_start": (me["proc_start"] or 0) + 1},  # this PID, but not the process that locked
        "rebooted": {**me, "boot_id": "another-boot"},
        "other host, silent": {**me, "host": "elsewhere", "pid": 1},  # not refreshed for STALE_AFTER_S
    }
    for case, record in cases.items():
        lock.write_text(json.dumps(record))
        if case.startswith("other host"):
            old = time.time() - runs.STALE_AFTER_S - 5
            os.utime(lock, (old, old))
        with runs.claim(folder) as held:
            assert held.owner and held.holder["pid"] == os.getpid(), case
            assert json.loads(lock.read_text())["token"] == held.token
        assert "taking over the lock of a run that is no longer running" in caplog.text, case
        assert not lock.exists()
    lock.write_text(json.dumps({**me, "host": "elsewhere", "pid": 1}))  # refreshed just now
    with pytest.raises(runs.RunFolderBusy, match=r"in use by another run \(PID 1 on host elsewhere, started "):
        runs.claim(folder)
    lock.unlink()
    with runs.claim(folder):  # the same process, another claim
        with pytest.raises(runs.RunFolderBusy, match=rf"PID {os.getpid()}, started "):
            runs.claim(folder)
        os.environ[runs.INHERIT_ENV] = json.loads(lock.read_text())["token"]
        try:  # a worker the holder started follows its claim
            follower = runs.claim(folder)
        finally:
            del os.environ[runs.INHERIT_ENV]
        assert not follower.owner
        follower.release()
        assert lock.exists()
    assert not lock.exists()
    assert socket.gethostname() != "elsewhere"


def test_a_holder_refreshes_its_lock_so_other_hosts_see_it_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.02)
    with runs.claim(tmp_path / "run") as held:
        old = time.time() - runs.STALE_AFTER_S - 5
        os.utime(held.lock_path, (old, old))
        time.sleep(0.3)
        assert time.time() - held.lock_path.stat().st_mtime < runs.STALE_AFTER_S


def test_a_failed_start_leaves_no_folder_and_no_lock(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(FileNotFoundError):
        with runs.claim(out / "a" / "b"):
            raise FileNotFoundError("checkpoint missing")
    assert not out.exists()


# ---- 2. a kill at any point of an epoch's end loses nothing ---------------------------------------------------------
@pytest.mark.parametrize("point", ["epoch file", "metrics line", "inside last.pth", "last.pth", "best.pth"])
def test_a_kill_at_the_end_of_an_epoch_loses_neither_the_best_model_nor_a_metrics_line(
    reference, demo_root, tmp_path, point
):
    full, best_epoch = reference
    cfg = tiny_training_config(demo_root, tmp_path, **{"train.epochs": EPOCHS, "train.run_name": "killed"})
    killed = _run(cfg, tmp_path / "killed.json", kill=(point, best_epoch))
    assert killed["exitcode"] == -signal.SIGKILL, killed
    run = tmp_path / "killed"
    if point == "inside last.pth":
        assert any(p.name.startswith(".last.pth.") and p.name.endswith(".tmp") for p in run.iterdir())
    assert (run / runs.LOCK_NAME).exists()  # the killed run's lock, stale now

    resume = tiny_training_config(
        demo_root, tmp_path, **{"train.epochs": EPOCHS, "train.resume": str(run / "last.pth")}
    )
    resumed = _run(resume, tmp_path / "resumed.json")
    assert resumed["exitcode"] == 0, resumed
    assert Path(resumed["run"]) == run
    assert _same(_model(run / "weight_final.pth"), _model(full / "weight_final.pth"))
    assert load_checkpoint(run / "best.pth")["epoch"] == best_epoch
    assert _same(_model(run / "best.pth"), _model(full / "best.pth"))
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, EPOCHS + 1))
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == [r["step"] for r in read_jsonl(full / "metrics.jsonl") if r["kind"] == "step"]
    assert _leftovers(run) == []  # the interrupted write's temporary file went, and so did the lock


# ---- 3. a full disk, and temporary files left by kills --------------------------------------------------------------
def test_a_full_disk_names_the_file(tmp_path, monkeypatch, capsys):
    layer = torch.nn.Linear(2, 2)
    cfg = get_preset("mnet-biubug6")

    def short_write(obj, path):
        Path(path).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 3584"
        )  # what torch.save raises on a full disk

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    target = tmp_path / "run" / "last.pth"
    with pytest.raises(OSError, match=r"disk is full") as info:
        save_checkpoint(target, model=layer, config=cfg)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # neither the file nor a partial temporary one

    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match=r"disk is full.*config\.json"):
        atomic_write_text(tmp_path / "run" / "config.json", "{}")
    monkeypatch.setattr(Path, "open", lambda path, mode="r": no_space(path, ""))
    with pytest.raises(OSError, match=r"disk is full.*metrics\.jsonl"):
        append_jsonl(tmp_path / "run" / "metrics.jsonl", {"kind": "epoch"})
    monkeypatch.undo()

    def fit(cfg, start_epoch=None):
        save_checkpoint(tmp_path / "run" / "epoch_001.pth", model=layer, config=cfg)

    monkeypatch.setattr(train_command, "fit", fit)
    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    assert cli_main(["train", "--preset", "mnet-biubug6", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'run' / 'epoch_001.pth'}: not written: the disk is full " + (
        "(no space left on device, or quota used up); free some space"
    )


def test_only_stale_temporary_files_of_the_writer_are_removed(tmp_path):
    folder, event = tmp_path / "pred", tmp_path / "pred" / "0--Parade"
    event.mkdir(parents=True)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with atomic_path(folder / "last.pth") as tmp:  # the writer's own name for it
        assert re.fullmatch(rf"\.last\.pth\.{os.getpid()}-[a-z0-9_]{{8}}\.tmp", tmp.name), tmp.name
    stale = [
        folder / f".last.pth.{ended.pid}-abcd_123.tmp",  # its writer was killed
        folder / ".best.pth.k2j4h6g8.tmp",  # written before temporary names carried the PID
        event / f".0_Parade_1.txt.{ended.pid}-a1b2c3d4.tmp",
    ]
    kept = [
        folder / f".last.pth.{os.getpid()}-zzzzzzzz.tmp",  # being written by a live process
        folder / "notes.tmp",
        folder / ".hidden",
        folder / "last.pth",
        tmp_path / f".other.pth.{ended.pid}-abcdefgh.tmp",  # not in the folder
    ]
    elsewhere = folder / "wandb"
    elsewhere.mkdir()
    kept.append(elsewhere / f".run.json.{ended.pid}-abcdefgh.tmp")  # a subfolder not given
    for path in stale + kept:
        path.write_bytes(b"x")
    lock = folder / runs.LOCK_NAME
    lock.write_text(json.dumps({**runs._holder_record(), "pid": 1, "host": "elsewhere"}))  # a live run elsewhere
    assert runs.remove_stale_temp_files(folder, [event]) == 0
    lock.unlink()
    assert runs.remove_stale_temp_files(folder, [event]) == 3
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_predict_removes_the_temporary_files_a_killed_prediction_left(demo_root, tmp_path):
    cfg = get_preset("mnet-biubug6", **{"model.pretrained": "none", "model.out_channels": 8, "data.max_images": 2})
    cfg = cfg.replace(**{"data.image_size": 128, "eval.keep_top_k": 100})
    dataset = build_predict_dataset(cfg, demo_root, "val")
    out = tmp_path / "pred"
    first = result_path(out, dataset.names[0])
    first.parent.mkdir(parents=True)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = first.parent / f".{first.name}.{ended.pid}-q1w2e3r4.tmp"
    stale.write_text("0_Parade_1\n1\n3 4 5")
    stats = predict_dataset(Detector(build_model(cfg), cfg, "cpu"), dataset, out, batch_size=2, progress=False)
    assert stats.written == 2 and not stale.exists()
