"""Compliance audit of a RunSet: the checks a reviewer applies, in the audit JSON of docs/CHALLENGE.md.

Each check is a small function returning (status, detail); the detail says what was found and
where (file:line) so that a reader can verify it in the log.
"""
from __future__ import annotations

import hashlib
import math

from results.claims import claimed_bpb, claimed_loss, claimed_seed_results, claimed_seeds, rounding_tol
from results.summary import mean_std, run_row, scored, summarize
from results.tokenizers import TABLE, nearest, tolerance
from results.types import Run, RunSet

ARTIFACT_CAP = 16_000_000
TRAIN_LIMIT_MS = 600_000
EVAL_LIMIT_MS = 600_000
# the official baseline stops at the first step past the cap; one step (~0.2 s) over is the norm
TIME_GRACE_MS = 1_000
CHECK_IDS = ("logs_present", "seed_count", "seed_labels", "claim_matches_logs", "mean_not_best",
             "artifact_cap", "train_time", "eval_time", "bpb_consistency", "provenance")


def _at(r: Run, key: str) -> str:
    line = r.refs.get(key)
    return f"{r.log}:{line}" if line else r.log


def _fmt(x: float | None, nd: int = 8) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def is_non_record(rs: RunSet) -> bool:
    track = str((rs.submission or {}).get("track", "")).lower().replace("_", "-")
    return "non-record" in track or "unlimited" in track or "non_record" in str(rs.dir).lower()


# ---- checks ------------------------------------------------------------------------------------
def check_logs_present(rs: RunSet):
    if not rs.runs:
        where = rs.submission_path.name if rs.submission_path else "the folder"
        return "fail", f"no training logs in {rs.dir.name} (claims in {where} cannot be verified)"
    unparsed = [r for r in rs.runs if r.metric is None]
    logs = sorted({r.log for r in rs.runs} | {r.log for r in rs.extra_runs})
    if unparsed:
        why = ["; ".join(r.warnings[-3:]) if r.warnings else f"{r.log}:{r.first_line}" for r in unparsed]
        return "warn", f"{len(logs)} log(s), {len(rs.runs)} run(s); no usable final val_bpb in: " + "; ".join(why)
    extra = (f"; not counted (duplicate or another run of a counted seed): "
             + ", ".join(f"{r.log}:{r.first_line}" for r in rs.extra_runs)) if rs.extra_runs else ""
    return "pass", f"{len(logs)} log(s), {len(rs.runs)} run(s) with a final score: {', '.join(logs)}{extra}"


def check_seed_count(rs: RunSet):
    runs = scored(rs.runs)
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    n = len(runs)
    if n == 0:
        return "fail", "no scored run"
    claimed = claimed_seeds(rs.submission)
    detail = f"{n} scored run(s), seeds {seeds or 'unknown'}"
    if claimed:
        detail += f"; submission lists seeds {claimed}"
    if n >= 3:
        return "pass", detail
    return "warn", detail + "; records usually need 3 seeds for p < 0.01"


def check_seed_labels(rs: RunSet):
    both = [r for r in rs.runs + rs.extra_runs if r.header_seed is not None and r.filename_seed is not None]
    bad = [r for r in both if r.header_seed != r.filename_seed]
    if bad:
        return "fail", "; ".join(f"{r.log} is labelled seed {r.filename_seed} but {_at(r, 'seed')} says seed {r.header_seed}"
                                 for r in bad)
    if not both:
        return "skip", "no log has both a seed in its file name and a seed in its header"
    return "pass", f"{len(both)} log(s): seed in file name matches the log header"


