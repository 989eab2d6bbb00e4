"""Live progress of a batch: one row per seed, from the streamed log lines (runner/phases.py reads them).

Each row shows the seed's phase (queued, set-up, compile, training, evaluation, serialisation, collecting)
with the time spent in it, ticking live, so an evaluation of several minutes never looks like a stalled bar;
a training bar that fills with the larger of step/iterations and train time/wall-clock cap (the payload stops
at the cap, long before its nominal iterations); and, when the baseline is a record folder, the seed's train
loss against the record's mean curve at the same elapsed training time (results/curves.py; the loss is the
mean over the last 5% of the budget, as the early abort uses it).

A RunPod pod whose bootstrap has not answered yet is *starting* (runner/backends/runpod/instances.py
`wait_ready`): its row shows what it is doing, by the backend's `pod ID starting: LABEL (...)` lines, with
the time since the first of them (`pulling image 3:40`), until its `pod ID up ...` line.

Plain mode (`--no-progress`, or stdout not a terminal) prints one line per event, not every log line:
attempt start and end, machine found, phase changes, a step summary every 10% of training, final scores,
and pgolf's own lines (`pgolf-runpod:` / `pgolf-pod:`). Every log line is in the attempt's train.log.
Both modes end with the same final table.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from results.curves import Curve, recent_vs
from runner.phases import advance, read_line

SCORE_RANK = {"final_int6_roundtrip_exact": 1, "final_int6_sliding_window_exact": 2, "legal_ttt_exact": 3}
SUMMARY_EVERY = 0.1          # plain mode: a step summary every 10% of training
BAR_TOTAL = 1000
POD_STARTING = re.compile(r"^pgolf-runpod: pod \S+ starting: (.+?) \(")   # runpod backend: `_Starting`
POD_UP = re.compile(r"^pgolf-runpod: pod \S+ up ")


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
        self.phase = "queued"
        self.phase_since = time.monotonic()
        self.node: str | None = None
        self.starting: str | None = None          # a pod not answering yet: what it is doing
        self.starting_since: float | None = None
        self.step = 0
        self.iters: int | None = None
        self.loss: float | None = None
        self.train_ms: float | None = None
        self.stopped = False                      # training ended (wall-clock cap or last step)
        self.points: list[tuple[float, float]] = []   # (train time s, loss) for the comparison with the record
        self.bytes_per_token: float | None = None
        self.vs_record: float | None = None       # recent loss minus the record's at the same time
        self.summaries = 0                        # plain mode: step summaries printed
        self.score: tuple[int, str, float] | None = None   # (rank, label, val_bpb)
        self.error: str | None = None

    def reset(self, attempt: int) -> None:
        seed = self.seed
        self.__init__(seed)
        self.attempt = attempt

    def eta_s(self, cap_s: float | None) -> float | None:
        if self.stopped or not self.step or not self.iters or self.train_ms is None:
            return None
        per = self.train_ms / 1000 / self.step
        eta = (self.iters - self.step) * per
        if cap_s:
            eta = min(eta, max(0.0, cap_s - self.train_ms / 1000))
        return eta

    def fraction(self, cap_s: float | None) -> float:
        """How far training is: the larger of step/iterations and train time/cap; 1 once it ended."""
        if self.stopped or self.phase in ("evaluation", "serialisation", "collecting"):
            return 1.0
        f = self.step / self.iters if self.iters else 0.0
        if cap_s and self.train_ms is not None:
            f = max(f, self.train_ms / 1000 / cap_s)
        return min(1.0, f)


class PhaseColumn(ProgressColumn):
    """The phase and the time spent in it, re-rendered on every refresh (it ticks without new lines)."""

    def render(self, task) -> Text:
        phase, since = task.fields.get("phase", "queued"), task.fields.get("since")
        done = phase in ("done", "FAILED", "ABORTED") or phase.endswith("(earlier)")
        clock = "" if since is None or done else " " + fmt_s(time.monotonic() - since)
        style = {"training": "cyan", "evaluation": "magenta", "serialisation": "magenta",
                 "collecting": "green", "done": "green", "FAILED": "red", "ABORTED": "yellow"}.get(phase, "dim")
        return Text(f"{phase}{clock}".ljust(19), style=style)


class BatchProgress:
    def __init__(self, seeds: list[int], enabled: bool = True, cap_s: float | None = None,
                 console: Console | None = None, curve: Curve | None = None):
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self.cap_s = cap_s
        self.curve = curve
        self.views = {s: SeedView(s) for s in seeds}
        self.progress: Progress | None = None
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> "BatchProgress":
        if self.live:
            cols = [TextColumn("seed {task.fields[seed]:>6}"), PhaseColumn(), BarColumn(bar_width=24),
                    TextColumn("{task.fields[steps]:>13}"), TextColumn("train {task.fields[train]:>5}"),
                    TextColumn("loss {task.fields[loss]:>7}")]
            if self.curve is not None:
                cols.append(TextColumn("vs record {task.fields[vs]:>7}"))
            cols += [TextColumn("ETA {task.fields[eta]:>5}"), TextColumn("{task.fields[status]}")]
            self.progress = Progress(*cols, console=self.console, refresh_per_second=4)
            for s in self.views:
                self._add_task(s)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def _add_task(self, seed: int) -> None:
        v = self.views[seed]
        self.tasks[seed] = self.progress.add_task("", total=BAR_TOTAL, seed=seed, phase=v.status if
                                                  v.status.endswith("(earlier)") else v.phase, since=None,
                                                  steps="-", train="-", loss="-", vs="-", eta="-", status="")

    def add_seeds(self, seeds: list[int]) -> None:
        """Seeds of a new wave (adaptive batches): a queued row each."""
        for s in seeds:
            if s not in self.views:
                self.views[s] = SeedView(s)
                if self.progress:
                    self._add_task(s)

    def say(self, text: str) -> None:
        if self.progress:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    # --- events from the driver ------------------------------------------------------------------
    def attempt_started(self, seed: int, attempt: int) -> None:
        v = self.views[seed]
        v.reset(attempt)
        v.status = f"attempt {attempt}"
        if not self.progress or attempt > 1:
            self.say(f"[seed {seed}] attempt {attempt} queued")
        self._update(seed)

    def node(self, seed: int, node: str) -> None:
        v = self.views[seed]
        v.node = node
        v.status = f"attempt {v.attempt} on {_short_node(node)}"
        self._phase(v, "set-up")
        if not self.progress:
            self.say(f"[seed {seed}] attempt {v.attempt} running on {node}")
        self._update(seed)

    def line(self, seed: int, text: str) -> None:
        v = self.views[seed]
        if self._pod_start(v, text):
            return
        info = read_line(text)
        if info.event:
            self.say(f"[seed {seed}] {text}")
        if info.bytes_per_token is not None:
            v.bytes_per_token = info.bytes_per_token
        if info.stopped_ms is not None:
            v.stopped, v.train_ms = True, info.stopped_ms
            if not self.progress:
                self.say(f"[seed {seed}] training stopped at the wall-clock cap: step {v.step}/{v.iters}, "
                         f"train {fmt_s(info.stopped_ms / 1000)}")
        if info.phase is not None and (v.phase == "queued" or info.phase != v.phase):
            self._phase(v, info.phase)
        if info.step is not None:
            self._step(v, info.step)
        if info.score is not None:
            label, bpb = info.score
            rank = SCORE_RANK.get(label, 0)
            if v.score is None or rank >= v.score[0]:
                v.score = (rank, label, bpb)
            if not self.progress:
                self.say(f"[seed {seed}] {label} val_bpb {bpb:.5f}")
        if info.step is not None or info.score is not None or info.phase is not None:
            self._update(seed)

    def _pod_start(self, v: SeedView, text: str) -> bool:
        """A starting pod's line (shown as its phase, timed from its first one); True when it was one."""
        m = POD_STARTING.match(text)
        if m:
            v.starting = m.group(1)
            v.starting_since = v.starting_since or time.monotonic()
        elif POD_UP.match(text) and v.starting is not None:
            v.starting, v.phase_since = None, time.monotonic()
        else:
            return False
        if not self.progress:
            self.say(f"[seed {v.seed}] {text}")
        self._update(v.seed)
        return True

    def _step(self, v: SeedView, step) -> None:
        v.step, v.iters, v.train_ms = step.step, step.iterations, step.train_ms
        t = step.train_ms / 1000
        if step.loss == step.loss:
            v.loss = step.loss
            v.points.append((t, step.loss))
        if self.curve is not None and v.points:
            curve, _note = self.curve.scaled_to(v.bytes_per_token)
            both = recent_vs(v.points, curve, t, 0.05 * (self.cap_s or t))
            v.vs_record = None if both is None else both[0] - both[1]
        if not self.progress:
            f = v.fraction(self.cap_s)
            if f >= SUMMARY_EVERY * (v.summaries + 1) or step.step == step.iterations:
                v.summaries = int(f / SUMMARY_EVERY)
                self.say(f"[seed {v.seed}] {self._summary(v)}")

    def _summary(self, v: SeedView) -> str:
        text = f"step {v.step}/{v.iters} train {fmt_s((v.train_ms or 0) / 1000)}"
        if v.loss is not None:
            text += f" loss {v.loss:.4f}"
        if v.vs_record is not None:
            text += f" ({v.vs_record:+.4f} vs record)"
        eta = v.eta_s(self.cap_s)
        return text + (f" ETA {fmt_s(eta)}" if eta is not None else "")

    def _phase(self, v: SeedView, phase: str) -> None:
        new = advance(v.phase, phase)
        if new == v.phase:
            return
        if not self.progress and v.phase != "queued":
            self.say(f"[seed {v.seed}] {v.phase} -> {new} after {fmt_s(time.monotonic() - v.phase_since)}")
        v.phase, v.phase_since = new, time.monotonic()

    def attempt_ended(self, seed: int, attempt: int, state: str, error: str | None,
                      abort: dict | None = None) -> None:
        v = self.views[seed]
        v.error = error
        v.status = {"succeeded": "done", "failed": "FAILED", "pending": "retrying",
                    "aborted": "ABORTED"}.get(state, state)
        if abort:
            saved = (f"${abort['saved_usd']:.2f}" if abort.get("saved_usd") is not None
                     else f"{abort.get('saved_hours', 0):.2f} h")
            v.status += f" (saved {saved})"
        if state in ("succeeded", "failed", "aborted"):
            v.phase, v.phase_since = {"succeeded": "done", "failed": "FAILED", "aborted": "ABORTED"}[state], None
        msg = f"[seed {seed}] attempt {attempt} {state}" + (f": {error}" if error else "")
        self.say(msg + (f"; saved about {v.status.split('saved ')[1][:-1]}" if abort else ""))
        self._update(seed)

    def _update(self, seed: int) -> None:
        if not self.progress:
            return
        v = self.views[seed]
        self.progress.update(self.tasks[seed], completed=BAR_TOTAL * v.fraction(self.cap_s),
                             phase=v.starting or v.phase, since=v.starting_since if v.starting else v.phase_since, steps=f"{v.step}/{v.iters}" if v.iters else "-",
                             train=fmt_s(v.train_ms / 1000 if v.train_ms is not None else None),
                             loss=f"{v.loss:.4f}" if v.loss is not None else "-",
                             vs=f"{v.vs_record:+.4f}" if v.vs_record is not None else "-",
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
                      f"{v.score[2]:.5f}" if v.score else "-", last.get("error") or "")
        return t

    def print_final(self, ledger) -> None:
        Console(file=sys.stdout).print(self.final_table(ledger))


