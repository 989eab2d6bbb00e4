"""Power of a claim (results.power): the computed power agrees with an independent Monte-Carlo of the very
test significance runs, for both policies, a record-folder baseline and a number baseline."""
import numpy as np
import pytest
from scipy import stats as sps

from results.errors import PgolfError
from results.power import cost, plan, setting
from results.stats import LN2, Sample, baseline_sample, significance
from corpus import CURRENT_RECORD, needs_current_record

NUMBER, NUMBER_STD, SP8192_BPT = 1.0614, 0.0007, 3.72663


def _significance_power(baseline: Sample, improvement: float, std: float, policy: str, n: int,
                        tokenizer: str, bpt: float, draws: int, seed: int) -> float:
    """Share of simulated n-seed candidates (bpb ~ N(mean − improvement, std²), val_loss as a real run
    would log it) that results.stats.significance passes."""
    rng = np.random.default_rng(seed)
    mean = float(np.mean(baseline.bpb)) - improvement
    passed = 0
    for _ in range(draws):
        bpb = rng.normal(mean, std, n)
        cand = Sample("sim", list(bpb), loss=list(bpb * LN2 * bpt), tokenizer=tokenizer, bytes_per_token=bpt)
        passed += significance(cand, baseline, policy)["passes"]
    return passed / draws


# Checked where it matters: at the seed count the planner recommends for 80% power. 4000 draws give a
# Monte-Carlo standard error of about 0.0063 there, so ±0.02 is about 3 standard errors.
@pytest.mark.parametrize("baseline,std,policy,improvement,n80", [
    ("folder", None, "rule", 0.0045, 5),
    ("folder", None, "progression", 0.0006, 6),
    (NUMBER, NUMBER_STD, "rule", 0.0035, 5),
    (NUMBER, NUMBER_STD, "progression", 0.0005, 5),
])
def test_power_matches_monte_carlo_of_significance(baseline, std, policy, improvement, n80):
    if baseline == "folder":
        base = baseline_sample(CURRENT_RECORD)
        assert len(base.bpb) == 3 and base.loss is not None         # Welch against 3 fixed seeds, in nats
        tokenizer, bpt, std_mc, test, metric = base.tokenizer, base.bytes_per_token, None, "welch", "val_loss"
    else:
        base = baseline_sample(baseline)
        tokenizer, bpt, std_mc, test, metric = "sp8192", SP8192_BPT, std, "one-sample", "val_bpb"
    out = plan(base, improvement, std, policy, max_seeds=8)
    assert out["test"] == test and out["metric"] == metric
    assert out["method"].startswith("exact" if test == "one-sample" else "numerical integration")
    assert out["seeds_for_power"]["0.8"] == n80
    std_mc = float(np.std(base.bpb, ddof=1)) if std_mc is None else std_mc
    mc = _significance_power(base, improvement, std_mc, policy, n80, tokenizer, bpt, draws=4000, seed=0)
    assert out["power"][str(n80)] == pytest.approx(mc, abs=0.02)