def check_claim(rs: RunSet):
    if rs.submission is None:
        return "skip", "no submission.json: nothing claimed"
    sub_name = rs.submission_path.name if rs.submission_path else "submission.json"
    runs = scored(rs.runs)
    problems, notes, minor = [], [], []
    per_seed = claimed_seed_results(rs.submission)
    for seed, res in per_seed.items():
        claim = res.get("val_bpb")
        if not isinstance(claim, (int, float)) or isinstance(claim, bool):
            continue
        cands = [r for r in runs if r.seed == seed] or [r for r in runs if r.filename_seed == seed]
        cands += [r for r in rs.extra_runs if r.seed == seed or r.filename_seed == seed]
        if not cands:
            problems.append(f"seed {seed}: claimed {claim} but no log for that seed")
            continue
        tol = rounding_tol(claim)
        hit = next((r for r in cands if r.val_bpb is not None and abs(r.val_bpb - claim) <= tol), None)
        if hit is None:
            hit = next((r for r in cands if any(abs(m.val_bpb - claim) <= tol for m in r.metrics)), None)
            if hit is not None:
                notes.append(f"seed {seed}: claimed {claim} matches a non-final line in {hit.log}")
                continue
            r = cands[0]
            problems.append(f"seed {seed}: claimed {claim}, log says {_fmt(r.val_bpb)} ({_at(r, 'metric')})")
        else:
            notes.append(f"seed {seed} {claim} at {_at(hit, 'metric')}")
            art = res.get("artifact_bytes", res.get("bytes_total"))
            if isinstance(art, int) and hit.artifact_bytes is not None and art != hit.artifact_bytes:
                minor.append(f"seed {seed}: claimed artifact {art:,} bytes, log says {hit.artifact_bytes:,} "
                             f"({_at(hit, 'artifact_bytes')})")
    log_seeds = {r.seed for r in runs} | {r.filename_seed for r in runs}
    missing = [s for s in claimed_seeds(rs.submission) if s not in log_seeds and s not in per_seed]
    if missing:
        problems.append(f"{sub_name} lists seed(s) {missing} but there is no scored log for them")
    claim = claimed_bpb(rs.submission)
    if claim is not None and runs:
        mean, _ = mean_std([r.val_bpb for r in runs])
        tol = max(rounding_tol(claim), 1e-6)
        if per_seed:
            vals = [v["val_bpb"] for v in per_seed.values() if isinstance(v.get("val_bpb"), (int, float))]
            own_mean, _ = mean_std(vals)
            if own_mean is not None and abs(own_mean - claim) > max(tol, 5e-5):
                problems.append(f"{sub_name} contradicts itself: val_bpb {claim} but its seed_results average {own_mean:.8f}")
        if abs(mean - claim) <= tol:
            notes.append(f"val_bpb {claim} = mean of {len(runs)} log(s)")
        else:
            hit = next((r for r in runs + rs.extra_runs if r.val_bpb is not None and abs(r.val_bpb - claim) <= tol), None)
            if hit is not None:
                notes.append(f"val_bpb {claim} found at {_at(hit, 'metric')} (mean of logs {mean:.8f})")
            elif not per_seed:
                problems.append(f"val_bpb {claim} matches no log line and not the mean of logs ({mean:.8f})")
    if claim is None and not per_seed:
        return "skip", f"{sub_name} claims no val_bpb"
    if problems:
        return "fail", "; ".join(problems) + (f" (ok: {'; '.join(notes)})" if notes else "")
    if not runs:
        return "skip", f"{sub_name} claims val_bpb {claim} but there is no scored log to compare"
    if minor:
        return "warn", "; ".join(minor) + f" (scores match: {'; '.join(notes)})"
    return "pass", "; ".join(notes)


def check_mean_not_best(rs: RunSet):
    claim = claimed_bpb(rs.submission)
    runs = scored(rs.runs)
    if claim is None:
        return "skip", "no claimed val_bpb"
    if len(runs) < 2:
        return "skip", f"{len(runs)} scored run(s): mean and best are the same"
    mean, _ = mean_std([r.val_bpb for r in runs])
    best = min(runs, key=lambda r: r.val_bpb)
    tol = max(rounding_tol(claim), 1e-6)
    if abs(mean - claim) <= max(tol, 5e-5):
        return "pass", f"claimed val_bpb {claim} is the mean of {len(runs)} runs ({mean:.8f})"
    if abs(best.val_bpb - claim) <= tol:
        return "fail", (f"claimed val_bpb {claim} is the best seed ({best.seed}, {_at(best, 'metric')}), "
                        f"not the mean of {len(runs)} runs ({mean:.8f})")
    return "warn", f"claimed val_bpb {claim} is neither the mean ({mean:.8f}) nor the best seed ({best.val_bpb})"


def _folder_code_bytes(rs: RunSet) -> tuple[int | None, str]:
    sub = rs.submission or {}
    for key in ("bytes_code", "code_bytes"):
        if isinstance(sub.get(key), int):
            return sub[key], f"{rs.submission_path.name}:{key}"
    if rs.script_path and rs.script_path.is_file():
        return rs.script_path.stat().st_size, rs.script_path.name
    return None, ""


