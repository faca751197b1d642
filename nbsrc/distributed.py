"""Multi-process training helpers: DistributedDataParallel under ``torchrun``, rank-0-only side effects, and a
launcher that notebooks can call.

A distributed run is started by ``torchrun --nproc_per_node N -m nbsrc train ...`` (Kaggle T4 x2: ``N = 2``),
which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. `init_distributed`
reads them and joins the process group (NCCL on CUDA, gloo on CPU); every process trains on its own shard
of the data (``DistributedSampler``), DDP averages the gradients, and only rank 0 logs, tracks and writes
checkpoints.

In a notebook, `launch` runs the same command in a child ``torchrun`` and streams its output into the cell;
the notebook process itself never touches CUDA (a CUDA context created before forking breaks the workers).
`spawn` starts the workers with ``torch.multiprocessing`` instead (no ``torchrun`` needed; used by tests).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nbsrc.config import Config

# The other ranks wait at a barrier while rank 0 validates on the whole split and writes checkpoints: a large
# validation set can take longer than the default 10 minutes of a collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "fit_worker",
    "free_port",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launch",
    "spawn",
    "train",
    "training_processes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def is_distributed() -> bool:
    """True when a process group is running."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: torch.device | str = "cpu") -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (no-op for a single process).

    Args:
        device: the training device kind; CUDA uses NCCL and ``cuda:LOCAL_RANK``, anything else gloo.

    Returns:
        This process's `DistInfo`. Non-zero ranks log warnings and errors only.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)
    if world_size <= 1:
        return info
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} outside WORLD_SIZE={world_size}")
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        backend = "nccl" if on_cuda else "gloo"
        dist.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
        )
        logger.info("process group: rank %d of %d (%s)", rank, world_size, backend)
    if rank != 0:
        logging.getLogger("nbsrc").setLevel(logging.WARNING)
    return info


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether `flag` holds on any rank (itself when not distributed). Every rank must call it: it is how all
    ranks agree to skip a training step whose batch one of them could not load, so no gradient reduction waits
    for a rank that skipped. `device` is where the collective runs (CUDA under NCCL)."""
    if not is_distributed():
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (a copy; the input itself when not distributed)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / get_world_size()


def free_port() -> int:
    """A free TCP port on localhost (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- launching ----------------------------------------------------------------------------------
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
    """Run ``fn(*args)`` in `nprocs` fresh processes with the ``torchrun`` environment set.

    `fn` must be importable (defined at module level in a package, not in a notebook). Processes are
    started with the ``spawn`` method, so nothing of the parent's CUDA state is inherited.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    import torch.multiprocessing as mp

    mp.start_processes(
        _spawn_entry, args=(fn, nprocs, free_port(), tuple(args)), nprocs=nprocs, join=True, start_method="spawn"
    )


def fit_worker(config: dict[str, Any], start_epoch: int | None = None) -> None:
    """Process entry of `spawn`-based training: ``engine.fit`` on a config dict."""
    from nbsrc.engine import fit
    from nbsrc.utils import setup_logging

    setup_logging()
    try:
        fit(Config.from_dict(config), start_epoch=start_epoch)
    finally:
        cleanup()


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


def launch(
    cfg: Config,
    nprocs: int | str = "gpu",
    *,
    method: str = "torchrun",
    start_epoch: int | None = None,
) -> Path:
    """Train `cfg` with `nprocs` processes from a notebook (or any script) and return the run folder.

    Args:
        cfg: the run's configuration. Its run folder is fixed here (``engine.resolve_run_folder``), so the
            caller knows it before the workers start.
        nprocs: number of processes, or ``"gpu"`` for one per visible GPU (``torchrun`` only).
        method: ``torchrun`` (a child ``python -m torch.distributed.run ... -m nbsrc train``; its output is
            streamed) or ``spawn`` (``torch.multiprocessing`` workers running `fit_worker`).
        start_epoch: first epoch when initialising from a published checkpoint (see ``engine.fit``).

    Raises:
        RuntimeError: a worker failed (its last output lines are shown).
    """
    from nbsrc.engine import claim_run_folder
    from nbsrc.runs import INHERIT_ENV

    # as `fit` would (a resumed run continues in its checkpoint's folder); claimed here for the whole launch, and
    # the workers follow this claim (its token is in their environment)
    cfg, run_dir, held = claim_run_folder(cfg)
    try:
        if method == "spawn":
            if nprocs == "gpu":
                nprocs = max(1, torch.cuda.device_count())  # counts devices without creating a CUDA context
            previous = os.environ.get(INHERIT_ENV)
            os.environ.update(held.child_env())  # the spawned workers start with this environment
            try:
                spawn(fit_worker, int(nprocs), (cfg.to_dict(), start_epoch))
            finally:
                if previous is None:
                    os.environ.pop(INHERIT_ENV, None)
                else:
                    os.environ[INHERIT_ENV] = previous
            return run_dir
        if method != "torchrun":
            raise ValueError(f"method must be 'torchrun' or 'spawn', got {method!r}")
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
        if held is not None:
            held.release()
    if code != 0:
        raise RuntimeError(f"distributed training failed with exit code {code} (see the output above)")
    return run_dir


def training_processes(device: str = "auto", gpus: int = 0) -> int:
    """How many processes a notebook trains with: one per visible GPU (at most `gpus` when it is > 0) for
    ``device`` ``auto`` or ``cuda``; 1 on CPU or for one chosen GPU (``cuda:N``). Kaggle's T4 x2 gives 2.

    Counting the GPUs creates no CUDA context in the calling process.
    """
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0 (0: every visible GPU), got {gpus}")
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 1
    count = torch.cuda.device_count()
    return max(1, min(count, gpus) if gpus else count)


def train(cfg: Config, processes: int = 1) -> Path:
    """Train `cfg` and return the run folder: in this process for one process (``engine.fit``), else with
    `launch` (``torchrun``, one process per GPU, DistributedDataParallel)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1:
        from nbsrc.engine import fit

        return fit(cfg)
    logger.info("training with %d processes (DistributedDataParallel)", processes)
    return launch(cfg, processes)
