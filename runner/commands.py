"""`pgolf run`, `pgolf resume`, `pgolf status`: wiring of spec, preflight, ledger, driver and report."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from results.errors import PgolfError
from results.files import atomic_write, sha256_file
from runner.ledger import BATCH, Ledger, create_batch, load_batch
from results.secrets import Scrubber, is_secret_name, redact, secret_env
from runner.spec import JobSpec, load_spec, validate_spec

EXIT_INTERRUPTED = 130
DRIVER_LOST = "interrupted: driver lost before the attempt ended"


def cmd_run(args) -> int:
    overrides = {"seeds": getattr(args, "seeds", None), "backend": getattr(args, "backend", None)}
    spec = load_spec(args.job, overrides)
    from runner import preflight
    preflight.check_static(spec, args.job)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (Path(args.runs_dir) / name).resolve()
    if (run_dir / "ledger.json").exists():
        raise PgolfError(f"{run_dir}: a batch already lives here (finish it with `pgolf resume {run_dir}` "
                         f"or pick another --name)")
    return execute(run_dir, spec, args, spec_file=str(Path(args.job).resolve()), fresh=True)


def cmd_resume(args) -> int:
    run_dir = Path(args.run_dir).resolve()
    batch = load_batch(run_dir)
    ledger = Ledger.load(run_dir)
    raw = dict(batch["spec"])
    # secret env values were redacted in batch.json: they must come from the environment again
    env = dict(raw.get("env") or {})
    for k in list(env):
        if is_secret_name(k):
            if k not in os.environ:
                raise PgolfError(f"{run_dir / BATCH}: env.{k} is a secret that batch.json does not keep: "
                                 f"export {k} and resume again")
            env[k] = os.environ[k]
    raw["env"] = env
    if getattr(args, "backend", None):
        raw["backend"] = args.backend
    spec = validate_spec(raw, str(run_dir / BATCH))
    frozen = run_dir / batch["script"]["file"]
    want = batch["script"]["sha256"]
    if not frozen.is_file() or sha256_file(frozen) != want:
        raise PgolfError(f"{frozen}: the batch's frozen script is missing or altered (sha256 != {want[:12]}…); "
                         f"this run cannot be resumed, start a new one with `pgolf run`")
    source = batch["script"].get("source")
    if source and Path(source).is_file() and sha256_file(source) != want:
        raise PgolfError(f"{source}: script changed since the batch started (sha256 {sha256_file(source)[:12]}… "
                         f"!= {want[:12]}… in {BATCH}); results of two code versions must not be mixed: "
                         f"restore the script or start a new batch with `pgolf run`")
    closed = ledger.close_dangling(DRIVER_LOST)
    if closed:
        print(f"pgolf resume: closed {len(closed)} attempt(s) left open by a lost driver (seeds {sorted(set(closed))})")
    todo = ledger.unfinished()
    done = [s for s in ledger.seeds() if s not in todo]
    print(f"pgolf resume: {len(done)} seed(s) already succeeded {done}; running {todo}")
    return execute(run_dir, spec, args, spec_file=batch.get("spec_file"), fresh=False, ledger=ledger,
                   script_path=frozen)


def cmd_status(args) -> int:
    run_dir = Path(args.run_dir)
    ledger = Ledger.load(run_dir)
    if args.json:
        print(json.dumps(ledger.data, indent=2))
        return 0
    from rich.console import Console
    from runner.progress import status_table
    try:
        batch = load_batch(run_dir)
        head = f"{batch.get('name')}  script {batch['script']['file']} sha256 {batch['script']['sha256'][:12]}…  " \
               f"created {batch.get('created_at')}"
    except PgolfError:
        head = str(run_dir)
    c = Console()
    c.print(head, markup=False, highlight=False)
    c.print(status_table(ledger))
    return 0


# --------------------------------------------------------------------------------------------------
def _spec_for_batch(spec: JobSpec, scrub: Scrubber) -> dict[str, Any]:
    d = spec.model_dump(mode="json")
    d["env"] = redact(d["env"])
    d["runpod"] = {k: v for k, v in d["runpod"].items() if v is not None}
    return scrub.obj(d)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def execute(run_dir: Path, spec: JobSpec, args, spec_file: str | None, fresh: bool,
            ledger: Ledger | None = None, script_path: Path | None = None) -> int:
    """Preflight on the cluster, then run every unfinished seed, then the report. Returns the exit code."""
    from runner import preflight
    from runner.driver import Driver, connect
    from runner.executors import make_backend
    from runner.progress import BatchProgress

    scrub = Scrubber.from_environ({k: str(v) for k, v in spec.env.items()})
    spec_dict = _spec_for_batch(spec, scrub)
    job_env = {**secret_env(), **spec.job_env()}
    backend = make_backend(spec.backend, spec_dict, rehearse=getattr(args, "rehearse", False),
                           faults=getattr(args, "rehearse_faults", "") or "")
    where = spec_file or str(run_dir / BATCH)
    local_resources = None
    if hasattr(backend, "max_pods"):        # RunPod: a logical resource, capacity = max pods
        local_resources = {"runpod_pod": float(backend.max_pods())}

    import ray
    old_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    rc = 0
    driver = None
    try:
        connect(getattr(args, "address", None), local_resources)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)   # ray.init may install its own
        options = backend.ray_options(spec_dict)
        preflight.check_cluster(options, where)
        backend.preflight(spec_dict, len(spec.seeds) if fresh else len(ledger.unfinished()))
        if spec.backend == "ray":
            note = preflight.check_gpu_stack(options, where)
            if note:
                print(f"pgolf: note: {note}")
        if fresh:
            create_batch(run_dir, spec_dict, spec.script, spec_file=spec_file)
            ledger = Ledger.create(run_dir, spec.seeds)
            script_path = run_dir / Path(spec.script).name
            print(f"pgolf run: {run_dir}")
        backend.start()
        cap = float(spec.job_env().get("MAX_WALLCLOCK_SECONDS", 0) or 0) or None
        progress = BatchProgress(ledger.seeds(), enabled=not getattr(args, "no_progress", False), cap_s=cap)
        for s in ledger.seeds():
            if ledger.state(s) == "succeeded":
                progress.views[s].status = "done (earlier)"
        driver = Driver(run_dir, spec_dict, backend, ledger, job_env, scrub, progress, script_path)
        try:
            with progress:
                driver.run(ledger.seeds())
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # one clean-up, not two
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("pgolf: interrupted: cancelling attempts and stopping their processes…", file=sys.stderr, flush=True)
            driver.interrupt()
            rc = EXIT_INTERRUPTED
        progress.print_final(ledger)
    finally:
        try:
            backend.stop()
        finally:
            if ray.is_initialized():
                ray.shutdown()
            signal.signal(signal.SIGTERM, old_term)
    if rc == EXIT_INTERRUPTED:
        print(f"pgolf: batch interrupted; finish it with `pgolf resume {run_dir}`", file=sys.stderr)
        return rc
    _report(run_dir, spec, scrub)
    failed = [s for s in ledger.seeds() if ledger.state(s) != "succeeded"]
    if failed:
        print(f"pgolf: seed(s) {failed} did not succeed (see `pgolf status {run_dir}`)", file=sys.stderr)
        return 1
    return 0


def _report(run_dir: Path, spec: JobSpec, scrub: Scrubber) -> None:
    """results.csv, report.md/json and plots via the results engine; the significance summary last."""
    summary = None
    try:
        from results.report import render_summary, write_report
        rep = write_report(str(run_dir), baseline=spec.baseline.ref, policy=spec.baseline.policy)
        summary = render_summary(rep)
    except ImportError as e:
        print(f"pgolf: no report (results engine not importable: {e})", file=sys.stderr)
    except PgolfError as e:
        print(f"pgolf: no report: {e}", file=sys.stderr)
    scrub_tree(run_dir, scrub)
    if summary is not None:
        from rich.console import Console
        console = Console()
        with console.capture() as cap:
            console.print(summary)
        sys.stdout.write(scrub(cap.get()))
        sys.stdout.flush()


def scrub_tree(run_dir: Path, scrub: Scrubber) -> None:
    """Last line of defence: no secret value in any text file pgolf leaves under the run dir."""
    for p in run_dir.rglob("*"):
        if p.is_file() and p.suffix in {".json", ".md", ".csv", ".log", ".txt"} and p.stat().st_size < 256 << 20:
            text = p.read_text(encoding="utf-8", errors="replace")
            clean = scrub(text)
            if clean != text:
                atomic_write(p, clean)
