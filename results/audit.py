"""Compliance audit of a RunSet: the checks a reviewer applies, in the audit JSON of docs/CHALLENGE.md.

Each check is a small function returning (status, detail); the detail says what was found and where
(file:line) so that a reader can verify it in the log. Every check knows the folder's track
(results.rules): the non-record track keeps the cap and honest scoring but not the time limits or the
seed count. A `fail` is a fault the evidence shows; a `warn` is something a reviewer should look at
that the evidence alone cannot settle. Under the strict policy (`audit(..., strict=True)`, `pgolf audit
--strict`) the warnings of rules.STRICT_CHECKS, practices the maintainers accepted although the written
rules forbid them, are failures.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from results.claims import claimed_bpb, claimed_loss, claimed_seed_results, claimed_seeds, rounding_tol
from results.files import sha256_bytes
from results.parse import metric_tier
from results.rules import (ARTIFACT_CAP, NOT_SXM, RECORD_GPU, RECORD_GPUS, STRICT_CHECKS, TIME_GRACE_MS,
                           track_of)
from results.script_check import calibration_reads, scan_files
from results.summary import mean_std, run_row, scored, summarize
from results.tokenizers import (BPB_TOLERANCE, EXPORT_TOLERANCE, TABLE, known_export, nearest, tolerance)
from results.types import Run, RunSet

def _at(r: Run, key: str) -> str:
    line = r.refs.get(key)
    return f"{r.log}:{line}" if line else r.log


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.8f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def _worst(fails: list[str], warns: list[str], otherwise: tuple[str, str]) -> tuple[str, str]:
    """A check's result from what it found: any fail (warnings appended), else any warning, else `otherwise`."""
    if fails:
        return "fail", "; ".join(fails + warns)
    if warns:
        return "warn", "; ".join(warns)
    return otherwise


def _header(r: Run) -> str:
    return f"whose header says seed {r.header_seed}" if r.header_seed is not None else "which states no seed"


def claim_runs(rs: RunSet) -> list[Run]:
    """The runs a claim is made of. When every per-seed value of submission.json is a final score of some
    log, those logs (the claimed value decides, not the file name: a README's "default seed" run may carry
    another seed); else the scored runs of the seeds it lists; else every scored run."""
    runs = scored(rs.runs)
    everyone = runs + scored(rs.extra_runs)
    per_seed = claimed_seed_results(rs.submission)
    picked: list[Run] = []
    for seed, res in per_seed.items():
        value = res.get("val_bpb")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            picked = []
            break
        tol = rounding_tol(value)
        hits = [r for r in everyone if abs(r.val_bpb - value) <= tol]
        if not hits:
            picked = []
            break
        # the seed's own run first, then the closest value (a claim "1.06400" is the log's 1.06400, not 1.06444)
        best = min(hits, key=lambda r: (r.seed != seed and r.filename_seed != seed, abs(r.val_bpb - value)))
        if best not in picked:
            picked.append(best)
    if len(picked) >= 2 or (picked and len(per_seed) == 1):
        order = {id(r): i for i, r in enumerate(everyone)}
        return sorted(picked, key=lambda r: order[id(r)])          # log order, as everywhere else
    claimed = set(claimed_seeds(rs.submission))
    in_claim = [r for r in runs if r.seed in claimed or r.filename_seed in claimed]
    return in_claim if len(in_claim) >= 2 else runs


# ---- logs, seeds, claims -------------------------------------------------------------------------
def check_logs_present(rs: RunSet):
    if not rs.runs:
        where = rs.submission_path.name if rs.submission_path else "the folder"
        if rs.kind == "run":
            why = "; ".join(rs.warnings[:3]) or "no seed has a succeeded attempt with a log"
            return "fail", f"no training log of a succeeded seed in {rs.dir.name}: every seed failed ({why})"
        if not track_of(rs).is_record:
            return "warn", (f"no training logs in {rs.dir.name}: the claims in {where} cannot be verified "
                            "(non-record track: a write-up, nothing to check against)")
        return "fail", f"no training logs in {rs.dir.name} (claims in {where} cannot be verified)"
    unparsed = [r for r in rs.runs if r.metric is None]
    logs = sorted({r.log for r in rs.runs} | {r.log for r in rs.extra_runs})
    if unparsed:
        why = ["; ".join(r.warnings[-3:]) if r.warnings else f"{r.log}:{r.first_line}" for r in unparsed]
        return "warn", f"{len(logs)} log(s), {len(rs.runs)} run(s); no usable final val_bpb in: " + "; ".join(why)
    extra = ("; not counted (duplicate or another run of a counted seed): "
             + ", ".join(f"{r.log}:{r.first_line}" for r in rs.extra_runs)) if rs.extra_runs else ""
    return "pass", f"{len(logs)} log(s), {len(rs.runs)} run(s) with a final score: {', '.join(logs)}{extra}"


def check_seed_count(rs: RunSet):
    track = track_of(rs)
    runs = scored(rs.runs)
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    n = len(runs)
    if n == 0:
        if track.is_record or rs.kind == "run":     # a batch with no scored seed has nothing to show, on any track
            return "fail", "no scored run"
        return "skip", "no scored run (non-record track)"
    claimed = claimed_seeds(rs.submission)
    detail = f"{n} scored run(s), seeds {seeds or 'unknown'}"
    others = scored(rs.extra_runs)
    if others:
        detail += (f" ({len(others)} other run(s) of {'these seeds' if len(seeds) > 1 else 'that seed'} set aside: "
                   "duplicates, reruns or other experiments, see logs_present)")
    if claimed:
        detail += f"; submission lists seeds {claimed}"
    if not track.is_record:
        return "pass", detail + "; non-record track: no seed minimum"
    if n >= track.seeds_wanted:
        return "pass", detail
    return "warn", detail + f"; records usually need {track.seeds_wanted} seeds for p < 0.01"


