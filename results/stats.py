"""Significance of a candidate's per-seed scores against a baseline, with scipy.stats.

The conventions (policies, margins, tests) are written out in docs/CHALLENGE.md, "Statistics".

Two policies:
- `rule` (official README): beat the baseline by >= 0.005 nats with p < 0.01. Welch one-sided against the
  baseline's seeds shifted down by the margin; a one-sample t-test against `baseline - margin` when the
  baseline is a single number (or a record with one seed).
- `progression` (maintainers' practice since April 2026): Welch one-sided, no margin, p < 0.25.

The comparison is in nats (val_loss) when both sides share a tokenizer and report val_loss; otherwise in
bpb, the 0.005-nat margin converted with the candidate's bytes/token: margin_bpb = 0.005 / (ln2 * bpt).
One rule when the candidate's bytes/token is unknown (bare bpb values, no tokenizer), here and in
`pgolf plan` (`assumed_tokenizer`): the baseline's tokenizer / bytes per token, else sp8192 (the reference
payload's and the current records' tokenizer), said in a note; never 0.005 *bpb* unconverted.
Degenerate inputs (one candidate seed, zero variance) give an honest dict, never an exception.
Welch's test is approximate: with unequal seed counts its real false-positive rate drifts from α (8
candidate seeds against a record's 3 pass a no-better candidate 1.38% of the time at α = 0.01). When the
drift makes the test easier to pass, the result says so in a note, with the rate simulated for those counts.
The one-sample test against a single baseline value treats that value as exact. When it is itself one
seed's score it is as noisy as a candidate seed, and a candidate no better than it passes far more often than
α (3.7% with 3 candidate seeds, 17.5% with 8, at α = 0.01): the result says so in a note, simulated for the
candidate's seed count under that assumption (the value is one seed's score, both spreads equal).
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats as sps

from results import claims
from results.errors import PgolfError
from results.load import load
from results.tokenizers import TABLE
from results.types import Run, RunSet

MARGIN_NATS = 0.005
LN2 = math.log(2.0)
BPT_TOLERANCE = 5e-4          # same bytes/token within 0.05% = same tokenizer and validation set
POLICIES = {
    "rule": {"alpha": 0.01, "margin_nats": MARGIN_NATS},
    "progression": {"alpha": 0.25, "margin_nats": 0.0},
}


@dataclass
class Sample:
    """Per-seed scores of one side of a comparison; `loss` is None unless every seed has val_loss."""
    label: str
    bpb: list[float]
    loss: list[float] | None = None
    seeds: list = field(default_factory=list)
    tokenizer: str | None = None
    bytes_per_token: float | None = None
    notes: list[str] = field(default_factory=list)
    number: bool = False          # the baseline was given as one bpb number


def _finite(values: Iterable, what: str) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise PgolfError(f"{what}: value {v!r} is not a number; fix or drop that seed") from None
        if not math.isfinite(f):
            raise PgolfError(f"{what}: value {v!r} is not finite (NaN/inf in a log or submission.json); "
                             "fix or drop that seed")
        out.append(f)
    return out


def _common(values: list[str | None]) -> str | None:
    known = {v for v in values if v}
    return known.pop() if len(known) == 1 else None


def sample_from_runs(runs: Iterable[Run], label: str) -> Sample:
    """Scored runs (val_bpb known) -> Sample; val_loss only when every scored run has it."""
    scored = [r for r in runs if r.val_bpb is not None]
    for r in scored:
        for key in ("val_bpb", "val_loss"):
            v = getattr(r, key)
            if v is not None and not math.isfinite(v):
                raise PgolfError(f"{label}: {r.log}: {key} is {v} (seed {r.seed}); a diverged seed cannot be "
                                 "tested: rerun it or drop it from the folder")
    if not scored:
        raise PgolfError(f"{label}: no scored run (no final val_bpb line parsed); check the logs")
    bpb = _finite([r.val_bpb for r in scored], f"{label} val_bpb")
    loss = None
    if all(r.val_loss is not None for r in scored):
        loss = _finite([r.val_loss for r in scored], f"{label} val_loss")
    bpts = [r.bytes_per_token for r in scored if r.bytes_per_token]
    if not bpts and loss:
        bpts = [lo / (LN2 * b) for lo, b in zip(loss, bpb) if b > 0]
    return Sample(label=label, bpb=bpb, loss=loss, seeds=[r.seed for r in scored],
                  tokenizer=_common([r.tokenizer for r in scored]),
                  bytes_per_token=float(np.mean(bpts)) if bpts else None)


def sample_from_values(values: Iterable, label: str = "candidate", *, loss: Iterable | None = None,
                       tokenizer: str | None = None, bytes_per_token: float | None = None) -> Sample:
    bpb = _finite(values, f"{label} val_bpb")
    lo = _finite(loss, f"{label} val_loss") if loss is not None else None
    if lo is not None and len(lo) != len(bpb):
        raise PgolfError(f"{label}: {len(lo)} val_loss values for {len(bpb)} val_bpb values")
    if bytes_per_token is None and lo:
        bytes_per_token = float(np.mean([a / (LN2 * b) for a, b in zip(lo, bpb)]))
    return Sample(label=label, bpb=bpb, loss=lo, tokenizer=tokenizer, bytes_per_token=bytes_per_token)


def as_sample(obj, label: str = "candidate") -> Sample:
    if isinstance(obj, Sample):
        return obj
    if isinstance(obj, RunSet):
        return sample_from_runs(obj.runs, label)
    obj = list(obj)
    if obj and all(isinstance(r, Run) for r in obj):
        return sample_from_runs(obj, label)
    return sample_from_values(obj, label)


# ---------------------------------------------------------------- baselines

def sample_from_submission(path: Path) -> Sample:
    """Per-seed scores from a submission.json in any of the published layouts (results.claims); when it
    has none, its one top-level claim (then the baseline is that one number)."""
    path = Path(path)
    d = claims.read(path, "baseline ")
    rows = [(seed, res["val_bpb"], res.get("val_loss")) for seed, res in claims.seed_claims(d)
            if res.get("val_bpb") is not None]
    notes = []
    if not rows:
        top = claims.claimed_bpb(d)
        if top is None:
            raise PgolfError(f"baseline {path}: no val_bpb (top-level or per seed) found; "
                             "pass the record folder or a bpb number instead")
        rows = [(d.get("seed"), top, claims.claimed_loss(d))]
        notes.append(f"{path.name} has no per-seed scores: its single claimed value is the baseline")
    bpb = _finite([r[1] for r in rows], f"baseline {path} val_bpb")
    loss = None
    if all(r[2] is not None for r in rows):
        loss = _finite([r[2] for r in rows], f"baseline {path} val_loss")
    s = sample_from_values(bpb, str(path), loss=loss, tokenizer=claims.tokenizer_hint(d))
    s.seeds = [r[0] for r in rows]
    s.notes += notes
    return s


def baseline_sample(ref) -> Sample:
    """A baseline reference -> Sample: a number (bpb), a record/run folder, a submission.json, or values/runs."""
    if isinstance(ref, Sample):
        return ref
    if isinstance(ref, (RunSet, list, tuple)):
        s = as_sample(ref, "baseline")
        if isinstance(ref, RunSet):
            s.label = str(ref.dir)
        return s
    if isinstance(ref, (int, float)) and not isinstance(ref, bool):
        s = sample_from_values([ref], f"{float(ref)!r} bpb")
        s.number = True
        return s
    text = str(ref).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        rs = load(path)
        try:
            return sample_from_runs(rs.runs, str(path))
        except PgolfError:
            if rs.submission_path is not None:
                return sample_from_submission(Path(rs.submission_path))
            raise PgolfError(f"baseline {path}: no scored log and no submission.json; "
                             "pass another record folder or a bpb number") from None
    if path.is_file():
        return sample_from_submission(path)
    try:
        value = float(text)
    except ValueError:
        raise PgolfError(f"baseline {text!r}: no such file or folder, and not a number; "
                         "pass a record folder, a submission.json or a bpb value like 1.2244") from None
    if not math.isfinite(value) or value <= 0:
        raise PgolfError(f"baseline {text!r}: a bpb baseline must be a positive finite number")
    s = sample_from_values([value], f"{value!r} bpb")
    s.number = True
    return s


# ---------------------------------------------------------------- the test

def welch_null_pvalues(n: int, n_baseline: int, draws: int = 100_000, seed: int = 0) -> np.ndarray:
    """One-sided Welch p-values of `draws` null batches (both sides N(0, 1): no true difference)."""
    rng = np.random.default_rng(seed)
    candidate = rng.normal(0.0, 1.0, (draws, n))
    baseline = rng.normal(0.0, 1.0, (draws, n_baseline))
    return sps.ttest_ind(candidate, baseline, axis=1, equal_var=False, alternative="less").pvalue


@lru_cache(maxsize=64)
def welch_real_alpha(n: int, n_baseline: int, alpha: float, draws: int = 100_000) -> float:
    """The share of null batches Welch passes at `alpha` with these seed counts (Monte Carlo, fixed seed:
    ±0.03 points at α = 0.01 with the default draws)."""
    return float(np.mean(welch_null_pvalues(n, n_baseline, draws) < alpha))


@lru_cache(maxsize=64)
def one_sample_real_alpha(n: int, alpha: float, draws: int = 100_000) -> float:
    """The share of null batches the one-sample test passes at `alpha` when the baseline value it treats as
    exact is itself one draw of the same normal as the candidate's n seeds (a one-seed record's score):
    Monte Carlo, fixed seed, ±0.06 points at 3.7% with the default draws."""
    rng = np.random.default_rng(0)
    diff = rng.normal(0.0, 1.0, (draws, n)) - rng.normal(0.0, 1.0, (draws, 1))
    return float(np.mean(sps.ttest_1samp(diff, 0.0, axis=1, alternative="less").pvalue < alpha))


DEFAULT_TOKENIZER = "sp8192"          # the reference payload's and the current records' tokenizer


def assumed_tokenizer(base: Sample) -> tuple[str | None, float | None, str]:
    """(tokenizer, bytes per token, note) assumed for a candidate whose bytes/token is unknown: the
    baseline's when it states them (or names a tokenizer of known bytes/token), else sp8192's. The one rule behind significance's margin and `pgolf plan`'s."""
    bpt = base.bytes_per_token or (TABLE[base.tokenizer].bytes_per_token if base.tokenizer in TABLE else None)
    if bpt:
        name = base.tokenizer or f"{bpt:.5f} bytes/token"
        return base.tokenizer, bpt, (f"candidate bytes/token unknown: assumed the baseline's ({name}); pass the "
                                     "tokenizer or bytes/token if yours differs")
    canon = TABLE[DEFAULT_TOKENIZER]
    return DEFAULT_TOKENIZER, canon.bytes_per_token, (
        f"candidate tokenizer assumed {DEFAULT_TOKENIZER} ({canon.bytes_per_token} bytes/token; neither side "
        "names one); pass the tokenizer or bytes/token if yours differs")


def _same_tokenizer(a: Sample, b: Sample) -> bool:
    """Same tokenizer and validation set: names agree (when both known) and bytes/token agree (when both
    known; a custom tokenizer may carry a canonical name). Unknown on both counts -> not the same."""
    if a.tokenizer and b.tokenizer and a.tokenizer != b.tokenizer:
        return False
    if a.bytes_per_token and b.bytes_per_token:
        return abs(a.bytes_per_token / b.bytes_per_token - 1) <= BPT_TOLERANCE
    return bool(a.tokenizer and a.tokenizer == b.tokenizer)


def _num(x) -> float | None:
    """JSON-safe float: None for NaN; infinities kept out of JSON by the caller's note."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def significance(candidate, baseline, policy: str = "rule", *, margin_bpb: float | None = None,
                 baseline_label: str | None = None) -> dict:
    """The report's "significance" dict (docs/CHALLENGE.md) for `candidate` (RunSet, runs, Sample or bpb values) vs `baseline`.

    `margin_bpb` overrides the margin in bpb (the early records subtracted 0.005 *bpb* from a number);
    it forces the bpb comparison. Extra keys: mean, baseline_mean, margin, threshold, notes.
    """
    if policy not in POLICIES:
        raise PgolfError(f"policy {policy!r}: unknown; use 'rule' or 'progression'")
    cand = as_sample(candidate, "candidate")
    base = baseline_sample(baseline)
    if cand.bytes_per_token is None and cand.tokenizer:
        if cand.tokenizer in TABLE and not TABLE[cand.tokenizer].approx:
            cand.bytes_per_token = TABLE[cand.tokenizer].bytes_per_token
    alpha = POLICIES[policy]["alpha"]
    margin_nats = POLICIES[policy]["margin_nats"]
    notes = list(base.notes)

    if margin_bpb is None and cand.loss and base.loss and _same_tokenizer(cand, base):
        metric, c, b, margin = "val_loss", cand.loss, base.loss, margin_nats
    else:
        metric, c, b = "val_bpb", cand.bpb, base.bpb
        if margin_bpb is not None:
            margin = float(margin_bpb)
            margin_nats = margin * LN2 * cand.bytes_per_token if cand.bytes_per_token else None
            notes.append(f"margin given in bpb ({margin:g}), not converted from nats")
        elif margin_nats == 0:
            margin = 0.0
        else:
            bpt, whose = cand.bytes_per_token, "the candidate's"
            if bpt is None:
                _, bpt, assumed = assumed_tokenizer(base)
                notes.append(assumed)
                whose = "the assumed"
            margin = margin_nats / (LN2 * bpt)
            why = ("the baseline is a bpb number" if base.number else "different tokenizers" if cand.loss and base.loss
                   else "val_loss missing on one side")
            notes.append(f"compared in bpb ({why}); "
                         f"margin {margin_nats} nats = {margin:.6f} bpb at {whose} {bpt:.5f} bytes/token")

    out = {"policy": policy, "test": "none", "baseline": baseline_label or base.label,
           "n": len(c), "n_baseline": len(b), "margin_nats": margin_nats, "metric": metric,
           "t": None, "df": None, "p": None, "alpha": alpha, "passes": False,
           "mean": float(np.mean(c)), "baseline_mean": float(np.mean(b)), "margin": margin,
           "threshold": float(np.mean(b)) - margin, "notes": notes}
    if len(c) < 2:
        notes.append(f"n={len(c)} candidate seed(s): no variance estimate, no test; run at least 3 seeds")
        return out

    c_arr, b_arr = np.asarray(c), np.asarray(b) - margin
    one_sample = len(b) < 2
    out["test"] = "one-sample" if one_sample else "welch"
    if one_sample and not base.number and not base.notes:
        notes.append("baseline has one value: one-sample t-test against it")
    if one_sample:
        real = one_sample_real_alpha(len(c), alpha)
        if real > alpha * 1.1:
            notes.append(f"the one-sample test treats the baseline value as exact: if it is one seed's score "
                         f"(as noisy as a candidate seed), a candidate no better than it passes {real:.1%} of "
                         f"the time with {len(c)} seeds at α = {alpha} (simulated), not {alpha:.0%}; compare "
                         "against the record's per-seed scores (Welch) when it has them")
    df = len(c) - 1 if one_sample else None
    if np.ptp(c_arr) == 0 and np.ptp(b_arr) == 0:       # scipy would return nan: decide by the sign
        diff = float(np.mean(c_arr) - np.mean(b_arr))
        t = -math.inf if diff < 0 else math.inf if diff > 0 else math.nan
        p = 0.0 if diff < 0 else 1.0 if diff > 0 else 0.5
        notes.append(f"zero variance (identical seeds): t = {t}; p = {p:g} from the sign of the difference "
                     f"({diff:+.6g}); identical scores usually mean the seeds did not vary")
        out.update(t=None, df=_num(df), p=p, passes=bool(p < alpha))
        return out
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # "nearly identical data": we report it anyway
        if one_sample:
            res = sps.ttest_1samp(c_arr, b_arr[0], alternative="less")
        else:
            res = sps.ttest_ind(c_arr, b_arr, equal_var=False, alternative="less")
            df = getattr(res, "df", None)
    t, p = float(res.statistic), float(res.pvalue)
    out.update(t=_num(t), df=_num(df), p=_num(p), passes=bool(math.isfinite(p) and p < alpha))
    if not one_sample and len(c) != len(b):
        real = welch_real_alpha(len(c), len(b), alpha)
        if real > alpha * 1.1:
            notes.append(f"Welch with {len(c)} vs {len(b)} seeds is approximate: it passes a candidate no "
                         f"better than the baseline {real:.2%} of the time at α = {alpha} (simulated, "
                         f"equal spreads), more than the nominal {alpha:.0%}")
    return out


