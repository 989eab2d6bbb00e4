"""The library API: run a batch of seeds, resume one, and what comes back.

Modelled on Ray Tune's `Tuner(...).fit()` / `Tuner.restore(path)`:

    import runner
    batch = runner.run("jobs/smoke.toml", runs_dir="runs", progress=False)   # or a JobSpec
    batch.exit_code, batch.states, batch.report["summary"]
    batch = runner.resume(batch.run_dir)          # finishes what is unfinished; succeeded seeds never rerun

`run` and `resume` validate everything first (spec, script, data, the Ray cluster, the backend's own
checks such as RunPod's balance) and only then write the run directory, run every unfinished seed through
the driver and write results.csv / report.* with the results engine. They print the batch's progress as
it goes; what to say about the outcome is the caller's (the CLI prints the report's summary). A Ctrl-C or
SIGTERM during the batch cancels its attempts and returns a Batch with exit code 130; a run directory
whose disk refuses writes ends the batch early with exit code 75 and `Batch.storage_error`.

One process per batch: both hold the batch lock (runner/lock.py) from before Ray starts until they
return, and refuse (BatchBusy, one line naming the holder) when another live process holds it. `run`
never reuses a folder: it must be new or empty, and what `run` wrote is removed again when it fails
before the batch's ledger exists, so the name stays free.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results.errors import PgolfError
from results.secrets import Scrubber, secret_env
from runner import storage
from runner.ledger import BATCH, DONE_STATES, LEDGER, Ledger, create_batch, frozen_script, load_batch, mark_latest
from runner.lock import LOCK, BatchLock
from runner.proctree import batch_markers, kill_marked
from runner.spec import JobSpec, load_spec, spec_from_batch, spec_to_batch, with_overrides

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
EXIT_STORAGE = 75            # EX_TEMPFAIL: the run directory's disk refused a write; resume once it is fixed
DRIVER_LOST = "interrupted: its end was never recorded (the driver died, or its disk refused the write)"


@dataclass
class Batch:
    """A batch after `run` or `resume` returned."""
    run_dir: Path
    spec: JobSpec
    ledger: Ledger
    exit_code: int                       # 0 every seed succeeded (or was aborted), 1 some failed, 130 interrupted
    report: dict[str, Any] | None = None   # report.json's content; None when interrupted or not written
    report_error: str | None = None      # why there is no report, when the batch ended but none was written
    storage_error: str | None = None     # the one line (path, what to do) when the disk refused a write
    scrub: Scrubber = field(default_factory=Scrubber, repr=False)   # masks this batch's secrets in text

    @property
    def states(self) -> dict[int, str]:
        """seed -> pending | running | succeeded | failed | aborted, as the ledger says."""
        return {s: self.ledger.state(s) for s in self.ledger.seeds()}

    @property
    def failed(self) -> list[int]:
        """Seeds that did not succeed; an aborted seed is not a failure (runner/abort.py)."""
        return [s for s, state in self.states.items() if state not in DONE_STATES]

    @property
    def outcome(self) -> dict[str, Any] | None:
        """How an adaptive batch stopped (runner/waves.py): action, wave, seeds, the p it may report."""
        return (self.ledger.data.get("adaptive") or {}).get("outcome")

    @property
    def interrupted(self) -> bool:
        return self.exit_code == EXIT_INTERRUPTED


def check_run_name(name: str) -> str:
    """A run directory's name: one plain path component, so the run directory stays inside the runs
    directory (`../x` would write a batch, and a `latest` link, beside it). The CLI's `--name` and the
    library's `run(name=...)` share this one rule."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise PgolfError(f"{name!r} is not a plain folder name (no '/', not '.' or '..'); the run directory goes "
                         f"under the runs directory (--runs-dir)")
    return name


