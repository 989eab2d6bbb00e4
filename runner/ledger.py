"""The run directory's durable state: ledger.json and batch.json (docs/ARCHITECTURE.md, "The run directory").

Every state change rewrites ledger.json atomically (temp file, fsync, os.replace, fsync of the folder),
so a driver killed at any instant leaves either the old or the new ledger, never half of one. Only the
process holding the batch lock (runner/lock.py: the driver) writes it. When the disk refuses a write,
`save` raises an OSError naming ledger.json and the change stays in memory (`unsaved`) to be written by
the next save that succeeds; the one exception is a new attempt, which is undone in memory too: an attempt
is never run unless its start is on disk. Attempts whose end never reached the disk are still open there,
and the next driver closes them as interrupted (`close_dangling`). An attempt's result.json is written
before the ledger entry that closes it (`end_attempt`'s `before_save`, `write_result`): a driver killed
between the two leaves the attempt open, and the next one closes it and writes its result.json again,
removing what a killed write left (`.result.json.*.tmp`). batch.json freezes what the batch is: the resolved spec (secrets redacted),
the script's sha256 and a copy of the script itself, which is what every attempt runs.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from results.errors import PgolfError
from results.files import atomic_write_json, sha256_file
from runner.storage import writing

LEDGER = "ledger.json"
BATCH = "batch.json"
STATES = ("pending", "running", "succeeded", "failed", "aborted")
DONE_STATES = ("succeeded", "aborted")   # never run again (an aborted seed is not retried, issue 12)
ATTEMPT_KEYS = ("attempt", "backend", "node", "pod_id", "started", "ended", "exit_code", "error",
                "cost_usd", "cost_source", "cost_estimate_usd", "pod_terminated", "abort", "shared_pod", "twin_pods",
                "twin_cost_usd")
INFRA_PREFIX = "infrastructure: "     # errors of infra failures start with this (counted apart on retry)
INTERRUPTED = "interrupted"


# ---- the typed model ledger.json is read through ----------------------------------------------------
# pydantic (as the spec): a ledger edited by hand or by a broken tool is one line naming the file and the
# key (rc 2), never an internal error later. Keys the model does not name are kept (a newer pgolf's).
Number = StrictInt | float


class AttemptModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    attempt: StrictInt = Field(ge=1)
    backend: StrictStr | None = None
    node: StrictStr | None = None
    pod_id: StrictStr | None = None
    started: StrictStr | None = None
    ended: StrictStr | None = None
    exit_code: StrictInt | None = None
    error: StrictStr | None = None
    cost_usd: Number | None = None
    cost_source: StrictStr | None = None
    cost_estimate_usd: Number | None = None
    pod_terminated: StrictBool | None = None
    abort: dict[str, Any] | None = None
    shared_pod: dict[str, Any] | None = None
    twin_pods: list[StrictStr] | None = None
    twin_cost_usd: Number | None = None

    def succeeded(self) -> bool:
        """Ended whole with exit code 0: not an interrupted one (a dead driver's, a full disk's)."""
        return self.ended is not None and self.exit_code == 0 and not (self.error or "").startswith(INTERRUPTED)


class SeedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal[STATES]   # type: ignore[valid-type]
    attempts: list[AttemptModel]


class LedgerModel(BaseModel):
    model_config = ConfigDict(extra="allow")       # sections beside "seeds" (e.g. "adaptive")
    seeds: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], SeedModel]


def check(data: Any, path: Path) -> LedgerModel:
    """ledger.json's content through the model, then its states against its attempts: one line or the model."""
    try:
        led = LedgerModel.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise PgolfError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}{got}{more}; "
                         f"it was not written by pgolf (or was edited)") from None
    for seed, entry in led.seeds.items():
        numbers = [a.attempt for a in entry.attempts]
        if len(set(numbers)) != len(numbers):
            raise PgolfError(f"{path}: seed {seed}: attempt numbers repeat ({numbers}); it was not written by pgolf")
        if entry.state == "succeeded" and not any(a.succeeded() for a in entry.attempts):
            last = entry.attempts[-1].error if entry.attempts else None
            why = f"its last attempt ended {last!r}" if last else "no attempt of it ended with exit code 0"
            raise PgolfError(f"{path}: seed {seed} is \"succeeded\" but {why}; its result cannot be trusted: set its "
                             f"\"state\" to \"pending\" and `pgolf resume` runs it again")
    return led


