"""PNG plots for a report: train loss vs step per seed, and per-seed val_bpb beside the baseline's.

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

from results.files import atomic_write  # noqa: E402
from results.types import Run  # noqa: E402


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def train_loss(runs: list[Run], path: str | Path) -> Path | None:
    """Train loss vs step, one line per seed (from Run.curve)."""
    curves = [r for r in runs if r.curve]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in curves:
        ax.plot([c.step for c in r.curve], [c.train_loss for c in r.curve],
                label=f"seed {r.seed if r.seed is not None else r.log}", lw=1.2)
    all_loss = sorted(c.train_loss for r in curves for c in r.curve)
    median = all_loss[len(all_loss) // 2]
    if all_loss[-1] > 1.5 * median:            # the first steps (~ln vocab) would flatten the interesting part
        ax.set_ylim(all_loss[0] - 0.05 * median, 1.5 * median)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats)")
    ax.set_title("Train loss per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
