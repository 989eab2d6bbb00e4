"""One pgolf process per batch: an OS lock on RUN_DIR/batch.lock, with who holds it.

The driver of a batch (`pgolf run`, `pgolf resume`) and the commands that act on a batch's machines
(`pgolf cluster gc`/`down`) hold an exclusive `flock` on the batch's lock file for as long as they act.
The kernel drops the lock when the holder dies, however it dies (kill -9 included), so a lock is never
stale: a held lock means a live holder. The file also records the holder (pid, host, command, start
time) for the one line that refuses a second process, and for `pgolf status` ("driver alive").

Why a lock file beside the ledger and not the ledger itself: the ledger is replaced on every write
(atomic rename), so a lock on it would follow the old inode. The lock file is removed by its holder on a
clean exit; a waiting process re-checks after locking that the path still names the file it locked (the
usual remove-safe lock-file protocol), so removal never lets two holders in. Standard library only:
`pgolf status` uses it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from results.errors import PgolfError

LOCK = "batch.lock"
ACQUIRE_PATIENCE_S = 1.0      # a `pgolf status` probe holds a shared lock for microseconds: wait that out


class BatchBusy(PgolfError):
    """Another live process holds the batch (its message says who)."""

    def __init__(self, run_dir: Path, holder: dict[str, Any] | None):
        self.run_dir, self.holder = run_dir, holder or {}
        super().__init__(f"{run_dir}: batch in use by {describe(self.holder)}; wait for it to end or stop it "
                         f"first (Ctrl-C stops a driver and its attempts)")


def describe(info: dict[str, Any]) -> str:
    """`pgolf run` (pid 123 on host h, since 2026-...): who holds (or held) a lock."""
    if not info.get("pid"):
        return "another pgolf process"
    return (f"`{info.get('command') or 'pgolf'}` (pid {info['pid']} on {info.get('host') or '?'}, "
            f"since {info.get('started') or '?'})")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class BatchLock:
    """A held batch lock; `release()` (or leaving the `with` block) gives it up and removes the file."""

    def __init__(self, run_dir: Path, fd: int, info: dict[str, Any]):
        self.run_dir, self.path, self.fd, self.info = run_dir, run_dir / LOCK, fd, info

    @classmethod
    def acquire(cls, run_dir: str | Path, command: str, create: bool = False,
                patience_s: float = ACQUIRE_PATIENCE_S) -> "BatchLock":
        """Lock the batch in `run_dir` for `command` ("pgolf run", ...), or raise BatchBusy naming the
        holder. `create` makes the folder first (a new batch); otherwise it must exist."""
        run_dir = Path(run_dir)
        if create and not run_dir.is_dir():
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise PgolfError(f"{run_dir}: exists and is not a folder; pick another --name") from None
        if not run_dir.is_dir():
            raise PgolfError(f"{run_dir}: no such run directory")
        path = run_dir / LOCK
        give_up = time.monotonic() + patience_s
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by children (PEP 446)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() < give_up:
                    time.sleep(0.05)
                    continue
                raise BatchBusy(run_dir, _read(path)) from None
            if _same_file(fd, path):
                break
            os.close(fd)        # we locked a file its holder removed on the way out: lock the current one
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass                # a full disk: the lock holds all the same, only the holder's name is missing
        return cls(run_dir, fd, info)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)     # while still locked: nobody can be holding the old file
        except OSError:
            pass
        os.close(self.fd)                         # the kernel drops the lock with the last descriptor
        self.fd = -1

    def __enter__(self) -> "BatchLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds the batch's lock now (a live process), or None. Takes a shared lock for an instant,
    which a process acquiring the lock at that moment waits out (ACQUIRE_PATIENCE_S)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read(path) or {"pid": None}
        raise
    finally:
        os.close(fd)
    return None


def last_holder(run_dir: str | Path) -> dict[str, Any]:
    """What the lock file says about its last holder (empty when there is no file): after a driver died
    without releasing, this names it."""
    return _read(Path(run_dir) / LOCK)


class LockSet:
    """Every batch under a runs folder that no live process holds, locked for one command (`pgolf
    cluster gc`/`down`): while it runs, no driver can start on them. `busy` maps the others (held by a
    live process) to their holder."""

    def __init__(self, runs_dir: str | Path, command: str):
        self.held: list[BatchLock] = []
        self.busy: dict[Path, dict[str, Any]] = {}
        dirs = {p.parent.resolve() for p in Path(runs_dir).glob("*/ledger.json") if not p.parent.is_symlink()}
        for run_dir in sorted(dirs):               # (runs/latest is a link to a batch listed anyway)
            try:
                self.held.append(BatchLock.acquire(run_dir, command, patience_s=0.2))
            except BatchBusy as e:
                self.busy[run_dir] = e.holder

    def release(self) -> None:
        for lock in self.held:
            lock.release()
        self.held = []

    def __enter__(self) -> "LockSet":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
