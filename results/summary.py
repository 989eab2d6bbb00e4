"""A run as one JSON row, and a folder's runs as one summary: the numbers every output prints.

audit (its "runs" and "summary"), report, results.csv and submit all go through `run_row` and
`summarize`, so a number reads the same everywhere. Standard deviations are sample ones (ddof=1).
The JSON keys are the contract in docs/CHALLENGE.md ("The audit JSON").
"""
from __future__ import annotations

import math

import numpy as np

from results.types import Run

RUN_KEYS = ("seed", "log", "metric", "val_loss", "val_bpb", "artifact_bytes", "code_bytes", "train_time_ms",
            "eval_time_ms", "steps", "tokenizer", "bytes_per_token")


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_row(r: Run) -> dict:
    """A Run as the audit JSON's "runs" item: JSON-safe (NaN/inf become None), bytes/token to 6 decimals."""
    row = {k: _finite(getattr(r, k)) for k in RUN_KEYS}
    if row["bytes_per_token"] is not None:
        row["bytes_per_token"] = round(row["bytes_per_token"], 6)
    return row


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
    """The "summary" object: {"n", "mean_val_bpb", "std_val_bpb", "mean_val_loss", "std_val_loss"} of the
    scored runs. Loss statistics are given only when every scored run has a finite val_loss."""
    ok = scored(runs)
    mean_bpb, std_bpb = mean_std([r.val_bpb for r in ok])
    losses = [r.val_loss for r in ok]
    if ok and all(v is not None and math.isfinite(v) for v in losses):
        mean_loss, std_loss = mean_std(losses)
    else:
        mean_loss = std_loss = None
    return {"n": len(ok), "mean_val_bpb": mean_bpb, "std_val_bpb": std_bpb,
            "mean_val_loss": mean_loss, "std_val_loss": std_loss}