def run(spec: JobSpec | str | Path, *, run_dir: str | Path | None = None, runs_dir: str | Path = "runs",
        name: str | None = None, seeds: list[int] | None = None, backend: str | None = None,
        address: str | None = None, progress: bool = True, rehearse: bool = False, faults: str = "") -> Batch:
    """Start a batch: one attempt per seed (more after failures, per the spec's limits).

    `spec` is a job spec file or a JobSpec; `seeds` and `backend` override the spec's. The run directory
    is `run_dir`, else `runs_dir/name` (default name: spec name + timestamp); it must be new or empty
    (BatchBusy when another process holds it). `address` joins a Ray cluster (default: start a local one).
    `progress` shows live bars (plain lines when false or when stdout is not a terminal). `rehearse` and
    `faults` are the RunPod rehearsal's. A `name` that is not one plain folder name is refused before
    anything is written.
    """
    if name is not None:
        check_run_name(name)
    if isinstance(spec, JobSpec):
        spec_file = None
        spec = with_overrides(spec, "job spec", seeds=seeds, backend=backend)
    else:
        spec_file = str(Path(spec).resolve())
        spec = load_spec(spec, {"seeds": seeds, "backend": backend})
    from runner import preflight
    preflight.check_static(spec, spec_file or "job spec")
    _check_rehearse(spec, rehearse, faults)
    if run_dir is None:
        run_dir = Path(runs_dir) / (name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(run_dir).resolve()
    made = next((p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()), None)
    lock = BatchLock.acquire(run_dir, "pgolf run", create=True)      # first, before Ray starts
    fresh = False
    try:
        _check_fresh(run_dir)
        fresh = True
        return _execute(run_dir, spec, spec_file=spec_file, ledger=None, script_path=None, address=address,
                        progress=progress, rehearse=rehearse, faults=faults)
    finally:
        unstarted = fresh and not (run_dir / LEDGER).exists()
        if unstarted:
            _discard_unstarted(run_dir)
        lock.release()
        if unstarted and made is not None:
            for p in [run_dir, *run_dir.parents]:       # the folders this call made, if still empty
                try:
                    p.rmdir()
                except OSError:
                    break
                if p == made:
                    break


def _check_fresh(run_dir: Path) -> None:
    """A new batch goes into a new or empty folder only: never mixed with another batch's files."""
    there = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    if not there:
        return
    if LEDGER in there and BATCH in there:
        raise PgolfError(f"{run_dir}: a batch already lives here (finish it with `pgolf resume {run_dir}` "
                         f"or pick another --name)")
    missing = " and ".join(n for n in (BATCH, LEDGER) if n not in there)
    raise PgolfError(f"{run_dir}: folder is not empty ({', '.join(there[:3])}{', ...' if len(there) > 3 else ''}) "
                     f"and holds no complete batch ({missing} missing), so neither `pgolf run` nor `pgolf resume` "
                     f"can use it: pick another --name")


def _discard_unstarted(run_dir: Path) -> None:
    """`run` failed before the batch's ledger existed: remove what it wrote (the folder was empty)."""
    import shutil
    for p in run_dir.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.chmod(p, 0o644)
                p.unlink()
            except OSError:
                pass


def resume(run_dir: str | Path, *, backend: str | None = None, address: str | None = None,
           progress: bool = True, rehearse: bool = False, faults: str = "") -> Batch:
    """Finish a batch from its ledger: attempts a dead driver left open are closed (and their pods
    stopped), seeds that succeeded never run again. Refuses when the script changed since the batch began;
    secret env values (masked in batch.json) must be in the environment again. A rehearsal stays a
    rehearsal (batch.json says so), and a real batch is never finished on the fake."""
    run_dir = Path(run_dir).resolve()
    load_batch(run_dir)                         # a run directory (one line if not), before writing a lock there
    lock = BatchLock.acquire(run_dir, "pgolf resume")    # first, before Ray starts; read the ledger under it
    try:
        batch = load_batch(run_dir)
        ledger = Ledger.load(run_dir)
        if rehearse and not batch.get("rehearsal"):
            raise PgolfError(f"{run_dir / BATCH}: this batch ran on RunPod itself; resume it without --rehearse "
                             f"(a batch never mixes real pods with the fake's)")
        rehearse = bool(batch.get("rehearsal"))
        from runner.backends import stop_left_machines      # first: they bill until stopped
        stop_left_machines(run_dir, batch, ledger, lambda m: print(f"pgolf resume: {m}", flush=True))
        spec = spec_from_batch(batch["spec"], str(run_dir / BATCH), os.environ, backend=backend)
        _check_rehearse(spec, rehearse, faults)
        script = frozen_script(run_dir, batch)
        stopped = kill_marked(batch_markers(str(run_dir)))
        if stopped:
            print(f"pgolf resume: stopped {stopped} process(es) that attempts of the dead driver left on this host")
        closed = ledger.close_dangling(DRIVER_LOST)
        if closed:
            print(f"pgolf resume: closed {len(closed)} attempt(s) whose end was never recorded "
                  f"(seeds {sorted(set(closed))})")
        todo = ledger.unfinished()
        done = [s for s in ledger.seeds() if s not in todo]
        print(f"pgolf resume: {len(done)} seed(s) already done {done}; unfinished {todo}")
        return _execute(run_dir, spec, spec_file=batch.get("spec_file"), ledger=ledger, script_path=script,
                        address=address, progress=progress, rehearse=rehearse, faults=faults)
    finally:
        lock.release()


def _check_rehearse(spec: JobSpec, rehearse: bool, faults: str) -> None:
    if rehearse and spec.backend != "runpod":
        raise PgolfError(f"--rehearse rehearses the RunPod backend, and this batch's backend is {spec.backend!r}: "
                         f"add --backend runpod (or leave --rehearse out)")
    if faults and not rehearse:
        raise PgolfError("--rehearse-faults needs --rehearse (faults are only injected into the fake RunPod)")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _execute(run_dir: Path, spec: JobSpec, *, spec_file: str | None, ledger: Ledger | None,
             script_path: Path | None, address: str | None, progress: bool, rehearse: bool, faults: str) -> Batch:
    """Preflight on the cluster, the batch files (fresh batch), every unfinished seed, then the report."""
    import ray

    from runner import preflight
    from runner.backends import make_backend
    from runner.abort import AbortPolicy
    from runner.driver import Driver, connect, sweep_scratch
    from runner.progress import BatchProgress
    from runner.waves import Waves

    scrub = Scrubber.from_environ({k: str(v) for k, v in spec.env.items()})
    job_env = {**secret_env(), **spec.job_env()}
    backend = make_backend(spec, rehearse=rehearse, faults=faults, run_dir=run_dir)
    where = spec_file or str(run_dir / BATCH)
    try:    # issue 12's sections: their baseline and curve are read before anything starts
        waves, abort = Waves.from_spec(spec), AbortPolicy.from_spec(spec)
    except PgolfError as e:
        raise PgolfError(f"{where}: {e}") from None
    old_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    rc = EXIT_OK
    try:
        n_seeds = spec.max_seeds() if ledger is None else \
            waves.remaining_seeds(ledger) if waves else len(ledger.unfinished())
        if hasattr(backend, "provision"):   # a backend that makes its Ray cluster first (an Instant Cluster)
            address = backend.provision(n_seeds, where, address)
        connect(address, backend)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)   # ray.init may install its own
        preflight.check_cluster(backend.ray_options(), where)
        for note in backend.preflight(n_seeds, where):
            print(note, flush=True)
        if ledger is None:
            create_batch(run_dir, spec_to_batch(spec, scrub), spec.script, spec_file=spec_file, rehearsal=rehearse)
            ledger = Ledger.create(run_dir, [] if waves else spec.seeds)   # waves add their seeds
            mark_latest(run_dir)
            script_path = run_dir / Path(spec.script).name
            print(f"pgolf run: {run_dir}")
        backend.start()
        cap = float(spec.job_env().get("MAX_WALLCLOCK_SECONDS", 0) or 0) or None
        bars = BatchProgress(ledger.seeds(), enabled=progress, cap_s=cap, curve=_baseline_curve(spec, abort))
        for s in ledger.seeds():
            if ledger.state(s) in DONE_STATES:
                bars.views[s].status = f"{ledger.state(s)} (earlier)"
        driver = Driver(run_dir, spec, backend, ledger, job_env, scrub, bars, script_path, abort=abort)
        try:
            with bars:
                if waves:
                    waves.run(driver, ledger, run_dir, bars)
                else:
                    driver.run(ledger.seeds())
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # one clean-up, not two
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("pgolf: interrupted: cancelling attempts and stopping their processes…", file=sys.stderr, flush=True)
            driver.interrupt()
            rc = EXIT_INTERRUPTED
        if driver.storage_error is not None and rc != EXIT_INTERRUPTED:
            rc = EXIT_STORAGE
        bars.print_final(ledger)
    finally:
        try:
            backend.stop()
        finally:
            if ray.is_initialized():
                ray.shutdown()
            sweep_scratch()           # scratch of this host's tasks that died without their clean-up
            signal.signal(signal.SIGTERM, old_term)
    batch = Batch(run_dir, spec, ledger, rc, scrub=scrub)
    if rc == EXIT_STORAGE:
        batch.storage_error = storage.what_to_do(driver.storage_error, run_dir, unrecorded=ledger.unsaved)
    if rc != EXIT_OK:
        _scrub_tree(run_dir, scrub)
        return batch
    batch.report, batch.report_error = _report(run_dir, spec)
    _scrub_tree(run_dir, scrub)
    batch.exit_code = EXIT_FAILED if batch.failed else EXIT_OK
    return batch