def check_artifact_cap(rs: RunSet):
    over, ok, notes = [], [], []
    code, code_src = _folder_code_bytes(rs)
    for r in rs.runs:
        if r.artifact_bytes is not None:
            total, where = r.artifact_bytes, _at(r, "artifact_bytes")
        elif r.model_bytes is not None and (r.code_bytes is not None or code is not None):
            c = r.code_bytes if r.code_bytes is not None else code
            total = r.model_bytes + c
            where = f"{_at(r, 'model_bytes')} + code {c} ({_at(r, 'code_bytes') if r.code_bytes is not None else code_src})"
        else:
            continue
        (over if total > ARTIFACT_CAP else ok).append(f"{total:,} bytes at {where}")
    if over:
        return "fail", f"over the {ARTIFACT_CAP:,}-byte cap: " + "; ".join(over)
    if ok:
        return "pass", f"max {max(int(s.split()[0].replace(',', '')) for s in ok):,} bytes ≤ {ARTIFACT_CAP:,}: " + "; ".join(ok)
    sub = rs.submission or {}
    claimed = [v.get("artifact_bytes") or v.get("bytes_total") for v in claimed_seed_results(sub).values()]
    claimed = [c for c in claimed if isinstance(c, int)]
    for key in ("bytes_total", "artifact_size_bytes", "artifact_bytes"):
        if isinstance(sub.get(key), int):
            claimed.append(sub[key])
    if claimed:
        worst = max(claimed)
        status = "fail" if worst > ARTIFACT_CAP else "warn"
        return status, f"no size line in the logs; {rs.submission_path.name} claims up to {worst:,} bytes (unverified)"
    return "skip", "no artifact size in logs or submission"


def _time_check(rs: RunSet, attr: str, limit: int, what: str):
    lax = is_non_record(rs)
    vals = [(getattr(r, attr), r) for r in rs.runs if getattr(r, attr) is not None]
    if not vals:
        return "skip", f"no {what} time in the logs"
    worst, wr = max(vals, key=lambda t: t[0])
    key = "train_time" if attr == "train_time_ms" else ("total_eval_time" if wr.total_eval_time_ms is not None else "metric")
    detail = f"max {what} time {worst / 1000:.1f} s at {_at(wr, key)} ({len(vals)} run(s))"
    if worst <= limit:
        return "pass", detail + f" ≤ {limit // 1000} s"
    if worst <= limit + TIME_GRACE_MS:
        return "pass", detail + f": within one step of the {limit // 1000} s cap (wall-clock stop)"
    if lax:
        return "warn", detail + f" > {limit // 1000} s; non-record track, limit not enforced"
    return "fail", detail + f" > {limit // 1000} s"


def check_train_time(rs: RunSet):
    return _time_check(rs, "train_time_ms", TRAIN_LIMIT_MS, "training")


def check_eval_time(rs: RunSet):
    return _time_check(rs, "eval_time_ms", EVAL_LIMIT_MS, "evaluation")


def check_bpb_consistency(rs: RunSet):
    fails, warns, oks = [], [], []
    for r in scored(rs.runs):
        bpt = r.bytes_per_token
        if bpt is None:
            continue
        where = _at(r, "metric")
        name = r.tokenizer
        logged = r.hints.get("val_bytes_per_token")
        if name is None and logged and _finite(logged):
            ref = float(logged)
            dev = bpt / ref - 1
            msg = (f"{r.log}: custom tokenizer; bytes/token {bpt:.5f} vs the script's val_bytes_per_token {ref:.5f} "
                   f"({dev * 100:+.3f}%, {where}, {_at(r, 'val_bytes_per_token')})")
            (fails if abs(dev) > 0.0005 else oks).append(msg if abs(dev) > 0.0005 else f"{r.log} {bpt:.5f} (custom)")
            continue
        if name is None:
            near, dev = nearest(bpt)
            if abs(dev) <= tolerance(near):
                warns.append(f"{r.log}: tokenizer not stated; bytes/token {bpt:.5f} matches {near} ({where})")
            else:
                warns.append(f"{r.log}: tokenizer not stated; bytes/token {bpt:.5f} matches no canonical table ({where})")
            continue
        canon = TABLE[name]
        dev = bpt / canon.bytes_per_token - 1
        tok_where = _at(r, "val_tokens")
        tokens_off = (r.val_tokens is not None and canon.val_tokens is not None and r.val_tokens != canon.val_tokens)
        tok_note = f"; scored on {r.val_tokens:,} validation tokens, canonical {canon.val_tokens:,} ({tok_where})" if tokens_off else ""
        msg = f"{r.log}: {name} bytes/token {bpt:.5f} vs canonical {canon.bytes_per_token:.5f} ({dev * 100:+.3f}%, {where}){tok_note}"
        if abs(dev) > tolerance(name):
            fails.append(msg)
        elif tokens_off:
            warns.append(msg)
        else:
            oks.append(f"{r.log} {bpt:.5f}")
    if fails:
        return "fail", "; ".join(fails + warns)
    if warns:
        return "warn", "; ".join(warns)
    if oks:
        names = sorted({r.tokenizer for r in scored(rs.runs) if r.tokenizer}) or ["custom"]
        tol = max(tolerance(n) for n in names if n in TABLE) if any(n in TABLE for n in names) else 0.0005
        return "pass", f"bytes/token within {tol * 100:.2f}% of the {'/'.join(names)} table: " + ", ".join(oks)
    return "skip", "no run with both val_loss and val_bpb"


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


