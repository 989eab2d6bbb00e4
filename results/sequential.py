"""Adaptive batches (issue 12): seeds run in waves, and after each wave ("look") the batch continues or stops.

At every look the policy's test is run exactly as `results.stats.significance` runs it, on all seeds so far.
The batch then
- stops for SUCCESS only when the test crosses an alpha-spending boundary: Lan–DeMets O'Brien–Fleming
  spending by default (little α spent early, most at the last look), Pocock-type on request, or no early
  success at all (`spending=None`: the last look is significance's own verdict at the policy's α);
- stops for FUTILITY when the conditional power, the chance that the remaining planned seeds still cross a
  boundary, is below a threshold (default 10%). It is computed under the CURRENT estimate of the candidate's
  mean and seed std (the sample mean and std so far) by drawing the remaining seeds and running the same
  scipy test on them (Monte-Carlo, fixed seed, standard error reported). Futility is non-binding: the success
  boundaries ignore it, so stopping for futility can only remove chances to claim success;
- stops at the MAXIMUM (the last planned look, or earlier when the runner says no more seeds will run).

Information. The cumulative α spent by look k is α(t_k), t_k the information fraction (inverse variance of
the compared difference, relative to the last look). One-sample test against a number: t = n / N. Against m
fixed baseline seeds the baseline's noise is shared by every look, the difference has variance σ²/n + σ_b²/m,
so t = (1/N + 1/m) / (1/n + 1/m) with σ_b = σ assumed (n / N would understate how much is known early).

Boundaries, normal theory. With jointly normal look statistics, corr(Z_j, Z_k) = √(t_j / t_k), the boundary
c_k solves P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = α(t_k) − α(t_{k−1}) (scipy.stats.
multivariate_normal); these are the published tables' numbers (3.710, 2.511, 1.993 for three equal looks at
one-sided 0.025) and are reported as `z_normal_theory`.

Boundaries on the t scale. With 2–12 seeds the t statistics are far from jointly normal: applying Φ(−c_k)
as a nominal-p threshold to them was measured (200,000 null batches) to give 0.261 instead of 0.25 for a
one-sample progression design at 3, 6, 8 seeds. So the thresholds actually applied are calibrated on the test
actually run: `NULL_DRAWS` batches are simulated under the null (candidate and baseline seeds i.i.d. normal
with equal std, true difference exactly at the margin; the t statistics do not depend on the mean or std),
the same scipy test gives each look's p, and look k's nominal-p threshold is set so that exactly α(t_k) of
the batches have crossed by look k, capped at the policy's α so that a success is always also a pass of
significance's own test at that look (the cap binds only where Welch is conservative, 3 seeds against 3;
what it leaves unspent carries to the next look). The thresholds tend to Φ(−c_k) as the seeds grow (tested),
and the stage-wise-ordering adjusted p comes from the same batches. Fixed random streams (one per seed
column) keep the thresholds of earlier looks unchanged when the looks after them change.

What is claimed: if the candidate's true mean is no better than the baseline's minus the margin, and both
sides' seeds are normal with the same std, the chance that the procedure ever declares success is at most
the policy's α, up to ±√(α(1−α)/NULL_DRAWS) of calibration error (checked on independent simulations in
tests/test_sequential.py), counted over new draws of the baseline's seeds too, as for significance's Welch
test. Futility only lowers it. After an early stop the nominal p is NOT a valid p-value; the p the design
allows is the stage-wise-ordering adjusted p, never below the nominal p (≤ α exactly when a boundary was
crossed). Not claimed: the mean at an early stop is biased toward lucky seeds (no unbiased estimate is
offered); with unequal stds on the two sides the calibration is approximate (candidate std twice the
baseline's, looks 2, 3, 4 against 3 seeds at nominal 0.25: 0.281, bench/adaptive_savings.py); the
conditional power is an estimate under the current data, not a guarantee. With `spending=None` the last look is significance's own
Welch test, whose actual size against only 3 baseline seeds exceeds its nominal α when the candidate has
many more seeds (8 against 3 at α = 0.01: 1.4%, measured under equal stds).

Planning (`simulate`, behind `pgolf plan` and bench/adaptive_savings.py). The chance that a candidate of a
given true mean succeeds is the chance that the whole procedure stops for success: the boundaries AND the
futility stop, which at borderline improvements takes 4-8 points of it (counting crossings alone overstates
it). `simulate` runs the procedure on many batches at once, with `decide`'s thresholds and its conditional
power computed from each batch's mean and std with the very draws `conditional_power` makes, so every batch
stops where and as `decide` would stop it (tests/test_sequential.py checks this batch by batch).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import optimize, special
from scipy import stats as sps

from results.errors import PgolfError
from results.power import p_values
from results.stats import POLICIES, as_sample, baseline_sample, significance

FUTILITY = 0.10
CONDITIONAL_POWER_DRAWS = 4000
NULL_DRAWS = 200_000                # null batches behind the t-scale thresholds
NULL_SEED = 20260429
Z_CLIP = 38.0                       # |z| beyond which the normal tail is 0 in double precision


def _obf(alpha: float, t: float) -> float:
    return float(2.0 * sps.norm.sf(sps.norm.isf(alpha / 2.0) / math.sqrt(t)))


def _pocock(alpha: float, t: float) -> float:
    return float(alpha * math.log1p((math.e - 1.0) * t))


SPENDING = {"obf": ("Lan–DeMets O'Brien–Fleming", _obf), "pocock": ("Lan–DeMets Pocock", _pocock)}


def spent(spending: str, alpha: float, t: float) -> float:
    """Cumulative one-sided α spent by information fraction t (0 at t <= 0, α at t >= 1)."""
    if t <= 0:
        return 0.0
    return alpha if t >= 1 else SPENDING[spending][1](alpha, t)


def information(looks: Sequence[int], max_seeds: int, n_baseline: int | None) -> tuple[float, ...]:
    """Information fraction at each look. `n_baseline` None: one-sample test (a number), fraction n / N;
    otherwise (1/N + 1/m) / (1/n + 1/m) for a Welch test against m fixed baseline seeds."""
    extra = 0.0 if n_baseline is None else 1.0 / n_baseline
    return tuple(min(1.0, (1.0 / max_seeds + extra) / (1.0 / n + extra)) for n in looks)


# ---------------------------------------------------------------- normal theory (published tables)

def _correlation(info: Sequence[float]) -> np.ndarray:
    t = np.asarray(info, dtype=float)
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


def _first_crossing_at_last(info: Sequence[float], earlier: Sequence[float], z: float, abseps: float) -> float:
    """P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ z) for the canonical joint normal, from scipy."""
    if not earlier:
        return float(sps.norm.sf(z))
    k = len(info)
    upper = np.array(list(earlier) + [np.inf])
    lower = np.array([-np.inf] * (k - 1) + [z])
    return float(sps.multivariate_normal.cdf(upper, cov=_correlation(info), lower_limit=lower,
                                             abseps=abseps, rng=np.random.default_rng(0)))


@lru_cache(maxsize=512)
def z_boundaries(info: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """Normal-theory success boundaries c_1..c_K for looks at these information fractions; +inf where a
    look has no α to spend."""
    bounds: list[float] = []
    for k, t in enumerate(info):
        before = spent(spending, alpha, info[k - 1]) if k else 0.0
        increment = spent(spending, alpha, t) - before
        if increment <= 1e-15:
            bounds.append(math.inf)
            continue
        hi = float(sps.norm.isf(increment))                 # P(Z_k >= c) alone: the root is below this
        if k == 0:
            bounds.append(hi)
            continue
        lo = float(sps.norm.isf(increment + before))         # ... and above this (Bonferroni)
        abseps = min(1e-7, increment * 1e-4)
        f = lambda c: _first_crossing_at_last(info[:k + 1], bounds, c, abseps) - increment
        bounds.append(hi if f(hi) >= 0 else float(optimize.brentq(f, lo, hi, xtol=1e-5)))
    return tuple(bounds)


# ---------------------------------------------------------------- the t scale: calibrated on the test

@lru_cache(maxsize=8)
def _null_p_values(looks: tuple[int, ...], n_baseline: int | None) -> np.ndarray:
    """p of the test at each look (rows) on NULL_DRAWS batches simulated under the null. One random stream
    per seed column, so a look's p-values do not depend on the looks planned after it."""
    def column(i: int) -> np.ndarray:
        return np.random.default_rng([NULL_SEED, i]).standard_normal(NULL_DRAWS)
    cand = np.column_stack([column(i) for i in range(looks[-1])])
    if n_baseline is None:
        base, test = np.zeros(1), "one-sample"
    else:
        base, test = np.column_stack([column(100_000 + j) for j in range(n_baseline)]), "welch"
    return np.vstack([p_values(cand[:, :n], base, test) for n in looks])


