"""Writing files so that a crash never leaves half of one, reading JSON objects, hashing.

Every file pgolf writes (ledger, batch.json, logs it rewrites, results, reports, record folders) goes through
`atomic_write`: a temp file in the same folder, fsync, os.replace, then an fsync of the folder so that the
rename itself survives a power cut (the ledger relies on that). Standard library only: importing this module
must stay cheap, because the runner's ledger imports it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from results.errors import PgolfError


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` all or nothing: readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)                 # mkstemp makes 0600; results and records are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def read_json_object(path: Path, what: str = "") -> dict:
    """Any pgolf JSON file (submission.json, batch.json, ledger.json): a JSON object or a one-line error."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise PgolfError(f"{what}{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                         "fix or remove the file") from None
    except FileNotFoundError:
        raise PgolfError(f"{what}{path}: file not found") from None
    except OSError as e:
        raise PgolfError(f"{what}{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise PgolfError(f"{what}{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
