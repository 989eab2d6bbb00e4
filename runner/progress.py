"""Live progress of a batch: one rich progress bar per seed from the streamed `step:N/M` lines.

Plain mode (`--no-progress`, or stdout not a terminal) prints every streamed line as `[seed S] line`.
Both modes end with the same final table. ETA per seed: the smaller of (remaining steps x mean step time)
and (the wall-clock cap minus train time), since the payload stops at the cap.
"""
from __future__ import annotations

import re
import sys
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

STEP_RE = re.compile(r"step:(\d+)/(\d+)\s+train_loss:([-\d.eE+naif]+)\s+train_time:([\d.]+)ms")
SCORE_RE = re.compile(r"^(legal_ttt_exact|final_int6_sliding_window_exact|final_int6_roundtrip_exact)\s"
                      r".*?val_bpb:([\d.]+)")
SCORE_RANK = {"final_int6_roundtrip_exact": 1, "final_int6_sliding_window_exact": 2, "legal_ttt_exact": 3}


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}h{(s % 3600) // 60:02d}m"


class SeedView:
    def __init__(self, seed: int):
        self.seed = seed
        self.attempt = 0
        self.status = "queued"
        self.node: str | None = None
        self.step = 0
        self.iters: int | None = None
        self.loss: float | None = None
        self.train_ms: float | None = None
        self.score: tuple[int, str, float] | None = None   # (rank, label, val_bpb)
        self.error: str | None = None

    def eta_s(self, cap_s: float | None) -> float | None:
        if not self.step or not self.iters or self.train_ms is None:
            return None
        per = self.train_ms / 1000 / self.step
        eta = (self.iters - self.step) * per
        if cap_s:
            eta = min(eta, max(0.0, cap_s - self.train_ms / 1000))
        return eta


class BatchProgress:
    def __init__(self, seeds: list[int], enabled: bool = True, cap_s: float | None = None,
                 console: Console | None = None):
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self.cap_s = cap_s
        self.views = {s: SeedView(s) for s in seeds}
        self.progress: Progress | None = None
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> "BatchProgress":
        if self.live:
            self.progress = Progress(
                TextColumn("seed {task.fields[seed]:>6}"), BarColumn(bar_width=30),
                TextColumn("{task.completed:>6.0f}/{task.total:<6.0f}"),
                TextColumn("train {task.fields[train]:>6}"), TextColumn("loss {task.fields[loss]:>7}"),
                TextColumn("ETA {task.fields[eta]:>6}"), TextColumn("{task.fields[status]}"),
                console=self.console, refresh_per_second=4)
            for s in self.views:
                self.tasks[s] = self.progress.add_task("", total=1, seed=s, train="-", loss="-", eta="-",
                                                       status=self.views[s].status)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def say(self, text: str) -> None:
        if self.progress:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    # --- events from the driver ------------------------------------------------------------------
    def attempt_started(self, seed: int, attempt: int) -> None:
        v = self.views[seed]
        v.attempt, v.status, v.step, v.iters, v.loss, v.train_ms = attempt, "queued", 0, None, None, None
        if attempt > 1:
            self.say(f"[seed {seed}] attempt {attempt} queued")
        self._update(seed)

    def node(self, seed: int, node: str) -> None:
        v = self.views[seed]
        v.node, v.status = node, f"running (attempt {v.attempt})"
        if not self.progress:
            self.say(f"[seed {seed}] attempt {v.attempt} running on {node}")
        self._update(seed)

    def line(self, seed: int, text: str) -> None:
        v = self.views[seed]
        m = STEP_RE.search(text)
        if m:
            v.step, v.iters = int(m.group(1)), int(m.group(2))
            v.train_ms = float(m.group(4))
            try:
                v.loss = float(m.group(3))
            except ValueError:
                pass
        m = SCORE_RE.search(text)
        if m:
            rank = SCORE_RANK[m.group(1)]
            if v.score is None or rank >= v.score[0]:
                v.score = (rank, m.group(1), float(m.group(2)))
        if not self.progress:
            self.say(f"[seed {seed}] {text}")
        elif m or STEP_RE.search(text):
            self._update(seed)

    def attempt_ended(self, seed: int, attempt: int, state: str, error: str | None) -> None:
        v = self.views[seed]
        v.error = error
        v.status = {"succeeded": "done", "failed": "FAILED", "pending": "retrying"}.get(state, state)
        msg = f"[seed {seed}] attempt {attempt} {state}" + (f": {error}" if error else "")
        self.say(msg)
        self._update(seed)

    def _update(self, seed: int) -> None:
        if not self.progress:
            return
        v = self.views[seed]
        self.progress.update(self.tasks[seed], total=v.iters or 1, completed=v.step if v.iters else 0,
                             train=fmt_s(v.train_ms / 1000 if v.train_ms is not None else None),
                             loss=f"{v.loss:.4f}" if v.loss is not None else "-",
                             eta=fmt_s(v.eta_s(self.cap_s)), status=v.status)

    # --- the end ----------------------------------------------------------------------------------
    def final_table(self, ledger) -> Table:
        t = Table(title="batch")
        for col in ("seed", "state", "attempts", "node", "steps", "train", "val_bpb", "error"):
            t.add_column(col)
        for s, v in self.views.items():
            e = ledger.entry(s)
            last = e["attempts"][-1] if e["attempts"] else {}
            t.add_row(str(s), e["state"], str(len(e["attempts"])), _short_node(last.get("node")),
                      f"{v.step}/{v.iters}" if v.iters else "-",
                      fmt_s(v.train_ms / 1000 if v.train_ms is not None else None),
                      f"{v.score[2]:.5f}" if v.score else "-", (last.get("error") or "")[:60])
        return t

    def print_final(self, ledger) -> None:
        Console(file=sys.stdout).print(self.final_table(ledger))


def _short_node(node: str | None) -> str:
    if not node:
        return "-"
    host, _, nid = node.partition(":")
    return f"{host}:{nid[:8]}" if nid else host


def status_table(ledger, rehearsal: bool = False) -> Group:
    """`pgolf status`: one row per attempt (every attempt, not only the last), from the ledger alone: when
    it ran, its exit, where (node or pod id), for pods what they cost (billed by RunPod or estimated; a
    rehearsal's cost is fake) and whether the pod was verified gone; the attempts' errors in full below.
    Fits 80 columns."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True, show_edge=False)
    for col in ("seed", "state", "att", "time", "exit"):
        t.add_column(col, no_wrap=True)
    t.add_column("node / pod", overflow="fold")
    t.add_column("cost", no_wrap=True)
    t.add_column("pod gone", no_wrap=True)
    errors = []
    for s in ledger.seeds():
        e = ledger.entry(s)
        for i, a in enumerate(e["attempts"] or [{}]):
            t.add_row(str(s) if i == 0 else "", e["state"] if i == 0 else "", str(a.get("attempt") or "-"),
                      f"{_clock(a.get('started'))}-{_clock(a.get('ended'))}" if a else "-",
                      "-" if a.get("exit_code") is None else str(a["exit_code"]),
                      a.get("pod_id") or _short_node(a.get("node")), _cost(a, rehearsal), _terminated(a))
            if a.get("error"):
                errors.append(Text(f"seed {s} attempt {a.get('attempt')}: {a['error']}"))
    return Group(t, *errors)


def _clock(iso: str | None) -> str:
    """HH:MM of an ISO timestamp (the date is in batch.json's created_at)."""
    return iso[11:16] if iso and len(iso) >= 16 else "…"


def _cost(a: dict, rehearsal: bool) -> str:
    usd = a.get("cost_usd")
    if usd is None:
        return "-"
    kind = "billed" if a.get("cost_source") == "billed" else "est."
    return f"fake {usd:.2f} {kind}" if rehearsal else f"${usd:.2f} {kind}"


def _terminated(a: dict) -> str:
    if not a.get("pod_id"):
        return "-"
    return {True: "yes", False: "NO"}.get(a.get("pod_terminated"), "?")
