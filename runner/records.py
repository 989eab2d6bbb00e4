"""The public records: where pgolf finds them, and `pgolf records fetch`, which brings them.

The public repository (github.com/openai/parameter-golf) keeps every record folder under `records/`,
one folder per track. pgolf needs them as baselines (`report --baseline`, `plan`, `[baseline] ref`),
for the audit and for reproductions. There is ONE way to find them, used by every command and by the
job specs: a reference `records:track_10min_16mb/2026-04-29_...` (or `records:2026-04-29_...`, looked up in
each track) names a folder under the records root, which is, first found:

1. `--records DIR` on the command line (`use()`),
2. the environment variable `PGOLF_RECORDS`,
3. the default cache, `$XDG_CACHE_HOME/pgolf/parameter-golf/records` (`~/.cache/...`), where
   `pgolf records fetch` puts them.

A root may be the folder holding the `track_*` folders or a clone of the repository (its `records/`).
A plain path still works everywhere a reference does. `fetch` runs the real `git` (a shallow, sparse
clone of `records/` only, or an update of one): git is the well-kept tool for this, and a clone can be
updated in place. `PGOLF_RECORDS_URL` (or `--url`) replaces the repository's address, e.g. with a local
`file://` repository (the tests build one; no network).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from results.errors import PgolfError

PREFIX = "records:"
URL = "https://github.com/openai/parameter-golf.git"
ENV_ROOT = "PGOLF_RECORDS"
ENV_URL = "PGOLF_RECORDS_URL"
SUBDIR = "records"                  # where the record folders live in the public repository
HINT = ("fetch them with `pgolf records fetch`, or point --records DIR / PGOLF_RECORDS at a copy "
        "(this repository's tests/data/records is one)")

_override: Path | None = None


def use(root: str | Path | None) -> None:
    """`--records DIR`: this process finds the records there, before PGOLF_RECORDS and the cache."""
    global _override
    _override = Path(root).expanduser() if root else None


def default_clone() -> Path:
    """Where `pgolf records fetch` clones to when no --dest is given (the user's cache folder)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "pgolf" / "parameter-golf"


def _normalise(d: Path) -> Path:
    """A clone of the repository stands for its records/ folder."""
    return d / SUBDIR if (d / SUBDIR).is_dir() and not any(d.glob("track_*")) else d


def root() -> tuple[Path, str]:
    """The records root and where that choice came from (for messages)."""
    if _override is not None:
        return _normalise(_override), "--records"
    env = os.environ.get(ENV_ROOT)
    if env:
        return _normalise(Path(env).expanduser()), ENV_ROOT
    return default_clone() / SUBDIR, "the default cache (`pgolf records fetch`)"


def is_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve(value: str) -> str:
    """`records:REL` -> the absolute path of that folder (or file) under the records root; anything else
    unchanged. A reference that names nothing there is one line saying where pgolf looked."""
    if not is_ref(value):
        return value
    rel = value[len(PREFIX):].strip("/")
    base, source = root()
    if not base.is_dir():
        raise PgolfError(f"{value}: no public records at {base} (from {source}); {HINT}")
    found = base / rel if rel else base
    if not found.exists() and rel and "/" not in rel:          # a record folder's name alone: search the tracks
        hits = sorted(t / rel for t in base.glob("track_*") if (t / rel).exists())
        found = hits[0] if len(hits) == 1 else found
    if not found.exists():
        raise PgolfError(f"{value}: no such record under {base} (from {source}); list them with "
                         f"`ls {base}/track_*`, or {HINT}")
    return str(found.resolve())


# ---- pgolf records fetch -------------------------------------------------------------------------

def _git(args: list[str], cwd: Path | None = None) -> str:
    """Run git; its failure is one line (the last line git printed), never a traceback or a prompt."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}       # a private/missing repository must not ask for a password
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise PgolfError("git is not installed (`pgolf records fetch` runs git): install git, or download the "
                         "records/ folder of github.com/openai/parameter-golf and point --records at it") from None
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.lower().startswith(("fatal", "error"))),
                   lines[-1] if lines else f"exit code {out.returncode}")
        raise PgolfError(f"git {args[0]} failed: {why}")
    return out.stdout.strip()


def fetch(dest: str | Path | None = None, url: str | None = None) -> dict:
    """Clone the public repository's records/ (shallow: the newest commit only; sparse: records/ only) into
    `dest`, or bring an existing clone there up to date. A clone that fails leaves nothing behind: it is
    made in a temporary folder beside `dest` and renamed into place once whole."""
    dest = Path(dest).expanduser() if dest else default_clone()
    url = url or os.environ.get(ENV_URL) or URL
    if (dest / ".git").exists():
        _git(["fetch", "--quiet", "--depth", "1", "origin"], cwd=dest)
        _git(["reset", "--quiet", "--hard", "origin/HEAD"], cwd=dest)
        action = "updated"
    else:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise PgolfError(f"{dest}: exists and is not a clone of the records; pick an empty or new --dest")
        tmp = dest.parent / f".{dest.name}.fetch-{os.getpid()}"
        made = [p for p in [*reversed(dest.parents)] if not p.exists()]    # folders to remove if it fails
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            _git(["clone", "--quiet", "--depth", "1", "--filter=blob:none", "--no-checkout", url, str(tmp)])
            _git(["sparse-checkout", "set", "--no-cone", f"/{SUBDIR}/"], cwd=tmp)   # records/ only, no top-level files
            _git(["checkout", "--quiet"], cwd=tmp)
            if not (tmp / SUBDIR).is_dir():
                raise PgolfError(f"{url}: has no {SUBDIR}/ folder; is it the Parameter Golf repository?")
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except OSError as e:
            raise PgolfError(f"{dest}: cannot write the clone ({e.strerror or e})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.exists():
                for p in reversed(made):
                    with contextlib.suppress(OSError):
                        p.rmdir()
        action = "fetched"
    records = dest / SUBDIR
    return {"action": action, "dest": str(dest), "records": str(records.resolve()),
            "commit": _git(["rev-parse", "--short", "HEAD"], cwd=dest),
            "folders": sum(1 for t in records.glob("track_*") for p in t.iterdir() if p.is_dir())}


def cmd_records(args) -> int:
    """`pgolf records fetch [--dest DIR] [--url URL]`."""
    out = fetch(args.dest, args.url)
    print(f"pgolf records: {out['action']} {out['folders']} record folders at commit {out['commit']} into "
          f"{out['records']}")
    here, source = root()
    if here.resolve() != Path(out["records"]):
        print(f"pgolf records: pgolf looks in {here} ({source}); use these with `--records {out['records']}` or "
              f"`export {ENV_ROOT}={out['records']}`")
    return 0