@dataclass(frozen=True)
class Calibration:
    """Nominal-p thresholds of the looks, and the null batches' state behind them (for adjusted p)."""
    thresholds: tuple[float, ...]
    crossed_before: tuple[float, ...]       # share of null batches that crossed before each look
    null_p: np.ndarray                      # (looks, NULL_DRAWS)
    alive: np.ndarray                       # (looks, NULL_DRAWS): not crossed before that look

    def stagewise_p(self, look: int, p: float) -> float:
        """Null chance of crossing before `look` (0-based) or reaching it with a p at most `p`."""
        return float(self.crossed_before[look] + np.mean(self.alive[look] & (self.null_p[look] <= p)))


@lru_cache(maxsize=16)
def calibrate(looks: tuple[int, ...], info: tuple[float, ...], n_baseline: int | None, alpha: float,
              spending: str) -> Calibration:
    """Thresholds such that round(α(t_k)·NULL_DRAWS) null batches have crossed by look k, each capped at
    the policy's α so that a success is always a pass of significance's own test at that look (the cap
    only binds where the Welch test is conservative, e.g. 3 seeds against 3; what it leaves unspent
    carries to the next look)."""
    null_p = _null_p_values(looks, n_baseline)
    alive = np.ones(NULL_DRAWS, dtype=bool)
    thresholds, crossed_before, alive_rows, crossed = [], [], [], 0
    for k, t in enumerate(info):
        crossed_before.append(crossed / NULL_DRAWS)
        alive_rows.append(alive.copy())
        need = round(spent(spending, alpha, t) * NULL_DRAWS) - crossed
        p_alive = np.sort(null_p[k][alive])
        if need <= 0:
            thresholds.append(0.0)
            continue
        threshold = 1.0 if need >= len(p_alive) else float((p_alive[need - 1] + p_alive[need]) / 2)
        threshold = min(threshold, alpha)      # never pass what significance itself would reject
        now = alive & (null_p[k] < threshold)
        crossed += int(now.sum())
        alive &= ~now
        thresholds.append(threshold)
    return Calibration(tuple(thresholds), tuple(crossed_before), null_p, np.vstack(alive_rows))


