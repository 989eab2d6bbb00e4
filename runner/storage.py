"""Writing the run directory when the disk says no, and keeping secrets out of what the job wrote.

Disk full (or any write the run directory refuses): the driver never dies of it. Every failed write is an
OSError naming the file (`named`), which the driver turns into one decision: stop launching attempts,
let the running ones end, close the batch with one line naming the path (and `pgolf resume` once there is
space again). A seed's log (`AttemptLog`) never raises: lines the disk refuses wait in memory and go out
with the next write that succeeds; past MAX_PENDING_BYTES they are dropped, counted, and a note in the log
says how many and where, so a job that keeps printing never runs the driver out of memory.

Secrets: a job may print a secret into any file it writes, whatever its name (`env.dat`). Every text file
is scrubbed, text being decided by content (no NUL byte in the first 8 KiB and valid UTF-8 there), never
by extension; binary files (weights) are never touched: masking bytes inside them would corrupt them.
Standard library only.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

MAX_PENDING_BYTES = 8 << 20   # per attempt log: lines kept in memory while the disk refuses them
FREE_MIN_BYTES = 1 << 20      # a disk with less free space than this is full (no new attempt starts)
TEXT_PROBE_BYTES = 8192
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def named(e: OSError, path: str | Path) -> OSError:
    """The same error, naming `path` when it names no file (os.write and fsync errors do not)."""
    if e.filename:
        return e
    out = OSError(e.errno, e.strerror or str(e), str(path))
    out.__cause__ = e
    return out


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """OSErrors inside name `path`, the file being written (a failed copy names its source otherwise)."""
    try:
        yield
    except OSError as e:
        out = OSError(e.errno, e.strerror or str(e), str(path))
        raise out from e


def full(path: str | Path) -> bool:
    """The disk holding `path` has less than FREE_MIN_BYTES free for us."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FREE_MIN_BYTES


def what_to_do(e: OSError, run_dir: str | Path, unrecorded: bool = False) -> str:
    """The one line for a write the run directory refused (`unrecorded`: the ledger on disk lags behind)."""
    what = "the disk is full: " if e.errno in NO_SPACE else ""
    fix = "free space on that disk" if e.errno in NO_SPACE else "fix that"
    lag = " (attempts whose end could not be recorded run again)" if unrecorded else ""
    return (f"{what}cannot write {e.filename} ({e.strerror}); {fix}, then `pgolf resume {run_dir}` "
            f"finishes the batch{lag}")


class _Dropped:
    """Where lines were dropped, and how many: written as one note line once the disk takes writes again."""

    def __init__(self):
        self.n = 0

    def text(self, mid_line: bool) -> bytes:
        return f"{chr(10) if mid_line else ''}pgolf: {self.n} log line(s) lost here: the disk was full\n".encode()


class AttemptLog:
    """One attempt's train.log, appended line by line; see the module doc for a disk that refuses."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pending: list[bytes | _Dropped] = []
        self.pending_bytes = 0
        self.lost = 0                      # lines dropped in all
        self.error: OSError | None = None  # the last write the disk refused (None once writes succeed)
        self.mid_line = False              # the file does not end with a newline (a write was cut short)

    def write(self, lines: list[str]) -> OSError | None:
        """Queue `lines` and write what is queued; returns the disk's error when it refused."""
        if self.pending:
            self.flush()                   # room in the queue first, if the disk takes writes again
        data = "".join(t + "\n" for t in lines).encode("utf-8", "surrogateescape")
        if self.pending_bytes + len(data) > MAX_PENDING_BYTES:
            if not self.pending or not isinstance(self.pending[-1], _Dropped):
                self.pending.append(_Dropped())
            self.pending[-1].n += len(lines)
            self.lost += len(lines)
        elif data:
            self.pending.append(data)
            self.pending_bytes += len(data)
        return self.flush()

    def flush(self) -> OSError | None:
        while self.pending:
            item = self.pending[0]
            data = item.text(self.mid_line) if isinstance(item, _Dropped) else item
            try:
                n = os.write(self.fd, data)
            except OSError as e:
                self.error = named(e, self.path)
                return self.error
            if n:
                self.mid_line = data[n - 1:n] != b"\n"
            if isinstance(item, _Dropped):
                if n < len(data):          # a note is written whole or again
                    self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                    return self.error
                self.pending.pop(0)
            elif n < len(data):
                self.pending[0] = data[n:]
                self.pending_bytes -= n
            else:
                self.pending.pop(0)
                self.pending_bytes -= n
        self.error = None
        return None

    def close(self) -> bool:
        """Write what is left and close; True when the log holds every line the attempt printed."""
        self.flush()
        whole = not self.pending and self.lost == 0
        if self.pending:
            self.lost += sum(i.n if isinstance(i, _Dropped) else i.count(b"\n") for i in self.pending)
        os.close(self.fd)
        return whole


def is_text(path: str | Path) -> bool:
    """Text by content: no NUL byte in the first 8 KiB, and those bytes are valid UTF-8 (a multi-byte
    character cut by the 8 KiB boundary is fine)."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def scrub_file(path: str | Path, scrub: Callable[[str], str]) -> bool:
    """Mask secrets in one text file, line by line (any size); True when it changed. The new content is
    written beside it and renamed over it; when the disk has no room for that copy, the file is rewritten
    in place (the scrubbed text is never longer), so a full disk never keeps a secret."""
    path = Path(path)
    if path.is_symlink() or not path.is_file() or not is_text(path):
        return False
    with open(path, "rb") as f:
        if not any(_scrub_line(line, scrub) != line for line in f):
            return False
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as f:
            for line in f:
                out.write(_scrub_line(line, scrub))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if e.errno not in NO_SPACE:
            raise named(e, path) from e
        _scrub_in_place(path, scrub)
    return True


def _scrub_line(line: bytes, scrub: Callable[[str], str]) -> bytes:
    return scrub(line.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def _scrub_in_place(path: Path, scrub: Callable[[str], str]) -> None:
    """Rewrite the file over itself: reads stay ahead of writes because no line grows."""
    with open(path, "r+b") as f:
        pos_r = pos_w = 0
        while True:
            f.seek(pos_r)
            line = f.readline()
            if not line:
                break
            pos_r = f.tell()
            clean = _scrub_line(line, scrub)
            f.seek(pos_w)
            f.write(clean)
            pos_w += len(clean)
        f.truncate(pos_w)
        f.flush()
        os.fsync(f.fileno())


def scrub_tree(root: str | Path, scrub: Callable[[str], str]) -> list[Path]:
    """Scrub every text file under `root` (symlinks never followed); the files that changed."""
    changed = []
    for folder, _dirs, files in os.walk(root):          # os.walk never descends into symlinked folders
        for name in sorted(files):
            p = Path(folder) / name
            if scrub_file(p, scrub):
                changed.append(p)
    return changed
