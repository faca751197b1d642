"""Run folders: chosen and named (`resolve_run_folder`, `claim_run_folder`), claimed by one run at a time
(`claim`), kept from overwriting an earlier run (`refuse_earlier_run`), and cleared of the temporary files of killed
writes (`remove_stale_temp_files`).

A claim holds an exclusive ``flock`` on ``<folder>/run.lock``, which records the holder (PID, host, start time); a
second run into the folder is refused naming the holder (`RunFolderBusy`). The lock of a run that died is taken
over: on this host when its process is gone (checked with the process's start time and the boot, so a reused PID
does not count), from another host (a shared drive) when the file has not been refreshed for `STALE_AFTER_S`
seconds. Worker processes of the holder (the ``torchrun`` of `nbsrc.launch`) follow its claim through the token in
`INHERIT_ENV`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbsrc.config import Config
from nbsrc.distributed import DistInfo, broadcast_object
from nbsrc.utils import atomic_write_text, read_jsonl

__all__ = [
    "HEARTBEAT_S",
    "INHERIT_ENV",
    "LOCK_NAME",
    "STALE_AFTER_S",
    "RunClaim",
    "RunFolderBusy",
    "claim",
    "claim_run_folder",
    "make_run_name",
    "prune_epoch_files",
    "refuse_earlier_run",
    "remove_stale_temp_files",
    "resolve_run_folder",
    "trim_metrics",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
INHERIT_ENV = "NBSRC_RUN_CLAIM"  # token of the claim a parent process holds for its workers
HEARTBEAT_S = 60.0  # a holder refreshes its lock file this often
STALE_AFTER_S = 600.0  # a lock of another host not refreshed for this long belongs to a dead run
ORPHAN_WAIT_S = 10.0  # how long a dead holder's forked children (loader workers) may keep its flock
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")  # see nbsrc.utils.atomic_path

try:  # POSIX; elsewhere the holder's PID alone decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunFolderBusy(FileExistsError):
    """The run folder is claimed by a live run; the message names the folder, the holder and what to do."""


# ---- who holds a lock, and whether it still runs -------------------------------------------------------------
def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read_text("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks after boot)`` of process `pid` from ``/proc``, or None."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime field 22
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` runs on this machine (a zombie does not); with `start` (clock ticks after boot, as
    `claim` records it), that very process, not a later one given the same PID."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        stat = _proc_stat(pid)
        if stat is None:
            return False
        state, started = stat
        return state not in ("Z", "X", "x") and (start is None or started == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder_record() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "proc_start": stat[1] if stat else None,
        "started": time.time(),
        "token": secrets.token_hex(8),
    }


def _describe_holder(holder: dict[str, Any] | None) -> str:
    """``PID 1234 on host h, started 2026-12-04 22:00:01`` (what is known of it)."""
    if not holder:
        return "a process whose lock record is unreadable"
    text = f"PID {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        text += f" on host {holder['host']}"
    started = holder.get("started")
    if isinstance(started, (int, float)):
        text += ", started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    return text


def _parse(text: str | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(text) if text else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _holder_alive(holder: dict[str, Any], lock_path: Path) -> bool:
    """Whether the run that wrote `holder` still runs: its process on this host, the lock's heartbeat on another."""
    if holder.get("host") == socket.gethostname():
        boot = _boot_id()
        if holder.get("boot_id") and boot and holder["boot_id"] != boot:
            return False  # the machine restarted since
        return _process_alive(int(holder["pid"]), holder.get("proc_start"))
    try:
        age = time.time() - lock_path.stat().st_mtime
    except OSError:
        return False
    return age < STALE_AFTER_S


def _live_holder(folder: str | Path) -> dict[str, Any] | None:
    """The lock record of the live run holding `folder`, or None."""
    path = Path(folder) / LOCK_NAME
    holder = _parse(_read_text(str(path)))
    return holder if holder is not None and _holder_alive(holder, path) else None