# ---------------------------------------------------------------- the design

@dataclass(frozen=True)
class Design:
    """Planned looks (cumulative seed counts, the last is the maximum), the policy whose test and α are
    used, the spending function for early success ("obf", "pocock" or None) and the futility threshold on
    conditional power (0 turns futility off)."""
    looks: tuple[int, ...]
    policy: str = "rule"
    spending: str | None = "obf"
    futility: float = FUTILITY

    def __post_init__(self):
        looks = tuple(self.looks)
        if not looks or any(isinstance(n, bool) or not isinstance(n, int) for n in looks):
            raise PgolfError(f"adaptive looks {self.looks!r}: need whole seed counts, e.g. (3, 6, 8)")
        if looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise PgolfError(f"adaptive looks {looks}: must increase and start at >= 2 seeds "
                             "(one seed cannot be tested)")
        if self.policy not in POLICIES:
            raise PgolfError(f"policy {self.policy!r}: unknown; use 'rule' or 'progression'")
        if self.spending is not None and self.spending not in SPENDING:
            raise PgolfError(f"spending {self.spending!r}: unknown; use 'obf', 'pocock' or none")
        if not 0.0 <= self.futility < 1.0:
            raise PgolfError(f"futility threshold {self.futility!r}: must be in [0, 1)")
        object.__setattr__(self, "looks", looks)

    @classmethod
    def waves(cls, min_seeds: int, max_seeds: int, wave: int | None = None, **kw) -> "Design":
        """Looks after min_seeds, then every `wave` more seeds (default: min_seeds), and at max_seeds."""
        wave = min_seeds if wave is None else wave
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (min_seeds, max_seeds, wave)) \
                or wave < 1 or max_seeds < min_seeds:
            raise PgolfError(f"adaptive seeds min={min_seeds!r} max={max_seeds!r} wave={wave!r}: "
                             "need whole numbers with wave >= 1 and min <= max")
        return cls(tuple(range(min_seeds, max_seeds, wave)) + (max_seeds,), **kw)

    @property
    def max_seeds(self) -> int:
        return self.looks[-1]

    @property
    def alpha(self) -> float:
        return POLICIES[self.policy]["alpha"]

    def rule(self) -> str:
        """The stopping rule in one sentence, for the spec echo and the report."""
        looks = ", ".join(map(str, self.looks))
        success = (f"success only across the {SPENDING[self.spending][0]} α-spending boundary "
                   f"(overall one-sided α = {self.alpha:g}, thresholds calibrated on the t-test)"
                   if self.spending else f"no early success (the last look tests at α = {self.alpha:g})")
        futility = (f"futility when the conditional power under the current estimate is below "
                    f"{self.futility:.0%} (non-binding)" if self.futility else "no futility stop")
        return f"looks at {looks} seeds; {success}; {futility}"

    def schedule(self, looks: Sequence[int], n_baseline: int | None, final: bool) -> "Schedule":
        """Boundaries for looks at these seed counts (`final`: the last of them is the last look)."""
        info = list(information(looks, self.max_seeds, n_baseline))
        if final:
            info[-1] = 1.0
        return Schedule(self, tuple(looks), tuple(info), n_baseline)