def _baseline_curve(spec: JobSpec, abort):
    """The record's train-loss curve for the live view: the abort's, else the baseline folder's (if any)."""
    if abort is not None:
        return abort.watch.curve
    try:
        from results.curves import record_curve
        return record_curve(spec.baseline.ref)
    except PgolfError:
        return None     # an unusable baseline is the report's to explain, not the live view's


def _report(run_dir: Path, spec: JobSpec) -> tuple[dict[str, Any] | None, str | None]:
    """results.csv, report.md/json and plots via the results engine: (report, None) or (None, why not)."""
    try:
        from results.report import write_report
        return write_report(str(run_dir), baseline=spec.baseline.ref, policy=spec.baseline.policy), None
    except ImportError as e:
        return None, f"results engine not importable: {e}"
    except PgolfError as e:
        return None, str(e)
    except OSError as e:      # the disk refused the report: the ledger is whole, the report can be made again
        return None, (f"cannot write it ({e.strerror}{': ' + str(e.filename) if e.filename else ''}); "
                      f"free space, then `pgolf report {run_dir}`")


def _scrub_tree(run_dir: Path, scrub: Scrubber) -> None:
    """Last line of defence: no secret value in any text file pgolf leaves under the run dir (text by
    content, whatever the name; a full disk scrubs in place)."""
    try:
        storage.scrub_tree(run_dir, scrub)
    except OSError as e:
        print(f"pgolf: could not scrub {e.filename or run_dir} ({e.strerror})", file=sys.stderr)
