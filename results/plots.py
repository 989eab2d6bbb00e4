"""PNG plots for a report: train loss per seed against training time (beside the baseline record's curve, abort
points marked), and per-seed val_bpb beside the baseline's.

matplotlib's Agg backend: no display needed (CI, pods). Each function writes one file atomically and
returns its path, or None when there is nothing to draw.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from results.curves import Curve, run_points  # noqa: E402
from results.files import atomic_write  # noqa: E402
from results.types import Run  # noqa: E402


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def train_loss(runs: list[Run], path: str | Path, *, baseline: Curve | None = None,
               aborted: list[tuple[Run, dict]] = ()) -> Path | None:
    """Train loss per seed against elapsed training time (the budget is time, not steps), beside the
    baseline record's mean curve (results.curves), with aborted seeds dotted and their abort points marked
    (`aborted`: (the aborted attempt's run, its ledger "abort" entry)). Logs that state no training time
    are drawn against the step instead."""
    curves = [r for r in runs if r.curve] + [r for r, _ in aborted if r.curve]
    if not curves:
        return None
    timed = all(len(run_points(r)[0]) >= 2 for r in curves)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    losses = []

    def draw(r: Run, **kw):
        if timed:
            t, l = run_points(r)
            ax.plot(t, l, lw=1.2, **kw)
        else:
            l = [c.train_loss for c in r.curve]
            ax.plot([c.step for c in r.curve], l, lw=1.2, **kw)
        losses.extend(l)
    for r in runs:
        if r.curve:
            draw(r, label=f"seed {r.seed if r.seed is not None else r.log}")
    for r, ab in aborted:
        if r.curve:
            draw(r, ls=":", label=f"seed {r.seed} (aborted)")
        if timed:
            ax.plot([ab["train_time_s"]], [ab["loss"]], "x", ms=10, mew=2, color="tab:red")
            ax.annotate("aborted", (ab["train_time_s"], ab["loss"]), xytext=(5, 5), textcoords="offset points",
                        fontsize=7, color="tab:red")
    if baseline is not None and timed:
        ax.plot(baseline.time_s, baseline.loss, color="black", ls="--", lw=1.5,
                label=f"record: {baseline.label} (mean of {baseline.seeds} seeds)")
        losses.extend(baseline.loss.tolist())
    all_loss = sorted(v for v in losses if v == v)
    median = all_loss[len(all_loss) // 2]
    if all_loss[-1] > 1.5 * median:            # the first steps (~ln vocab) would flatten the interesting part
        ax.set_ylim(all_loss[0] - 0.05 * median, 1.5 * median)
    ax.set_xlabel("elapsed training time (s)" if timed else "step")
    ax.set_ylabel("train loss (nats)")
    ax.set_title("Train loss per seed" + (" against training time" if timed else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def seeds_vs_baseline(cand: list[float], base: list[float] | None, threshold: float | None,
                      path: str | Path, *, cand_labels: list | None = None, ylabel: str = "val_bpb",
                      base_label: str = "baseline") -> Path | None:
    """Per-seed scores of the candidate beside the baseline's, the pass threshold as a dashed line."""
    if not cand:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([0] * len(cand), cand, color="tab:blue", zorder=3)
    for v, lab in zip(cand, cand_labels or []):
        ax.annotate(str(lab), (0, v), xytext=(6, 0), textcoords="offset points", fontsize=7)
    ax.hlines(sum(cand) / len(cand), -0.2, 0.2, color="tab:blue", lw=2)
    ticks = ["candidate"]
    if base:
        ax.scatter([1] * len(base), base, color="tab:gray", zorder=3)
        ax.hlines(sum(base) / len(base), 0.8, 1.2, color="tab:gray", lw=2)
        ticks.append("baseline\n" + "\n".join(textwrap.wrap(base_label, 28)[:3]))
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.5f}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlim(-0.6, len(ticks) - 0.4)
    ax.set_ylabel(f"{ylabel} (lower is better)")
    ax.set_title("Per-seed scores")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))