def _vectorised_power(s, n: int, draws: int, seed: int) -> float:
    """The same scipy tests significance calls, on many simulated batches at once (tight check)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(s.mean, s.std, size=(draws, n))
    shifted = s.baseline - s.margin
    if s.test == "one-sample":
        p = sps.ttest_1samp(values, shifted[0], axis=1, alternative="less").pvalue
    else:
        p = sps.ttest_ind(values, shifted, axis=1, equal_var=False, alternative="less").pvalue
    return float(np.mean(p < s.alpha))


@pytest.mark.parametrize("baseline,std", [("folder", None), (NUMBER, NUMBER_STD)])
@pytest.mark.parametrize("policy", ["rule", "progression"])
def test_power_is_exact_at_every_n(baseline, std, policy):
    if baseline == "folder":
        baseline = CURRENT_RECORD
    improvement = 0.004 if policy == "rule" else 0.0004
    out = plan(baseline, improvement, std, policy, max_seeds=8)
    s = setting(baseline, improvement, std, policy)
    for n in range(2, 9):
        mc = _vectorised_power(s, n, draws=100_000, seed=n)    # standard error <= 0.0016
        assert out["power"][str(n)] == pytest.approx(mc, abs=0.006), n


def test_simulation_mode_agrees_and_states_its_error():
    exact = plan(NUMBER, 0.003, NUMBER_STD, "rule", max_seeds=5)
    sim = plan(NUMBER, 0.003, NUMBER_STD, "rule", max_seeds=5, simulate=True)
    assert "standard error" in sim["method"]
    for n in range(2, 6):
        assert sim["power"][str(n)] == pytest.approx(exact["power"][str(n)], abs=0.012)


def test_plan_dict_shape_and_seeds_for_power():
    out = plan(NUMBER, 0.003, NUMBER_STD, "progression", max_seeds=10)
    assert set(out) >= {"power", "seeds_for_power", "method", "policy", "baseline", "improvement_bpb",
                        "std_bpb", "margin_bpb", "notes"}
    assert list(out["power"]) == [str(n) for n in range(1, 11)]
    assert out["power"]["1"] == 0.0 and any("1 seed cannot pass" in n for n in out["notes"])
    powers = [out["power"][str(n)] for n in range(2, 11)]
    assert powers == sorted(powers)                    # more seeds, more power (one-sample test)
    for target in ("0.8", "0.95"):
        n = out["seeds_for_power"][target]
        assert n is not None and out["power"][str(n)] >= float(target) > out["power"][str(n - 1)]
    assert out["margin_bpb"] == 0.0 and out["policy"] == "progression"


def test_rule_margin_converted_with_bytes_per_token_for_a_number_baseline():
    out = plan(NUMBER, 0.003, NUMBER_STD, "rule", max_seeds=4)
    assert out["margin_bpb"] == pytest.approx(0.005 / (LN2 * SP8192_BPT))
    assert any("assumed sp8192" in n for n in out["notes"])
    sp1024 = plan(NUMBER, 0.003, NUMBER_STD, "rule", max_seeds=4, tokenizer="sp1024")
    assert sp1024["margin_bpb"] == pytest.approx(0.005 / (LN2 * 2.43593))
    assert sp1024["power"]["4"] < out["power"]["4"]   # a larger margin in bpb: less power


@needs_current_record
def test_fixed_baseline_caps_power_and_says_so():
    # Against 3 fixed record seeds at α = 0.01, an improvement below margin + |t_0.01(2)|·s_b/√3 cannot
    # reach 95% however many seeds run.
    out = plan(CURRENT_RECORD, 0.0045, policy="rule", max_seeds=12)
    assert out["seeds_for_power"]["0.95"] is None
    assert out["limit_improvement_bpb"] > 0.0045
    assert max(out["power"].values()) < 0.9
    assert any("cannot rescue" in n for n in out["notes"])
    other_tokenizer = plan(CURRENT_RECORD, 0.0045, policy="rule", max_seeds=3, tokenizer="sp8192")
    assert other_tokenizer["metric"] == "val_bpb"       # different tokenizer: bpb, margin converted
    assert other_tokenizer["margin_bpb"] == pytest.approx(0.005 / (LN2 * SP8192_BPT))


def test_bad_input_is_one_clear_error():
    with pytest.raises(PgolfError, match="pass the seed standard deviation"):
        plan(NUMBER, 0.003, None, "rule")
    with pytest.raises(PgolfError, match="policy"):
        plan(NUMBER, 0.003, NUMBER_STD, "strict")
    with pytest.raises(PgolfError, match="must be positive"):
        plan(NUMBER, 0.003, -0.001, "rule")
    with pytest.raises(PgolfError, match="max seeds"):
        plan(NUMBER, 0.003, NUMBER_STD, "rule", max_seeds=0)
    with pytest.raises(PgolfError, match="improvement"):
        plan(NUMBER, "lots", NUMBER_STD, "rule")


def test_cost_of_seeds_per_pod():
    # 3 seeds of 25 min after a 10-min set-up at $21.5/h: 3 pods at once, or 1 pod in sequence.
    usd1, h1 = cost(3, 25 / 60, 21.5, seeds_per_pod=1, setup_hours=10 / 60)
    usd3, h3 = cost(3, 25 / 60, 21.5, seeds_per_pod=3, setup_hours=10 / 60)
    assert usd1 == pytest.approx(21.5 * (3 * 10 + 3 * 25) / 60) and h1 == pytest.approx(35 / 60)
    assert usd3 == pytest.approx(21.5 * (10 + 3 * 25) / 60) and h3 == pytest.approx(85 / 60)
    usd, h = cost(4, 0.5, 20.0, seeds_per_pod=3, setup_hours=0.2)   # 2 pods of 2 seeds, not 3 + 1
    assert usd == pytest.approx(20 * (2 * 0.2 + 4 * 0.5)) and h == pytest.approx(0.2 + 2 * 0.5)
    assert cost(0, 0.5, 20.0) == (0.0, 0.0)
    # at most 3 pods at once: the rest queue (10 pods of 35 min: 4 rounds); the money does not change
    assert cost(10, 20 / 60, 21.52, setup_hours=15 / 60, max_pods=3) == pytest.approx((21.52 * 10 * 35 / 60, 4 * 35 / 60))
    assert cost(5, 0.5, 1.0, seeds_per_pod=2, max_pods=2) == pytest.approx((2.5, 1.5))   # pods of 2, 2, 1 on 2 slots
    with pytest.raises(PgolfError, match="max_pods"):
        cost(3, 0.5, 20.0, max_pods=0)
    with pytest.raises(PgolfError, match="seeds_per_pod"):
        cost(3, 0.5, 20.0, seeds_per_pod=0)
    with pytest.raises(PgolfError, match="must not be negative"):
        cost(3, -0.5, 20.0)
