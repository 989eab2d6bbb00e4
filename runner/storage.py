"""Writing the run directory when the disk says no, and keeping secrets out of what the job wrote.

Disk full (or any write the run directory refuses): the driver never dies of it. Every failed write is an
OSError naming the file (`named`), which the driver turns into one decision: stop launching attempts,
let the running ones end, close the batch with one line naming the path (and `pgolf resume` once there is
space again). A seed's log (`AttemptLog`) never raises: lines the disk refuses wait in memory and go out
with the next write that succeeds; past MAX_PENDING_BYTES they are dropped, counted, and a note in the log
says how many and where, so a job that keeps printing never runs the driver out of memory.

Secrets: a job may print a secret into any file it writes, whatever its name (`env.dat`), in any encoding,
or put one in a file name. Every text file is scrubbed as text in its own encoding (UTF-8, UTF-16 or
latin-1, decided by content, never by extension); every file, binary ones too, is then searched as bytes
for each secret's UTF-8, UTF-16 and latin-1 forms, masked with as many `*` bytes (a binary file keeps its
length, so weights stay loadable); names holding a secret are renamed. Standard library only.
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


ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "latin-1")   # the forms a secret is searched in, as bytes
CHUNK_BYTES = 1 << 20


def text_encoding(path: str | Path) -> str | None:
    """The encoding of a text file, decided by its first 8 KiB, or None for a binary one: UTF-8 (no NUL byte
    and valid UTF-8; a character cut at the probe's end is fine), UTF-16 (a byte-order mark, or the NUL
    byte of nearly every ASCII character on one side), else latin-1 when nearly every byte is printable."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (b"\0" in head and len(head) >= 2):
        if head.startswith(codecs.BOM_UTF16_LE):
            enc = "utf-16-le"
        elif head.startswith(codecs.BOM_UTF16_BE):
            enc = "utf-16-be"
        else:
            even, odd = head[0::2], head[1::2]
            if odd.count(0) >= 0.9 * len(odd) and even.count(0) <= 0.1 * len(even):
                enc = "utf-16-le"
            elif even.count(0) >= 0.9 * len(even) and odd.count(0) <= 0.1 * len(odd):
                enc = "utf-16-be"
            else:
                return None
        try:
            codecs.getincrementaldecoder(enc)().decode(head[:len(head) // 2 * 2], final=False)
        except UnicodeDecodeError:
            return None
        return enc
    if b"\0" in head:
        return None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    controls = sum(1 for b in head if b < 0x20 and b not in b"\t\n\r\f" or b == 0x7f)
    return "latin-1" if controls <= 0.01 * len(head) else None


def is_text(path: str | Path) -> bool:
    """Text by content, in any encoding `text_encoding` recognises."""
    return text_encoding(path) is not None


def scrub_file(path: str | Path, scrub: Callable[[str], str]) -> bool:
    """Mask secrets in one file; True when it changed. A text file (UTF-8, UTF-16 or latin-1) is scrubbed as
    text, in its own encoding (secret values and secret-looking assignments become `***`). Then every file,
    text or binary, is searched as bytes for the UTF-8, UTF-16 (LE and BE) and latin-1 forms of each known
    secret value (`scrub.values`), each replaced by as many `*` as it had bytes: a binary file keeps its
    length and layout, so a secret inside weights or a pickle is masked without corrupting the rest. The new
    content is written beside the file and renamed over it; when the disk has no room for that copy, the
    file is rewritten in place (scrubbed content is never longer), so a full disk never keeps a secret."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    enc = text_encoding(path)
    changed = False
    if enc == "utf-8":
        changed = _scrub_utf8(path, scrub)
    elif enc is not None:
        data = path.read_bytes()
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:          # not text after all (the probe saw only its start)
            text = None
        if text is not None and scrub(text) != text:
            _replace(path, scrub(text).encode(enc))
            changed = True
    return _mask_values(path, getattr(scrub, "values", ())) or changed


def _scrub_utf8(path: Path, scrub: Callable[[str], str]) -> bool:
    """A UTF-8 text file, line by line (any size)."""
    with open(path, "rb") as f:
        if not any(_scrub_line(line, scrub) != line for line in f):
            return False
    def fill(out) -> None:
        with open(path, "rb") as f:
            for line in f:
                out.write(_scrub_line(line, scrub))
    _rewrite(path, fill, lambda: _scrub_in_place(path, scrub))
    return True


def _rewrite(path: Path, fill: Callable, in_place: Callable[[], None]) -> None:
    """The file's new content, written by `fill(out)` beside it, fsynced and renamed over it; when the disk
    has no room for that copy, `in_place()` rewrites it over itself (scrubbed content is never longer)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if e.errno not in NO_SPACE:
            raise named(e, path) from e
        in_place()


def _replace(path: Path, data: bytes) -> None:
    """The file's new content (never longer than the old): beside it and renamed, else over itself."""
    def over() -> None:
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate(len(data))
            f.flush()
            os.fsync(f.fileno())
    _rewrite(path, lambda out: out.write(data), over)


def _byte_forms(values) -> list[tuple[bytes, bytes]]:
    """(pattern, same-length mask) for each secret value in each encoding it can be written in."""
    forms: dict[bytes, bytes] = {}
    for v in values:
        for enc in ENCODINGS:
            try:
                pat = v.encode(enc)
            except UnicodeEncodeError:      # latin-1 cannot write every value
                continue
            unit = 2 if enc.startswith("utf-16") else 1
            forms.setdefault(pat, ("*" * (len(pat) // unit)).encode(enc))
    return sorted(forms.items(), key=lambda pm: -len(pm[0]))


def _mask_values(path: Path, values) -> bool:
    """Replace every byte form of the secret values in the file, in place (same length); True if any."""
    forms = _byte_forms(values)
    if not forms:
        return False
    overlap = max(len(p) for p, _ in forms) - 1
    hits: dict[int, bytes] = {}
    with open(path, "rb") as f:
        pos, carry = 0, b""
        while True:
            chunk = f.read(CHUNK_BYTES)
            if not chunk:
                break
            buf, base = carry + chunk, pos - len(carry)
            for pat, mask in forms:
                i = buf.find(pat)
                while i >= 0:
                    hits.setdefault(base + i, mask)
                    i = buf.find(pat, i + 1)
            pos += len(chunk)
            carry = buf[-overlap:] if overlap else b""
    if not hits:
        return False
    try:
        with open(path, "r+b") as f:
            for off, mask in sorted(hits.items()):
                f.seek(off)
                f.write(mask)
            f.flush()
            os.fsync(f.fileno())
    except PermissionError:                 # a read-only file (the frozen script): a patched copy over it
        data = bytearray(path.read_bytes())
        for off, mask in sorted(hits.items()):
            data[off:off + len(mask)] = mask
        _replace(path, bytes(data))
    except OSError as e:
        raise named(e, path) from e
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
    """Scrub every file under `root` (symlinks never followed), and every file or folder NAME holding a
    secret (renamed with it masked; a name already taken gets a `.N` suffix). The paths that changed, as
    they are now."""
    changed = []
    for folder, dirs, files in os.walk(root, topdown=False):      # inner names first; links not followed
        for name in sorted(files):
            p = Path(folder) / name
            if scrub_file(p, scrub):
                changed.append(p)
        for name in sorted(files) + sorted(dirs):
            clean = scrub(name)
            if clean == name:
                continue
            old = Path(folder) / name
            new = Path(folder) / clean
            n = 1
            while new.exists() or new.is_symlink():
                new, n = Path(folder) / f"{clean}.{n}", n + 1
            try:
                os.rename(old, new)
            except OSError as e:
                raise named(e, old) from e
            changed = [new / q.relative_to(old) if q == old or old in q.parents else q for q in changed]
            if new not in changed:
                changed.append(new)
    return changed