@dataclass(frozen=True)
class Schedule:
    """A design applied to actual looks: information, α spent, thresholds (nominal p) and z boundaries."""
    design: Design
    looks: tuple[int, ...]
    info: tuple[float, ...]
    n_baseline: int | None

    @property
    def calibration(self) -> Calibration | None:
        d = self.design
        return calibrate(self.looks, self.info, self.n_baseline, d.alpha, d.spending) if d.spending else None

    def thresholds(self) -> tuple[float, ...]:
        """Nominal one-sided p below which each look crosses (0 where no success is possible)."""
        if self.design.spending is None:
            return tuple(self.design.alpha if t >= 1.0 else 0.0 for t in self.info)
        return self.calibration.thresholds

    def alpha_spent(self) -> tuple[float, ...]:
        d = self.design
        if d.spending is None:
            return tuple(d.alpha if t >= 1.0 else 0.0 for t in self.info)
        return tuple(spent(d.spending, d.alpha, t) for t in self.info)

    def z_normal_theory(self) -> tuple[float | None, ...]:
        d = self.design
        if d.spending is None:
            return tuple(float(sps.norm.isf(d.alpha)) if t >= 1.0 else None for t in self.info)
        return tuple(None if math.isinf(c) else c for c in z_boundaries(self.info, d.alpha, d.spending))


def boundary_table(design: Design, baseline) -> list[dict]:
    """The planned looks' boundaries, to state up front: seeds, information, cumulative α, the nominal p
    threshold applied to the t-test, and the normal-theory z boundary."""
    base = baseline_sample(baseline)
    sched = design.schedule(design.looks, None if len(base.bpb) < 2 else len(base.bpb), final=True)
    return [{"look": k + 1, "n": n, "information": t, "alpha_spent": a, "p": p, "z_normal_theory": z}
            for k, (n, t, a, p, z) in enumerate(zip(sched.looks, sched.info, sched.alpha_spent(),
                                                    sched.thresholds(), sched.z_normal_theory()))]


# ---------------------------------------------------------------- the decision