def check_seed_labels(rs: RunSet):
    both = [r for r in rs.runs + rs.extra_runs if r.header_seed is not None and r.filename_seed is not None]
    bad = [r for r in both if r.header_seed != r.filename_seed]
    if bad:
        return "fail", "; ".join(f"{r.log} is labelled seed {r.filename_seed} but {_at(r, 'seed')} says seed {r.header_seed}"
                                 for r in bad)
    if not both:
        return "skip", "no log has both a seed in its file name and a seed in its header"
    return "pass", f"{len(both)} log(s): seed in file name matches the log header"


def _holds(r: Run, value: float, tol: float) -> int | None:
    """Line of the run's final metric equal to `value` (its score first), else None."""
    if r.val_bpb is not None and abs(r.val_bpb - value) <= tol:
        return r.refs.get("metric")
    return next((m.line for m in r.metrics if abs(m.val_bpb - value) <= tol), None)


def check_claim(rs: RunSet):
    if rs.submission is None:
        return "skip", "no submission.json: nothing claimed"
    sub_name = rs.submission_path.name if rs.submission_path else "submission.json"
    runs = scored(rs.runs)
    claim = claimed_bpb(rs.submission)
    per_seed = claimed_seed_results(rs.submission)
    loss_claim = claimed_loss(rs.submission)
    if claim is None and not per_seed:
        if loss_claim is not None and runs:
            return _loss_only_claim(rs, sub_name, loss_claim, runs)
        return "skip", f"{sub_name} claims no val_bpb"
    if not runs:
        return "skip", f"{sub_name} claims val_bpb {claim} but there is no scored log to compare"
    problems, notes, minor = [], [], []
    everyone = runs + rs.extra_runs
    for seed, res in per_seed.items():
        value = res.get("val_bpb")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        tol = rounding_tol(value)
        cands = [r for r in runs if r.seed == seed] or [r for r in runs if r.filename_seed == seed]
        cands += [r for r in rs.extra_runs if r.seed == seed or r.filename_seed == seed]
        hit = next((r for r in cands if r.val_bpb is not None and abs(r.val_bpb - value) <= tol), None)
        if hit is not None:
            relabel = f" ({_header(hit)})" if hit.header_seed not in (None, seed) else ""
            notes.append(f"seed {seed} {value} at {_at(hit, 'metric')}{relabel}")
            art = res.get("artifact_bytes", res.get("bytes_total"))
            if isinstance(art, int) and hit.artifact_bytes is not None and art != hit.artifact_bytes:
                minor.append(f"seed {seed}: claimed artifact {art:,} bytes, log says {hit.artifact_bytes:,} "
                             f"({_at(hit, 'artifact_bytes')})")
            continue
        partial = next((r for r in cands if _holds(r, value, tol)), None)
        if partial is not None:
            notes.append(f"seed {seed}: claimed {value} matches a non-final line in {partial.log}:{_holds(partial, value, tol)}")
            continue
        elsewhere = next((r for r in everyone if r not in cands and _holds(r, value, tol)), None)
        where = (f"; the claimed value is in {elsewhere.log}:{_holds(elsewhere, value, tol)}, {_header(elsewhere)}"
                 if elsewhere else "")
        if not cands:
            problems.append(f"seed {seed}: claimed {value} but no log for that seed{where}")
        else:
            r = cands[0]
            problems.append(f"seed {seed}: claimed {value}, its log says {_fmt(r.val_bpb)} ({_at(r, 'metric')}){where}")
    log_seeds = {r.seed for r in runs} | {r.filename_seed for r in runs}
    missing = [s for s in claimed_seeds(rs.submission) if s not in log_seeds and s not in per_seed]
    if missing:
        problems.append(f"{sub_name} lists seed(s) {missing} but there is no scored log for them")
    if claim is not None:
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
            hit = next((r for r in everyone if r.val_bpb is not None and abs(r.val_bpb - claim) <= tol), None)
            if hit is not None:
                notes.append(f"val_bpb {claim} found at {_at(hit, 'metric')} (mean of logs {mean:.8f})")
            elif not per_seed:
                problems.append(f"val_bpb {claim} matches no log line and not the mean of logs ({mean:.8f})")
    if problems:
        return "fail", "; ".join(problems) + (f" (ok: {'; '.join(notes)})" if notes else "")
    if minor:
        return "warn", "; ".join(minor) + f" (scores match: {'; '.join(notes)})"
    return "pass", "; ".join(notes)


def _loss_only_claim(rs: RunSet, sub_name: str, loss: float, runs: list[Run]):
    """A submission that claims a val_loss and no val_bpb: compared with the logs' mean val_loss, and with their
    mean val_bpb, which is what such a number often is (a bpb written under the wrong key)."""
    tol = max(rounding_tol(loss), 5e-5)            # a mean written by hand: rounded or cut, as mean_not_best allows
    mean_bpb, _ = mean_std([r.val_bpb for r in runs])
    losses = [r.val_loss for r in runs if r.val_loss is not None]
    mean_loss, _ = mean_std(losses) if len(losses) == len(runs) else (None, None)
    if mean_loss is not None and abs(mean_loss - loss) <= tol:
        return "pass", f"{sub_name} claims val_loss {loss} = mean val_loss of {len(runs)} log(s) (no val_bpb claimed)"
    if abs(mean_bpb - loss) <= tol:
        return "warn", (f"{sub_name} has no val_bpb; its val_loss {loss} is the mean val_bpb of {len(runs)} log(s) "
                        f"({mean_bpb:.8f}), not their mean val_loss ({_fmt(mean_loss)}): a bpb under the wrong key")
    return "fail", (f"{sub_name} claims val_loss {loss}: neither the mean val_loss ({_fmt(mean_loss)}) nor the mean "
                    f"val_bpb ({mean_bpb:.8f}) of {len(runs)} log(s)")


