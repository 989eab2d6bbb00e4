"""The batch driver: one Ray task per machine (one seed attempt, or a group of them), a durable ledger,
retries, Ctrl-C, results.

Design. The driver process is the only writer of ledger.json. Tasks talk to it through one small actor
(`EventChannel`, pinned to the driver's node): log lines are pushed fire-and-forget in small batches;
`meta` (node, pod id, ...) blocks the task until the driver has written the ledger and acknowledged it,
so a pod id is on disk before the pod is used. The driver loop alternates `ray.wait` on the attempts
with draining the channel. A task that runs on another node than the driver works in a node-local
scratch folder and returns its artifacts' bytes, which the driver writes into the attempt folder.

One path for one attempt per task and several. A backend that can share a machine between seeds
(`attempts_per_task() > 1`: RunPod's `seeds_per_pod`) gets the seeds launched together split into groups,
as evenly as results.power.cost prices them; any other backend gets groups of one. One task per group
(`group_task`) runs them one after another after one set-up. Each attempt keeps its own train.log,
artifacts, result.json and ledger entry, and its end comes through the channel as it happens (`ended`,
acknowledged once on disk), so a machine lost later never takes a finished seed with it; only the attempts of the group that had not ended run again, regrouped.
An early abort of one attempt on a shared machine stops that attempt only (`EventChannel.cancel`, which
the backend polls); the machine goes on with the next seed.

Failure policy (docs/ARCHITECTURE.md): a Ray system error (node died, worker crashed) or InfraFailure is
an infrastructure failure, retried up to `infra_retries` times; a non-zero exit or timeout is retried up to
`retries`, except a configuration or data error raised before training started (runner/failures.py),
which fails the seed at once unless `[limits] retry_config_errors`. A write the run directory refuses
(disk full) stops new attempts: the running ones end, and any of them that did not end whole and
successful is closed as interrupted, for `pgolf resume` once there is space (runner/storage.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from results.files import atomic_write
from results.secrets import Scrubber
from runner import storage
from runner.backends.base import AttemptResult, AttemptSpec, Backend, InfraFailure, NotRecorded
from runner.failures import LogWatch
from runner.ledger import DONE_STATES, INFRA_PREFIX, INTERRUPTED, Ledger, now_iso
from runner.proctree import attempt_marker, kill_marked
from runner.spec import JobSpec

POLL_S = 1.0                 # driver loop: longest ray.wait without news
EVENT_WAIT_S = 1.0           # a drain call waits this long for an event before returning empty
LINE_FLUSH_S = 0.2           # tasks push buffered log lines at least this often
OVERDUE_GRACE_S = float(os.environ.get("PGOLF_OVERDUE_GRACE_S", 300))   # backstop past an attempt's deadline
CANCEL_GRACE_S = 15.0        # Ctrl-C: time for tasks to kill their jobs before force-cancel
CANCEL_POLL_S = 1.0          # a task asks the driver at most this often whether an attempt is cancelled


# --------------------------------------------------------------------------------------------------
# Ray: cluster connection
# --------------------------------------------------------------------------------------------------
def connect(address: str | None, backend: Backend) -> None:
    """Join `address`, or start the embedded local cluster (dashboard off, all local CPUs, plus the
    backend's custom resources, e.g. RunPod's `runpod_pod` capacity)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address:
        env = getattr(backend, "runtime_env", lambda: None)()   # what the nodes need of pgolf (an Instant Cluster)
        ray.init(address=address, **kw, **({"runtime_env": env} if env else {}))
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                 resources=backend.local_resources(cpus), **kw)


