"""Load a folder into a `RunSet`: a record folder (public repository layout) or a run directory.

Record folder: README.md, submission*.json (schemas vary), logs (*.log, *.txt, also under logs/),
optionally train_gpt.py. Run directory (what `pgolf run` writes): batch.json, ledger.json and
seeds/SEED/attempt-K/train.log; the succeeded attempt of each seed counts (last with exit code 0).

One run per seed goes into `RunSet.runs`; duplicates (the same log copied as train.log) and
superseded reruns of a seed go into `RunSet.extra_runs`, with a warning saying which.
"""
from __future__ import annotations

from pathlib import Path

from results import claims
from results.errors import PgolfError
from results.files import read_json_object
from results.parse import choose_score, parse_log
from results.types import Run, RunSet

LOG_SUFFIXES = (".log", ".txt")
_NOT_LOGS = {"requirements.txt", "readme.txt", "license.txt"}
_LOG_MARKERS = (b"val_loss", b"train_loss", b"step:", b"val_bpb")


def load(path: str | Path) -> RunSet:
    """RunSet of a record folder or run directory; PgolfError (one line) for unusable input."""
    d = Path(path)
    if not d.exists():
        raise PgolfError(f"{d}: no such folder; pass a record folder or a run directory")
    if not d.is_dir():
        raise PgolfError(f"{d}: is a file, not a folder; pass the folder that holds the logs")
    if _is_run_dir(d):
        return load_run_dir(d)
    collection = describe_collection(d)
    if collection:
        raise PgolfError(collection)
    return load_record(d)


def _is_run_dir(d: Path) -> bool:
    return (d / "batch.json").exists() or (d / "ledger.json").exists()


def _is_own_folder(d: Path) -> bool:
    """A folder that is a record or a run of its own (not part of the folder above it)."""
    return claims.find(d) is not None or _is_run_dir(d)


def describe_collection(d: Path) -> str | None:
    """One line when `d` holds tracks or record/run folders rather than logs of its own, else None."""
    if _is_own_folder(d) or _own_logs(d):
        return None
    subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    tracks = [p for p in subs if p.name.startswith("track_")]
    if tracks:
        counts = ", ".join(f"{t.name} ({sum(1 for p in t.iterdir() if p.is_dir())} record folders)" for t in tracks)
        first = next((p for t in tracks for p in sorted(t.iterdir()) if p.is_dir()), tracks[0])
        return (f"{d}: holds the tracks {counts}, not logs; audit one record folder, e.g. `pgolf audit '{first}'` "
                f"(or all of them: python bench/audit_corpus.py '{d}')")
    if d.name.startswith("track_") and subs:
        return (f"{d}: is the track {d.name} ({len(subs)} record folders), not a record; audit one of them, "
                f"e.g. `pgolf audit '{subs[0]}'`")
    inner = [p for p in subs if _is_own_folder(p)]
    if inner:
        return (f"{d}: holds {len(inner)} record/run folders, not logs; audit one of them, "
                f"e.g. `pgolf audit '{inner[0]}'`")
    return None


# ---- record folders ------------------------------------------------------------------------------
_MAX_DEPTH = 3


def _is_log(p: Path, need_marker: bool) -> bool:
    name = p.name.lower()
    if not p.is_file() or p.suffix.lower() not in LOG_SUFFIXES or name in _NOT_LOGS:
        return False
    if not need_marker and (p.suffix.lower() == ".log" or name.startswith(("train", "log"))):
        return True
    try:
        head = p.read_bytes()[:200_000]
    except OSError:
        return False
    return any(m in head for m in _LOG_MARKERS)


def _own_logs(d: Path) -> list[Path]:
    return [p for p in sorted(d.iterdir()) if _is_log(p, need_marker=False)]


def find_logs(d: Path) -> list[Path]:
    """Every training log of a record folder, sorted by path: its own *.log files and train*/log* *.txt files,
    the same in log folders (logs/), and any *.log/*.txt carrying run lines (steps, losses, val_bpb) in other
    subfolders, e.g. one named after the upstream PR. Subfolders that are records or runs of their own are
    left out."""
    out = _own_logs(d)

    def visit(folder: Path, depth: int):
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
            if _is_own_folder(sub):
                continue
            loose = "log" not in sub.name.lower()
            out.extend(p for p in sorted(sub.iterdir()) if _is_log(p, need_marker=loose))
            if depth < _MAX_DEPTH:
                visit(sub, depth + 1)

    visit(d, 1)
    return out