def _short(label: str) -> str:
    """A baseline label for prose: the folder/file name of a path, the number as given otherwise."""
    if "/" not in label:
        return label
    p = Path(label)
    return f"{p.parent.name}/{p.name}" if p.suffix == ".json" else p.name


def sentence(sig: dict | None) -> str:
    """One line for humans: what was compared, how, and the verdict."""
    if sig is None:
        return "No baseline given: significance not tested (pass --baseline, or set [baseline] in the job spec)."
    unit = "nats" if sig["metric"] == "val_loss" else "bpb"
    head = (f"{sig['n']} seed(s), mean {sig['metric']} {sig['mean']:.6f} vs baseline {_short(str(sig['baseline']))} "
            f"({sig['n_baseline']} value(s), mean {sig['baseline_mean']:.6f})")
    if sig["test"] == "none":
        return f"{head}: not tested ({'; '.join(sig['notes'][-1:])})."
    t = ("-inf" if sig["p"] == 0 else "+inf") if sig["t"] is None else f"{sig['t']:.2f}"
    df = "" if sig["df"] is None else f", df = {sig['df']:.2f}"
    verdict = "PASSES" if sig["passes"] else "does not pass"
    against = f"baseline − {sig['margin']:.6g} {unit}" if sig["margin"] else "the baseline (no margin)"
    return (f"{head}: {sig['test']} one-sided t-test against {against} "
            f"(policy {sig['policy']}): t = {t}{df}, p = {_fmt_p(sig['p'])} → {verdict} at α = {sig['alpha']}.")


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"