# ---- claiming a folder -----------------------------------------------------------------------------------------
class RunClaim:
    """A held run folder (`claim`); `release` (or leaving the ``with`` block) gives it back. `holder` is the lock
    record; `owner` is False for a process that follows its parent's claim (releasing it does nothing)."""

    def __init__(
        self,
        folder: Path,
        holder: dict[str, Any],
        *,
        owner: bool,
        fd: int | None = None,
        created: Iterable[Path] = (),
    ) -> None:
        self.folder, self.holder, self.owner = Path(folder), holder, owner
        self.lock_path = self.folder / LOCK_NAME
        self._fd, self._created = fd, list(created)
        self._stop = threading.Event()
        if owner:  # the heartbeat: a holder on another host is alive while its lock file is fresh
            threading.Thread(target=self._beat, name="nbsrc-run-lock", daemon=True).start()

    @property
    def token(self) -> str:
        return str(self.holder.get("token", ""))

    def child_env(self) -> dict[str, str]:
        """Environment entries that let worker processes follow the claim."""
        return {INHERIT_ENV: self.token}

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock_path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock file and close it; folders the claim created and nothing was written into are removed."""
        if self._stop.is_set():
            return
        self._stop.set()
        if not self.owner:
            return
        try:
            if self._fd is not None and _same_file(self._fd, self.lock_path):
                self.lock_path.unlink()
        except OSError as exc:
            logger.warning("%s: could not remove the run lock (%s)", self.lock_path, exc)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        _remove_empty(self._created)

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunClaim({str(self.folder)!r}, {_describe_holder(self.holder)}, owner={self.owner})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another open file holds it; None: this filesystem does not lock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ... (some network and FUSE filesystems)
        return None
    return True


def _read_fd(fd: int, attempts: int = 1) -> dict[str, Any] | None:
    """The lock record in `fd`; retried while the holder may be writing it."""
    for attempt in range(attempts):
        os.lseek(fd, 0, os.SEEK_SET)
        holder = _parse(os.read(fd, 1 << 16).decode("utf-8", "replace"))
        if holder is not None or attempt + 1 == attempts:
            return holder
        time.sleep(0.05)
    return None


def _busy(folder: Path, holder: dict[str, Any] | None) -> RunFolderBusy:
    return RunFolderBusy(
        f"{folder}: in use by another run ({_describe_holder(holder)}); wait for it to end or stop it, or choose "
        f"another train.run_name (--run_name); if that run is no longer running, delete {folder / LOCK_NAME}"
    )


def _make_folder(folder: Path, fresh: bool) -> list[Path]:
    """Create `folder` (when `fresh`, it must be new); returns the folders created, outermost first."""
    missing, path = [], folder
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    if fresh:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()  # FileExistsError: another run took this name first
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): kept
            return


def claim(folder: str | Path, *, fresh: bool = False) -> RunClaim:
    """Claim run folder `folder` (created when missing) for this process until `RunClaim.release`, and remove the
    stale temporary files in it. With `fresh` the folder must not exist yet (``FileExistsError``, a new run's own
    name). Raises `RunFolderBusy` when a live run holds it."""
    folder = Path(folder)
    created = _make_folder(folder, fresh)
    try:
        held = _lock(folder, created)
    except BaseException:
        _remove_empty(created)
        raise
    if held.owner:
        remove_stale_temp_files(folder, held=True)
    return held


def _lock(folder: Path, created: list[Path]) -> RunClaim:
    path = folder / LOCK_NAME
    inherited = os.environ.get(INHERIT_ENV)
    orphan_deadline, waited = time.monotonic() + ORPHAN_WAIT_S, False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        keep = False
        try:
            locked = _try_flock(fd)
            if locked is not False and not _same_file(fd, path):
                continue  # released (unlinked) by its holder meanwhile: open the new file
            holder = _read_fd(fd, attempts=20 if locked is False else 1)  # a holder may be writing it
            if holder is not None and inherited and holder.get("token") == inherited:
                return RunClaim(folder, holder, owner=False)  # a worker of the run that holds the folder
            alive = holder is not None and _holder_alive(holder, path)
            if locked is False:
                if alive or holder is None:
                    raise _busy(folder, holder)
                if time.monotonic() < orphan_deadline:  # a dead holder's forked children still hold the file
                    if not waited:
                        logger.info("%s: waiting for the processes of an ended run to let go of it", path)
                        waited = True
                    time.sleep(0.2)
                    continue
            elif alive:  # a filesystem whose locks do not reach the holder
                raise _busy(folder, holder)
            if holder is not None:
                logger.warning(
                    "%s: taking over the lock of a run that is no longer running (%s)", path, _describe_holder(holder)
                )
            record = _holder_record()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
            keep = True
            return RunClaim(folder, record, owner=True, fd=fd, created=created)
        finally:
            if not keep:
                os.close(fd)


# ---- temporary files of interrupted writes ---------------------------------------------------------------------
def remove_stale_temp_files(folder: str | Path, subfolders: Iterable[str | Path] = (), *, held: bool = False) -> int:
    """Delete the temporary files (``.<name>.<pid>-<random>.tmp``) that `nbsrc.utils.atomic_path` left in `folder`
    and `subfolders` when a write was killed; returns how many. Nothing is touched while another live run holds
    `folder` (`held`: this process holds it), nor a file whose writing process still runs."""
    folder = Path(folder)
    if not held:
        holder = _live_holder(folder)
        if holder is not None and holder.get("pid") != os.getpid():
            return 0
    removed: list[str] = []
    for directory in dict.fromkeys([folder, *map(Path, subfolders)]):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = match.group("pid")
            if pid is not None and (int(pid) == os.getpid() or _process_alive(int(pid))):
                continue  # being written right now
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. a read-only folder: left, and said so
                logger.warning("%s: could not remove this temporary file of an interrupted write (%s)", entry.path, exc)
                continue
            removed.append(entry.name)
    if removed:
        shown = ", ".join(removed[:3]) + (", ..." if len(removed) > 3 else "")
        logger.info("%s: removed %d temporary file(s) left by interrupted writes (%s)", folder, len(removed), shown)
    return len(removed)


# ---- choosing a run's folder -----------------------------------------------------------------------------------
def make_run_name(cfg: Config) -> str:
    """Default run folder name: ``<preset>-<YYYYmmdd-HHMMSS>``."""
    return f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _choose_run_folder(cfg: Config) -> tuple[Config, Path, bool]:
    """``(cfg with train.run_name fixed, run folder, whether the name is a new default one)``."""
    name = cfg.train.run_name
    if name is None and cfg.train.resume is not None:
        resume_dir = Path(cfg.train.resume).resolve().parent
        if (resume_dir / "config.json").is_file():
            if os.access(resume_dir, os.W_OK):
                named = cfg.replace(**{"train.run_name": resume_dir.name, "train.out": str(resume_dir.parent)})
                return named, resume_dir, False
            name = resume_dir.name
    fresh = name is None
    if fresh:
        name = make_run_name(cfg)
    return cfg.replace(**{"train.run_name": name}), Path(cfg.train.out) / name, fresh


def resolve_run_folder(cfg: Config) -> tuple[Config, Path]:
    """The run's folder, and `cfg` with ``train.run_name`` fixed (the same on every rank); nothing is created.

    Without ``train.run_name`` a resumed run continues in its checkpoint's folder, or, when that one is read-only (an
    earlier Kaggle version's output), in a folder of the same name under ``train.out``; a new run is named after its
    preset and start time (`make_run_name`).
    """
    cfg, run_dir, fresh = _choose_run_folder(cfg)
    name = cfg.train.run_name
    if fresh:  # the first free name: two runs started in the same second get different folders
        base = name
        for index in range(2, 1000):
            if not (Path(cfg.train.out) / name).exists():
                break
            name = f"{base}-{index}"
    name = broadcast_object(name)
    cfg = cfg.replace(**{"train.run_name": name})
    return cfg, Path(cfg.train.out) / name


def _claim_new_name(cfg: Config) -> tuple[Config, Path, RunClaim]:
    """Claim the first free folder of a new run's default name (``NAME``, ``NAME-2``, ...), created by ``mkdir``."""
    base = cfg.train.run_name
    for index in range(1, 1000):
        name = base if index == 1 else f"{base}-{index}"
        folder = Path(cfg.train.out) / name
        try:
            return cfg.replace(**{"train.run_name": name}), folder, claim(folder, fresh=True)
        except FileExistsError:  # another run took this name first (RunFolderBusy included)
            if not folder.is_dir():
                raise
    raise FileExistsError(f"{cfg.train.out}: no free run folder name from {base} to {base}-999")