# --------------------------------------------------------------------------------------------------
# The event channel (actor) and the task side of it
# --------------------------------------------------------------------------------------------------
@ray.remote(num_cpus=0, max_restarts=0)
class EventChannel:
    """Mailbox from attempt tasks to the driver. `meta` returns once the driver acked (ledger on disk)."""

    def __init__(self):
        self.events: list[tuple] = []
        self.waiters: dict[int, asyncio.Event] = {}
        self.refused: dict[int, str] = {}
        self.next_id = 0
        self.wake = asyncio.Event()
        self.kicked = False
        self.cancels: set[tuple[int, int]] = set()

    def _push(self, ev: tuple) -> None:
        self.events.append(ev)
        self.wake.set()

    async def lines(self, seed: int, attempt: int, lines: list[str]) -> None:
        self._push(("lines", seed, attempt, lines))

    async def process(self, seed: int, attempt: int, host: str, pid: int) -> None:
        self._push(("process", seed, attempt, host, pid))

    async def meta(self, seed: int, attempt: int, fields: dict[str, Any]) -> str | None:
        """Returns once the driver answered: None (on disk) or why the disk refused it."""
        return await self._acked("meta", seed, attempt, fields)

    async def ended(self, seed: int, attempt: int, payload: dict[str, Any]) -> str | None:
        """An attempt of a group ended ({"result", "files"}); returns once the driver recorded its end."""
        return await self._acked("ended", seed, attempt, payload)

    async def _acked(self, kind: str, seed: int, attempt: int, payload: Any) -> str | None:
        mid = self.next_id
        self.next_id += 1
        self.waiters[mid] = asyncio.Event()
        self._push((kind, seed, attempt, payload, mid))
        await self.waiters[mid].wait()
        del self.waiters[mid]
        return self.refused.pop(mid, None)

    async def cancel(self, seed: int, attempt: int) -> None:
        """The driver wants this attempt stopped, its task going on with the others it carries."""
        self.cancels.add((seed, attempt))

    async def cancelled(self, seed: int, attempt: int) -> bool:
        return (seed, attempt) in self.cancels

    async def drain(self, timeout: float = 0.0) -> list[tuple]:
        """Pending events; with `timeout`, first wait up to that long for one (or for `kick`)."""
        if not self.events and not self.kicked and timeout > 0:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        self.kicked = False
        out, self.events = self.events, []
        return out

    async def kick(self) -> None:
        """Make a waiting `drain` return now (the driver wants everything pushed so far)."""
        self.kicked = True
        self.wake.set()

    async def ack(self, ids: list[int], refused: str | None = None) -> None:
        for i in ids:
            if i in self.waiters:
                if refused:
                    self.refused[i] = refused
                self.waiters[i].set()


class TaskEvents:
    """`Events` for a backend running inside a Ray task: buffered lines, durable meta."""

    def __init__(self, channel, seed: int, attempt: int):
        import threading
        self.channel, self.seed, self.attempt = channel, seed, attempt
        self.buf: list[str] = []
        self.lock = threading.Lock()
        self.sent: list = []           # line batches the channel may not have taken in yet
        self.cancel_asked, self.cancel_seen = -math.inf, False
        self.closed = threading.Event()
        self.flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self.flusher.start()

    def line(self, text: str) -> None:
        with self.lock:
            self.buf.append(text)
            full = len(self.buf) >= 200
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            buf, self.buf = self.buf, []
            if buf:
                self.sent.append(self.channel.lines.remote(self.seed, self.attempt, buf))
            if len(self.sent) > 64:    # long runs: forget the batches the channel has taken in
                _, self.sent = ray.wait(self.sent, num_returns=len(self.sent), timeout=0)

    def delivered(self) -> None:
        """Every line so far is in the channel, ahead of anything sent after this returns. Ray runs an
        async actor's calls in no guaranteed order, so an attempt's end sent right after its last lines
        could overtake them, and the driver, which closes the log at the end, would drop them."""
        self.flush()
        with self.lock:
            sent, self.sent = self.sent, []
        ray.get(sent)

    def meta(self, **fields: Any) -> None:
        self.flush()
        refused = ray.get(self.channel.meta.remote(self.seed, self.attempt, fields))
        if refused:
            raise NotRecorded(f"the driver could not record {sorted(fields)}: {refused}")

    def process(self, host: str, pid: int) -> None:
        self.channel.process.remote(self.seed, self.attempt, host, pid)

    def cancel_requested(self) -> bool:
        now = time.monotonic()
        if not self.cancel_seen and now - self.cancel_asked >= CANCEL_POLL_S:
            self.cancel_asked = now
            self.cancel_seen = bool(ray.get(self.channel.cancelled.remote(self.seed, self.attempt)))
        return self.cancel_seen

    def end(self, result: AttemptResult, files: dict[str, bytes]) -> None:
        """A group's attempt ended: every line first, then its result; returns once the driver recorded
        it (NotRecorded when its disk refused)."""
        self.delivered()
        refused = ray.get(self.channel.ended.remote(self.seed, self.attempt, {"result": result, "files": files}))
        if refused:
            raise NotRecorded(f"the driver could not record the end of seed {self.seed} attempt "
                              f"{self.attempt}: {refused}")

    def _flush_loop(self) -> None:
        while not self.closed.wait(LINE_FLUSH_S):
            self.flush()

    def close(self) -> None:
        self.closed.set()
        self.delivered()