def _normalize_source(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def check_provenance(rs: RunSet):
    script = rs.script_path if rs.script_path and rs.script_path.is_file() else None
    data = script.read_bytes() if script else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    norm = _normalize_source(data.decode("utf-8", errors="replace")) if data is not None else None
    fails, oks, unverifiable = [], [], []
    frozen = (rs.batch or {}).get("script")
    if digest and isinstance(frozen, dict) and isinstance(frozen.get("sha256"), str):
        if frozen["sha256"].lower() != digest:
            fails.append(f"batch.json script.sha256 {frozen['sha256'][:16]}… ≠ {script.name} {digest[:16]}… (script changed after the run)")
    for r in rs.runs:
        if r.script_sha256:
            if digest is None:
                unverifiable.append(f"{_at(r, 'script_sha256')} script_sha256 {r.script_sha256[:16]}…")
            elif r.script_sha256 == digest:
                oks.append(f"{_at(r, 'script_sha256')} script_sha256 matches {script.name}")
            else:
                fails.append(f"{_at(r, 'script_sha256')} script_sha256 {r.script_sha256[:16]}… ≠ {script.name} {digest[:16]}…")
        elif r.source_text is not None:
            if norm is None:
                unverifiable.append(f"{r.log}:1 embeds its source")
            elif _normalize_source(r.source_text) == norm:
                oks.append(f"{r.log}:1 embedded source = {script.name}")
            else:
                fails.append(f"{r.log}:1 embedded source differs from {script.name}")
        elif r.source_sha16:
            if digest is None:
                unverifiable.append(f"{_at(r, 'source')} embedded source sha256/16={r.source_sha16}")
            elif digest[:16] == r.source_sha16 or hashlib.sha256((norm + "\n").encode()).hexdigest()[:16] == r.source_sha16:
                oks.append(f"{_at(r, 'source')} embedded source hash matches {script.name}")
            else:
                fails.append(f"{_at(r, 'source')} embedded source sha256/16={r.source_sha16} ≠ {script.name} {digest[:16]}")
    if fails:
        return "fail", "; ".join(fails)
    if oks:
        return "pass", "; ".join(oks)
    if unverifiable:
        return "skip", "no shipped train_gpt.py to compare with: " + "; ".join(unverifiable[:4]) + (" …" if len(unverifiable) > 4 else "")
    return "skip", "no script_sha256 line or embedded source in the logs" + ("" if script else " and no shipped script")


CHECKS = {
    "logs_present": check_logs_present,
    "seed_count": check_seed_count,
    "seed_labels": check_seed_labels,
    "claim_matches_logs": check_claim,
    "mean_not_best": check_mean_not_best,
    "artifact_cap": check_artifact_cap,
    "train_time": check_train_time,
    "eval_time": check_eval_time,
    "bpb_consistency": check_bpb_consistency,
    "provenance": check_provenance,
}


def audit(rs: RunSet) -> dict:
    """The audit JSON: dir, kind, runs, claimed, summary, checks, verdict (fail if any check fails)."""
    checks = []
    for cid, fn in CHECKS.items():
        status, detail = fn(rs)
        checks.append({"id": cid, "status": status, "detail": detail})
    return {
        "dir": str(rs.dir),
        "kind": rs.kind,
        "runs": [run_row(r) for r in rs.runs],
        "claimed": {"val_bpb": claimed_bpb(rs.submission), "val_loss": claimed_loss(rs.submission),
                    "seeds": claimed_seeds(rs.submission)},
        "summary": summarize(rs.runs),
        "checks": checks,
        "verdict": "fail" if any(c["status"] == "fail" for c in checks) else "pass",
    }