def load_record(d: Path) -> RunSet:
    rs = RunSet(dir=d, kind="record")
    sub = claims.find(d)
    if sub:
        rs.submission = claims.read(sub)
        rs.submission_path = sub
    script = d / "train_gpt.py"
    rs.script_path = script if script.is_file() else None
    logs = find_logs(d)
    if not logs and not sub and not any(d.iterdir()):
        raise PgolfError(f"{d}: folder is empty; expected training logs (train_seed*.log) and submission.json")
    runs: list[Run] = []
    for p in logs:
        try:
            runs.extend(parse_log(p, str(p.relative_to(d))))
        except OSError as e:
            rs.warnings.append(f"{p.relative_to(d)}: cannot read ({e.strerror})")
    _apply_claims(rs, runs)
    return rs


def _apply_claims(rs: RunSet, runs: list[Run]):
    """Re-score runs against the submission's claims, then keep one run per seed."""
    per_seed = claims.claimed_seed_results(rs.submission)
    global_claim = claims.claimed_bpb(rs.submission)
    for r in runs:
        claim = _seed_claim(per_seed, r).get("val_bpb")
        if isinstance(claim, (int, float)) and not isinstance(claim, bool):
            choose_score(r, float(claim), claims.rounding_tol(claim))
        elif global_claim is not None:
            choose_score(r, global_claim, claims.rounding_tol(global_claim))
    _dedupe(rs, runs, per_seed, global_claim)


def _seed_claim(per_seed: dict[int, dict], r: Run) -> dict:
    """The per-seed claim for a run: by its seed, else by the seed in its file name."""
    if r.seed in per_seed:
        return per_seed[r.seed]
    return per_seed.get(r.filename_seed, {}) if r.filename_seed is not None else {}


def _matches(r: Run, claim) -> bool:
    return (isinstance(claim, (int, float)) and r.val_bpb is not None
            and abs(r.val_bpb - float(claim)) <= claims.rounding_tol(claim))


# keys that differ from run to run of one experiment (or only say where files are): not its configuration
_PER_RUN_KEYS = {"seed", "s", "run_id", "run_name", "logfile", "log_file", "rank", "local_rank", "is_main_process"}


def config_of(r: Run) -> dict[str, str]:
    """The configuration a run's log states: its hyperparameters, per-run keys and paths aside."""
    return {k: v for k, v in r.hparams.items() if k not in _PER_RUN_KEYS and "/" not in v}


def _config_difference(a: Run, b: Run, most: int = 3) -> str:
    """`key a_value vs b_value` for hyperparameters both runs state and disagree on ("" when none)."""
    ca, cb = config_of(a), config_of(b)
    diff = [f"{k} {ca[k]} vs {cb[k]}" for k in sorted(ca.keys() & cb.keys()) if ca[k] != cb[k]]
    return ", ".join(diff[:most]) + (" …" if len(diff) > most else "")


def _main_config(runs: list[Run]) -> frozenset | None:
    """The configuration most seeds share (a folder's main experiment), when the logs state one."""
    counts: dict[frozenset, set] = {}
    for r in runs:
        if r.hparams and r.metric is not None:
            counts.setdefault(frozenset(config_of(r).items()), set()).add(r.seed)
    if not counts:
        return None
    best = max(counts.items(), key=lambda kv: len(kv[1]))
    return best[0] if len(best[1]) > 1 else None


def _the_run_of_seed(group: list[Run], claim, main: frozenset | None) -> Run:
    """Which of several runs of one seed counts: the one holding the claimed value (closest at the claim's own
    precision), else the one of the folder's main configuration (runs are told apart by their own
    hyperparameters before they are called the same seed), else the first with a score."""
    hits = [r for r in group if _matches(r, claim)]
    if hits:
        return min(hits, key=lambda r: abs(r.val_bpb - float(claim)))
    if main is not None:
        same = [r for r in group if r.metric is not None and frozenset(config_of(r).items()) == main]
        if same:
            return same[0]
    return next((r for r in group if r.metric), group[0])


