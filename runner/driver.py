"""The batch driver: one Ray task per seed attempt, a durable ledger, retries, Ctrl-C, results.

Design. The driver process is the only writer of ledger.json. Tasks talk to it through one small actor
(`EventChannel`, pinned to the driver's node): log lines are pushed fire-and-forget in small batches;
`meta` (node, pod id, ...) blocks the task until the driver has written the ledger and acknowledged it,
so a pod id is on disk before the pod is used. The driver loop alternates `ray.wait` on the attempts
with draining the channel. A task that runs on another node than the driver works in a node-local
scratch folder and returns its artifacts' bytes, which the driver writes into the attempt folder.

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
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from results.files import atomic_write, atomic_write_json
from results.secrets import Scrubber
from runner import storage
from runner.backends.base import AttemptResult, AttemptSpec, Backend, InfraFailure, NotRecorded
from runner.failures import LogWatch
from runner.ledger import DONE_STATES, INFRA_PREFIX, INTERRUPTED, Ledger
from runner.proctree import attempt_marker, kill_marked
from runner.spec import JobSpec

POLL_S = 1.0                 # driver loop: longest ray.wait without news
EVENT_WAIT_S = 1.0           # a drain call waits this long for an event before returning empty
LINE_FLUSH_S = 0.2           # tasks push buffered log lines at least this often
OVERDUE_GRACE_S = float(os.environ.get("PGOLF_OVERDUE_GRACE_S", 300))   # backstop past an attempt's deadline
CANCEL_GRACE_S = 15.0        # Ctrl-C: time for tasks to kill their jobs before force-cancel


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
        ray.init(address=address, **kw)
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

    def _push(self, ev: tuple) -> None:
        self.events.append(ev)
        self.wake.set()

    async def lines(self, seed: int, attempt: int, lines: list[str]) -> None:
        self._push(("lines", seed, attempt, lines))

    async def process(self, seed: int, attempt: int, host: str, pid: int) -> None:
        self._push(("process", seed, attempt, host, pid))

    async def meta(self, seed: int, attempt: int, fields: dict[str, Any]) -> str | None:
        """Returns once the driver answered: None (on disk) or why the disk refused it."""
        mid = self.next_id
        self.next_id += 1
        self.waiters[mid] = asyncio.Event()
        self._push(("meta", seed, attempt, fields, mid))
        await self.waiters[mid].wait()
        del self.waiters[mid]
        return self.refused.pop(mid, None)

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
        self.last_ref = None
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
                self.last_ref = self.channel.lines.remote(self.seed, self.attempt, buf)

    def meta(self, **fields: Any) -> None:
        self.flush()
        refused = ray.get(self.channel.meta.remote(self.seed, self.attempt, fields))
        if refused:
            raise NotRecorded(f"the driver could not record {sorted(fields)}: {refused}")

    def process(self, host: str, pid: int) -> None:
        self.channel.process.remote(self.seed, self.attempt, host, pid)

    def _flush_loop(self) -> None:
        while not self.closed.wait(LINE_FLUSH_S):
            self.flush()

    def close(self) -> None:
        self.closed.set()
        self.flush()
        if self.last_ref is not None:
            ray.get(self.last_ref)


@ray.remote(max_retries=0)
def attempt_task(backend, attempt: AttemptSpec, script_blob: bytes, driver_node: str, channel) -> dict:
    """One seed attempt. On a node other than the driver's it works in scratch and ships artifacts back."""
    import shutil
    try:   # ray.cancel raises KeyboardInterrupt through SIGINT's handler: make sure there is one
        signal.signal(signal.SIGINT, signal.default_int_handler)    # (nohup / `cmd &` ignore SIGINT)
    except ValueError:
        pass   # not the main thread
    remote = ray.get_runtime_context().get_node_id() != driver_node
    scratch = None
    if remote:
        scratch = Path(tempfile.mkdtemp(prefix=f"pgolf-s{attempt.seed}-a{attempt.attempt}-"))
        script = scratch / Path(attempt.script_path).name
        script.write_bytes(script_blob)
        attempt = dataclasses.replace(attempt, attempt_dir=str(scratch / "attempt"), script_path=str(script))
    Path(attempt.attempt_dir).mkdir(parents=True, exist_ok=True)
    events = TaskEvents(channel, attempt.seed, attempt.attempt)
    try:
        result = backend.run_attempt(attempt, events)
    finally:
        events.close()
    files: dict[str, bytes] = {}
    try:
        if remote:
            for rel in result.artifacts:
                p = Path(attempt.attempt_dir) / rel
                if p.is_file():
                    files[rel] = p.read_bytes()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"result": result, "files": files}


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
        self.running: dict[Any, tuple[int, int]] = {}       # ref -> (seed, attempt)
        self.logs: dict[tuple[int, int], storage.AttemptLog] = {}   # (seed, attempt) -> its train.log
        self.watches: dict[tuple[int, int], LogWatch] = {}  # (seed, attempt) -> what its log says so far
        self.procs: dict[tuple[int, int], tuple[str, int]] = {}
        self.exit_failures: dict[int, int] = {}
        self.infra_failures: dict[int, int] = {}
        self.first_seen: dict[tuple[int, int], float] = {}   # first event of an attempt (it left the queue)
        self.overdue: set[tuple[int, int]] = set()
        self.storage_error: OSError | None = None   # the first write the run directory refused
        self.host = socket.gethostname()
        self.abort = abort                                   # runner.abort.AbortPolicy or None
        self.aborting: dict[tuple[int, int], tuple[Any, float]] = {}   # (seed, attempt) -> (Verdict, cancel time)
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
        for ref, key in list(self.running.items()):
            if key not in self.first_seen:       # still queued by Ray: it never starts
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
    def launch(self, seed: int) -> None:
        if self.storage_error is None and storage.full(self.run_dir):
            self.storage_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir)))
        if self.storage_error is not None:
            return
        k = self.ledger.next_attempt_number(seed)
        adir = self.attempt_dir(seed, k)
        try:
            with storage.writing(adir):
                (adir / "artifacts").mkdir(parents=True, exist_ok=True)
                log = storage.AttemptLog(adir / "train.log")
        except OSError as e:
            self.storage_failed(e)
            return
        try:
            self.ledger.start_attempt(seed, self.backend.name)   # on disk before it runs, or not at all
        except OSError as e:
            log.close()
            self.storage_failed(e)
            return
        self.logs[(seed, k)] = log
        self.watches[(seed, k)] = LogWatch()
        spec = AttemptSpec(run_dir=str(self.run_dir), seed=seed, attempt=k, attempt_dir=str(adir),
                           script_path=str(self.script_path), env=dict(self.job_env), timeout_s=self.timeout_s)
        ref = attempt_task.options(**self.options).remote(self.backend, spec, self.script_ref, self.driver_node,
                                                          self.channel)
        self.running[ref] = (seed, k)
        self.progress.attempt_started(seed, k)

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
            self.first_seen.setdefault((seed, k), time.monotonic())   # the attempt really runs
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
                    self.progress.line(seed, t)
                    if self.abort is not None and (seed, k) not in self.aborting:
                        self.check_abort(seed, k, t)
            elif kind == "meta":
                fields = self.scrub.obj(dict(ev[3]))
                if self.record(self.ledger.update_attempt, seed, k, **fields):   # saved before the ack below
                    acks.append(ev[4])
                else:
                    refused.append(ev[4])
                if "node" in fields:
                    self.progress.node(seed, fields["node"])
            elif kind == "process":
                self.procs[(seed, k)] = (ev[3], ev[4])
        if acks:
            self.channel.ack.remote(acks)
        if refused:
            e = self.storage_error
            self.channel.ack.remote(refused, f"cannot write {e.filename} ({e.strerror})" if e else "ledger not written")

    # --- finishing an attempt --------------------------------------------------------------------
    def finish(self, ref) -> None:
        seed, k = self.running.pop(ref)
        adir = self.attempt_dir(seed, k)
        kept = True      # the attempt's log and artifacts are whole on disk
        try:
            out = ray.get(ref)
            result: AttemptResult = out["result"]
            infra, error = result.infra_failure, result.error
            kept = self.write_files(seed, k, out["files"])
        except Exception as e:   # ray errors of the attempt
            result = AttemptResult(exit_code=None)
            infra, error = classify(e)
        timed_out = result.timed_out or result.exit_code == 124
        if (seed, k) in self.overdue:
            infra, timed_out = False, True
            error = f"timeout: no result {OVERDUE_GRACE_S:.0f} s after the attempt's deadline; the task was cancelled"
        if self.procs.get((seed, k), ("", 0))[0] == self.host or (seed, k) in self.overdue:
            kill_marked(attempt_marker(str(self.run_dir), seed, k))   # nothing of it survives on this host
        if (seed, k) in self.aborting:
            self.finish_aborted(seed, k, result)
            return
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
                    error=self.scrub(error) if error else None, **fields)
        self.write_result(seed, k, result)
        self.progress.attempt_ended(seed, k, state, self.ledger.last_attempt(seed)["error"])

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

    def write_result(self, seed: int, k: int, result: AttemptResult) -> None:
        att = dict(self.ledger.last_attempt(seed))
        att.update(seed=seed, state=self.ledger.state(seed), artifacts=result.artifacts)
        path = self.attempt_dir(seed, k) / "result.json"
        try:
            with storage.writing(path):
                atomic_write_json(path, self.scrub.obj(att))
        except OSError as e:
            self.storage_failed(e)

    def close_log(self, seed: int, k: int) -> bool:
        """Close the attempt's train.log; False when lines were lost to a full disk."""
        log = self.logs.pop((seed, k), None)
        return log.close() if log is not None else True

    # --- early abort (runner/abort.py) -----------------------------------------------------------
    def check_abort(self, seed: int, k: int, text: str) -> None:
        """A line of a running attempt: cancel the attempt when the abort policy says so (the same cancel
        as Ctrl-C: the task's backend kills the job or terminates the pod on its way out)."""
        verdict = self.abort.watch.line(seed, k, text)
        if verdict is None:
            return
        ref = next((r for r, key in self.running.items() if key == (seed, k)), None)
        if ref is None:
            return
        self.aborting[(seed, k)] = (verdict, time.monotonic())
        self.progress.say(f"[seed {seed}] {verdict.reason()}; cancelling attempt {k}")
        ray.cancel(ref, force=False)

    def force_aborted(self) -> None:
        """An aborted attempt whose task did not stop within CANCEL_GRACE_S is force-cancelled."""
        now = time.monotonic()
        for ref, key in self.running.items():
            if key in self.aborting and now - self.aborting[key][1] > CANCEL_GRACE_S:
                self.aborting[key] = (self.aborting[key][0], math.inf)
                ray.cancel(ref, force=True)

    def finish_aborted(self, seed: int, k: int, result: AttemptResult) -> None:
        verdict = self.aborting[(seed, k)][0]
        self.pump_events()                 # a RunPod task's last meta (cost, pod_terminated) comes first
        self.close_log(seed, k)
        self.watches.pop((seed, k), None)
        self.scrub_artifacts(self.attempt_dir(seed, k))
        fields = {k2: getattr(result, k2) for k2 in ("node", "pod_id", "cost_usd", "pod_terminated")
                  if getattr(result, k2) is not None}
        self.record(self.ledger.end_attempt, seed, k, "aborted", exit_code=result.exit_code,
                    error=verdict.reason(), **fields)
        att = self.ledger.last_attempt(seed)
        self.record(self.ledger.update_attempt, seed, k, abort={**verdict.to_dict(), **self.abort.savings(verdict, att)})
        self.abort.watch.forget(seed, k)
        self.write_result(seed, k, result)
        self.progress.attempt_ended(seed, k, "aborted", verdict.reason(), self.ledger.last_attempt(seed)["abort"])

    # --- the loop -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Once per batch: the event channel on the driver's node, the script in Ray's object store."""
        if self.channel is not None:
            return
        self.driver_node = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self.channel = EventChannel.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.driver_node, soft=False)).remote()
        self.script_ref = ray.put(self.script_path.read_bytes())
        self.options = dict(self.backend.ray_options())
        self.options.setdefault("max_retries", 0)
        self.ev_ref = self.channel.drain.remote(EVENT_WAIT_S)   # one drain outstanding, across waves

    def run(self, seeds: list[int]) -> None:
        """Run every given seed that is not done yet until it succeeds, fails for good or is aborted
        (called once per batch, or once per wave of an adaptive batch)."""
        self.setup()
        queue = [s for s in seeds if self.ledger.state(s) not in DONE_STATES]
        for s in queue:
            self.launch(s)   # Ray queues what the cluster cannot hold yet
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
                seed, _k = self.running[ref]
                self.finish(ref)
                if self.ledger.state(seed) == "pending":
                    self.launch(seed)        # not once the disk refused a write
        self.retry_writes()

    def cancel_overdue(self) -> None:
        """Backstop for a backend that misses its own deadline (a hung API call, a lost node that Ray
        has not noticed): force-cancel attempts that run far past it."""
        now = time.monotonic()
        for ref, key in self.running.items():
            t = self.first_seen.get(key)
            if t is not None and key not in self.overdue and now - t > self.timeout_s + OVERDUE_GRACE_S:
                self.overdue.add(key)
                ray.cancel(ref, force=True)

    def interrupt(self) -> None:
        """Ctrl-C: cancel every attempt, kill their processes, close the ledger consistently."""
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
        for seed, k in self.running.values():
            kill_marked(attempt_marker(str(self.run_dir), seed, k))   # daemons the job left, on this host
        try:
            self.pump_events()
        except Exception:
            pass
        for ref in refs:
            seed, k = self.running.pop(ref)
            self.close_log(seed, k)
            self.record(self.ledger.end_attempt, seed, k, "pending", error=INTERRUPTED)
            self.write_result(seed, k, AttemptResult(exit_code=None, error=INTERRUPTED))
        self.record(self.ledger.close_dangling, INTERRUPTED)   # an attempt started in the instant of the Ctrl-C
