"""Adaptive batches (results.sequential): spending boundaries against published values and independent
simulation, the false-positive rate of the whole procedure under the null, non-binding futility, and the
decisions a runner will act on."""
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from results.errors import PgolfError
from results.sequential import (NULL_DRAWS, Design, boundary_table, decide, information, spent,
                                z_boundaries)
from results.stats import LN2, POLICIES, sample_from_values, significance
from corpus import CURRENT_RECORD, needs_current_record


NUMBER = 1.0614
RECORD_BPB = [1.06220261, 1.06086831, 1.06128183]      # the SmearGateBOSFix record's three seeds
SP8192_BPT = 3.72663


def _candidate(bpb):
    """Seeds as a real sp8192 run logs them (val_loss and val_bpb)."""
    bpb = list(map(float, bpb))
    return sample_from_values(bpb, loss=[b * LN2 * SP8192_BPT for b in bpb], tokenizer="sp8192")


# ---------------------------------------------------------------- normal-theory boundaries

def test_lan_demets_obf_matches_published_boundaries():
    # Three equally spaced looks, one-sided α = 0.025, Lan–DeMets O'Brien–Fleming spending: 3.7103, 2.5114,
    # 1.9930 (gsDesign sfLDOF; rpact typeOfDesign "asOF"). The classic O'Brien–Fleming design's 3.471,
    # 2.454, 2.004 are a different (constant-C) design and are not what is implemented.
    z = z_boundaries((1 / 3, 2 / 3, 1.0), 0.025, "obf")
    assert z == pytest.approx((3.7103, 2.5114, 1.9930), abs=0.002)


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_normal_theory_boundaries_spend_alpha_as_planned(spending):
    # Independent check: Brownian motion at unequal information fractions, first-crossing rate per look.
    info, alpha, draws = (0.3, 0.7, 1.0), 0.025, 400_000
    z = z_boundaries(info, alpha, spending)
    rng = np.random.default_rng(1)
    increments = rng.standard_normal((draws, 3)) * np.sqrt(np.diff((0.0,) + info))
    stats = np.cumsum(increments, axis=1) / np.sqrt(info)
    alive = np.ones(draws, dtype=bool)
    for k, t in enumerate(info):
        planned = spent(spending, alpha, t) - (spent(spending, alpha, info[k - 1]) if k else 0.0)
        now = alive & (stats[:, k] >= z[k])
        se = math.sqrt(planned / draws)
        assert now.mean() == pytest.approx(planned, abs=4 * se + 1e-5), k
        alive &= ~now


def test_information_fraction_counts_the_fixed_baseline():
    assert information((3, 6, 8), 8, None) == pytest.approx((3 / 8, 6 / 8, 1.0))
    # σ²/n + σ²/3: three baseline seeds already carry most of what 8 candidate seeds will ever know.
    assert information((3, 6, 8), 8, 3) == pytest.approx(((1 / 8 + 1 / 3) / (2 / 3), (1 / 8 + 1 / 3) / (1 / 2), 1.0))


# ---------------------------------------------------------------- false positives of the whole procedure

def _null_crossing_rate(looks, n_baseline, thresholds, draws=100_000, seed=7):
    """Share of null batches (candidate and baseline i.i.d. normal, equal std, difference exactly at the
    margin) whose p at some look falls below that look's threshold. Seeds differ from the calibration's."""
    rng = np.random.default_rng(seed)
    cand = rng.standard_normal((draws, looks[-1]))
    base = rng.standard_normal((draws, n_baseline)) if n_baseline else None
    crossed = np.zeros(draws, dtype=bool)
    for n, threshold in zip(looks, thresholds):
        if base is None:
            p = sps.ttest_1samp(cand[:, :n], 0.0, axis=1, alternative="less").pvalue
        else:
            p = sps.ttest_ind(cand[:, :n], base, axis=1, equal_var=False, alternative="less").pvalue
        crossed |= p < threshold
    return float(crossed.mean()), draws


@pytest.mark.parametrize("n_baseline", [None, 3])
@pytest.mark.parametrize("policy,spending", [("rule", "obf"), ("progression", "obf"), ("progression", "pocock")])
def test_false_positive_rate_is_alpha(policy, spending, n_baseline):
    design = Design((3, 6, 8), policy, spending)
    thresholds = design.schedule(design.looks, n_baseline, final=True).thresholds()
    rate, draws = _null_crossing_rate(design.looks, n_baseline, thresholds)
    alpha = design.alpha
    # the thresholds carry the calibration's Monte-Carlo error, the check its own
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) * (1 / draws + 1 / NULL_DRAWS))
    assert rate <= alpha + tolerance
    assert rate >= alpha - tolerance           # and the design does spend its α (not a vacuous check)