def _task_setup(attempts: list[AttemptSpec], script_blob: bytes, driver_node: str) -> tuple[list[AttemptSpec], Path | None]:
    """Inside a task: a SIGINT handler for ray.cancel, and on a node other than the driver's a scratch
    folder holding the script and the attempts' folders (their artifacts are shipped back)."""
    try:   # ray.cancel raises KeyboardInterrupt through SIGINT's handler: make sure there is one
        signal.signal(signal.SIGINT, signal.default_int_handler)    # (nohup / `cmd &` ignore SIGINT)
    except ValueError:
        pass   # not the main thread
    scratch = None
    if ray.get_runtime_context().get_node_id() != driver_node:
        first = attempts[0]
        sweep_scratch()
        scratch = Path(tempfile.mkdtemp(prefix=f"pgolf-s{first.seed}-a{first.attempt}-p{os.getpid()}-"))
        script = scratch / Path(first.script_path).name
        script.write_bytes(script_blob)
        folders = ["attempt"] if len(attempts) == 1 else [f"s{a.seed}-a{a.attempt}" for a in attempts]
        attempts = [dataclasses.replace(a, attempt_dir=str(scratch / f), script_path=str(script))
                    for a, f in zip(attempts, folders)]
    for a in attempts:
        Path(a.attempt_dir).mkdir(parents=True, exist_ok=True)
    return attempts, scratch


SCRATCH_GLOB = "pgolf-s*-a*-p*-*"


def sweep_scratch() -> list[Path]:
    """Remove this host's scratch folders whose task process is gone: a worker killed with its node, by a
    forced cancel or by kill -9 never runs its `finally`. The folder's name carries its process id."""
    gone = []
    for d in Path(tempfile.gettempdir()).glob(SCRATCH_GLOB):
        pid = d.name.split("-p", 1)[1].split("-", 1)[0] if "-p" in d.name else ""
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue                                  # alive (or someone else's, which we may not signal)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d)
    return gone


def _shipped(attempt: AttemptSpec, result: AttemptResult, scratch: Path | None) -> dict[str, bytes]:
    """The artifacts' bytes when the attempt ran in scratch on another node (nothing otherwise)."""
    files: dict[str, bytes] = {}
    if scratch is not None:
        for rel in result.artifacts:
            p = Path(attempt.attempt_dir) / rel
            if p.is_file():
                files[rel] = p.read_bytes()
    return files