@dataclass
class Decision:
    """What to do after a look, and what may be reported. `to_dict()` is JSON-ready."""
    action: str                        # "continue" | "stop_futility" | "stop_success" | "stop_max"
    look: int                          # 1-based
    n: int                             # candidate seeds tested at this look
    final: bool
    crossed: bool                      # the test crossed this look's success boundary
    p_nominal: float | None            # significance's p at this look (not a valid p after early looks)
    boundary: dict                     # p threshold, its z, t (at this look's df), df, z_normal_theory,
                                       # information, alpha_spent
    p_adjusted: float | None           # the p the design allows, when the batch stopped on the test
    p_report: str                      # that p-value in words
    conditional_power: float | None
    conditional_power_se: float | None
    success_chance: float | None       # from here, later futility stops included (conditional power ignores them)
    success_chance_se: float | None
    estimate: dict | None              # current mean and std (metric units) the conditional power assumed
    significance: dict
    rule: str
    sentence: str

    def to_dict(self) -> dict:
        return asdict(self)


def _z(p: float) -> float:
    return float(np.clip(sps.norm.isf(p), -Z_CLIP, Z_CLIP))


def conditional_power(observed: np.ndarray, shifted_baseline: np.ndarray, test: str,
                      future: Sequence[tuple[int, float]], draws: int = CONDITIONAL_POWER_DRAWS,
                      seed: int = 0) -> tuple[float, float]:
    """(probability, MC standard error) that the remaining seeds cross a later look's threshold, drawing them
    from N(mean, std²) of the seeds observed so far; `future` lists (cumulative seeds, nominal p threshold)."""
    mean, std = float(np.mean(observed)), float(np.std(observed, ddof=1))
    n, last = len(observed), future[-1][0]
    extra = np.random.default_rng(seed).normal(mean, std, size=(draws, last - n))
    crossed = np.zeros(draws, dtype=bool)
    for n_j, threshold in future:
        if threshold > 0:
            values = np.hstack([np.broadcast_to(observed, (draws, n)), extra[:, :n_j - n]])
            crossed |= p_values(values, shifted_baseline, test) < threshold
    rate = float(crossed.mean())
    return rate, math.sqrt(max(rate * (1 - rate), 1.0 / draws) / draws)


def success_chance(observed: np.ndarray, shifted_baseline: np.ndarray, test: str,
                   future: Sequence[tuple[int, float]], futility: float, draws: int = CONDITIONAL_POWER_DRAWS,
                   seed: int = 0) -> tuple[float, float]:
    """(probability, MC standard error) that the batch still ends in success, under the current estimate as
    `conditional_power`, but with the rest of the procedure run forward on each drawn path: a path that falls
    below the futility threshold at a later look stops there, as the runner would stop it. Equal to the
    conditional power when one look is left; otherwise never above it (the same draws: a path that succeeds
    here crosses a boundary there)."""
    mean, std = float(np.mean(observed)), float(np.std(observed, ddof=1))
    n, last = len(observed), future[-1][0]
    extra = np.random.default_rng(seed).normal(mean, std, size=(draws, last - n))
    alive, success = np.ones(draws, dtype=bool), np.zeros(draws, dtype=bool)
    for k, (n_j, threshold) in enumerate(future):
        values = np.hstack([np.broadcast_to(observed, (draws, n)), extra[:, :n_j - n]])
        if threshold > 0:
            crossed = alive & (p_values(values, shifted_baseline, test) < threshold)
            success |= crossed
            alive &= ~crossed
        if k < len(future) - 1 and futility > 0 and alive.any():
            alive[alive] = _conditional_power_many(values[alive], shifted_baseline, test, future[k + 1:]) >= futility
    rate = float(success.mean())
    return rate, math.sqrt(max(rate * (1 - rate), 1.0 / draws) / draws)


