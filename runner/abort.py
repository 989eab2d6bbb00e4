"""Early abort (issue 12): stop a seed whose train loss is clearly worse than the record's own curve.

At each chosen fraction of the wall-clock training budget (`[abort] at`), the seed's train loss is compared
with the record's mean train-loss curve (results.curves) at the same elapsed training time. The seed's value
is the mean of the losses it logged over the last 5% of the budget before that point (at least the latest
one), because a single step's loss swings by ±0.1 nats with its batch, and the record's is its mean curve
(over its seeds) averaged at the same times (results.curves.recent_vs). Worse by more than `[abort] margin` nats: the driver cancels the attempt through the
backend's normal cancel path (the one Ctrl-C uses; no process or pod is left) and records it as `aborted`:
its own state, not a failure, never retried, never counted in the statistics.

What the abort saved is estimated, not measured: the unused part of the attempt's expected time (train +
eval budget, plus the pod's set-up on RunPod) times the pod's price when it is known. On a pod shared by
several seeds ([runpod] seeds_per_pod) an abort stops that seed only and the pod goes on: the set-up is not
saved, and a later seed's time counts from its own start on the pod.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from results.curves import Curve, recent_vs
from runner.phases import read_line

WINDOW_FRACTION = 0.05       # the seed's loss: mean over the last 5% of the budget before the check


@dataclass
class Verdict:
    """Why a seed is aborted: at which check, its loss against the record's (both nats/token)."""
    fraction: float
    train_time_s: float
    loss: float
    record_loss: float
    margin: float
    note: str | None = None
    wall_time: float = field(default_factory=time.time)

    def reason(self) -> str:
        return (f"aborted: train loss {self.loss:.4f} at {self.train_time_s:.0f} s of training "
                f"({self.fraction:.0%} of the budget) is {self.loss - self.record_loss:+.4f} nats from the "
                f"record's {self.record_loss:.4f}, beyond the margin {self.margin:g}")

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "train_time_s": round(self.train_time_s, 3), "loss": self.loss,
                "record_loss": round(self.record_loss, 6), "margin": self.margin, "note": self.note}


@dataclass
class _Seen:
    points: list[tuple[float, float]] = field(default_factory=list)    # (train time s, loss)
    bytes_per_token: float | None = None
    checked: set[float] = field(default_factory=set)


class AbortWatch:
    """Reads every streamed line of every attempt; says when one must be aborted (once per attempt)."""

    def __init__(self, curve: Curve, fractions: list[float], margin: float, budget_s: float):
        self.curve, self.fractions, self.margin, self.budget_s = curve, sorted(fractions), margin, budget_s
        self.seen: dict[tuple[int, int], _Seen] = {}

    def line(self, seed: int, attempt: int, text: str) -> Verdict | None:
        info = read_line(text)
        if info.bytes_per_token is None and info.step is None:
            return None
        s = self.seen.setdefault((seed, attempt), _Seen())
        if info.bytes_per_token is not None:
            s.bytes_per_token = info.bytes_per_token
            return None
        t, loss = info.step.train_ms / 1000.0, info.step.loss
        if loss == loss:                               # NaN losses never enter the mean
            s.points.append((t, loss))
        due = [f for f in self.fractions if f not in s.checked and t >= f * self.budget_s]
        if not due:
            return None
        s.checked.update(due)
        f = due[-1]
        curve, note = self.curve.scaled_to(s.bytes_per_token)
        both = recent_vs(s.points, curve, t, WINDOW_FRACTION * self.budget_s)
        if both is None:
            return None                              # the record's curve does not reach this time
        mine, ref = both
        if mine - ref > self.margin:
            return Verdict(f, t, mine, ref, self.margin, note)
        return None

    def forget(self, seed: int, attempt: int) -> None:
        self.seen.pop((seed, attempt), None)


def savings(verdict: Verdict, started_at: float | None, expected_s: float, usd_per_hour: float | None) -> dict:
    """What aborting saved: hours of the attempt's expected time left unused, and their price when known."""
    used = max(0.0, verdict.wall_time - started_at) if started_at else verdict.train_time_s
    hours = max(0.0, expected_s - used) / 3600.0
    return {"saved_hours": round(hours, 4),
            "saved_usd": None if usd_per_hour is None else round(hours * usd_per_hour, 2)}


class AbortPolicy:
    """The spec's [abort] section made ready for the driver: the watch over streamed lines, and how to
    price what an abort saved (`expected_s`: the attempt's expected duration; `usd_per_hour`: the pod's
    price when the spec states it, else learned from the attempt's recorded cost)."""

    def __init__(self, watch: AbortWatch, expected_s: float, usd_per_hour: float | None, setup_s: float = 0.0):
        self.watch, self.expected_s, self.usd_per_hour, self.setup_s = watch, expected_s, usd_per_hour, setup_s

    @classmethod
    def from_spec(cls, spec) -> "AbortPolicy | None":
        """None when the spec has no [abort]; PgolfError when its curve cannot be read."""
        if spec.abort is None:
            return None
        from results.curves import require_record_curve
        curve = require_record_curve(spec.abort.curve or spec.baseline.ref, "[abort]")
        expected = spec.limits.train_seconds + spec.limits.eval_seconds
        price, setup = None, 0.0
        if spec.backend == "runpod":
            setup = spec.runpod.setup_s
            expected += setup
            price = spec.runpod.price_per_hour
        return cls(AbortWatch(curve, spec.abort.at, spec.abort.margin, spec.budget_seconds()), expected, price,
                   setup)

    def savings(self, verdict: Verdict, attempt: dict) -> dict:
        started, ended = _epoch(attempt.get("started")), _epoch(attempt.get("ended"))
        shared = attempt.get("shared_pod") or {}
        expected = self.expected_s
        if shared.get("position", 1) > 1:     # started on a pod set up for an earlier seed: no set-up of its own
            expected -= self.setup_s
        price = self.usd_per_hour or shared.get("usd_per_hour")
        cost = attempt.get("cost_usd")
        if price is None and cost and started and ended and ended > started:
            price = cost / ((ended - started) / 3600.0)       # the pod's own price, from what it cost
        return savings(verdict, started, expected, price)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    import datetime as dt
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None