def ledger_notes(ledger, rehearsal: bool = False) -> list[str]:
    """`pgolf status` below the table: an adaptive batch's waves and outcome, the pods shared by several
    seeds and how their cost was split, twin pods (a lost create answer's) and their cost, and what early
    aborts saved."""
    out = []
    st = ledger.data.get("adaptive")
    if st:
        out.append(f"adaptive: {st.get('rule')}")
        for w in st.get("waves") or []:
            look = w.get("look")
            what = "running" if look is None else f"{look.get('action')} ({look.get('n')} scored)"
            out.append(f"  wave {w.get('wave')}: seeds {w.get('seeds')}: {what}")
        o = st.get("outcome")
        out.append(f"  outcome: {o['action']} after wave {o['wave']}, {o['seeds_run']} of up to {o['max_seeds']} "
                   f"seeds run; {o['p_report']}" if o else "  outcome: not stopped yet (`pgolf resume` goes on)")
    pods: dict[str, list[tuple[int, dict]]] = {}
    for s, a in ledger.all_attempts():
        if a.get("pod_id") and isinstance(a.get("shared_pod"), dict):
            pods.setdefault(a["pod_id"], []).append((s, a))
    for pod, atts in pods.items():
        total = atts[0][1]["shared_pod"].get("pod_cost_usd")
        shares = ", ".join(f"seed {s} " + _usd(a.get("cost_usd"), rehearsal) for s, a in atts)
        out.append(f"pod {pod} shared by {len(atts)} seeds one after another: cost "
                   + (f"{_usd(total, rehearsal)} split as {shares} (each its own run time plus an equal share "
                      f"of the set-up)" if total is not None else "not known yet (the pod is not gone)"))
    for s, a in ledger.all_attempts():
        if a.get("twin_pods"):
            out.append(f"seed {s} attempt {a['attempt']}: twin pod(s) {', '.join(a['twin_pods'])} of its pod (a create "
                       f"answer lost, the create retried), terminated by pgolf; they cost "
                       + ("an amount not recorded" if a.get("twin_cost_usd") is None else
                          _usd(a["twin_cost_usd"], rehearsal) + (", counted in this attempt's cost"
                                                                 if a.get("cost_usd") is not None else "")))
    for s, a in ledger.all_attempts():
        ab = a.get("abort")
        if ab:
            saved = _usd(ab["saved_usd"], rehearsal) if ab.get("saved_usd") is not None else \
                f"{ab.get('saved_hours', 0):.2f} h"
            out.append(f"seed {s} attempt {a['attempt']} aborted at {ab['train_time_s']:.0f} s of training: loss "
                       f"{ab['loss']:.4f} vs the record's {ab['record_loss']:.4f} (margin {ab['margin']:g}); "
                       f"saved about {saved}")
    return out


