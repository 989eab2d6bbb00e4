"""Power of a claim before paying for it (issue 12, the core of `pgolf plan`), and what its seeds cost.

Power here means: the probability that the policy's test passes, exactly as `results.stats.significance`
runs it, when n new candidate seeds are drawn from N(baseline mean − improvement, std²) and tested against the
baseline's ACTUAL seeds (held fixed, not redrawn) or against its single number. The metric and the margin
are not re-derived here: `significance` is asked for them with a probe candidate carrying the planned
tokenizer, so the plan and the later verdict cannot drift apart (val_loss in nats when both sides share a
tokenizer and have val_loss; otherwise bpb with the 0.005-nat margin converted by the candidate's
bytes/token).

How it is computed, per test:
- one-sample (the baseline is one value): the t statistic is noncentral t with n − 1 degrees of freedom and
  noncentrality (threshold − true mean)·√n / σ, so power = scipy.stats.nct.cdf(t_α, n − 1, nc): exact.
- Welch against fixed baseline seeds: given the candidate's sample variance S² (σ²·χ²ₙ₋₁/(n − 1)), the test
  passes exactly when the candidate mean falls below baseline − margin + t_α(df(S²))·se(S²), a normal
  probability; power integrates it over the χ² law of S² (scipy.integrate.quad, error reported).
- Monte-Carlo (the same scipy t-tests on simulated seeds, standard error stated) when asked for, as a check.
With one seed significance runs no test (no variance estimate), so power at n = 1 is 0.

A fixed baseline caps the power of the Welch test: however many candidate seeds run, the baseline's own
uncertainty stays, and the power tends to 1 only when the improvement beats margin + |t_α(m − 1)|·s_b/√m.
The plan says so in its notes.
"""
from __future__ import annotations

import heapq
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, special
from scipy import stats as sps

from results.errors import PgolfError
from results.stats import (LN2, POLICIES, Sample, assumed_tokenizer, baseline_sample,
                           one_sample_real_alpha, significance)

POWER_TARGETS = (0.8, 0.95)
SIMULATION_DRAWS = 20_000


@dataclass
class Setting:
    """The test a planned candidate will face, in the metric significance picks (nats or bpb).

    `scale` converts bpb to that metric (LN2 · bytes/token for val_loss, 1 for val_bpb); the candidate's
    true mean and std are already in the metric.
    """
    policy: str
    test: str                      # "one-sample" | "welch"
    metric: str                    # "val_loss" | "val_bpb"
    scale: float
    baseline: np.ndarray           # the baseline's values in the metric (not shifted by the margin)
    baseline_mean_bpb: float
    margin: float                  # in the metric
    margin_nats: float | None
    alpha: float
    mean: float                    # candidate's true mean, in the metric
    std: float                     # candidate's seed std, in the metric
    tokenizer: str | None
    bytes_per_token: float | None
    label: str
    notes: list[str] = field(default_factory=list)

    def candidate(self, values) -> Sample:
        """Simulated scores in the metric -> the Sample that significance would get from such seeds."""
        return _candidate_sample([v / self.scale for v in values], self.tokenizer, self.bytes_per_token)

    def p_values(self, values: np.ndarray) -> np.ndarray:
        """One-sided p of the policy's test for each row of `values` (draws × seeds, in the metric)."""
        return p_values(values, self.baseline - self.margin, self.test)


