"""Adaptive batches on the current record: the chance of a pass, the seeds and the money, against a fixed batch.

For the current record (tests/data/records/track_10min_16mb/2026-04-29_SmearGateBOSFix_3Seed_1.06141, three
seeds) and candidates whose true mean improvement is 0 (no better than the record) up to clearly better, this
simulates adaptive batches exactly as the runner runs them (runner/waves.py): seeds drawn from
N(record mean − improvement, record seed std²), a look after each wave with `results.sequential.decide`
(its boundaries, its conditional-power futility stop), stop when it says. Against it: the fixed batch of the
same policy (`results.power.plan`, exact power) at 3 seeds, the usual claim, and at the adaptive design's
maximum (the fixed batch of the same size).

Money: one seed, one pod, at the price and hours `pgolf plan` uses for jobs/record_k_kvshare_wider.toml
(8 × H100 SXM SECURE at $21.52/h × (600 s train + 600 s eval + 900 s set-up) = $12.55 per seed).

    .venv/bin/python bench/adaptive_savings.py                  # 200 batches per row (a few minutes)
    .venv/bin/python bench/adaptive_savings.py --batches 50     # quick

Monte-Carlo standard errors are printed with each rate; the table and the raw numbers go to
bench/results/adaptive_savings.json (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RECORD = ROOT / "tests" / "data" / "records" / "track_10min_16mb" / "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
USD_PER_SEED = 21.52 * (600 + 600 + 900) / 3600
# (policy, adaptive min, max, wave, true improvements in bpb)
ROWS = [("progression", 2, 4, 1, (0.0, 0.0005, 0.001, 0.002)),
        ("rule", 3, 8, 3, (0.0, 0.0055, 0.007, 0.009))]


def simulate(policy: str, design, improvement: float, batches: int, seed: int) -> dict:
    from results.power import setting
    from results.sequential import decide
    s = setting(str(RECORD), improvement, None, policy)
    rng = np.random.default_rng(seed)
    success = seeds = 0
    stops: dict[str, int] = {}
    for _ in range(batches):
        values = rng.normal(s.mean, s.std, design.max_seeds)
        for n in design.looks:
            d = decide(s.candidate(values[:n]), str(RECORD), design)
            if d.action != "continue":
                break
        success += d.action == "stop_success"
        seeds += n
        stops[d.action] = stops.get(d.action, 0) + 1
    p = success / batches
    return {"p_success": p, "p_success_se": math.sqrt(max(p * (1 - p), 1 / batches) / batches),
            "mean_seeds": seeds / batches, "mean_cost_usd": round(seeds / batches * USD_PER_SEED, 2),
            "stops": stops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "adaptive_savings.json"))
    args = ap.parse_args()
    from results.power import plan
    from results.sequential import Design
    t0 = time.time()
    rows = []
    for policy, lo, hi, wave, improvements in ROWS:
        design = Design.waves(lo, hi, wave, policy=policy)
        for k, imp in enumerate(improvements):
            power = plan(str(RECORD), imp, None, policy, hi)["power"]
            sim = simulate(policy, design, imp, args.batches, seed=1000 * k + lo)
            rows.append({"policy": policy, "looks": list(design.looks), "improvement_bpb": imp,
                         "fixed3_power": power["3"], "fixed3_cost_usd": round(3 * USD_PER_SEED, 2),
                         "fixed_max_power": power[str(hi)], "fixed_max_cost_usd": round(hi * USD_PER_SEED, 2),
                         **sim})
            print(f"{policy} {imp}: {sim}", flush=True)
    table = Table(title=f"adaptive batches on {RECORD.name} ({args.batches} simulated batches per row)")
    for col in ("policy", "looks", "improvement (bpb)", "fixed 3: P(pass)", "fixed 3: cost", "fixed max: P(pass)",
                "fixed max: cost", "adaptive: P(success)", "mean seeds", "mean cost", "how they stopped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["policy"], ",".join(map(str, r["looks"])), f"{r['improvement_bpb']:g}",
                      f"{r['fixed3_power']:.1%}", f"${r['fixed3_cost_usd']:.2f}", f"{r['fixed_max_power']:.1%}",
                      f"${r['fixed_max_cost_usd']:.2f}", f"{r['p_success']:.1%} ± {r['p_success_se']:.1%}",
                      f"{r['mean_seeds']:.2f}", f"${r['mean_cost_usd']:.2f}",
                      ", ".join(f"{k.removeprefix('stop_')} {v}" for k, v in sorted(r["stops"].items())))
    Console(width=200).print(table)
    out = {"record": str(RECORD.name), "usd_per_seed": round(USD_PER_SEED, 4), "batches": args.batches,
           "seconds": round(time.time() - t0, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