def test_normal_theory_thresholds_alone_would_inflate_small_samples():
    # Why the t-scale thresholds are calibrated: Φ(−c_k) applied to a one-sample t-test at 3, 6, 8 seeds
    # gives about 0.261 instead of 0.25 (df 2 at the first look).
    design = Design((3, 6, 8), "progression", "obf")
    sched = design.schedule(design.looks, None, final=True)
    naive = [sps.norm.sf(z) for z in sched.z_normal_theory()]
    rate, draws = _null_crossing_rate(design.looks, None, naive)
    assert rate > 0.25 + 3 * math.sqrt(0.25 * 0.75 / draws)


def test_t_scale_thresholds_tend_to_normal_theory_with_many_seeds():
    design = Design((20, 40, 60), "progression", "obf")
    sched = design.schedule(design.looks, None, final=True)
    normal = [sps.norm.sf(z) for z in sched.z_normal_theory()]
    assert sched.thresholds() == pytest.approx(normal, abs=0.002)


def test_thresholds_of_earlier_looks_do_not_move_when_later_looks_change():
    design = Design((3, 6, 8), "rule")
    planned = design.schedule((3, 6, 8), 3, final=True).thresholds()
    short_wave = design.schedule((3, 5), 3, final=False).thresholds()
    first_only = design.schedule((3,), 3, final=False).thresholds()
    assert planned[0] == short_wave[0] == first_only[0]
    assert all(0 < p <= POLICIES["rule"]["alpha"] for p in planned)


# ---------------------------------------------------------------- futility is non-binding

def test_futility_never_raises_the_false_positive_rate():
    # The same null batches (true mean exactly the number, progression policy) decided with and without
    # futility: every success with futility is a success without it, so the rate cannot rise.
    with_futility = Design((3, 6, 8), "progression", "obf", futility=0.10)
    without = Design((3, 6, 8), "progression", "obf", futility=0.0)
    rng = np.random.default_rng(3)
    outcomes = {"with": [], "without": []}
    futility_stops = 0
    for _ in range(60):
        seeds = rng.normal(NUMBER, 0.0007, 8)
        for key, design in (("with", with_futility), ("without", without)):
            for look in design.looks:
                d = decide(_candidate(seeds[:look]), NUMBER, design)
                if d.action != "continue":
                    break
            futility_stops += d.action == "stop_futility"
            outcomes[key].append(d.action == "stop_success")
            if d.action in ("stop_success", "stop_max"):
                assert (d.p_adjusted <= design.alpha) == d.crossed
    assert futility_stops > 0
    assert all(w <= wo for w, wo in zip(outcomes["with"], outcomes["without"]))
    assert sum(outcomes["with"]) <= sum(outcomes["without"])


# ---------------------------------------------------------------- decisions

@needs_current_record
def test_bad_candidate_stops_for_futility_after_the_first_wave():
    design = Design.waves(3, 8, policy="rule")
    d = decide(_candidate([1.0625, 1.0619, 1.0631]), CURRENT_RECORD, design)   # worse than the record
    assert d.action == "stop_futility" and d.look == 1 and d.n == 3
    assert d.conditional_power < 0.10 and d.p_adjusted is None
    assert d.estimate["mean"] == pytest.approx(np.mean([1.0625, 1.0619, 1.0631]))   # bpb: other tokenizer
    assert "current estimate" in d.sentence and "futility" in d.sentence and "policy rule" in d.sentence


