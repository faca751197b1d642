"""Run folders: claimed by one run at a time, and cleared of what a killed writer leaves behind.

A training run claims its folder when it chooses it (`claim`): a fresh folder is created with ``mkdir`` (never
an existing one), and every run, new or resumed, then holds ``<folder>/run.lock`` for its whole life: an
exclusive ``flock`` on the file, which records the holder (PID, host, start time). A second run into a claimed
folder is refused with one line naming the holder (`RunFolderBusy`). A lock left by a run that died is stale and
taken over: on this host, its holder's process is gone (checked with the process's start time and the boot, so
that a reused PID does not count as the holder); on another host (a shared drive), the file has not been
refreshed for `STALE_AFTER_S` seconds (a live holder refreshes it every `HEARTBEAT_S` seconds).

Processes that a holder starts to do its work (the ``torchrun`` workers of `nbsrc.distributed.launch`) follow its
claim instead of claiming again: the holder hands them its token in the environment variable `INHERIT_ENV`.

`remove_stale_temp_files` deletes what `nbsrc.utils.atomic_path` leaves when its process is killed mid-write
(``.<name>.<pid>-<random>.tmp``): only those names, only in the folders it is given, never while a live run holds
the folder, and never one whose writing process still runs.
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

__all__ = [
    "HEARTBEAT_S",
    "INHERIT_ENV",
    "LOCK_NAME",
    "STALE_AFTER_S",
    "RunClaim",
    "RunFolderBusy",
    "claim",
    "describe_holder",
    "live_holder",
    "process_alive",
    "remove_stale_temp_files",
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


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` runs on this machine (a zombie does not). With `start` (its start time in clock ticks
    after boot, as `claim` records it) the process must be that one, not a later one given the same PID."""
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


def describe_holder(holder: dict[str, Any] | None) -> str:
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
    """Whether the run that wrote `holder` still runs: by its process on this host, by the lock file's
    heartbeat for another host."""
    if holder.get("host") == socket.gethostname():
        boot = _boot_id()
        if holder.get("boot_id") and boot and holder["boot_id"] != boot:
            return False  # the machine restarted since
        return process_alive(int(holder["pid"]), holder.get("proc_start"))
    try:
        age = time.time() - lock_path.stat().st_mtime
    except OSError:
        return False
    return age < STALE_AFTER_S


def live_holder(folder: str | Path) -> dict[str, Any] | None:
    """The record of the live run holding `folder` (see `claim`), or None when no live run holds it."""
    path = Path(folder) / LOCK_NAME
    holder = _parse(_read_text(str(path)))
    return holder if holder is not None and _holder_alive(holder, path) else None


# ---- claiming a folder -----------------------------------------------------------------------------------------
class RunClaim:
    """A held run folder (`claim`); `release` (or leaving the ``with`` block) gives it back.

    Attributes:
        folder: the run folder.
        holder: the lock record (PID, host, start time, token) of the claiming process.
        owner: False for a process that follows its parent's claim (releasing it does nothing).
    """

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
        self._heartbeat: threading.Thread | None = None
        if owner:
            self._heartbeat = threading.Thread(target=self._beat, name="nbsrc-run-lock", daemon=True)
            self._heartbeat.start()

    @property
    def token(self) -> str:
        return str(self.holder.get("token", ""))

    def child_env(self) -> dict[str, str]:
        """Environment entries that let worker processes of this run follow the claim."""
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
        return f"RunClaim({str(self.folder)!r}, {describe_holder(self.holder)}, owner={self.owner})"


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
        f"{folder}: in use by another run ({describe_holder(holder)}); wait for it to end or stop it, or choose "
        f"another train.run_name (--run_name); if that run is no longer running, delete {folder / LOCK_NAME}"
    )


def _make_folder(folder: Path, fresh: bool) -> list[Path]:
    """Create `folder` (only a new one when `fresh`, else also an existing one); returns the folders created,
    outermost first."""
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
    """Claim run folder `folder` for this process until `RunClaim.release`.

    Args:
        folder: the run folder (created when missing).
        fresh: the folder must not exist yet (a new run's own name); ``FileExistsError`` otherwise.

    Returns:
        The claim; stale temporary files of interrupted writes in `folder` are removed once it is held.

    Raises:
        RunFolderBusy: a live run holds the folder (the message names its PID and start time).
        FileExistsError: `fresh` and the folder exists.
    """
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
                    "%s: taking over the lock of a run that is no longer running (%s)", path, describe_holder(holder)
                )
            record = _holder_record()
            data = (json.dumps(record) + "\n").encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            os.fsync(fd)
            keep = True
            return RunClaim(folder, record, owner=True, fd=fd, created=created)
        finally:
            if not keep:
                os.close(fd)


# ---- temporary files of interrupted writes ---------------------------------------------------------------------
def remove_stale_temp_files(folder: str | Path, subfolders: Iterable[str | Path] = (), *, held: bool = False) -> int:
    """Delete the temporary files `nbsrc.utils.atomic_path` left in `folder` (and in `subfolders`) when a write was
    killed; returns how many.

    Only names of the writer's pattern (``.<name>.<pid>-<random>.tmp``) are touched, only directly in those folders,
    only when no live run other than this process holds `folder` (`held`: this process holds it), and never a file
    whose writing process still runs.
    """
    folder = Path(folder)
    if not held:
        holder = live_holder(folder)
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
            if pid is not None and (int(pid) == os.getpid() or process_alive(int(pid))):
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
        logger.info(
            "%s: removed %d temporary file(s) left by interrupted writes (%s%s)",
            folder,
            len(removed),
            ", ".join(removed[:3]),
            ", ..." if len(removed) > 3 else "",
        )
    return len(removed)
