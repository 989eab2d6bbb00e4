"""Per-folder summary statistics: n, mean and sample standard deviation (ddof=1) of the scores.

Shared by audit, report and submit so that every place prints the same numbers.
"""
from __future__ import annotations

import math

import numpy as np

from results.types import Run


def scored(runs: list[Run]) -> list[Run]:
    """Runs that have a finite score (unparsed runs and NaN scores are left out)."""
    return [r for r in runs if r.val_bpb is not None and math.isfinite(r.val_bpb)]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std ddof=1); std is None for fewer than two values, mean None for none."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return mean, std


def summarize(runs: list[Run]) -> dict:
    """DESIGN §4 `summary` object: {"n", "mean_val_bpb", "std_val_bpb", "mean_val_loss", "std_val_loss"}.

    Loss statistics are given only when every scored run has a finite val_loss."""
    ok = scored(runs)
    mean_bpb, std_bpb = mean_std([r.val_bpb for r in ok])
    losses = [r.val_loss for r in ok]
    if ok and all(v is not None and math.isfinite(v) for v in losses):
        mean_loss, std_loss = mean_std(losses)
    else:
        mean_loss = std_loss = None
    return {"n": len(ok), "mean_val_bpb": mean_bpb, "std_val_bpb": std_bpb,
            "mean_val_loss": mean_loss, "std_val_loss": std_loss}