def check_final_lines_agree(rs: RunSet):
    """One run prints each final evaluation once, often twice (a rounded line and its `_exact` twin): all
    lines of one evaluation must agree to the precision of the less precise one. An edited line that no
    longer agrees with its twin or its duplicate is a fault the log itself shows."""
    fails, seen = [], 0
    for r in rs.runs + rs.extra_runs:
        groups: dict[str, list] = {}
        for m in r.metrics:
            if metric_tier(m.label) > 0 and math.isfinite(m.val_bpb):
                groups.setdefault(m.label.removesuffix("_exact"), []).append(m)
        for base, ms in groups.items():
            if len(ms) < 2:
                continue
            seen += 1
            for a, b in zip(ms, ms[1:]):
                tol = 0.5 * 10 ** -min(a.decimals, b.decimals) + 1e-9
                if abs(a.val_bpb - b.val_bpb) > tol:
                    fails.append(f"{r.log}:{a.line} {a.label} val_bpb {_fmt(a.val_bpb)} ≠ {r.log}:{b.line} {b.label} "
                                 f"val_bpb {_fmt(b.val_bpb)} (one evaluation, two final lines that disagree)")
    if fails:
        return "fail", "; ".join(fails)
    if not seen:
        return "skip", "no evaluation printed twice (no rounded/_exact pair or duplicate line to compare)"
    return "pass", f"{seen} evaluation(s) printed more than once: every pair agrees to its printed precision"


def check_mean_not_best(rs: RunSet):
    claim = claimed_bpb(rs.submission)
    runs = claim_runs(rs)
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


# ---- size and time -------------------------------------------------------------------------------
def _folder_code_bytes(rs: RunSet) -> tuple[int | None, str]:
    sub = rs.submission or {}
    for key in ("bytes_code", "code_bytes"):
        if isinstance(sub.get(key), int):
            return sub[key], f"{rs.submission_path.name}:{key}"
    if rs.script_path and rs.script_path.is_file():
        return rs.script_path.stat().st_size, rs.script_path.name
    return None, ""


def _has_size(r: Run) -> bool:
    return r.artifact_bytes is not None or r.model_bytes is not None


def _sized_runs(rs: RunSet) -> list[Run]:
    """The counted runs, and for a counted run whose log states no size (an evaluation-only rerun), the
    set-aside runs of its seed that do: the artifact that seed's score came from."""
    out = list(rs.runs)
    for r in rs.runs:
        if not _has_size(r) and r.seed is not None:
            out += [x for x in rs.extra_runs if x.seed == r.seed and _has_size(x)]
    return out


def _shipped_sizes(rs: RunSet) -> dict[int, str]:
    """Size in bytes -> name of every script the folder ships."""
    return {p.stat().st_size: p.name for p in shipped_scripts(rs)}


def _padding(r: Run, shipped: dict[int, str], main: int | None) -> int:
    """Bytes the shipped train_gpt.py adds over the code size the log counted in its total: the cap is on the
    code that is submitted, not the code that ran. Only where the log counted the plain file (a compressed count
    cannot be compared) and no shipped script has the logged size."""
    logged = r.script_bytes_logged
    if main is None or logged is None or r.code_bytes != logged or logged in shipped:
        return 0
    return max(0, main - logged)


def check_artifact_cap(rs: RunSet):
    over, ok = [], []
    code, code_src = _folder_code_bytes(rs)
    shipped = _shipped_sizes(rs)
    main = rs.script_path.stat().st_size if rs.script_path and rs.script_path.is_file() else None
    for r in _sized_runs(rs):
        padded = _padding(r, shipped, main)
        if r.artifact_bytes is not None and padded:
            total = r.artifact_bytes + padded
            where = (f"{_at(r, 'artifact_bytes')} + {padded:,} bytes: the shipped {rs.script_path.name} is {main:,} "
                     f"bytes, the log counted {r.script_bytes_logged:,} ({_at(r, 'script_bytes_logged')})")
        elif r.artifact_bytes is not None:
            total, where = r.artifact_bytes, _at(r, "artifact_bytes")
        elif r.model_bytes is not None and (r.code_bytes is not None or code is not None):
            c = r.code_bytes if r.code_bytes is not None else code
            total = r.model_bytes + c
            where = f"{_at(r, 'model_bytes')} + code {c} ({_at(r, 'code_bytes') if r.code_bytes is not None else code_src})"
        else:
            continue
        (over if total > ARTIFACT_CAP else ok).append((total, f"{total:,} bytes at {where}"))
    if over:
        return "fail", f"over the {ARTIFACT_CAP:,}-byte cap: " + "; ".join(t for _, t in over)
    if ok:
        return "pass", f"max {max(v for v, _ in ok):,} bytes ≤ {ARTIFACT_CAP:,}: " + "; ".join(t for _, t in ok)
    rounded = [(float(r.hints["artifact_mb"]), r) for r in rs.runs if r.hints.get("artifact_mb")]
    if rounded:
        mb, r = max(rounded, key=lambda t: t[0])
        detail = f"{mb:.2f} MB at {_at(r, 'artifact_mb')} (the log rounds to 0.01 MB, no byte count)"
        if (mb + 0.005) * 1e6 <= ARTIFACT_CAP:
            return "pass", detail + f" < {ARTIFACT_CAP:,} bytes"
        return "warn", detail + f": too close to the {ARTIFACT_CAP:,}-byte cap to tell"
    sub = rs.submission or {}
    claimed = [v.get("artifact_bytes") or v.get("bytes_total") for v in claimed_seed_results(sub).values()]
    claimed = [c for c in claimed if isinstance(c, int)]
    for key in ("bytes_total", "artifact_size_bytes", "artifact_bytes"):
        if isinstance(sub.get(key), int):
            claimed.append(sub[key])
    if claimed:
        worst = max(claimed)
        text = f"{rs.submission_path.name} claims up to {worst:,} bytes"
        if worst > ARTIFACT_CAP:
            return "fail", f"{text}: over the {ARTIFACT_CAP:,}-byte cap by its own account"
        if not rs.runs:
            return "skip", f"no logs; {text} (unverified)"
        return "warn", f"no size line in the logs; {text} (unverified)"
    return "skip", "no artifact size in logs or submission"