def _dedupe(rs: RunSet, runs: list[Run], per_seed: dict, global_claim: float | None):
    seen: dict[tuple, Run] = {}
    unique: list[Run] = []
    for r in runs:
        key = (r.seed, r.val_bpb, r.val_loss, r.steps, r.train_time_ms, r.artifact_bytes)
        if r.metric is not None and key in seen:
            first = seen[key]
            rs.warnings.append(f"{r.log}:{r.first_line}: same run as {first.log}:{first.first_line} (seed {r.seed}); counted once")
            rs.extra_runs.append(r)
            continue
        seen[key] = r
        unique.append(r)
    by_seed: dict[int, list[Run]] = {}
    for r in unique:
        if r.seed is not None:
            by_seed.setdefault(r.seed, []).append(r)
    drop: set[int] = set()
    main = _main_config(unique)
    for seed, group in by_seed.items():
        if len(group) < 2:
            continue
        claim = per_seed.get(seed, {}).get("val_bpb", global_claim)
        keep = _the_run_of_seed(group, claim, main)
        for r in group:
            if r is not keep:
                drop.add(id(r))
                rs.extra_runs.append(r)
                other = _config_difference(r, keep)
                what = (f"another experiment with seed {seed} ({other})" if other
                        else f"another run of seed {seed}")
                rs.warnings.append(f"{r.log}:{r.first_line}: {what} (val_bpb {r.val_bpb}); "
                                   f"{keep.log}:{keep.first_line} (val_bpb {keep.val_bpb}) is the one counted")
    rs.runs = [r for r in unique if id(r) not in drop]


# ---- run directories -----------------------------------------------------------------------------
def load_run_dir(d: Path) -> RunSet:
    rs = RunSet(dir=d, kind="run")
    batch_p, ledger_p = d / "batch.json", d / "ledger.json"
    if batch_p.exists():
        rs.batch = read_json_object(batch_p)
        script = rs.batch.get("script")
        name = script.get("file") if isinstance(script, dict) else script if isinstance(script, str) else None
        if name:
            sp = d / Path(name).name
            rs.script_path = sp if sp.is_file() else None
            if rs.script_path is None:
                rs.warnings.append(f"{batch_p.name}: frozen script {Path(name).name} is missing from {d}")
    if not ledger_p.exists():
        raise PgolfError(f"{ledger_p}: missing; a run directory needs its ledger.json and nothing rebuilds one: "
                         f"restore it from a backup, or start a new batch with `pgolf run`")
    ledger = read_json_object(ledger_p)
    seeds = ledger.get("seeds")
    if not isinstance(seeds, dict):
        raise PgolfError(f"{ledger_p}: key 'seeds' must be an object keyed by seed")
    runs: list[Run] = []
    for seed_s, entry in sorted(seeds.items(), key=lambda kv: _seed_key(kv[0])):
        attempts = entry.get("attempts") if isinstance(entry, dict) else None
        if not isinstance(attempts, list):
            raise PgolfError(f"{ledger_p}: seeds[{seed_s}].attempts must be a list")
        # an aborted attempt (runner/abort.py) never counts, even if its job ended before the cancel
        ok = [a for a in attempts if isinstance(a, dict) and a.get("exit_code") == 0 and not a.get("abort")]
        if not ok:
            state = entry.get("state", "?")
            rs.warnings.append(f"seed {seed_s}: no succeeded attempt (state {state}); not counted")
            continue
        k = ok[-1].get("attempt", len(attempts))
        log = d / "seeds" / str(seed_s) / f"attempt-{k}" / "train.log"
        rel = str(log.relative_to(d))
        if not log.is_file():
            rs.warnings.append(f"{rel}: log of the succeeded attempt of seed {seed_s} is missing")
            continue
        try:
            found = parse_log(log, rel)
        except OSError as e:
            rs.warnings.append(f"{rel}: cannot read ({e.strerror})")
            continue
        for r in found:
            if r.filename_seed is None and str(seed_s).isdigit():
                r.filename_seed = int(seed_s)
                if r.seed is None:
                    r.seed = int(seed_s)
            runs.append(r)
    _apply_claims(rs, runs)
    return rs


def _seed_key(s: str):
    return (0, int(s)) if str(s).isdigit() else (1, str(s))
