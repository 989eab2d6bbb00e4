"""One pandas row per run (the DESIGN §4 run keys), CSV export, mean and sample std (ddof=1)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from results.files import atomic_write
from results.types import Run, RunSet

RUN_KEYS = ["seed", "log", "metric", "val_loss", "val_bpb", "artifact_bytes", "code_bytes", "train_time_ms",
            "eval_time_ms", "steps", "tokenizer", "bytes_per_token"]


def run_row(run: Run) -> dict:
    """A Run as the DESIGN §4 "runs" item (JSON-safe: NaN becomes None)."""
    row = {k: getattr(run, k) for k in RUN_KEYS}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            row[k] = None
    return row


def frame(runs: RunSet | list[Run]) -> pd.DataFrame:
    """One row per run, columns RUN_KEYS, in the order the runs were found."""
    runs = runs.runs if isinstance(runs, RunSet) else runs
    df = pd.DataFrame([run_row(r) for r in runs], columns=RUN_KEYS)
    for col in ("seed", "artifact_bytes", "code_bytes", "steps"):
        df[col] = df[col].astype("Int64")
    for col in ("val_loss", "val_bpb", "train_time_ms", "eval_time_ms", "bytes_per_token"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        df.loc[~np.isfinite(df[col]), col] = np.nan
    return df


def _stat(series: pd.Series, how: str) -> float | None:
    s = series.dropna()
    if s.empty or (how == "std" and len(s) < 2):
        return None
    v = float(s.mean() if how == "mean" else s.std(ddof=1))
    return v if math.isfinite(v) else None


def summary(df: pd.DataFrame) -> dict:
    """DESIGN §4 "summary" of scored rows (finite val_bpb); std is the sample std (ddof=1), None below two
    values; loss statistics only when every scored row has val_loss (as results.summary.summarize)."""
    scored = df[df["val_bpb"].notna()]
    full_loss = bool(len(scored)) and scored["val_loss"].notna().all()
    loss = scored["val_loss"] if full_loss else scored["val_loss"].iloc[0:0]
    return {"n": int(len(scored)),
            "mean_val_bpb": _stat(scored["val_bpb"], "mean"), "std_val_bpb": _stat(scored["val_bpb"], "std"),
            "mean_val_loss": _stat(loss, "mean"), "std_val_loss": _stat(loss, "std")}


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, df.to_csv(index=False))