def _limit_verdict(worst: float, limit: float, detail: str):
    if worst <= limit:
        return "pass", detail + f" ≤ {limit / 1000:.0f} s"
    if worst <= limit + TIME_GRACE_MS:
        return "pass", detail + f": within one step of the {limit / 1000:.0f} s cap (wall-clock stop)"
    return "fail", detail + f" > {limit / 1000:.0f} s"


def check_train_time(rs: RunSet):
    track = track_of(rs)
    vals = [(r.train_time_ms, r) for r in rs.runs if r.train_time_ms is not None]
    if not vals:
        return "skip", "no training time in the logs"
    worst, wr = max(vals, key=lambda t: t[0])
    detail = f"max training time {worst / 1000:.1f} s at {_at(wr, 'train_time')} ({len(vals)} run(s))"
    if track.train_limit_ms is None:
        return "skip", detail + "; non-record track: no time limit"
    return _limit_verdict(worst, track.train_limit_ms, detail)


def _eval_passes(r: Run) -> list[tuple[str, float]]:
    """Every timed final evaluation a run printed (a label and its `_exact` twin counted once)."""
    seen: dict[str, float] = {}
    for m in r.metrics:
        if metric_tier(m.label) > 0 and m.eval_time_ms is not None:
            seen.setdefault(m.label.removesuffix("_exact"), m.eval_time_ms)
    return list(seen.items())


def check_eval_time(rs: RunSet):
    """The evaluation that produced the score (test-time training included) within the limit; a TTT score
    without a TTT timing, or evaluations that add up past the limit, are worth a look."""
    track = track_of(rs)
    runs = scored(rs.runs)
    timed = [r for r in runs if r.eval_time_ms is not None]
    untimed_ttt = [r for r in runs if r.eval_time_ms is None and r.metric and metric_tier(r.metric) == 3]
    if not timed and not untimed_ttt:
        return "skip", "no evaluation time in the logs"
    notes = []
    status, detail = "skip", ""
    if timed:
        worst = max(timed, key=lambda r: r.eval_time_ms)
        key = "total_eval_time" if worst.total_eval_time_ms is not None else "metric"
        kind = "test-time training included" if metric_tier(worst.metric) == 3 else "no test-time training"
        detail = (f"max evaluation time {worst.eval_time_ms / 1000:.1f} s at {_at(worst, key)} "
                  f"(`{worst.metric}`, {kind}; {len(timed)} run(s))")
        if track.eval_limit_ms is None:
            return "skip", detail + "; non-record track: no time limit"
        status, detail = _limit_verdict(worst.eval_time_ms, track.eval_limit_ms, detail)
        for r in timed:
            passes = _eval_passes(r)
            total = sum(ms for _, ms in passes)
            if track.eval_limit_ms and total > track.eval_limit_ms + TIME_GRACE_MS and r.total_eval_time_ms is None:
                notes.append(f"{r.log}: its evaluations add up to {total / 1000:.1f} s ("
                             + ", ".join(f"{label} {ms / 1000:.1f} s" for label, ms in passes)
                             + "); the limit covers the evaluation the script runs")
    elif not track.is_record:
        return "skip", "non-record track: no time limit"
    for r in untimed_ttt:
        others = _eval_passes(r)
        seen = f" (other evaluations: {', '.join(f'{l} {ms / 1000:.1f} s' for l, ms in others)})" if others else ""
        notes.append(f"{r.log}: the score is test-time training (`{r.metric}`, {_at(r, 'metric')}) but no line times "
                     f"it{seen}: the evaluation time is unverified")
    if status == "fail":
        return "fail", detail + ("; " + "; ".join(notes) if notes else "")
    if notes:
        return "warn", "; ".join(notes) + (f" ({detail})" if detail else "")
    return status, detail