@ray.remote(max_retries=0)
def group_task(backend, attempts: list[AttemptSpec], script_blob: bytes, driver_node: str, channel) -> None:
    """One or more seed attempts on one machine (`Backend.run_group`; one seed is a group of one): each
    one's end reaches the driver, and its ledger, as it happens; an exception ends the rest (the driver
    finishes them from it). On a node other than the driver's it works in scratch and ships artifacts back;
    the scratch goes on every way out, a cancel included."""
    attempts, scratch = _task_setup(attempts, script_blob, driver_node)
    events = [TaskEvents(channel, a.seed, a.attempt) for a in attempts]
    runs = backend.run_group(attempts, events)
    try:
        for i, result in runs:
            events[i].end(result, _shipped(attempts[i], result, scratch))
    finally:
        try:
            runs.close()            # a generator left early still runs its clean-up (the machine goes)
        finally:
            for ev in events:
                ev.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def groups(seeds: list[int], per_task: int) -> list[list[int]]:
    """The seeds split into ⌈n / per_task⌉ groups as even as can be (5 by 3: 3 + 2, 4 by 3: 2 + 2), in
    order: the split results.power.cost prices (every group pays one set-up; the largest sets the wall-clock)."""
    if not seeds:
        return []
    n = math.ceil(len(seeds) / per_task)
    size, extra = divmod(len(seeds), n)
    out, i = [], 0
    for g in range(n):
        j = i + size + (1 if g < extra else 0)
        out.append(seeds[i:j])
        i = j
    return out


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
def classify(exc: BaseException) -> tuple[bool, str]:
    """(is_infrastructure, message) for an exception raised by ray.get on an attempt."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, InfraFailure) or isinstance(cause, InfraFailure):
        return True, str(cause or exc).strip().splitlines()[-1] if str(cause or exc).strip() else "infrastructure failure"
    if isinstance(exc, ray.exceptions.RayTaskError):
        msg = str(cause or exc).strip().splitlines()
        return False, f"runner error: {type(cause or exc).__name__}: {msg[-1] if msg else ''}"
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return False, INTERRUPTED
    if isinstance(exc, ray.exceptions.RayError):   # NodeDiedError, WorkerCrashedError, ActorDiedError, ...
        first = str(exc).strip().splitlines()
        first = first[0].split(". ")[0] if first else ""
        return True, f"{type(exc).__name__}: {first}"[:200]
    return False, f"{type(exc).__name__}: {exc}"[:300]


class Driver:
    def __init__(self, run_dir: Path, spec: JobSpec, backend: Backend, ledger: Ledger, job_env: dict[str, str],
                 scrub: Scrubber, progress, script_path: Path, abort=None):
        self.run_dir, self.spec, self.backend, self.ledger = run_dir, spec, backend, ledger
        self.job_env, self.scrub, self.progress, self.script_path = job_env, scrub, progress, script_path
        self.limits = spec.limits
        self.timeout_s = spec.limits.timeout()
        self.per_task = 1                                     # attempts one task carries (setup: the backend's)
        self.running: dict[Any, list[tuple[int, int]]] = {}   # ref -> its attempts not ended yet, in run order
        self.carried: dict[Any, list[tuple[int, int]]] = {}   # ref -> every attempt it carries
        self.task_of: dict[tuple[int, int], Any] = {}         # (seed, attempt) -> the task carrying it
        self.logs: dict[tuple[int, int], storage.AttemptLog] = {}   # (seed, attempt) -> its train.log
        self.watches: dict[tuple[int, int], LogWatch] = {}  # (seed, attempt) -> what its log says so far
        self.procs: dict[tuple[int, int], tuple[str, int]] = {}
        self.exit_failures: dict[int, int] = {}
        self.infra_failures: dict[int, int] = {}
        self.first_seen: dict[Any, float] = {}     # ref -> first event of any of its attempts (it left the queue)
        self.began: set[tuple[int, int]] = set()   # attempts whose job started (meta `started`)
        self.overdue: set[tuple[int, int]] = set()
        self.ended_early: dict[tuple[int, int], tuple[list[str], str]] = {}   # a group's ended attempts: artifacts, state
        self.relaunch: list[int] = []              # seeds back to pending, launched (regrouped) by the loop
        self.storage_error: OSError | None = None   # the first write the run directory refused
        self.host = socket.gethostname()
        self.abort = abort                                   # runner.abort.AbortPolicy or None
        self.aborting: dict[tuple[int, int], tuple[Any, float, str]] = {}   # key -> (Verdict, when, how cancelled)
        self.channel = None

    def attempt_dir(self, seed: int, attempt: int) -> Path:
        return self.run_dir / "seeds" / str(seed) / f"attempt-{attempt}"

    # --- the run directory's disk ------------------------------------------------------------------
    def storage_failed(self, e: OSError) -> None:
        """A write was refused: from now on no attempt starts; the running ones go on to their end."""
        if self.storage_error is not None:
            return
        self.storage_error = storage.named(e, self.run_dir)
        self.progress.say(f"pgolf: cannot write {self.storage_error.filename} ({self.storage_error.strerror}): "
                          f"no new attempts; the running ones go on")
        for ref in list(self.running):
            if ref not in self.first_seen:       # still queued by Ray: it never starts
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - it may have ended meanwhile
                    pass

    def record(self, change, *args, **kw) -> bool:
        """A ledger change; False (and the disk's error noted) when it could not be saved."""
        try:
            change(*args, **kw)
            return True
        except OSError as e:
            self.storage_failed(e)
            return False

    def retry_writes(self) -> None:
        """What the disk refused earlier goes out as soon as it takes writes again."""
        if self.ledger.unsaved:
            self.record(self.ledger.save)
        for log in self.logs.values():
            if log.pending:
                log.flush()

    # --- launching -----------------------------------------------------------------------------
    def launch_all(self, seeds: list[int]) -> None:
        """The seeds' next attempts, `attempts_per_task` at most to a task (one machine), split evenly."""
        for group in groups(seeds, self.per_task):
            self.launch(group)

    def launch(self, seeds: list[int]) -> None:
        """One task (`group_task`) carrying the next attempt of each seed, one seed or several."""
        if self.storage_error is None and storage.full(self.run_dir):
            self.storage_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir)))
        if self.storage_error is not None:
            return
        specs: list[AttemptSpec] = []
        for seed in seeds:
            spec = self.start_attempt(seed)
            if spec is None:                 # the disk refused: the group's attempts already started end here
                for a in specs:
                    self.close_log(a.seed, a.attempt)
                    self.record(self.ledger.end_attempt, a.seed, a.attempt, "pending", error=INTERRUPTED)
                return
            specs.append(spec)
        ref = group_task.options(**self.options).remote(self.backend, specs, self.script_ref,
                                                        self.driver_node, self.channel)
        keys = [(a.seed, a.attempt) for a in specs]
        self.running[ref], self.carried[ref] = list(keys), keys
        for key in keys:
            self.task_of[key] = ref
            self.progress.attempt_started(*key)

    def start_attempt(self, seed: int) -> AttemptSpec | None:
        """The attempt's folder, its train.log and its ledger entry (on disk before it runs); None when the
        disk refused one of them."""
        k = self.ledger.next_attempt_number(seed)
        adir = self.attempt_dir(seed, k)
        try:
            with storage.writing(adir):
                (adir / "artifacts").mkdir(parents=True, exist_ok=True)
                log = storage.AttemptLog(adir / "train.log")
        except OSError as e:
            self.storage_failed(e)
            return None
        try:
            self.ledger.start_attempt(seed, self.backend.name)   # on disk before it runs, or not at all
        except OSError as e:
            log.close()
            self.storage_failed(e)
            return None
        self.logs[(seed, k)] = log
        self.watches[(seed, k)] = LogWatch()
        return AttemptSpec(run_dir=str(self.run_dir), seed=seed, attempt=k, attempt_dir=str(adir),
                           script_path=str(self.script_path), env=dict(self.job_env), timeout_s=self.timeout_s)

    # --- events ---------------------------------------------------------------------------------
    def pump_events(self, events: list[tuple] | None = None) -> None:
        """Handle channel events; without `events`, collect everything pushed so far first."""
        if events is None:
            self.channel.kick.remote()
            events = ray.get(self.ev_ref)
            self.ev_ref = self.channel.drain.remote(EVENT_WAIT_S)
        acks, refused = [], []
        for ev in events:
            kind, seed, k = ev[0], ev[1], ev[2]
            ref = self.task_of.get((seed, k))
            if ref is not None:
                self.first_seen.setdefault(ref, time.monotonic())   # the task really runs
            if kind == "lines":
                clean = [self.scrub(t) for t in ev[3]]
                log = self.logs.get((seed, k))
                if log is not None:
                    failed = log.write(clean)      # never raises: refused lines wait (or are counted)
                    if failed is not None:
                        self.storage_failed(failed)
                watch = self.watches.get((seed, k))
                for t in clean:
                    if watch is not None:
                        watch.feed(t)
                    if log is not None:            # lines after an attempt's end are not its seed's any more
                        self.progress.line(seed, t)
                    if self.abort is not None and (seed, k) not in self.aborting:
                        self.check_abort(seed, k, t)
            elif kind == "meta":
                fields = self.scrub.obj(dict(ev[3]))
                if self.record(self.ledger.update_attempt, seed, k, **fields):   # saved before the ack below
                    acks.append(ev[4])
                else:
                    refused.append(ev[4])
                if "started" in fields:
                    self.began.add((seed, k))
                if "node" in fields:
                    self.progress.node(seed, fields["node"])
                if (seed, k) in self.ended_early:  # a fact that came after its end (a shared pod's cost)
                    artifacts, state = self.ended_early[(seed, k)]
                    self.write_result(seed, k, artifacts, state)
            elif kind == "ended":
                (acks if self.ended(seed, k, ev[3]) else refused).append(ev[4])
            elif kind == "process":
                self.procs[(seed, k)] = (ev[3], ev[4])
        if acks:
            self.channel.ack.remote(acks)
        if refused:
            e = self.storage_error
            self.channel.ack.remote(refused, f"cannot write {e.filename} ({e.strerror})" if e else "ledger not written")

    # --- finishing an attempt --------------------------------------------------------------------
    def finish(self, ref) -> None:
        """A task ended. Its attempts that had ended are recorded already (`ended`); the others end with the
        task's error: the one that was running (or, when none had begun, the first: the set-up is its) with
        that error, the ones after it as infrastructure failures (they never ran; the machine is gone)."""
        try:
            ray.get(ref)
            exc = None
        except Exception as e:  # noqa: BLE001 - ray errors of the task
            exc = e
        self.pump_events()                 # the ends it reported, its last meta (cost, pod_terminated)
        left = self.running.pop(ref)
        carried = self.carried[ref]
        if left:
            infra, error = classify(exc) if exc is not None else \
                (False, "runner error: the task ended without this attempt's result")
            # whose the error is: the attempt that was running; when none had begun, the set-up failed,
            # and the set-up is the first attempt's (as on a machine of its own)
            culprit = next((key for key in left if key in self.began), None)
            if culprit is None and not any(key in self.began for key in carried):
                culprit = left[0]
            for key in left:
                if infra or key == culprit:
                    self.end_attempt(*key, AttemptResult(exit_code=None), infra, error, True, pumped=True)
                else:
                    self.overdue.discard(key)
                    self.end_attempt(*key, AttemptResult(exit_code=None), True,
                                     f"not run: the task carrying it ended first ({error})", True, pumped=True)
        for key in carried:
            self.ended_early.pop(key, None)
        self.forget_task(ref)

    def forget_task(self, ref) -> None:
        """The task is over: no attempt points to it any more."""
        for key in self.carried.pop(ref, []):
            self.task_of.pop(key, None)
        self.first_seen.pop(ref, None)

    def ended(self, seed: int, k: int, payload: dict) -> bool:
        """A group's attempt ended (a channel event): record it now, while its task goes on. True once its
        end is on disk (the task is told the disk refused otherwise)."""
        ref = self.task_of.get((seed, k))
        if ref is None or (seed, k) not in self.running.get(ref, []):
            return True                    # closed already (Ctrl-C)
        self.running[ref].remove((seed, k))
        result: AttemptResult = payload["result"]
        kept = self.write_files(seed, k, payload.get("files") or {})
        self.end_attempt(seed, k, result, result.infra_failure, result.error, kept, pumped=True)
        self.ended_early[(seed, k)] = (result.artifacts, self.ledger.state(seed))
        att = self.ledger.attempt(seed, k)
        return not self.ledger.unsaved and att is not None and att.get("ended") is not None

    def end_attempt(self, seed: int, k: int, result: AttemptResult, infra: bool, error: str | None, kept: bool,
                    pumped: bool = False) -> None:
        """Record how an attempt ended and what happens to its seed (`pumped`: its events are in already)."""
        adir = self.attempt_dir(seed, k)
        timed_out = result.timed_out or result.exit_code == 124
        if (seed, k) in self.overdue:
            infra, timed_out = False, True
            error = f"timeout: no result {OVERDUE_GRACE_S:.0f} s after the attempt's deadline; the task was cancelled"
        if self.procs.get((seed, k), ("", 0))[0] == self.host or (seed, k) in self.overdue:
            kill_marked(attempt_marker(str(self.run_dir), seed, k))   # nothing of it survives on this host
        if (seed, k) in self.aborting:
            self.finish_aborted(seed, k, result, pumped)
            return
        if not pumped:
            self.pump_events()
        kept = self.close_log(seed, k) and kept
        watch = self.watches.pop((seed, k), None) or LogWatch()
        self.scrub_artifacts(adir)
        ok = (not infra) and result.exit_code == 0
        if not ok and self.storage_error is None and storage.full(adir):
            self.storage_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(adir)))
        if self.storage_error is not None and not (ok and kept):
            # a result pgolf cannot keep whole is no result, and a failure on a full disk may be the disk's
            state, error = "pending", (f"{INTERRUPTED}: the run directory's disk refused writes "
                                       f"({self.storage_error.strerror}: {self.storage_error.filename})")
        elif ok:
            state = "succeeded"
        elif infra:
            error = error or "infrastructure failure"
            if not error.startswith(INFRA_PREFIX):
                error = INFRA_PREFIX + error
            self.infra_failures[seed] = self.infra_failures.get(seed, 0) + 1
            state = "pending" if self.infra_failures[seed] <= self.limits.infra_retries else "failed"
        else:
            state, error = self.job_failure(seed, result, error, timed_out, watch)
        fields = {k2: getattr(result, k2) for k2 in ("node", "pod_id", "cost_usd", "cost_source",
                                                     "cost_estimate_usd", "pod_terminated")
                  if getattr(result, k2) is not None}
        self.record(self.ledger.end_attempt, seed, k, state, exit_code=result.exit_code,
                    error=self.scrub(error) if error else None,
                    before_save=lambda: self.write_result(seed, k, result.artifacts), **fields)
        self.progress.attempt_ended(seed, k, state, self.ledger.attempt(seed, k)["error"])
        if state == "pending":
            self.relaunch.append(seed)

    def job_failure(self, seed: int, result: AttemptResult, error: str | None, timed_out: bool,
                    watch: LogWatch) -> tuple[str, str]:
        """(seed state, attempt error) after the job failed: what its log says, and whether to retry."""
        error = error or f"exit code {result.exit_code}"
        config = watch.config_error()
        retry = self.limits.retries
        if timed_out:
            error = f"{error if error.startswith('timeout') else 'timeout: ' + error}; {watch.silence()}"
        elif config and not self.limits.retry_config_errors:
            error, retry = f"{config} ({error}; a configuration or data error before training: not retried)", 0
        elif config:
            error = f"{config} ({error}; a configuration or data error before training, retried: " \
                    f"[limits] retry_config_errors)"
        elif watch.exception:
            error = f"{watch.exception} ({error})"
        self.exit_failures[seed] = self.exit_failures.get(seed, 0) + 1
        return ("pending" if self.exit_failures[seed] <= retry else "failed"), error

    def write_files(self, seed: int, k: int, files: dict[str, bytes]) -> bool:
        """Artifacts a task on another node sent back; False when the disk refused one."""
        adir = self.attempt_dir(seed, k).resolve()
        for rel, data in files.items():
            dest = (adir / rel).resolve()
            if adir not in dest.parents:
                continue   # never write outside the attempt folder
            try:
                with storage.writing(dest):
                    atomic_write(dest, data)
            except OSError as e:
                self.storage_failed(e)
                return False
        return True

    def scrub_artifacts(self, adir: Path) -> None:
        """Secret values must not survive in any text file the job wrote (whatever its name: `env.dat`)."""
        try:
            storage.scrub_tree(adir / "artifacts", self.scrub)
        except OSError as e:
            self.storage_failed(storage.named(e, adir / "artifacts"))

    def write_result(self, seed: int, k: int, artifacts: list[str], state: str | None = None) -> None:
        """result.json (Ledger.write_result): the attempt's ledger entry, the seed's state after it (`state`,
        else now), artifacts. An attempt's end writes it before the ledger says so (`before_save`)."""
        try:
            self.ledger.write_result(seed, k, artifacts, state, self.scrub)
        except OSError as e:
            self.storage_failed(e)

    def close_log(self, seed: int, k: int) -> bool:
        """Close the attempt's train.log; False when lines were lost to a full disk."""
        log = self.logs.pop((seed, k), None)
        return log.close() if log is not None else True

    # --- early abort (runner/abort.py) -----------------------------------------------------------
    def check_abort(self, seed: int, k: int, text: str) -> None:
        """A line of a running attempt: cancel the attempt when the abort policy says so (the same cancel
        as Ctrl-C: the task's backend kills the job or terminates the pod on its way out). On a machine
        shared with other attempts still to run, only this attempt is cancelled; the machine goes on."""
        verdict = self.abort.watch.line(seed, k, text)
        if verdict is None:
            return
        ref = self.task_of.get((seed, k))
        if ref is None or (seed, k) not in self.running.get(ref, []):
            return
        shared = len(self.running[ref]) > 1
        self.aborting[(seed, k)] = (verdict, time.monotonic(), "attempt" if shared else "task")
        self.progress.say(f"[seed {seed}] {verdict.reason()}; cancelling attempt {k}"
                          + (" (the pod goes on with its next seed)" if shared else ""))
        if shared:
            self.channel.cancel.remote(seed, k)
        else:
            ray.cancel(ref, force=False)

    def force_aborted(self) -> None:
        """An aborted attempt that did not stop within CANCEL_GRACE_S: its task is cancelled (an attempt
        cancelled alone on a shared machine first), then force-cancelled."""
        now = time.monotonic()
        for key, (verdict, since, how) in list(self.aborting.items()):
            ref = self.task_of.get(key)
            if ref is None or key not in self.running.get(ref, []) or now - since <= CANCEL_GRACE_S:
                continue
            if how == "attempt":           # the machine did not stop it: the task goes, with its other seeds
                self.aborting[key] = (verdict, now, "task")
                ray.cancel(ref, force=False)
            else:
                self.aborting[key] = (verdict, math.inf, "forced")
                ray.cancel(ref, force=True)

    def finish_aborted(self, seed: int, k: int, result: AttemptResult, pumped: bool = False) -> None:
        verdict = self.aborting.pop((seed, k))[0]
        if not pumped:
            self.pump_events()             # a RunPod task's last meta (cost, pod_terminated) comes first
        self.close_log(seed, k)
        self.watches.pop((seed, k), None)
        self.scrub_artifacts(self.attempt_dir(seed, k))
        fields = {k2: getattr(result, k2) for k2 in ("node", "pod_id", "cost_usd", "pod_terminated")
                  if getattr(result, k2) is not None}
        att = {**(self.ledger.attempt(seed, k) or {}), **fields, "ended": now_iso()}
        self.record(self.ledger.end_attempt, seed, k, "aborted", exit_code=result.exit_code, error=verdict.reason(),
                    abort={**verdict.to_dict(), **self.abort.savings(verdict, att)},
                    before_save=lambda: self.write_result(seed, k, result.artifacts), **fields)
        self.abort.watch.forget(seed, k)
        self.progress.attempt_ended(seed, k, "aborted", verdict.reason(), self.ledger.attempt(seed, k)["abort"])

    # --- the loop -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Once per batch: the event channel on the driver's node, the script in Ray's object store, what
        the backend's tasks need (Ray options, how many attempts one task carries)."""
        if self.channel is not None:
            return
        self.driver_node = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self.channel = EventChannel.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.driver_node, soft=False)).remote()
        self.script_ref = ray.put(self.script_path.read_bytes())
        self.options = dict(self.backend.ray_options())
        self.options.setdefault("max_retries", 0)
        self.per_task = max(1, int(self.backend.attempts_per_task()))
        self.ev_ref = self.channel.drain.remote(EVENT_WAIT_S)   # one drain outstanding, across waves

    def run(self, seeds: list[int]) -> None:
        """Run every given seed that is not done yet until it succeeds, fails for good or is aborted
        (called once per batch, or once per wave of an adaptive batch)."""
        self.setup()
        self.launch_all([s for s in seeds if self.ledger.state(s) not in DONE_STATES])   # Ray queues the rest
        while self.running:
            ready, _ = ray.wait(list(self.running) + [self.ev_ref], num_returns=1, timeout=POLL_S)
            if self.ev_ref in ready:          # events wake the loop at once (a meta waits for its ack)
                ready.remove(self.ev_ref)
                events, self.ev_ref = ray.get(self.ev_ref), self.channel.drain.remote(EVENT_WAIT_S)
                self.pump_events(events)
            self.cancel_overdue()
            if self.aborting:
                self.force_aborted()
            self.retry_writes()
            for ref in ready:
                self.finish(ref)
            again, self.relaunch = self.relaunch, []
            self.launch_all([s for s in again if self.ledger.state(s) == "pending"])   # not once the disk refused
        self.retry_writes()

    def cancel_overdue(self) -> None:
        """Backstop for a backend that misses its own deadline (a hung API call, a lost node that Ray
        has not noticed): force-cancel tasks that run far past it (a group: past all its attempts')."""
        now = time.monotonic()
        for ref, left in self.running.items():
            t = self.first_seen.get(ref)
            limit = len(self.carried[ref]) * self.timeout_s + OVERDUE_GRACE_S
            if t is None or not left or any(key in self.overdue for key in left) or now - t <= limit:
                continue
            self.overdue.add(next((key for key in left if key in self.began), left[0]))
            ray.cancel(ref, force=True)

    def interrupt(self) -> None:
        """Ctrl-C: cancel every attempt, kill their processes, close the ledger consistently (the attempts
        of a group that ended before are kept as they ended)."""
        refs = list(self.running)
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:
                pass
        deadline = time.monotonic() + CANCEL_GRACE_S
        pending = refs
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            try:
                self.pump_events()   # a cancelled task's last meta (e.g. RunPod's pod_terminated) waits for its ack
            except Exception:
                pass
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        self.backend.kill_local([pid for host, pid in self.procs.values() if host == self.host])
        for left in self.running.values():
            for seed, k in left:
                kill_marked(attempt_marker(str(self.run_dir), seed, k))   # daemons the job left, on this host
        try:
            self.pump_events()
        except Exception:
            pass
        for ref in refs:
            for seed, k in self.running.pop(ref):
                self.close_log(seed, k)
                self.record(self.ledger.end_attempt, seed, k, "pending", error=INTERRUPTED,
                            before_save=lambda: self.write_result(seed, k, []))
            self.forget_task(ref)
        self.record(self.ledger.close_dangling, INTERRUPTED)   # an attempt started in the instant of the Ctrl-C