def claim_run_folder(cfg: Config, info: DistInfo | None = None) -> tuple[Config, Path, RunClaim | None]:
    """Choose the run's folder as `resolve_run_folder` does and claim it (a new run's default name with ``mkdir``,
    the next free ``-2``, ``-3``, ... when another run took it first). Under DDP rank 0 claims and the other ranks
    get its folder and a None claim; `RunFolderBusy` is raised on every rank."""
    info = info or DistInfo()
    held, error, outcome = None, None, None
    if info.is_main:
        try:
            cfg, run_dir, fresh = _choose_run_folder(cfg)
            if fresh:
                cfg, run_dir, held = _claim_new_name(cfg)
            else:
                held = claim(run_dir)
            outcome = ("ok", cfg.train.out, cfg.train.run_name)
        except Exception as exc:  # told to the other ranks, which would otherwise wait for rank 0 forever
            error, outcome = exc, ("error", isinstance(exc, RunFolderBusy), str(exc))
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise (RunFolderBusy if outcome[1] else RuntimeError)(outcome[2])
    cfg = cfg.replace(**{"train.out": outcome[1], "train.run_name": outcome[2]})
    return cfg, Path(outcome[1]) / outcome[2], held


# ---- what a run folder holds -------------------------------------------------------------------------------------
def _earlier_checkpoints(run_dir: Path) -> list[str]:
    """The checkpoints of an earlier run in `run_dir` (a start that failed before its first epoch left none)."""
    if not run_dir.is_dir():
        return []
    names = ("last.pth", "weight_final.pth")
    return sorted(p.name for p in run_dir.iterdir() if p.name in names or p.match("epoch_*.pth"))