def test_clear_winner_stops_for_success_under_obf():
    design = Design.waves(3, 8, policy="rule")
    record = sample_from_values(RECORD_BPB, "record")
    d = decide(_candidate([1.0500, 1.0506, 1.0497]), record, design)
    assert d.action == "stop_success" and d.look == 1 and d.crossed
    assert d.significance["test"] == "welch" and d.significance["metric"] == "val_bpb"
    assert d.p_nominal < d.boundary["p"] <= POLICIES["rule"]["alpha"]
    assert d.p_nominal <= d.p_adjusted <= d.boundary["alpha_spent"]
    assert d.boundary["t"] < 0 and sps.t.cdf(d.boundary["t"], d.boundary["df"]) == pytest.approx(d.boundary["p"])
    # the same seeds against the number: one-sample, df 2, information 3/8: O'Brien–Fleming waits
    assert decide(_candidate([1.0500, 1.0506, 1.0497]), NUMBER, design).action == "continue"
    assert "O'Brien–Fleming" in d.sentence and "crossed the boundary at look 1" in d.sentence
    json.dumps(d.to_dict())


def test_middling_candidate_runs_to_its_maximum():
    # Better than the number, not clearly: continues at 3 and 6 seeds, then the last look decides.
    design = Design.waves(3, 8, policy="progression")
    seeds = [1.0611, 1.0620, 1.0606, 1.0618, 1.0609, 1.0616, 1.0613, 1.0619]
    actions = [decide(_candidate(seeds[:n]), NUMBER, design).action for n in (3, 6)]
    assert actions == ["continue", "continue"]
    last = decide(_candidate(seeds), NUMBER, design)
    assert last.final and last.action == "stop_max" and not last.crossed
    assert last.p_adjusted > design.alpha and last.p_adjusted >= last.p_nominal
    assert "no boundary crossed" in last.p_report


def test_without_spending_only_the_last_look_can_succeed():
    design = Design.waves(3, 8, policy="rule", spending=None)
    seeds = [1.0500, 1.0506, 1.0497, 1.0503, 1.0501, 1.0499, 1.0502, 1.0504]
    early = decide(_candidate(seeds[:3]), NUMBER, design)
    assert early.action == "continue" and early.significance["passes"] and early.boundary["p"] == 0.0
    last = decide(_candidate(seeds), NUMBER, design)
    sig = significance(_candidate(seeds), NUMBER, "rule")
    assert last.action == "stop_success" and last.p_adjusted == sig["p"] and last.boundary["p"] == 0.01
    assert "fixed-sample p" in last.p_report


def test_runner_may_end_a_batch_early_and_looks_may_come_out_short():
    design = Design((3, 6, 8), "progression")
    seeds = [1.0611, 1.0620, 1.0606, 1.0618, 1.0609]
    d = decide(_candidate(seeds), NUMBER, design, looks=(3, 5), final=True)
    assert d.final and d.action in ("stop_max", "stop_success") and d.boundary["alpha_spent"] == 0.25


@needs_current_record
def test_boundary_table_states_the_design_up_front():
    table = boundary_table(Design.waves(3, 8, policy="rule"), CURRENT_RECORD)
    assert [row["n"] for row in table] == [3, 6, 8]
    assert table[0]["information"] == pytest.approx(0.6875) and table[-1]["alpha_spent"] == 0.01
    assert all(0 < row["p"] <= 0.01 for row in table)
    assert table[0]["z_normal_theory"] > table[-1]["z_normal_theory"]


def test_design_waves_and_bad_designs():
    assert Design.waves(3, 8).looks == (3, 6, 8)
    assert Design.waves(3, 8, wave=2).looks == (3, 5, 7, 8)
    assert Design.waves(3, 3).looks == (3,)
    for bad in (dict(looks=(1, 3)), dict(looks=(3, 3)), dict(looks=(3, 6), spending="haybittle"),
                dict(looks=(3, 6), policy="strict"), dict(looks=(3, 6), futility=1.5)):
        with pytest.raises(PgolfError):
            Design(**bad)
    with pytest.raises(PgolfError, match="stops at 6"):
        decide(_candidate(np.full(7, 1.05) + np.arange(7) * 1e-4), NUMBER, Design((3, 6)))
    with pytest.raises(PgolfError, match="last look"):
        decide(_candidate([1.05, 1.051, 1.052]), NUMBER, Design((3, 6)), looks=(2,))


# ---------------------------------------------------------------- the whole procedure, simulated (pgolf plan)