def decide(candidate, baseline, design: Design, looks: Sequence[int] | None = None, *,
           final: bool = False) -> Decision:
    """The decision after the look at all of `candidate`'s seeds so far (in the order they ran).

    `looks`: cumulative seed counts of every look so far, this one last (default: the planned looks below
    the current count, then this one), so thresholds already used stay as they were even when waves came
    out short. `final=True`: no more seeds will run (the last look spends what α is left).
    """
    cand = as_sample(candidate, "candidate")
    n = len(cand.bpb)
    looks = tuple([x for x in design.looks if x < n] + [n]) if looks is None else tuple(looks)
    if not looks or looks[-1] != n:
        raise PgolfError(f"looks {looks}: the last look must be the {n} seeds given")
    if looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise PgolfError(f"looks {looks}: must increase and start at >= 2 seeds")
    if n > design.max_seeds:
        raise PgolfError(f"{n} seeds given, but the design stops at {design.max_seeds}")
    final = final or n >= design.max_seeds
    base = baseline_sample(baseline)
    sig = significance(cand, base, design.policy)
    m = None if sig["test"] == "one-sample" else sig["n_baseline"]
    sched = design.schedule(looks, m, final)
    p, threshold = sig["p"], sched.thresholds()[-1]
    crossed = p is not None and p < threshold
    boundary = {"p": threshold, "z": None if threshold <= 0 else _z(threshold),
                "t": None if threshold <= 0 or sig["df"] is None else float(sps.t.ppf(threshold, sig["df"])),
                "df": sig["df"], "z_normal_theory": sched.z_normal_theory()[-1],
                "information": sched.info[-1], "alpha_spent": sched.alpha_spent()[-1]}

    cp = cp_se = estimate = chance = chance_se = None
    if crossed:
        action = "stop_success"
    elif final:
        action = "stop_max"
    else:
        action = "continue"
        metric = np.asarray(cand.loss if sig["metric"] == "val_loss" else cand.bpb, dtype=float)
        base_values = np.asarray(base.loss if sig["metric"] == "val_loss" else base.bpb, dtype=float)
        if design.futility > 0 and np.ptp(metric) > 0:
            future_looks = [x for x in design.looks if x > n]
            full = design.schedule(list(looks) + future_looks, m, final=True)
            future = list(zip(future_looks, full.thresholds()[len(looks):]))
            cp, cp_se = conditional_power(metric, base_values - sig["margin"], sig["test"], future)
            estimate = {"metric": sig["metric"], "mean": float(metric.mean()), "std": float(metric.std(ddof=1))}
            if cp < design.futility:
                action = "stop_futility"
            elif len(future) > 1:
                chance, chance_se = success_chance(metric, base_values - sig["margin"], sig["test"], future,
                                                   design.futility)
            else:
                chance, chance_se = cp, cp_se

    p_adjusted = None
    if action in ("stop_success", "stop_max") and p is not None:
        # never below the nominal p: the calibration may find the test conservative (Welch, 3 vs 3 seeds)
        # under equal stds, but a reported p stays what significance itself would print, or larger
        p_adjusted = max(p, sched.calibration.stagewise_p(len(looks) - 1, p)) if design.spending else p
    p_report = _p_report(action, p_adjusted, len(looks), design)
    decision = Decision(action=action, look=len(looks), n=n, final=final, crossed=crossed, p_nominal=p,
                        boundary=boundary, p_adjusted=p_adjusted, p_report=p_report,
                        conditional_power=cp, conditional_power_se=cp_se, success_chance=chance,
                        success_chance_se=chance_se, estimate=estimate,
                        significance=sig, rule=design.rule(), sentence="")
    decision.sentence = _sentence(decision, design)
    return decision


def _p_report(action: str, p_adjusted: float | None, look: int, design: Design) -> str:
    if action == "continue":
        return "no p-value yet: the batch continues (the nominal p is for monitoring only)"
    if action == "stop_futility":
        return "no p-value: stopped for futility (the nominal p is for information only)"
    if p_adjusted is None:
        return "no p-value: the test could not be computed"
    how = ("the fixed-sample p (interim looks could only stop for futility)" if design.spending is None
           else "stage-wise-ordering adjusted p")
    verdict = (f"crossed the boundary at look {look}, overall α = {design.alpha:g}" if action == "stop_success"
               else f"no boundary crossed, overall α = {design.alpha:g}")
    return f"{how} = {p_adjusted:.3g} ({verdict})"


