"""Adaptive batches on the current record: the chance of a pass, the seeds and the money, against a fixed batch.

For the current record (tests/data/records/track_10min_16mb/2026-04-29_SmearGateBOSFix_3Seed_1.06141, three
seeds) and candidates whose true mean improvement is 0 (no better than the record) up to clearly better, this
simulates adaptive batches exactly as the runner runs them (`results.sequential.simulate`: `decide`'s
boundaries and its conditional-power futility stop, checked batch by batch against `decide` in
tests/test_sequential.py), seeds drawn from N(record mean − improvement, record seed std²). Two views, each
computed the same way for the fixed and the adaptive batch:

- **this record** ("conditional"): the record's three seeds as they are, as `pgolf plan` computes it. A
  no-better candidate here is one whose true mean equals the record's SAMPLE mean; the fixed batch's rate is
  `results.power.plan`'s exact power.
- **any record** ("unconditional"): the record's seeds redrawn with every batch, the candidate's true mean
  at the record's TRUE mean minus the margin (the null boundary; progression: no better). This is what the
  policy's α is about: the fixed 3-vs-3 Welch test passes such a candidate about 24.4% of the time at
  p < 0.25, not the 15.5% of this record.

It also measures the adaptive design's success chance with the futility stop switched off (what counting
boundary crossings alone gives), and the α guarantee when its equal-spread assumption fails: candidate seed
std twice the baseline's, no true difference beyond the margin, futility off (the guarantee's own quantity)
and on.

Money: one seed, one pod, at the price and hours `pgolf plan` uses for jobs/record_k_kvshare_wider.toml
(8 × H100 SXM SECURE at $21.52/h × (600 s train + 600 s eval + 900 s set-up) = $12.55 per seed).

    .venv/bin/python bench/adaptive_savings.py                  # 20,000 batches per row (a few minutes)
    .venv/bin/python bench/adaptive_savings.py --batches 2000   # quick

Monte-Carlo standard errors are printed with each simulated rate; the tables and the raw numbers go to
bench/results/adaptive_savings.json (--out).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.benchlib import write_result  # noqa: E402

RECORD = ROOT / "tests" / "data" / "records" / "track_10min_16mb" / "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
USD_PER_SEED = 21.52 * (600 + 600 + 900) / 3600
# (policy, adaptive min, max, wave, true improvements in bpb)
ROWS = [("progression", 2, 4, 1, (0.0, 0.0005, 0.001, 0.002)),
        ("rule", 3, 8, 3, (0.0, 0.0055, 0.007, 0.009))]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1 / n) / n)


def conditional(design, s, batches: int, seed: int) -> dict:
    """The adaptive batch against the record's own seeds, and the same design without its futility stop."""
    from results.sequential import simulate
    sim = simulate(design, s.baseline - s.margin, s.test, s.mean, s.std, batches=batches, seed=seed)
    seeds = float(np.mean([design.looks[k - 1] for k in sim["look"]]))
    crossing = simulate(replace(design, futility=0.0), s.baseline - s.margin, s.test, s.mean, s.std,
                        batches=batches, seed=seed)["p_success"]
    stops = {a: int(np.sum(sim["action"] == a)) for a in ("stop_success", "stop_futility", "stop_max")}
    return {"p_success": sim["p_success"], "p_success_se": _se(sim["p_success"], batches),
            "p_success_without_futility": crossing, "p_success_without_futility_se": _se(crossing, batches),
            "mean_seeds": seeds, "mean_cost_usd": round(seeds * USD_PER_SEED, 2), "stops": stops}


