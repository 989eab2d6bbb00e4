"""How often the Welch test passes a candidate that is no better than a 3-seed baseline.

Records carry three seeds; candidates often run more. Welch's t-test is an approximation, and with
unequal seed counts its real false-positive rate drifts from the level it is run at. This draws batches
in which candidate and baseline seeds share the same mean and spread (no true improvement, no margin),
runs the one-sided test exactly as `results.stats` does (`results.stats.welch_null_pvalues`: scipy's
`ttest_ind(equal_var=False, alternative="less")`), and counts the passes at the two policy levels (rule: p < 0.01; progression:
p < 0.25). The README's Statistics section quotes this table.

    .venv/bin/python bench/welch_alpha.py                   # 400,000 batches per row (~10 s)
    .venv/bin/python bench/welch_alpha.py --draws 50000     # quick

Monte-Carlo standard errors are printed with each rate; results go to bench/results/welch_alpha.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results.stats import welch_null_pvalues  # noqa: E402

LEVELS = (0.01, 0.25)


def false_positive_rates(candidate_seeds: int, baseline_seeds: int, draws: int, seed: int) -> dict[str, float]:
    """Share of null batches (equal means, equal spreads) that Welch passes at each level."""
    p = welch_null_pvalues(candidate_seeds, baseline_seeds, draws, seed)
    return {str(level): float(np.mean(p < level)) for level in LEVELS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=400_000)
    ap.add_argument("--baseline-seeds", type=int, default=3)
    ap.add_argument("--candidate-seeds", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8, 10])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "welch_alpha.json")
    args = ap.parse_args()
    rows = [{"candidate_seeds": n, "rates": false_positive_rates(n, args.baseline_seeds, args.draws, args.seed + n)}
            for n in args.candidate_seeds]
    table = Table(title=f"Welch one-sided, no true difference, baseline of {args.baseline_seeds} seeds "
                        f"({args.draws:,} batches per row)")
    table.add_column("candidate seeds", justify="right")
    for level in LEVELS:
        table.add_column(f"passes at p < {level} (nominal {level:.0%})", justify="right")
    for row in rows:
        cells = []
        for level in LEVELS:
            r = row["rates"][str(level)]
            cells.append(f"{r:.2%} ± {math.sqrt(r * (1 - r) / args.draws):.2%}")
        table.add_row(str(row["candidate_seeds"]), *cells)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "welch_alpha", "test": "scipy.stats.ttest_ind(equal_var=False, "
                                    "alternative='less')", "baseline_seeds": args.baseline_seeds,
                                    "draws": args.draws, "seed": args.seed, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