def _sentence(d: Decision, design: Design) -> str:
    sig = d.significance
    unit = "nats" if sig["metric"] == "val_loss" else "bpb"
    against = (f"baseline − {sig['margin']:.6g} {unit}" if sig["margin"] else "the baseline (no margin)")
    head = (f"Look {d.look} ({d.n} of up to {design.max_seeds} seeds, information "
            f"{d.boundary['information']:.2f}): {sig['test']} one-sided t-test of {sig['metric']} against "
            f"{against}, {sig['n_baseline']} baseline value(s), policy {sig['policy']}")
    p = "n/a" if d.p_nominal is None else f"{d.p_nominal:.3g}"
    if d.boundary["p"] <= 0:
        bound = "no success boundary at this look"
    else:
        t = "" if d.boundary["t"] is None else f" ⇔ t < {d.boundary['t']:.3g} at df {d.boundary['df']:.3g}"
        bound = f"success boundary nominal p < {d.boundary['p']:.3g}{t}"
    text = f"{head}; {bound}; nominal p = {p} → {d.action}"
    if d.conditional_power is not None:
        e = d.estimate
        text += (f"; conditional power {d.conditional_power:.1%} (±{d.conditional_power_se:.2%} MC) under the "
                 f"current estimate (mean {e['mean']:.6f}, std {e['std']:.6f} {unit}), "
                 f"{'below' if d.action == 'stop_futility' else 'not below'} the futility threshold "
                 f"{design.futility:.0%}")
        if d.success_chance is not None:
            text += (f"; chance of success from here {d.success_chance:.1%} (±{d.success_chance_se:.2%} MC, same "
                     f"estimate, later futility stops included)")
    return f"{text}. Design: {d.rule}. {d.p_report[0].upper()}{d.p_report[1:]}."


# ---------------------------------------------------------------- the whole procedure, simulated

def _crosses(t: np.ndarray, df, threshold: float) -> np.ndarray:
    """p < threshold for one-sided ("less") t-test statistics t at df, p = P(T_df <= t), as scipy computes
    it. A scalar df compares t with the critical value; an array df (Welch) compares with the critical value
    interpolated on a df grid, then recomputes p exactly where t lies within the interpolation's error bound
    of it, so the answer is scipy's on every element (a few hundred exact evaluations instead of millions)."""
    if np.ndim(df) == 0:
        return t < special.stdtrit(float(df), threshold)
    lo, hi = float(np.min(df)), float(np.max(df))
    if hi - lo < 1e-12:
        return t < special.stdtrit(lo, threshold)
    grid = np.linspace(lo, hi, 513)
    crit = special.stdtrit(grid, threshold)
    mid = (grid[:-1] + grid[1:]) / 2
    band = 4 * float(np.max(np.abs(special.stdtrit(mid, threshold) - (crit[:-1] + crit[1:]) / 2))) + 1e-9
    gap = t - np.interp(df, grid, crit)
    out = gap < 0
    near = np.abs(gap) <= band
    if near.any():
        out[near] = special.stdtr(df[near], t[near]) < threshold
    return out