def unconditional(design, s, batches: int, seed: int, std_ratio: float = 1.0) -> dict:
    """Success rates at the null boundary with the record's seeds redrawn with every batch: baseline seeds
    N(0, σ_b²) and candidate seeds N(−margin, (std_ratio·σ_b)²) in the metric, σ_b the record's sample std;
    the candidate's true mean is the record's TRUE mean minus the margin (progression: no better). Fixed 3
    seeds (the policy's test) and the adaptive design with and without its futility stop; without it, the
    rate is the one the design's α guarantee bounds."""
    from results.power import p_values
    from results.sequential import simulate
    rng = np.random.default_rng(seed)
    sd_b = float(np.std(s.baseline, ddof=1))
    shifted = rng.normal(0.0, sd_b, (batches, len(s.baseline))) - s.margin
    fixed3 = float(np.mean(p_values(rng.normal(-s.margin, sd_b * std_ratio, (batches, 3)), shifted, s.test)
                           < design.alpha))
    kw = dict(test=s.test, mean=-s.margin, std=sd_b * std_ratio, batches=batches, seed=seed + 1)
    adaptive = simulate(design, shifted, **kw)["p_success"]
    crossing = simulate(replace(design, futility=0.0), shifted, **kw)["p_success"]
    return {"batches": batches, "std_ratio": std_ratio,
            "fixed3": fixed3, "fixed3_se": _se(fixed3, batches),
            "adaptive": adaptive, "adaptive_se": _se(adaptive, batches),
            "adaptive_without_futility": crossing, "adaptive_without_futility_se": _se(crossing, batches)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "adaptive_savings.json"))
    args = ap.parse_args()
    from results.power import plan, setting
    from results.sequential import Design
    t0 = time.time()
    rows, views = [], []
    for policy, lo, hi, wave, improvements in ROWS:
        design = Design.waves(lo, hi, wave, policy=policy)
        for k, imp in enumerate(improvements):
            power = plan(str(RECORD), imp, None, policy, hi)["power"]
            s = setting(str(RECORD), imp, None, policy)
            sim = conditional(design, s, args.batches, seed=1000 * k + lo)
            rows.append({"policy": policy, "looks": list(design.looks), "improvement_bpb": imp,
                         "fixed3_power": power["3"], "fixed3_cost_usd": round(3 * USD_PER_SEED, 2),
                         "fixed_max_power": power[str(hi)], "fixed_max_cost_usd": round(hi * USD_PER_SEED, 2),
                         **sim})
            print(f"{policy} {imp}: {rows[-1]}", flush=True)
        s = setting(str(RECORD), 0.0, None, policy)
        for ratio in (1.0, 2.0):
            views.append({"policy": policy, "looks": list(design.looks),
                          **unconditional(design, s, args.batches, seed=lo + int(ratio), std_ratio=ratio)})
            print(f"{policy} any record, σ ratio {ratio}: {views[-1]}", flush=True)

    console = Console(width=200)
    table = Table(title=f"adaptive batches against {RECORD.name}'s own seeds ({args.batches:,} simulated batches "
                        "per row)")
    for col in ("policy", "looks", "improvement (bpb)", "fixed 3: P(pass)", "fixed 3: cost", "fixed max: P(pass)",
                "fixed max: cost", "adaptive: P(success)", "without futility", "mean seeds", "mean cost",
                "how they stopped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["policy"], ",".join(map(str, r["looks"])), f"{r['improvement_bpb']:g}",
                      f"{r['fixed3_power']:.1%}", f"${r['fixed3_cost_usd']:.2f}", f"{r['fixed_max_power']:.1%}",
                      f"${r['fixed_max_cost_usd']:.2f}", f"{r['p_success']:.1%} ± {r['p_success_se']:.1%}",
                      f"{r['p_success_without_futility']:.1%}", f"{r['mean_seeds']:.2f}", f"${r['mean_cost_usd']:.2f}",
                      ", ".join(f"{k.removeprefix('stop_')} {v}" for k, v in sorted(r["stops"].items())))
    console.print(table)
    table = Table(title="at the null boundary (candidate's true mean = the record's TRUE mean − margin), the "
                        "record's seeds redrawn with every batch")
    for col in ("policy", "looks", "candidate std / record's", "fixed 3: P(pass)", "adaptive: P(success)",
                "adaptive without futility (the α guarantee's quantity)", "nominal α"):
        table.add_column(col, justify="right")
    from results.stats import POLICIES
    for v in views:
        table.add_row(v["policy"], ",".join(map(str, v["looks"])), f"{v['std_ratio']:g}",
                      f"{v['fixed3']:.1%} ± {v['fixed3_se']:.1%}", f"{v['adaptive']:.1%} ± {v['adaptive_se']:.1%}",
                      f"{v['adaptive_without_futility']:.1%} ± {v['adaptive_without_futility_se']:.1%}",
                      f"{POLICIES[v['policy']]['alpha']:g}")
    console.print(table)
    write_result(args.out, {"record": RECORD.name, "usd_per_seed": round(USD_PER_SEED, 4), "batches": args.batches,
                            "seconds": round(time.time() - t0, 1), "rows": rows, "any_record": views})
    return 0


if __name__ == "__main__":
    sys.exit(main())
