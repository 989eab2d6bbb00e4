"""results.csv: one pandas row per run (the audit JSON's run keys), written atomically."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from results.files import atomic_write
from results.summary import RUN_KEYS, run_row
from results.types import Run, RunSet


def frame(runs: RunSet | list[Run]) -> pd.DataFrame:
    """One row per run, columns RUN_KEYS, in the order the runs were found; missing values are NA/NaN."""
    runs = runs.runs if isinstance(runs, RunSet) else runs
    df = pd.DataFrame([run_row(r) for r in runs], columns=list(RUN_KEYS))
    for col in ("seed", "artifact_bytes", "code_bytes", "steps"):
        df[col] = df[col].astype("Int64")
    for col in ("val_loss", "val_bpb", "train_time_ms", "eval_time_ms", "bytes_per_token"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, df.to_csv(index=False))