def check_seeds(ledger_seeds: list[int], batch: dict[str, Any], path: Path) -> None:
    """batch.json's seeds are the ledger's: a seed batch.json lists is never silently dropped. (An adaptive
    batch's ledger starts empty and each wave adds its seeds after recording the wave, so a driver killed
    in between leaves fewer: not checked there.)"""
    spec = batch.get("spec") or {}
    listed = spec.get("seeds")
    if not isinstance(listed, list) or spec.get("adaptive"):
        return
    missing = [s for s in listed if s not in ledger_seeds]
    extra = [s for s in ledger_seeds if s not in listed]
    if missing or extra:
        what = "; ".join(x for x in (f"batch.json's seed(s) {missing} are missing from it" if missing else "",
                                     f"seed(s) {extra} are not batch.json's" if extra else "") if x)
        raise PgolfError(f"{path}: {what} (edited by hand?); pgolf never drops a seed: restore ledger.json, or "
                         f"start a new batch with `pgolf run`")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """ledger.json in memory; `save()` after each change. Keys of `seeds` are seed strings."""

    def __init__(self, run_dir: str | Path, data: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER
        self.data = data if data is not None else {"seeds": {}}
        self.unsaved = False       # memory holds changes the disk refused so far

    @classmethod
    def create(cls, run_dir: str | Path, seeds: list[int]) -> "Ledger":
        led = cls(run_dir, {"seeds": {str(s): {"state": "pending", "attempts": []} for s in seeds}})
        led.save()
        return led

    @classmethod
    def load(cls, run_dir: str | Path) -> "Ledger":
        """ledger.json read through the typed model, its states checked against its attempts and its seeds
        against batch.json's (when there is one): anything off is one line (PgolfError, rc 2)."""
        run_dir = Path(run_dir)
        data = _read(run_dir, LEDGER, "no ledger here", ("seeds",))
        led = check(data, run_dir / LEDGER)
        if (run_dir / BATCH).is_file():
            check_seeds([int(s) for s in led.seeds], load_batch(run_dir), run_dir / LEDGER)
        return cls(run_dir, data)

    def save(self) -> None:
        """Write the whole ledger; on failure (OSError naming ledger.json) memory keeps the change."""
        self.unsaved = True
        with writing(self.path):
            atomic_write_json(self.path, self.data)
        self.unsaved = False

    # --- queries -------------------------------------------------------------------------------
    def seeds(self) -> list[int]:
        return [int(s) for s in self.data["seeds"]]

    def entry(self, seed: int) -> dict[str, Any]:
        return self.data["seeds"][str(seed)]

    def state(self, seed: int) -> str:
        return self.entry(seed)["state"]

    def attempts(self, seed: int) -> list[dict[str, Any]]:
        return self.entry(seed)["attempts"]

    def last_attempt(self, seed: int) -> dict[str, Any] | None:
        a = self.attempts(seed)
        return a[-1] if a else None

    def attempt(self, seed: int, attempt: int) -> dict[str, Any] | None:
        """Attempt number `attempt` of the seed (not necessarily its last one)."""
        return next((a for a in self.attempts(seed) if a["attempt"] == attempt), None)

    def next_attempt_number(self, seed: int) -> int:
        return max((a["attempt"] for a in self.attempts(seed)), default=0) + 1

    def unfinished(self) -> list[int]:
        return [s for s in self.seeds() if self.state(s) not in DONE_STATES]

    def all_attempts(self) -> list[tuple[int, dict[str, Any]]]:
        """(seed, attempt) for every attempt of every seed, in ledger order."""
        return [(s, a) for s in self.seeds() for a in self.attempts(s)]

    def has_open_attempt(self) -> bool:
        """Some attempt has not ended: a driver may be running this batch (or died without closing it)."""
        return any(a.get("ended") is None for _s, a in self.all_attempts())

    # --- changes (each saves) ----------------------------------------------------------------
    def add_seeds(self, seeds: list[int]) -> None:
        """New pending seeds (the next wave of an adaptive batch); seeds already there are kept as they are."""
        for s in seeds:
            self.data["seeds"].setdefault(str(s), {"state": "pending", "attempts": []})
        self.save()

    def set_section(self, key: str, value: Any) -> None:
        """A top-level section other than "seeds" (e.g. "adaptive": the waves and their decisions)."""
        assert key != "seeds"
        self.data[key] = value
        self.save()

    def start_attempt(self, seed: int, backend: str) -> dict[str, Any]:
        """A new attempt, on disk before it runs: if the write fails, memory is as before and it raises."""
        att = {k: None for k in ATTEMPT_KEYS}
        att.update(attempt=self.next_attempt_number(seed), backend=backend, started=now_iso())
        state, unsaved = self.state(seed), self.unsaved
        self.attempts(seed).append(att)
        self.entry(seed)["state"] = "running"
        try:
            self.save()
        except OSError:
            self.attempts(seed).pop()
            self.entry(seed)["state"], self.unsaved = state, unsaved
            raise
        return att

    def update_attempt(self, seed: int, attempt: int, **fields: Any) -> None:
        for att in self.attempts(seed):
            if att["attempt"] == attempt:
                att.update({k: v for k, v in fields.items() if k in ATTEMPT_KEYS and k != "attempt"})
        self.save()

    def end_attempt(self, seed: int, attempt: int, state: str, before_save=None, **fields: Any) -> None:
        """Close an attempt and set the seed's state in one write; `before_save()` runs once memory holds the
        change and before it reaches the disk (the driver writes the attempt's result.json there)."""
        assert state in STATES, state
        for att in self.attempts(seed):
            if att["attempt"] == attempt:
                att.update({k: v for k, v in fields.items() if k in ATTEMPT_KEYS and k != "attempt"})
                att["ended"] = att["ended"] or now_iso()
        self.entry(seed)["state"] = state
        if before_save is not None:
            before_save()
        self.save()

    def close_dangling(self, error: str) -> list[int]:
        """Attempts left open by a dead driver: mark them ended with `error`, seed back to pending, each
        one's result.json written (again) before the ledger that closes it."""
        touched: list[tuple[int, dict]] = []
        for s in self.seeds():
            for att in self.attempts(s):
                if att["ended"] is None:
                    att["ended"] = now_iso()
                    att["error"] = att["error"] or error
                    touched.append((s, att))
            if self.state(s) == "running":
                self.entry(s)["state"] = "pending"
        for s, att in touched:
            self.write_result(s, att["attempt"], [])
        if touched:
            self.save()
        return [s for s, _att in touched]

    def attempt_dir(self, seed: int, attempt: int) -> Path:
        return self.run_dir / "seeds" / str(seed) / f"attempt-{attempt}"

    def write_result(self, seed: int, attempt: int, artifacts: list[str], state: str | None = None,
                     scrub=None) -> None:
        """The attempt's result.json: its ledger entry as memory holds it, the seed's state after it (`state`,
        else now), its artifacts; what a killed earlier write left beside it is removed first. `scrub` (a
        results.secrets.Scrubber) cleans the values. OSError (naming the file) when the disk refuses."""
        folder = self.attempt_dir(seed, attempt)
        for orphan in folder.glob(".result.json.*.tmp"):
            orphan.unlink(missing_ok=True)
        att = dict(self.attempt(seed, attempt) or {})
        att.update(seed=seed, state=state or self.state(seed), artifacts=artifacts)
        path = folder / "result.json"
        with writing(path):
            atomic_write_json(path, scrub.obj(att) if scrub is not None else att)


def git_commit(cwd: str | Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def pgolf_version() -> str:
    try:
        from importlib.metadata import version
        return version("pgolf")
    except Exception:
        return "unknown"


def create_batch(run_dir: str | Path, spec_dict: dict[str, Any], script_path: str | Path,
                 spec_file: str | None = None, rehearsal: bool = False) -> dict[str, Any]:
    """Freeze the batch: copy the script into the run dir and write batch.json (spec already redacted).
    `rehearsal`: the batch runs on the fake RunPod (--rehearse); its resume stays one, its report says so."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    script_path = Path(script_path)
    frozen = run_dir / script_path.name
    with writing(frozen):
        shutil.copyfile(script_path, frozen)
    os.chmod(frozen, 0o444)
    sha = sha256_file(frozen)
    batch = {
        "name": spec_dict.get("name"),
        "spec": spec_dict,
        "spec_file": spec_file,
        "script": {"file": script_path.name, "sha256": sha, "source": str(script_path)},
        "script_sha256": sha,
        "pgolf_version": pgolf_version(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "created_at": now_iso(),
        "rehearsal": rehearsal,
    }
    with writing(run_dir / BATCH):
        atomic_write_json(run_dir / BATCH, batch)
    return batch


def load_batch(run_dir: str | Path) -> dict[str, Any]:
    return _read(Path(run_dir), BATCH, "missing", ("spec", "script"))


def _read(run_dir: Path, name: str, absent: str, objects: tuple[str, ...]) -> dict[str, Any]:
    """A JSON file of the run directory that must hold the `objects` keys, or one line saying why not."""
    path = run_dir / name
    if not path.is_file():
        raise PgolfError(f"{path}: {absent} (is {run_dir} a run directory made by `pgolf run`?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PgolfError(f"{path}: not valid JSON ({e}); it was not written by pgolf") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in objects):
        keys = " and ".join(f'"{k}"' for k in objects)
        raise PgolfError(f"{path}: no {keys} object; it was not written by pgolf")
    return data


def frozen_script(run_dir: str | Path, batch: dict[str, Any]) -> Path:
    """The batch's frozen copy of its script, refusing (PgolfError) when it or its source changed since
    the batch started: results of two code versions must never be mixed in one batch."""
    frozen = Path(run_dir) / batch["script"]["file"]
    want = batch["script"]["sha256"]
    if not frozen.is_file() or sha256_file(frozen) != want:
        raise PgolfError(f"{frozen}: the batch's frozen script is missing or altered (sha256 != {want[:12]}…); "
                         f"this run cannot be resumed, start a new one with `pgolf run`")
    source = batch["script"].get("source")
    if source and Path(source).is_file() and sha256_file(source) != want:
        raise PgolfError(f"{source}: script changed since the batch started (sha256 {sha256_file(source)[:12]}… "
                         f"!= {want[:12]}… in {BATCH}); results of two code versions must not be mixed: "
                         f"restore the script or start a new batch with `pgolf run`")
    return frozen


LATEST = "latest"


def mark_latest(run_dir: str | Path) -> None:
    """Point `RUNS_DIR/latest` at this run directory (a relative symlink, replaced atomically), so that the
    commands that follow a batch (`pgolf status`, `audit`, `report` with no argument, or `runs/latest` in a
    shell) name the newest batch and never two. A real folder called `latest` is left alone."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    if run_dir.name == LATEST or (link.exists() and not link.is_symlink()):
        return
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)          # a file system without symlinks: the commands still take paths


def run_dirs(runs_dir: str | Path = "runs") -> list[Path]:
    """The batches under RUNS_DIR: folders holding ledger.json, each once (`latest` and other links skipped)."""
    return sorted(p.parent for p in Path(runs_dir).glob(f"*/{LEDGER}") if not p.parent.is_symlink())


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The run directory `RUNS_DIR/latest` points at, else the one whose batch.json is newest."""
    runs_dir = Path(runs_dir)
    link = runs_dir / LATEST
    if link.is_dir() and (link / LEDGER).is_file():
        return link.resolve()
    found = sorted((d for d in run_dirs(runs_dir) if (d / BATCH).is_file()), key=lambda d: (d / BATCH).stat().st_mtime)
    if not found:
        raise PgolfError(f"{runs_dir}: no run directory here; give one (e.g. `pgolf status runs/NAME`) "
                         f"or start a batch with `pgolf run JOB.toml`")
    return found[-1].resolve()