def _conditional_power_many(observed: np.ndarray, shifted_baseline: np.ndarray, test: str,
                            future: Sequence[tuple[int, float]], draws: int = CONDITIONAL_POWER_DRAWS,
                            seed: int = 0, chunk_elements: int = 2_000_000) -> np.ndarray:
    """`conditional_power` for each row of `observed` (batches × n), with the very random stream it uses.

    conditional_power draws the remaining seeds as mean + std·Z (Z from default_rng(seed), the same for
    every call), so a look at n_j seeds sees mean m + s·ΣZ/n_j and variance s²·((n − 1) + ΣZ² − (ΣZ)²/n_j)
    / (n_j − 1): the t statistic of every draw follows from the row's (m, s) and Z's sums, without building
    the values (tests/test_sequential.py checks it against conditional_power row by row)."""
    n = observed.shape[1]
    m = observed.mean(axis=1)[:, None]
    s = observed.std(axis=1, ddof=1)[:, None]
    z = np.random.default_rng(seed).standard_normal((draws, future[-1][0] - n))
    b = np.asarray(shifted_baseline, dtype=float)
    b = np.broadcast_to(b, (len(observed), b.shape[-1])) if b.ndim == 1 else b    # one baseline, or one per row
    m_b = b.shape[1]
    mb = b.mean(axis=1)[:, None]
    vb = b.var(axis=1, ddof=1)[:, None] / m_b if test == "welch" else np.zeros_like(mb)
    looks = []
    for n_j, threshold in future:
        if threshold > 0:
            a = z[:, :n_j - n].sum(axis=1)
            looks.append((n_j, threshold, a / n_j, ((n - 1) + (z[:, :n_j - n] ** 2).sum(axis=1) - a * a / n_j)
                          / (n_j - 1)))
    out = np.empty(len(observed))
    step = max(1, chunk_elements // draws)
    for i in range(0, len(observed), step):
        mi, si, mbi, vbi = m[i:i + step], s[i:i + step], mb[i:i + step], vb[i:i + step]
        crossed = np.zeros((len(mi), draws), dtype=bool)
        for n_j, threshold, a, c in looks:
            var = si * si * c[None, :]
            if test == "one-sample":
                crossed |= _crosses((mi + si * a[None, :] - mbi) / np.sqrt(var / n_j), n_j - 1, threshold)
            else:
                vc = var / n_j
                df = (vc + vbi) ** 2 / (vc * vc / (n_j - 1) + vbi * vbi / (m_b - 1))
                crossed |= _crosses((mi + si * a[None, :] - mbi) / np.sqrt(vc + vbi), df, threshold)
        out[i:i + step] = crossed.mean(axis=1)
    return out


def simulate(design: Design, shifted_baseline: np.ndarray, test: str, mean: float, std: float,
             batches: int = 20_000, seed: int = 12) -> dict:
    """The whole procedure on `batches` simulated batches (candidate seeds i.i.d. N(mean, std²) in the
    metric), exactly as `decide` runs it at the planned looks: the calibrated success boundaries, then the
    futility stop on the conditional power (same draws, same random stream). Per look: the share that stop
    for success, for futility, and at the maximum; the largest Monte-Carlo standard error of those shares
    and of the success chance ("se"); and each batch's action and look ("action", "look", for checks).
    `shifted_baseline`: the baseline's values minus the margin (one value: the one-sample test), or one
    such row per batch (batches × m) to redraw the baseline with every batch."""
    b = np.asarray(shifted_baseline, dtype=float)
    n_baseline = None if test == "one-sample" else b.shape[-1]
    thresholds = design.schedule(design.looks, n_baseline, final=True).thresholds()
    values = np.random.default_rng(seed).normal(mean, std, size=(batches, design.max_seeds))
    alive = np.ones(batches, dtype=bool)
    action, stopped_at = np.full(batches, "", dtype=object), np.zeros(batches, dtype=int)
    looks = []
    for k, (n, threshold) in enumerate(zip(design.looks, thresholds)):
        success = alive & (p_values(values[:, :n], b, test) < threshold) if threshold > 0 else np.zeros_like(alive)
        last = k == len(design.looks) - 1
        futility = np.zeros_like(alive)
        if not last and design.futility > 0:
            going = alive & ~success
            future = list(zip(design.looks[k + 1:], thresholds[k + 1:]))
            rows = b[going] if b.ndim == 2 else b
            futility[going] = _conditional_power_many(values[going, :n], rows, test, future) < design.futility
        at_max = alive & ~success if last else np.zeros_like(alive)
        looks.append({"n": n, "success": float(success.mean()), "futility": float(futility.mean()),
                      "max": float(at_max.mean())})
        for name, stop in (("stop_success", success), ("stop_futility", futility), ("stop_max", at_max)):
            action[stop], stopped_at[stop] = name, k + 1
        alive &= ~(success | futility)
    rates = [v for l in looks for v in (l["success"], l["futility"])] + [sum(l["success"] for l in looks)]
    se = max(math.sqrt(max(r * (1 - r), 1.0 / batches) / batches) for r in rates)
    return {"looks": looks, "p_success": sum(l["success"] for l in looks), "batches": batches, "se": se,
            "action": action, "look": stopped_at}