# ---- scoring --------------------------------------------------------------------------------------
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
            if abs(dev) > BPB_TOLERANCE:
                fails.append(f"{r.log}: custom tokenizer; bytes/token {bpt:.5f} vs the script's val_bytes_per_token "
                             f"{ref:.5f} ({dev * 100:+.3f}%, {where}, {_at(r, 'val_bytes_per_token')})")
            else:
                oks.append(f"{r.log} {bpt:.5f} (custom)")
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
        cut = _whole_sequences(r, canon.val_tokens)
        tokens_off = (r.val_tokens is not None and canon.val_tokens is not None and r.val_tokens != canon.val_tokens
                      and cut is None)
        tok_note = (f"; scored on {r.val_tokens:,} validation tokens, canonical {canon.val_tokens:,} "
                    f"({_at(r, 'val_tokens')})") if tokens_off else ""
        msg = f"{r.log}: {name} bytes/token {bpt:.5f} vs canonical {canon.bytes_per_token:.5f} ({dev * 100:+.3f}%, {where}){tok_note}"
        export = known_export(name, r.val_tokens) if tokens_off else None
        partial = r.hints.get("partial_eval")
        canonical_set = r.val_tokens is not None and canon.val_tokens is not None and not tokens_off and not partial
        if partial:
            msg += f"; the score is from part of the validation set ({_at(r, 'partial_eval')}: {partial.strip()})"
        if abs(dev) <= tolerance(name):
            if tokens_off:
                warns.append(msg)
            else:
                oks.append(f"{r.log} {bpt:.5f}" + (f" (the canonical {canon.val_tokens:,} tokens cut to whole "
                                                   f"sequences of {cut:,}: {r.val_tokens:,})" if cut else ""))
        elif canonical_set:
            fails.append(f"{msg}; the log states the canonical validation set ({r.val_tokens:,} tokens, "
                         f"{_at(r, 'val_tokens')}), so bpb must follow from the loss and the canonical bytes/token: "
                         f"val_loss {r.val_loss} gives val_bpb {r.val_loss / (math.log(2) * canon.bytes_per_token):.8f}, "
                         f"the log says {r.val_bpb}")
        elif export is not None and abs(bpt / export.bytes_per_token - 1) <= tolerance(name):
            warns.append(f"{msg}: that is {export.description} (bytes/token {export.bytes_per_token:.5f}), "
                         "a different validation set, not a byte-counting bug")
        elif abs(dev) <= EXPORT_TOLERANCE:
            warns.append(f"{msg}: too small for the double-counted space (that adds 10% or more); a different or "
                         "partial validation set?")
        else:
            why = "; looks like the leading-space byte counted twice" if 0.08 <= dev <= 0.35 else ""
            fails.append(msg + why)
    if not (fails or warns or oks):
        return "skip", "no run with both val_loss and val_bpb"
    names = sorted({r.tokenizer for r in scored(rs.runs) if r.tokenizer}) or ["custom"]
    tol = max(tolerance(n) for n in names if n in TABLE) if any(n in TABLE for n in names) else BPB_TOLERANCE
    return _worst(fails, warns, ("pass", f"bytes/token within {tol * 100:.2f}% of the {'/'.join(names)} table: "
                                 + ", ".join(oks)))


_SEQ_LENS = tuple(2 ** k for k in range(6, 18))          # 64 .. 131072: the sequence lengths scripts use


