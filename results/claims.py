"""What a submission.json claims, read the same way everywhere (audit, load, statistics).

The public record uses several layouts; all of them are understood here and nowhere else:
- top level: `val_bpb` (or `mean_val_bpb` / `mean_bpb`), `val_loss` (or `mean_val_loss`), `seed`, `track`;
- per seed: `seed_results: {seed: {...}}` or `[{seed: .., ...}]`, `seeds: {seed: {...}}`, or a `seeds`
  list beside a `seed_scores` list of bpb values. A per-seed bpb may be spelt `val_bpb`, `val_var_bpb`,
  `bpb` or `val_bpb_exact`.
Claims are often rounded when they are written: `rounding_tol` says how close a log value must be, at the
precision the number was written with in the file ("1.06400" is good to 5 decimals, not 3: `Claimed`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from results.errors import PgolfError
from results.files import read_json_object

_BPB_KEYS = ("val_bpb", "mean_val_bpb", "mean_bpb")
_LOSS_KEYS = ("val_loss", "mean_val_loss")
_SEED_BPB_ALIASES = ("val_var_bpb", "bpb", "val_bpb_exact")


def find(folder: Path) -> Path | None:
    """The folder's submission.json, else the first submission*.json (submission_ternary.json, ...)."""
    exact = folder / "submission.json"
    if exact.is_file():
        return exact
    others = sorted(folder.glob("submission*.json"))
    return others[0] if others else None


class Claimed(float):
    """A number as written in a submission: it keeps its decimals, which json's float drops ("1.06400" and
    "1.064" are the same float but not the same claim: the first says the 5th decimal is 0)."""

    decimals: int

    def __new__(cls, text: str):
        obj = super().__new__(cls, text)
        mantissa = text.lower().split("e")[0]
        obj.decimals = len(mantissa.split(".")[1]) if "." in mantissa and "e" not in text.lower() else 8
        return obj


def read(path: Path, what: str = "") -> dict:
    """A submission.json as a dict, type-checked; PgolfError (one line naming the file) otherwise.
    `what` prefixes the message (e.g. "baseline "). Decimal numbers come back as `Claimed` floats."""
    read_json_object(path, what)                       # the one-line errors for unreadable or malformed files
    sub = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"), parse_float=Claimed)
    validate(sub, path)
    return sub


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(sub: dict, path: Path):
    """Type-check the keys the audit relies on; a wrong type is a one-line error naming the key."""
    for key in ("val_bpb", "val_loss", "mean_val_bpb", "bytes_total", "bytes_code"):
        v = sub.get(key)
        if v is not None and not _is_number(v):
            raise PgolfError(f"{path}: key '{key}' must be a number, found {json.dumps(v)[:40]}; fix submission.json")
        if isinstance(v, float) and not math.isfinite(v):
            raise PgolfError(f"{path}: key '{key}' is {v}; a claim must be a finite number")
    sr = sub.get("seed_results")
    if sr is not None and not isinstance(sr, (dict, list)):
        raise PgolfError(f"{path}: key 'seed_results' must be an object keyed by seed, found {type(sr).__name__}")
    for seed, res in seed_claims(sub):
        v = res.get("val_bpb")
        if v is not None and (not _is_number(v) or not math.isfinite(v)):
            raise PgolfError(f"{path}: seed_results[{seed}].val_bpb must be a finite number, found {json.dumps(v)[:40]}")


def _seed(v) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return None


def _with_bpb(res: dict) -> dict:
    out = dict(res)
    if "val_bpb" not in out:
        alias = next((k for k in _SEED_BPB_ALIASES if _is_number(res.get(k))), None)
        if alias:
            out["val_bpb"] = res[alias]
    return out


def seed_claims(sub: dict | None) -> list[tuple[int | None, dict]]:
    """Every per-seed claim in file order as (seed or None, {"val_bpb", "val_loss", ...}), any layout."""
    if not sub:
        return []
    out: list[tuple[int | None, dict]] = []
    for key in ("seed_results", "seeds"):
        val = sub.get(key)
        if isinstance(val, dict):
            out += [(_seed(k), _with_bpb(v)) for k, v in val.items() if isinstance(v, dict) and _seed(k) is not None]
        elif isinstance(val, list):
            out += [(_seed(v.get("seed")), _with_bpb(v)) for v in val if isinstance(v, dict)]
    scores = sub.get("seed_scores")
    if not out and isinstance(scores, list):
        seeds = sub.get("seeds") if isinstance(sub.get("seeds"), list) else []
        seeds = [_seed(s) for s in seeds] + [None] * max(0, len(scores) - len(seeds))
        out = [(s, {"val_bpb": v}) for s, v in zip(seeds, scores)]
    return out


def claimed_seed_results(sub: dict | None) -> dict[int, dict]:
    """Per-seed claims keyed by seed (the first claim of a seed wins)."""
    out: dict[int, dict] = {}
    for seed, res in seed_claims(sub):
        if seed is not None:
            out.setdefault(seed, res)
    return out


def claimed_bpb(sub: dict | None) -> float | None:
    """The folder's headline val_bpb claim."""
    return _first_number(sub, _BPB_KEYS)


def claimed_loss(sub: dict | None) -> float | None:
    return _first_number(sub, _LOSS_KEYS)


def _first_number(sub: dict | None, keys) -> float | None:
    for key in keys:
        v = (sub or {}).get(key)
        if _is_number(v):
            return float(v)
    return None


def claimed_seeds(sub: dict | None) -> list[int]:
    """The seeds a submission lists: its `seeds` list, else the keys of its per-seed claims, else `seed`."""
    if not sub:
        return []
    seeds = sub.get("seeds")
    if isinstance(seeds, list):
        return [s for s in map(_seed, seeds) if s is not None]
    per = claimed_seed_results(sub)
    if per:
        return list(per)
    seed = _seed(sub.get("seed"))
    return [] if seed is None else [seed]


def claimed_track(sub: dict | None) -> str | None:
    track = (sub or {}).get("track")
    return track if isinstance(track, str) and track else None


def tokenizer_hint(sub: dict) -> str | None:
    """A canonical tokenizer name from a submission's `tokenizer` / `vocab_size` keys, when it says."""
    tok = str(sub.get("tokenizer") or "").lower()
    vocab = sub.get("vocab_size")
    for name, size in (("sp1024", 1024), ("sp4096", 4096), ("sp8192", 8192)):
        if str(size) in tok or vocab == size:
            return name + ("_caseops" if "caseops" in tok else "")
    return None


def rounding_tol(value: float) -> float:
    """Half a unit in the last decimal the claim was written with (claims are often rounded): a `Claimed`
    number's own decimals ("1.06400": 5), else the shortest repr of the float."""
    decimals = getattr(value, "decimals", None)
    if decimals is None:
        text = repr(float(value))
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 8
    return 0.5 * 10 ** (-min(decimals, 8)) + 1e-9