def _short_node(node: str | None) -> str:
    if not node:
        return "-"
    host, _, nid = node.partition(":")
    return f"{host}:{nid[:8]}" if nid else host


def status_table(ledger, rehearsal: bool = False, driver_alive: bool = True) -> Group:
    """`pgolf status`: one row per attempt (every attempt, not only the last), from the ledger alone: when
    it ran, its exit, where (node or pod id), for pods what they cost (billed by RunPod or estimated; a
    rehearsal's cost is fake) and whether the pod was verified gone; the attempts' errors in full below.
    With no live driver (runner/lock.py), a seed the ledger still calls running shows as `running (driver
    dead)`. An attempt on a pod shared by several seeds shows its place there (`[2/3]`: the second of
    three) and its share of the pod's cost; `ledger_notes` says who shared each pod. Fits 80 columns."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), show_edge=False)   # one space apart (the box)
    t.add_column("seed", no_wrap=True)
    # on a narrow terminal the state's words wrap ("running (driver dead)"), never a pod id or node: it is
    # what `pgolf cluster gc` and RunPod's console show
    t.add_column("state", min_width=9)
    for col in ("att", "time", "exit", "node / pod", "cost", "pod gone"):
        t.add_column(col, no_wrap=True)
    errors = []
    for s in ledger.seeds():
        e = ledger.entry(s)
        state = e["state"] if driver_alive or e["state"] != "running" else "running (driver dead)"
        for i, a in enumerate(e["attempts"] or [{}]):
            t.add_row(str(s) if i == 0 else "", state if i == 0 else "", str(a.get("attempt") or "-"),
                      f"{_clock(a.get('started'))}-{_clock(a.get('ended'))}" if a else "-",
                      "-" if a.get("exit_code") is None else str(a["exit_code"]),
                      _where(a), _cost(a, rehearsal), _terminated(a))
            if a.get("error"):
                errors.append(Text(f"seed {s} attempt {a.get('attempt')}: {a['error']}"))
    return Group(t, *errors)


def _clock(iso: str | None) -> str:
    """HH:MM of an ISO timestamp (the date is in batch.json's created_at)."""
    return iso[11:16] if iso and len(iso) >= 16 else "…"


def _where(a: dict) -> str:
    """The attempt's pod (with its place on a shared pod) or node."""
    if not a.get("pod_id"):
        return _short_node(a.get("node"))
    shared = a.get("shared_pod")
    place = f" [{shared.get('position')}/{len(shared.get('attempts') or [])}]" if isinstance(shared, dict) else ""
    return a["pod_id"] + place


def _usd(usd: float | None, rehearsal: bool) -> str:
    if usd is None:
        return "-"
    return f"fake {usd:.2f}" if rehearsal else f"${usd:.2f}"


def _cost(a: dict, rehearsal: bool) -> str:
    if a.get("cost_usd") is None:
        return "-"
    return f"{_usd(a['cost_usd'], rehearsal)} {'billed' if a.get('cost_source') == 'billed' else 'est.'}"


def _terminated(a: dict) -> str:
    if not a.get("pod_id"):
        return "-"
    return {True: "yes", False: "NO"}.get(a.get("pod_terminated"), "?")