def _whole_sequences(r: Run, canonical: int | None) -> int | None:
    """The sequence length L when a run scored the canonical validation tokens cut to whole sequences
    (`usable = ((N - 1) // L) * L`, the official loader), the run's own seq_len keys tried first; else None."""
    if r.val_tokens is None or canonical is None or r.val_tokens >= canonical:
        return None
    own = [int(v) for k, v in r.hparams.items() if "seq_len" in k and v.isdigit() and int(v) > 0]
    for L in dict.fromkeys(own + list(_SEQ_LENS)):
        if ((canonical - 1) // L) * L == r.val_tokens:
            return L
    return None


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


def _normalize_source(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _no_space(text: str) -> str:
    """The source with every run of whitespace removed and blank lines dropped: what is left when only
    indentation or spacing differ."""
    return "\n".join("".join(line.split()) for line in text.splitlines() if line.strip())


class _Shipped:
    """A script the folder ships, read once: bytes, sha256, normalised text (for comparing with the source a
    log embeds), and its lines without whitespace (to tell a whitespace-only difference)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.digest = sha256_bytes(self.data)
        self.norm = _normalize_source(self.data.decode("utf-8", errors="replace"))
        self._bare: str | None = None
        self.norm_sha16 = sha256_bytes((self.norm + "\n").encode())[:16]

    @property
    def bare(self) -> str:
        if self._bare is None:
            self._bare = _no_space(self.norm)
        return self._bare


def _first_difference(a: str, b: str) -> int:
    """1-based line of the first difference between two normalised sources."""
    la, lb = a.splitlines(), b.splitlines()
    return next((i + 1 for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)) + 1)


def check_provenance(rs: RunSet):
    """The script a log ran is one the folder ships: by the log's script_sha256, its embedded source or the
    hash of that source, compared with every Python file the folder ships (a folder may ship several: the
    log's own source says which one ran). A difference in whitespace alone is a warning; a difference
    in a run of the claim fails, in a side experiment it is a warning."""
    shipped = [_Shipped(p) for p in shipped_scripts(rs)]
    default = next((s for s in shipped if rs.script_path and s.path == rs.script_path), shipped[0] if shipped else None)
    fails, warns, oks, unverifiable = [], [], [], []
    frozen = (rs.batch or {}).get("script")
    if default and isinstance(frozen, dict) and isinstance(frozen.get("sha256"), str):
        if frozen["sha256"].lower() != default.digest:
            fails.append(f"batch.json script.sha256 {frozen['sha256'][:16]}… ≠ {default.path.name} {default.digest[:16]}… "
                         "(script changed after the run)")
    in_claim = {id(r) for r in claim_runs(rs)}
    for r in rs.runs:
        bad = fails if id(r) in in_claim or not rs.submission else warns
        side = "" if bad is fails else " (a run outside the claim)"
        if r.script_sha256:
            hit = next((s for s in shipped if s.digest == r.script_sha256), None)
            if not shipped:
                unverifiable.append(f"{_at(r, 'script_sha256')} script_sha256 {r.script_sha256[:16]}…")
            elif hit:
                oks.append(f"{_at(r, 'script_sha256')} script_sha256 matches {hit.path.name}")
            else:
                bad.append(f"{_at(r, 'script_sha256')} script_sha256 {r.script_sha256[:16]}… matches no shipped "
                           f"script ({', '.join(s.path.name for s in shipped)}){side}")
        elif r.source_text is not None:
            if not shipped:
                unverifiable.append(f"{_at(r, 'source')} embeds its source")
                continue
            norm = _normalize_source(r.source_text)
            hit = next((s for s in shipped if s.norm == norm), None)
            if hit:
                oks.append(f"{_at(r, 'source')} embedded source = {hit.path.name}")
                continue
            bare = _no_space(norm)
            spaced = next((s for s in shipped if s.bare == bare), None)
            if spaced:
                warns.append(f"{_at(r, 'source')} embedded source differs from {spaced.path.name} in whitespace only "
                             f"(first at line {_first_difference(norm, spaced.norm)} of the source){side}")
                continue
            lines = set(norm.splitlines())
            near = min(shipped, key=lambda s: len(lines.symmetric_difference(s.norm.splitlines())))
            bad.append(f"{_at(r, 'source')} embedded source differs from every shipped script (closest {near.path.name}, "
                       f"first at line {_first_difference(norm, near.norm)}){side}")
        elif r.source_sha16:
            hit = next((s for s in shipped if r.source_sha16 in (s.digest[:16], s.norm_sha16)), None)
            if not shipped:
                unverifiable.append(f"{_at(r, 'source')} embedded source sha256/16={r.source_sha16}")
            elif hit:
                oks.append(f"{_at(r, 'source')} embedded source hash matches {hit.path.name}")
            else:
                bad.append(f"{_at(r, 'source')} embedded source sha256/16={r.source_sha16} matches no shipped script "
                           f"({', '.join(s.path.name for s in shipped)}){side}")
    if fails:
        return "fail", "; ".join(fails + warns)
    if warns:
        return "warn", "; ".join(warns) + (f" (ok: {'; '.join(oks)})" if oks else "")
    if oks:
        return "pass", "; ".join(oks)
    if unverifiable:
        return "skip", "no shipped script to compare with: " + "; ".join(unverifiable[:4]) + (" …" if len(unverifiable) > 4 else "")
    return "skip", "no script_sha256 line or embedded source in the logs" + ("" if shipped else " and no shipped script")


# ---- one configuration, clean data, a clean script --------------------------------------------------
_PER_RUN_KEYS = {"seed", "s", "run_id", "run_name", "logfile", "log_file", "rank", "local_rank", "is_main_process"}
_EVAL_KEY = re.compile(r"^(?:ttt|eval|etlb|sliding|val_|phased|global_ttt|lora|temp)", re.I)


def _same_value(values: set[str]) -> bool:
    try:
        return len({float(v) for v in values}) <= 1
    except ValueError:
        return len(values) <= 1


def _script_identity(r: Run) -> str | None:
    return r.script_sha256[:16] if r.script_sha256 else r.source_sha16


def check_config(rs: RunSet):
    """All seeds of a claim come from one configuration: the same tokenizer, the same script, the same
    logged hyperparameters (seed, run id, log file and paths aside). The runs compared are the claim's
    (`claim_runs`); other logs in the folder (a study's side experiments) are left out."""
    runs = claim_runs(rs)
    if len(runs) < 2:
        return "skip", f"{len(runs)} scored run(s): nothing to compare"
    fails, warns = [], []
    toks = {r.tokenizer for r in runs if r.tokenizer}
    if len(toks) > 1:
        fails.append("the seeds use different tokenizers: " + ", ".join(f"{r.log} {r.tokenizer}" for r in runs))
    ids = {_script_identity(r) for r in runs if _script_identity(r)}
    if len(ids) > 1:
        warns.append("the seeds ran different scripts: " + ", ".join(
            f"{r.log} {_script_identity(r)}" for r in runs if _script_identity(r)))
    codes = {r.code_bytes for r in runs if r.code_bytes is not None}
    if len(codes) > 1 and len(ids) <= 1:
        warns.append("the seeds' code sizes differ (different script versions?): " + ", ".join(
            f"{r.code_bytes:,} B ({_at(r, 'code_bytes')})" for r in runs if r.code_bytes is not None))
    dumped = [r for r in runs if r.hparams]
    if dumped and len(dumped) < len(runs):
        warns.append("no hyperparameters logged in " + ", ".join(r.log for r in runs if not r.hparams))
    training, evaluation, partial, compared = [], [], [], 0
    for key in sorted(set().union(*(r.hparams for r in dumped)) if dumped else ()):
        if key in _PER_RUN_KEYS:
            continue
        vals = {r.log: r.hparams.get(key) for r in dumped}
        if any(v is not None and "/" in v for v in vals.values()):
            continue                                  # a path: differs from machine to machine
        compared += 1
        if None in vals.values():
            partial.append(key)
        present = {v for v in vals.values() if v is not None}
        if not _same_value(present):
            text = f"{key} = " + ", ".join(f"{v} ({log})" for log, v in vals.items() if v is not None)
            (evaluation if _EVAL_KEY.match(key) else training).append(text)
    if training:
        fails.append("hyperparameters differ between seeds: " + "; ".join(training))
    if evaluation:
        warns.append("evaluation settings differ between seeds: " + "; ".join(evaluation))
    if partial:
        missing = {r.log: [k for k in partial if k not in r.hparams] for r in dumped}
        warns.append("some logs list hyperparameters others do not (different script versions?): " + "; ".join(
            f"{log} lacks {', '.join(ks[:6])}{' …' if len(ks) > 6 else ''}" for log, ks in missing.items() if ks))
    if not dumped:
        return _worst(fails, warns, ("skip", f"{len(runs)} runs, no hyperparameters logged to compare"
                                     + (f" (same tokenizer {next(iter(toks))})" if toks else "")))
    return _worst(fails, warns, ("pass", f"{len(runs)} runs agree on {compared} logged hyperparameters (seed, run id "
                                 "and paths aside)" + (f", tokenizer {next(iter(toks))}" if toks else "")
                                 + (f", script {next(iter(ids))}" if ids else "")))


CASEOPS_LEAKY_TRAIN_SHARDS = 1499         # openai/parameter-golf#2127: prepare_caseops_data.py's default
CASEOPS_LEAKY_VAL_TOKENS = 9_660_000      # its 10,000-document validation split (about)


def check_data_overlap(rs: RunSet):
    """Known fingerprints of training data that overlaps the validation set (evidence: the log line)."""
    warns, facts = [], []
    for r in rs.runs:
        caseops = r.tokenizer == "sp8192_caseops"
        shards = r.hints.get("train_shards")
        if shards:
            facts.append(f"{r.log} train_shards {shards}")
        if r.val_tokens is not None:
            facts.append(f"{r.log} {r.val_tokens:,} validation tokens")
        if caseops and shards == str(CASEOPS_LEAKY_TRAIN_SHARDS):
            warns.append(f"{_at(r, 'train_shards')}: train_shards: {shards} is the fingerprint of CaseOps data prepared "
                         "locally with prepare_caseops_data.py's default --val-docs=10000: validation documents "
                         "10,000-49,999 are also in the training shards (openai/parameter-golf#2127)")
        if caseops and r.val_tokens is not None and abs(r.val_tokens / CASEOPS_LEAKY_VAL_TOKENS - 1) <= 0.03:
            warns.append(f"{_at(r, 'val_tokens')}: {r.val_tokens:,} validation tokens is the 10,000-document split of "
                         "that same default, not the 50,000-document validation set (openai/parameter-golf#2127)")
        train_files = r.hparams.get("train_files", "") + " " + r.hints.get("dataset", "")
        if "fineweb_val_" in train_files:
            warns.append(f"{r.log}: the training files are validation shards ({train_files.strip()})")
    if not facts and not warns:
        return "skip", "the logs state neither a training-shard count nor a validation size"
    return _worst([], warns, ("pass", "no known leak fingerprint: " + ", ".join(facts[:6])
                              + (" …" if len(facts) > 6 else "")))


def shipped_scripts(rs: RunSet) -> list[Path]:
    """The Python files a folder ships: a record's *.py files, a run directory's frozen script."""
    if rs.kind == "run":
        return [rs.script_path] if rs.script_path and rs.script_path.is_file() else []
    return sorted(p for p in rs.dir.glob("*.py") if p.is_file())


def check_script_static(rs: RunSet):
    scripts = shipped_scripts(rs)
    if not scripts:
        return "skip", "no training script shipped beside the logs"
    findings = scan_files(scripts, rs.dir)
    fails = [str(f) for f in findings if f.status == "fail"]
    warns = [str(f) for f in findings if f.status == "warn"]
    names = ", ".join(p.name for p in scripts)
    return _worst(fails, warns, ("pass", f"read {names}: no double-counted space in a byte table, no training on "
                                 "validation tokens before they are scored, no hashed n-gram key holding the target"))


# ---- the submission itself: files, hardware, the script that was shipped ----------------------------
def check_required_files(rs: RunSet):
    """A record folder holds README.md, submission.json, a training log and train_gpt.py (the rules'
    "Submission" section; the log is logs_present's). Missing on the record track: fail, named otherwise
    (submission_ternary.json, train_gpt_v5.py): a warning. On the non-record track, where studies ship their
    own file names, a missing file is a warning and another name is fine."""
    if rs.kind != "record":
        return "skip", "a run directory, not a submission folder (`pgolf submit` writes the record folder)"
    names = {p.name.lower(): p.name for p in rs.dir.iterdir() if p.is_file()}
    missing, notes = [], []
    if not any(n.startswith("readme") for n in names):
        missing.append("README.md")
    if "submission.json" not in names:
        other = rs.submission_path.name if rs.submission_path else None
        (notes if other else missing).append(f"submission.json (it ships {other})" if other else "submission.json")
    if "train_gpt.py" not in names:
        others = [p.name for p in shipped_scripts(rs)]
        (notes if others else missing).append(f"train_gpt.py (it ships {', '.join(others)})" if others else "train_gpt.py")
    record = track_of(rs).is_record
    if missing:
        text = f"{rs.dir.name} lacks {', '.join(missing)}" + (f"; named otherwise: {', '.join(notes)}" if notes else "")
        return ("fail", text) if record else ("warn", text + " (non-record track)")
    if notes:
        text = f"named otherwise than the rules ask: {', '.join(notes)}"
        return ("warn", text) if record else ("pass", text + " (non-record track: fine)")
    return "pass", "README.md, submission.json and train_gpt.py present (the logs: logs_present)"


def check_hardware(rs: RunSet):
    """The record track runs on 8xH100 SXM: the GPU names an nvidia-smi table (or a printed device name) shows
    in the log, and the world size the log states. Another GPU model, or more than 8, fails; an H100 that is
    not the SXM part is a warning; fewer GPUs is within the rules."""
    track = track_of(rs)
    fails, warns, facts = [], [], []
    for r in rs.runs:
        names = sorted(set(r.gpus.values()))
        count = r.world_size if r.world_size is not None else (len(r.gpus) or None)
        if not names and count is None:
            continue
        shown = f"{count or '?'}x {'/'.join(names) or 'GPU (model not shown)'}"
        where = _at(r, "gpus") if names else _at(r, "world_size")
        facts.append(f"{r.log}: {shown} ({where})")
        if not track.is_record:
            continue
        other = [n for n in names if RECORD_GPU not in n]
        if other:
            fails.append(f"{r.log} ran on {shown} ({where}): the record track runs on {RECORD_GPUS}x{RECORD_GPU} SXM")
        elif any(tag in n for n in names for tag in NOT_SXM):
            warns.append(f"{r.log} ran on {shown} ({where}): an {RECORD_GPU} but not the SXM part")
        if count is not None and count > RECORD_GPUS:
            fails.append(f"{r.log} used {count} GPUs ({_at(r, 'world_size')}): the record track allows {RECORD_GPUS}")
    if not facts:
        return "skip", "no GPU model or world size in the logs"
    if not track.is_record:
        return "skip", "non-record track: any hardware; " + "; ".join(facts[:4])
    return _worst(fails, warns, ("pass", "; ".join(facts[:4]) + (" …" if len(facts) > 4 else "")))


def check_script_size(rs: RunSet):
    """The script a folder ships is the one that ran, by size, where the log prints the size of its own file
    (`Code size: N bytes`, `Code size (uncompressed): N bytes`); most logs carry no hash or source, so this
    is the only link between them. Any shipped Python file of that size matches (a folder may ship several)."""
    shipped = _shipped_sizes(rs)
    runs = [r for r in rs.runs if r.script_bytes_logged is not None]
    if not runs:
        return "skip", "no log prints the size of its script"
    if not shipped:
        return "skip", "no shipped script to compare with the logged code size"
    warns, oks = [], []
    for r in runs:
        n = r.script_bytes_logged
        if n in shipped:
            oks.append(f"{_at(r, 'script_bytes_logged')} {n:,} B = {shipped[n]}")
        else:
            near = min(shipped, key=lambda size: abs(size - n))
            warns.append(f"{_at(r, 'script_bytes_logged')}: the script that ran was {n:,} bytes; no shipped script has "
                         f"that size (closest {shipped[near]}, {near:,} bytes, {near - n:+,})")
    if warns:
        return "warn", "; ".join(warns) + " (shipped script ≠ the one that ran, by size)"
    return "pass", "; ".join(oks[:4]) + (" …" if len(oks) > 4 else "")


def _timed_runs(rs: RunSet) -> list[Run]:
    """Counted runs with a training time, and for an evaluation-only rerun its seed's training log."""
    out = [r for r in rs.runs if r.train_time_ms is not None]
    for r in rs.runs:
        if r.train_time_ms is None and r.seed is not None:
            out += [x for x in rs.extra_runs if x.seed == r.seed and x.train_time_ms is not None]
    return out


def check_train_data_after_timer(rs: RunSet):
    """Training data read after the training timer stopped: a GPTQ calibration on training batches logged after
    the last training step. The rules forbid training-data access during evaluation, and calibration belongs
    in the 600 s training budget: training time + calibration time must fit it (with train_time's one-step
    grace of TIME_GRACE_MS, so that a calibration is judged as the training is). The maintainers accepted
    records that overrun it by seconds, so this is a warning with the evidence; the strict policy
    (`pgolf audit --strict`) makes it a failure."""
    track = track_of(rs)
    warns, oks = [], []
    for r in _timed_runs(rs):
        start = r.refs.get("calibration")
        if start is None or start < r.refs.get("train_time", 0):
            continue
        train_s = r.train_time_ms / 1000
        if r.calibration_s is None:
            warns.append(f"{r.log}:{start}: training-data calibration after the timer stopped at {train_s:.1f} s "
                         f"({_at(r, 'train_time')}); its duration is not logged")
            continue
        total = train_s + r.calibration_s
        text = (f"{r.log}: training stopped at {train_s:.1f} s ({_at(r, 'train_time')}), then a GPTQ calibration "
                f"on training data ({r.log}:{start}) took {r.calibration_s:.1f} s ({_at(r, 'calibration_time')}): "
                f"{total:.1f} s")
        limit = track.train_limit_ms
        if limit is not None and total * 1000 > limit + TIME_GRACE_MS:
            warns.append(text + f" > {limit / 1000:.0f} s training budget")
        else:
            oks.append(text + (f" ≤ {limit / 1000:.0f} s" if limit else ""))
    if not warns and not oks:
        return "skip", "no training-data read logged after the training timer"
    if not track.is_record:
        return "skip", "non-record track: no time limit; " + "; ".join((warns + oks)[:2])
    if warns:
        reads = calibration_reads(shipped_scripts(rs), rs.dir)
        shown = f"; the script shows the read: {reads[0]}" if reads else ""
        return "warn", "; ".join(warns) + shown + (f" (within: {len(oks)} run(s))" if oks else "")
    return "pass", "calibration inside the training budget: " + "; ".join(oks[:3]) + (" …" if len(oks) > 3 else "")


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
    "config_consistency": check_config,
    "data_overlap": check_data_overlap,
    "script_static": check_script_static,
    # issue 19 (ids are a contract: new checks go at the end)
    "final_lines_agree": check_final_lines_agree,
    "script_size": check_script_size,
    "required_files": check_required_files,
    "hardware": check_hardware,
    "train_data_after_timer": check_train_data_after_timer,
}
CHECK_IDS = tuple(CHECKS)            # fixed order: the audit JSON lists the checks in it


def audit(rs: RunSet, strict: bool = False) -> dict:
    """The audit JSON: dir, kind, policy, runs, claimed, summary, checks, verdict (fail if any check fails).
    `strict`: the written rules to the letter, where the maintainers accepted otherwise (rules.STRICT_CHECKS:
    their warnings become failures)."""
    checks = []
    for cid, fn in CHECKS.items():
        status, detail = fn(rs)
        if strict and status == "warn" and cid in STRICT_CHECKS:
            status, detail = "fail", detail + " (strict policy)"
        checks.append({"id": cid, "status": status, "detail": detail})
    return {
        "dir": str(rs.dir),
        "kind": rs.kind,
        "track": track_of(rs).name,
        "policy": "strict" if strict else "accepted",
        "runs": [run_row(r) for r in rs.runs],
        "claimed": {"val_bpb": claimed_bpb(rs.submission), "val_loss": claimed_loss(rs.submission),
                    "seeds": claimed_seeds(rs.submission)},
        "summary": summarize(rs.runs),
        "checks": checks,
        "verdict": "fail" if any(c["status"] == "fail" for c in checks) else "pass",
    }


def overall(result: dict) -> str:
    """pass / warn / fail for people: the JSON verdict, with `warn` when it passes with warnings."""
    statuses = {c["status"] for c in result["checks"]}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