def p_values(values: np.ndarray, shifted_baseline: np.ndarray, test: str) -> np.ndarray:
    """The scipy call significance makes (one-sample against the one shifted value, or Welch against the
    shifted baseline seeds; alternative "less"), vectorised over the rows of `values`; `shifted_baseline`
    is one baseline for every row, or one row of baseline values per row of `values`."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "one-sample" and np.ndim(shifted_baseline) == 2:
            res = sps.ttest_1samp(values - shifted_baseline[:, :1], 0.0, axis=1, alternative="less")
        elif test == "one-sample":
            res = sps.ttest_1samp(values, shifted_baseline[0], axis=1, alternative="less")
        else:
            res = sps.ttest_ind(values, shifted_baseline, axis=1, equal_var=False, alternative="less")
    return np.asarray(res.pvalue)


def setting(baseline, improvement_bpb: float, std_bpb: float | None = None, policy: str = "rule", *,
            tokenizer: str | None = None, bytes_per_token: float | None = None,
            margin_bpb: float | None = None) -> Setting:
    """The planned test: baseline (record folder, submission.json, number or Sample), the true mean
    improvement in bpb, the seed std in bpb (default: the baseline's own sample std), the policy, and the
    candidate's tokenizer / bytes per token (default: the baseline's, else sp8192, said in the notes)."""
    if policy not in POLICIES:
        raise PgolfError(f"policy {policy!r}: unknown; use 'rule' or 'progression'")
    base = baseline_sample(baseline)
    improvement = _finite_number(improvement_bpb, "improvement")
    notes: list[str] = []

    if std_bpb is None:
        if len(base.bpb) < 2:
            raise PgolfError(f"baseline {base.label}: one value, so no seed std to borrow; pass the seed "
                             "standard deviation in bpb (--std, e.g. 0.0005)")
        std = float(np.std(base.bpb, ddof=1))
        notes.append(f"seed std {std:.6g} bpb: the baseline's own sample std (ddof=1, {len(base.bpb)} seeds)")
    else:
        std = _finite_number(std_bpb, "std")
        notes.append(f"seed std {std:.6g} bpb: given")
    if std <= 0:
        raise PgolfError(f"seed std {std!r} bpb: must be positive (identical seeds leave nothing to plan)")

    if tokenizer is None and bytes_per_token is None:        # significance's rule for an unknown tokenizer
        tokenizer, bytes_per_token, assumed = assumed_tokenizer(base)
        notes.append(assumed)
    if bytes_per_token is None and tokenizer:
        from results.tokenizers import TABLE
        canon = TABLE.get(tokenizer)
        bytes_per_token = canon.bytes_per_token if canon and not canon.approx else None
    if bytes_per_token is not None:
        bytes_per_token = _finite_number(bytes_per_token, "bytes per token")

    # Ask significance which metric and margin it would use for such a candidate (values are irrelevant).
    mean_b = float(np.mean(base.bpb))
    probe = _candidate_sample([mean_b, mean_b + std], tokenizer, bytes_per_token)
    sig = significance(probe, base, policy, margin_bpb=margin_bpb)
    metric = sig["metric"]
    scale = LN2 * bytes_per_token if metric == "val_loss" else 1.0
    values = np.asarray(base.loss if metric == "val_loss" else base.bpb, dtype=float)
    notes += [n for n in sig["notes"] if not n.startswith(("n=", "the one-sample test treats"))]  # the probe's
    test = "one-sample" if len(values) < 2 else "welch"
    return Setting(policy=policy, test=test, metric=metric, scale=scale, baseline=values, baseline_mean_bpb=mean_b,
                   margin=float(sig["margin"]), margin_nats=sig["margin_nats"], alpha=sig["alpha"],
                   mean=float(values.mean()) - improvement * scale, std=std * scale, tokenizer=tokenizer,
                   bytes_per_token=bytes_per_token, label=sig["baseline"], notes=notes)


def _candidate_sample(bpb: list[float], tokenizer: str | None, bytes_per_token: float | None) -> Sample:
    """A planned candidate's seeds as significance sees them: bpb, and val_loss whenever bytes/token is
    known (a real run logs both), so the nats comparison is taken whenever significance would take it."""
    bpb = [float(v) for v in bpb]
    loss = [v * LN2 * bytes_per_token for v in bpb] if bytes_per_token else None
    return Sample(label="planned candidate", bpb=bpb, loss=loss, tokenizer=tokenizer,
                  bytes_per_token=bytes_per_token)


def _finite_number(x, what: str) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise PgolfError(f"{what} {x!r}: not a number") from None
    if not math.isfinite(f):
        raise PgolfError(f"{what} {x!r}: must be finite")
    return f


# ---------------------------------------------------------------- power at n seeds

def power_one_sample(s: Setting, n: int) -> float:
    """Exact: t = (x̄ − threshold)/(S/√n) is noncentral t(n − 1, (μ − threshold)·√n/σ)."""
    threshold = s.baseline[0] - s.margin
    nc = (s.mean - threshold) * math.sqrt(n) / s.std
    return float(sps.nct.cdf(sps.t.ppf(s.alpha, n - 1), n - 1, nc))


def power_welch(s: Setting, n: int) -> tuple[float, float]:
    """(power, integration error) of Welch's one-sided test against the fixed baseline seeds.

    Given the candidate's sample variance the Welch df and standard error are fixed, so the test passes
    exactly when x̄ < mean_b − margin + t_α(df)·se, a normal probability for x̄ ~ N(μ, σ²/n). The variance
    is σ²·W/(n − 1) with W ~ χ²(n − 1); integrating over W's quantile u ∈ (0, 1) keeps the integrand bounded.
    """
    b = s.baseline - s.margin
    m, mean_b, vb = len(b), float(b.mean()), float(b.var(ddof=1)) / len(b)

    def passes_given_variance(u: float) -> float:
        # scipy.special's chdtri / stdtrit / ndtr are the χ² quantile, t quantile and normal CDF of
        # scipy.stats without the per-call overhead (quad calls this a few hundred times per n).
        vc = s.std ** 2 * special.chdtri(n - 1, 1.0 - u) / (n - 1) / n
        if vc + vb == 0:
            return float(s.mean < mean_b)
        df = (vc + vb) ** 2 / (vc ** 2 / (n - 1) + vb ** 2 / (m - 1))
        critical = mean_b + special.stdtrit(df, s.alpha) * math.sqrt(vc + vb)
        return float(special.ndtr((critical - s.mean) / (s.std / math.sqrt(n))))

    value, error = integrate.quad(passes_given_variance, 0.0, 1.0, epsabs=1e-9, epsrel=1e-9, limit=200)
    return min(max(value, 0.0), 1.0), error


def simulate_power(s: Setting, n: int, draws: int = SIMULATION_DRAWS, seed: int = 0) -> tuple[float, float]:
    """(power, Monte-Carlo standard error): the scipy test significance runs, on `draws` simulated batches."""
    rng = np.random.default_rng(seed)
    p = s.p_values(rng.normal(s.mean, s.std, size=(draws, n)))
    rate = float(np.mean(p < s.alpha))
    return rate, math.sqrt(max(rate * (1 - rate), 1.0 / draws) / draws)


def limit_improvement_bpb(s: Setting) -> float:
    """The improvement (bpb) above which power tends to 1 as the candidate's seeds grow without bound:
    the margin for a one-sample test; margin + |t_α(m − 1)|·s_b/√m against m fixed baseline seeds."""
    if s.test == "one-sample":
        return s.margin / s.scale
    m = len(s.baseline)
    return (s.margin - sps.t.ppf(s.alpha, m - 1) * float(np.std(s.baseline, ddof=1)) / math.sqrt(m)) / s.scale


# ---------------------------------------------------------------- the plan

def plan(baseline, improvement_bpb: float, std_bpb: float | None = None, policy: str = "rule",
         max_seeds: int = 8, *, tokenizer: str | None = None, bytes_per_token: float | None = None,
         margin_bpb: float | None = None, simulate: bool = False, sensitivity: tuple[float, ...] = ()) -> dict:
    """Power for 1..max_seeds candidate seeds and the seeds needed for 80% / 95% power, shaped for --json.

    `simulate=True` uses the Monte-Carlo instead (a check on the exact and integrated values).
    `sensitivity`: factors f for which the plan is also made with the candidate's seed std × f ("sensitivity":
    power and seeds for power per f). The power is computed as if σ were known; a planned σ from three
    baseline seeds can easily be off by a factor of two, which moves the power far more than any
    computational error, so that is what the plan shows.
    """
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int) or max_seeds < 1:
        raise PgolfError(f"max seeds {max_seeds!r}: must be a whole number >= 1")
    s = setting(baseline, improvement_bpb, std_bpb, policy, tokenizer=tokenizer,
                bytes_per_token=bytes_per_token, margin_bpb=margin_bpb)
    power: dict[str, float] = {"1": 0.0}
    errors = []                 # Monte-Carlo standard errors, or integration errors
    for n in range(2, max_seeds + 1):
        if simulate:
            power[str(n)], err = simulate_power(s, n, seed=n)
        elif s.test == "one-sample":
            power[str(n)], err = power_one_sample(s, n), 0.0
        else:
            power[str(n)], err = power_welch(s, n)
        errors.append(err)
    worst = max(errors, default=0.0)
    if simulate:
        method = (f"simulation of the scipy test significance runs ({SIMULATION_DRAWS} draws per n, "
                  f"Monte-Carlo standard error <= {worst:.4f})")
    elif s.test == "one-sample":
        method = "exact: noncentral t (scipy.stats.nct) for the one-sample t-test"
    else:
        method = "numerical integration over the candidate's sample variance (scipy.integrate.quad)"

    notes = list(s.notes)
    notes.append("1 seed cannot pass: significance needs at least 2 seeds to estimate the variance (power 0)")
    limit = limit_improvement_bpb(s)
    improvement = float(improvement_bpb)
    if s.test == "welch":
        m = len(s.baseline)
        notes.append(f"the baseline's {m} seeds are fixed: power tends to 1 with many seeds only when the "
                     f"improvement exceeds {limit:.6f} bpb (margin + |t_α({m - 1})|·s_b/√{m}); "
                     + ("yours does" if improvement > limit else "yours does not, so more seeds cannot rescue it"))
    elif improvement <= limit:
        notes.append(f"the improvement does not beat the margin ({limit:.6f} bpb): power stays below α "
                     "however many seeds run")
    if s.test == "one-sample":
        counts = sorted({min(3, max_seeds), max_seeds} - {1})
        if counts:
            notes.append("the one-sample test treats the baseline value as exact: if it is one seed's score, a "
                         "candidate no better than it passes " + ", ".join(
                             f"{one_sample_real_alpha(n, s.alpha):.1%} with {n} seeds" for n in counts)
                         + f" at α = {s.alpha} (simulated), not {s.alpha:.0%}; the powers above treat it as exact too")
    seeds_for = {f"{target:g}": next((n for n in range(2, max_seeds + 1) if power[str(n)] >= target), None)
                 for target in POWER_TARGETS}
    margin_bpb_out = s.margin / s.scale
    return {"power": power, "seeds_for_power": seeds_for, "method": method, "policy": policy,
            "test": s.test, "metric": s.metric, "alpha": s.alpha, "baseline": s.label,
            "baseline_mean_bpb": s.baseline_mean_bpb, "n_baseline": len(s.baseline),
            "improvement_bpb": improvement, "std_bpb": s.std / s.scale, "margin_bpb": margin_bpb_out,
            "margin_nats": s.margin_nats, "bytes_per_token": s.bytes_per_token, "max_seeds": max_seeds,
            "limit_improvement_bpb": limit, "numerical_error": worst, "notes": notes,
            "sensitivity": [{"factor": f, "std_bpb": s.std / s.scale * f,
                             **{k: v for k, v in plan(baseline, improvement_bpb, s.std / s.scale * f, policy,
                                                      max_seeds, tokenizer=tokenizer, bytes_per_token=bytes_per_token,
                                                      margin_bpb=margin_bpb, simulate=simulate).items()
                                if k in ("power", "seeds_for_power")}} for f in sensitivity]}


# ---------------------------------------------------------------- what the seeds cost

def cost(seeds: int, hours_per_seed: float, usd_per_hour: float, seeds_per_pod: int = 1,
         setup_hours: float = 0.0, max_pods: int | None = None) -> tuple[float, float]:
    """(dollars, wall-clock hours) of `seeds` seeds run `seeds_per_pod` to a pod after one set-up each.

    Pods = ⌈seeds / K⌉, seeds spread evenly (the driver's `groups`: 4 by 3 is 2 + 2); every pod bills its
    set-up plus its seeds at `usd_per_hour`. At most `max_pods` pods run at once (None: all of them): the
    runner queues the rest, and a queued pod starts when one ends, so the wall-clock is the first-come
    schedule of the pods' durations on `max_pods` slots (10 pods of 35 min on 3 slots: 4 rounds, 2.3 h).
    More seeds per pod saves set-ups (money) and costs wall-clock (seeds run one after another).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise PgolfError(f"seeds {seeds!r}: must be a whole number >= 0")
    for what, k in (("seeds_per_pod", seeds_per_pod), ("max_pods", max_pods)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise PgolfError(f"{what} {k!r}: must be a whole number >= 1")
    for what, x in (("hours per seed", hours_per_seed), ("$ per hour", usd_per_hour),
                    ("set-up hours", setup_hours)):
        if _finite_number(x, what) < 0:
            raise PgolfError(f"{what} {x!r}: must not be negative")
    if seeds == 0:
        return 0.0, 0.0
    pods = math.ceil(seeds / seeds_per_pod)
    size, extra = divmod(seeds, pods)
    durations = [setup_hours + (size + (i < extra)) * hours_per_seed for i in range(pods)]
    slots = [0.0] * min(pods, max_pods or pods)         # when each slot is next free
    for d in durations:                                 # first come, first served
        heapq.heapreplace(slots, slots[0] + d)
    usd = usd_per_hour * (pods * setup_hours + seeds * hours_per_seed)
    return float(usd), float(max(slots))