def refuse_earlier_run(run_dir: Path, resume: str | Path | None, info: DistInfo | None = None) -> None:
    """Raise `FileExistsError` (on every rank) when `run_dir` holds an earlier run's checkpoints and this run is not
    that run continuing."""
    info = info or DistInfo()
    continuing = resume is not None and Path(resume).resolve().parent == run_dir.resolve()
    earlier = broadcast_object(_earlier_checkpoints(run_dir) if info.is_main and not continuing else [])
    if earlier:
        listed = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        latest = "last.pth" if "last.pth" in earlier else earlier[-1]
        raise FileExistsError(
            f"{run_dir}: holds an earlier run ({listed}); continue it with train.resume={run_dir / latest} "
            "(--resume), or choose another train.run_name (--run_name)"
        )


def trim_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop the ``metrics.jsonl`` records written after the checkpoint a run resumes from (at `step`, `epoch`)."""
    if not path.is_file():
        return
    kept = [
        r
        for r in read_jsonl(path)
        if (r.get("kind") == "step" and r.get("step", 0) <= step)
        or (r.get("kind") == "epoch" and r.get("epoch", 0) <= epoch)
        or r.get("kind") not in ("step", "epoch")
    ]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def prune_epoch_files(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` ``epoch_XXX.pth`` files (``last.pth`` and ``best.pth`` are copies)."""
    files = sorted(run_dir.glob("epoch_[0-9][0-9][0-9]*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    for path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)
