"""Starting a training run from a notebook or a script: in this process (`nbsrc.engine.fit`), or in a child
``torchrun`` of one process per GPU whose output streams into the notebook cell. The notebook process never creates
a CUDA context (that breaks forked workers): it only counts the GPUs and claims the run folder for the workers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from nbsrc.config import Config
from nbsrc.engine import fit
from nbsrc.runs import claim_run_folder

__all__ = ["launch", "train", "training_processes"]

logger = logging.getLogger(__name__)


def _stream(command: list[str], env: dict[str, str]) -> int:
    """Run `command`, copying its output line by line to stdout (visible in a notebook cell and in logs)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail = (tail + [line])[-40:]
    code = process.wait()
    if code != 0:
        sys.stderr.write("".join(tail[-10:]))
    return code


def launch(cfg: Config, nprocs: int | str = "gpu", *, start_epoch: int | None = None) -> Path:
    """Train `cfg` in a child ``torchrun`` of `nprocs` processes (``"gpu"``: one per visible GPU) and return the run
    folder, which is claimed here as `fit` would and followed by the workers. `start_epoch` is `fit`'s. Raises
    `RuntimeError` when a worker failed (its last output lines are shown)."""
    cfg, run_dir, held = claim_run_folder(cfg)
    try:
        with tempfile.TemporaryDirectory(prefix="nbsrc-launch-") as tmp:
            config_path = Path(tmp) / "config.json"
            cfg.to_json(config_path)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
            command += ["-m", "nbsrc", "train", "--config", str(config_path)]
            if start_epoch is not None:
                command += ["--resume_epoch", str(start_epoch)]
            env = dict(os.environ)
            env.setdefault("OMP_NUM_THREADS", "1")
            env.update(held.child_env())
            package_root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            logger.info("launching: %s", " ".join(command))
            code = _stream(command, env)
    finally:
        held.release()
    if code != 0:
        raise RuntimeError(f"distributed training failed with exit code {code} (see the output above)")
    return run_dir


def training_processes(device: str = "auto", gpus: int = 0) -> int:
    """How many processes a notebook trains with: one per visible GPU (at most `gpus` when > 0) for ``device``
    ``auto`` or ``cuda``; 1 on CPU or for one chosen GPU (``cuda:N``). Creates no CUDA context."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0 (0: every visible GPU), got {gpus}")
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 1
    count = torch.cuda.device_count()
    return max(1, min(count, gpus) if gpus else count)


def train(cfg: Config, processes: int = 1) -> Path:
    """Train `cfg` and return the run folder: in this process for one process (`nbsrc.engine.fit`), else with
    `launch` (``torchrun``, one process per GPU, DistributedDataParallel)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1:
        return fit(cfg)
    logger.info("training with %d processes (DistributedDataParallel)", processes)
    return launch(cfg, processes)