@needs_current_record
def test_vectorised_conditional_power_is_the_runners_row_by_row():
    from results.power import setting
    from results.sequential import _conditional_power_many, conditional_power
    for policy, imp, looks in (("rule", 0.0052, (3, 6, 8)), ("progression", 0.0003, (2, 3, 4))):
        s = setting(CURRENT_RECORD, imp, None, policy)
        design = Design(looks, policy=policy)
        thresholds = design.schedule(looks, 3, final=True).thresholds()
        future = list(zip(looks[1:], thresholds[1:]))
        observed = np.random.default_rng(5).normal(s.mean, s.std * 1.5, (25, looks[0]))
        many = _conditional_power_many(observed, s.baseline - s.margin, s.test, future)
        one = [conditional_power(o, s.baseline - s.margin, s.test, future)[0] for o in observed]
        assert list(many) == one and 0 < np.mean(many) < 1


@needs_current_record
@pytest.mark.parametrize("policy, looks, improvement, baseline, std", [
    ("progression", (2, 3, 4), 0.0003, "record", None),       # Welch against the record's 3 seeds
    ("rule", (3, 5), 0.0035, NUMBER, 0.0007),                   # one-sample against a number
])
def test_simulated_procedure_is_decide_batch_by_batch(policy, looks, improvement, baseline, std):
    """`simulate` (behind pgolf plan's success chance) stops every batch where and as the runner's `decide`
    does: success boundaries AND the futility stop, which the old plan ignored."""
    from results.power import setting
    from results.sequential import simulate
    base = str(CURRENT_RECORD) if baseline == "record" else baseline
    s = setting(base, improvement, std, policy)
    design, batches = Design(looks, policy=policy), 16
    sim = simulate(design, s.baseline - s.margin, s.test, s.mean, s.std, batches=batches, seed=3)
    values = np.random.default_rng(3).normal(s.mean, s.std, (batches, design.max_seeds))
    for i in range(batches):
        for k, n in enumerate(design.looks):
            d = decide(s.candidate(values[i, :n]), base, design)
            if d.action != "continue":
                break
        assert (sim["action"][i], sim["look"][i]) == (d.action, k + 1), i
    assert "stop_futility" in set(sim["action"]) and "stop_success" in set(sim["action"])
    assert sim["p_success"] == pytest.approx(np.mean(sim["action"] == "stop_success"))


def test_success_chance_counts_later_futility_stops():
    """The conditional power (the futility rule's statistic) ignores that a path may stop for futility at a
    later look; the success chance a look reports includes those stops: the same draws, so never above it,
    and equal to it without futility or with one look left."""
    cand = _candidate([1.0585, 1.0580, 1.0596])
    d = decide(cand, NUMBER, Design((3, 6, 8, 10), policy="rule"))
    assert d.action == "continue" and 0.3 < d.conditional_power < 0.9
    assert d.success_chance < d.conditional_power and d.success_chance_se < 0.01
    assert "later futility stops included" in d.sentence
    free = decide(cand, NUMBER, Design((3, 6, 8, 10), policy="rule", futility=0.0))
    assert free.success_chance is None and free.conditional_power is None      # no futility: nothing computed
    from results.sequential import conditional_power, success_chance
    base = np.array([NUMBER * LN2 * SP8192_BPT]) - 0.005
    future = [(6, 0.004), (8, 0.006), (10, 0.008)]
    values = np.asarray(cand.loss)
    assert success_chance(values, base, "one-sample", future, 0.0) == conditional_power(values, base, "one-sample", future)
    last = decide(_candidate([1.0585, 1.0580, 1.0596, 1.0590, 1.0588, 1.0583]), NUMBER,
                  Design((3, 6, 8), policy="rule"), looks=(3, 6))
    assert last.action == "continue" and last.success_chance == last.conditional_power


@needs_current_record
def test_simulate_takes_one_baseline_per_batch():
    """bench/adaptive_savings.py redraws the record's seeds with every batch (the view the policy's α is
    about); a baseline row per batch that repeats the one baseline must change nothing."""
    from results.power import setting
    from results.sequential import simulate
    for policy, looks, imp, base, std in (("progression", (2, 3, 4), 0.0003, str(CURRENT_RECORD), None),
                                          ("rule", (3, 5), 0.0035, NUMBER, 0.0007)):
        s = setting(base, imp, std, policy)
        design, b = Design(looks, policy=policy), s.baseline - s.margin
        one = simulate(design, b, s.test, s.mean, s.std, batches=300, seed=4)
        rows = simulate(design, np.tile(b, (300, 1)), s.test, s.mean, s.std, batches=300, seed=4)
        assert list(rows["action"]) == list(one["action"]) and list(rows["look"]) == list(one["look"])
