"""Train-loss curves against elapsed training time: a record's mean curve, and one seed's curve.

The budget of the challenge is wall-clock time, not steps (docs/CHALLENGE.md, "Rules in numbers"), so a seed
is compared with a record at the same elapsed TRAINING time (the `train_time` its log lines state), never at
the same step: a faster script reaches step N earlier and a slower one later. The record's curve is the mean
over its seeds' logged curves, each linearly interpolated (np.interp) on the union of their time points,
within the span every seed covers (no extrapolation).

Train loss is in nats per token, which depends on the tokenizer. When both sides state their bytes per token
and they differ, `Curve.scaled_to` converts the record's curve to the candidate's tokens (equal nats per
byte: loss × bpt_candidate / bpt_record; this takes the training text's bytes per token to be the
validation text's, which is close for FineWeb shards but not exact, and the callers say so).

Used by the runner's early abort and live view, and by the report's loss plot.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from results.errors import PgolfError
from results.types import Run

BPT_TOLERANCE = 5e-4           # bytes/token within 0.05%: the same tokenizer (results.stats uses the same)


@dataclass
class Curve:
    """Train loss (nats/token) against elapsed training time (seconds), increasing in time."""
    label: str
    time_s: np.ndarray
    loss: np.ndarray
    seeds: int = 1
    bytes_per_token: float | None = None

    def at(self, t_s: float) -> float | None:
        """The loss at `t_s` seconds (linear between logged points); None outside the logged span."""
        if len(self.time_s) == 0 or t_s < self.time_s[0] or t_s > self.time_s[-1]:
            return None
        return float(np.interp(t_s, self.time_s, self.loss))

    @property
    def end_s(self) -> float:
        return float(self.time_s[-1]) if len(self.time_s) else 0.0

    def scaled_to(self, bytes_per_token: float | None) -> tuple["Curve", str | None]:
        """(this curve in the tokens of a candidate with `bytes_per_token`, a note when it was converted)."""
        mine = self.bytes_per_token
        if not bytes_per_token or not mine or abs(bytes_per_token / mine - 1) <= BPT_TOLERANCE:
            return self, None
        ratio = bytes_per_token / mine
        note = (f"record curve converted to the candidate's tokens (×{ratio:.4f}: {bytes_per_token:.5f} vs "
                f"{mine:.5f} bytes/token, equal nats per byte assumed)")
        return Curve(self.label, self.time_s, self.loss * ratio, self.seeds, bytes_per_token), note


def run_points(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, loss) of a run's logged train losses that state their training time, increasing in time;
    of several points at one time (logs that round to 0.1 minute) the last logged one is kept."""
    pts: dict[float, float] = {}
    for c in run.curve:
        if c.train_time_ms is not None and np.isfinite(c.train_loss):
            pts[c.train_time_ms / 1000.0] = c.train_loss      # a later line at the same time replaces it
    if not pts:
        return np.empty(0), np.empty(0)
    t = np.array(sorted(pts))
    return t, np.array([pts[x] for x in t])


def mean_curve(runs: list[Run], label: str) -> Curve | None:
    """The mean train-loss curve of runs (one per seed) on the union of their time points, within the span
    they all cover; None when fewer than two points remain."""
    curves = [run_points(r) for r in runs]
    curves = [(t, l) for t, l in curves if len(t) >= 2]
    if not curves:
        return None
    start, end = max(t[0] for t, _ in curves), min(t[-1] for t, _ in curves)
    grid = np.unique(np.concatenate([t for t, _ in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    if len(grid) < 2:
        return None
    loss = np.mean([np.interp(grid, t, l) for t, l in curves], axis=0)
    bpts = [r.bytes_per_token for r in runs if r.bytes_per_token]
    return Curve(label, grid, loss, seeds=len(curves), bytes_per_token=float(np.mean(bpts)) if bpts else None)


def record_curve(ref) -> Curve | None:
    """The mean curve of a record folder or run directory (its scored seeds, one run each); None for a
    number, a submission.json or a folder whose logs state no training times."""
    if ref is None or isinstance(ref, (int, float)):
        return None
    path = Path(str(ref)).expanduser()
    if not path.is_dir():
        return None
    from results.load import load
    rs = load(path)
    runs = [r for r in rs.runs if r.val_bpb is not None] or rs.runs
    return mean_curve(runs, path.name)


def require_record_curve(ref, what: str) -> Curve:
    """`record_curve`, or one line saying why there is none (for the spec's [abort] section)."""
    curve = record_curve(ref)
    if curve is None:
        raise PgolfError(f"{what}: {ref!s} gives no train-loss curve (need a record folder or run directory "
                         f"whose logs state train_loss with train_time)")
    return curve


def recent_vs(points: list[tuple[float, float]], curve: Curve, t_s: float,
              window_s: float) -> tuple[float, float] | None:
    """(seed's mean loss, record's mean loss) over the seed's points logged within `window_s` before `t_s`
    (at least the latest), the record's curve taken at the same times: a single step's loss swings with
    its batch, a mean over a short window much less, and averaging both sides over the same times keeps a
    falling curve from biasing the difference. None when the record's curve does not cover those times."""
    recent = [(x, l) for (x, l) in points if t_s - window_s <= x <= t_s] or points[-1:]
    refs = [curve.at(x) for x, _ in recent]
    if not recent or any(r is None for r in refs):
        return None
    return sum(l for _, l in recent) / len(recent), sum(refs) / len(refs)
