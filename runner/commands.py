"""`pgolf run`, `pgolf resume`, `pgolf status`, `pgolf cluster`: arguments in, the library called, results out.

The work is in the library (runner/batch.py for batches, the backends for `cluster`); these functions
only turn parsed arguments into calls and a Batch into what the terminal shows and the exit code.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from results.errors import PgolfError
from runner import lock
from runner.ledger import Ledger, load_batch

DRIVERS = ("pgolf run", "pgolf resume")


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """`--address HOST:PORT` (or `ray://HOST:PORT`) must answer on TCP before anything starts: Ray itself
    retries an unreachable address for minutes and prints its own warnings; a refused or silent port is
    the user's input, and one line saying so. `auto` and `local` are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PgolfError(f"--address {address}: not HOST:PORT (e.g. 10.0.0.5:6379, or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise PgolfError(f"--address {address}: no Ray cluster answers there ({why}); start one with `ray start "
                         f"--head` on that machine, or leave --address out to run on a local one") from None


def cmd_run(args) -> int:
    from runner.batch import run
    check_address(args.address)
    return _outcome(run(args.job, runs_dir=args.runs_dir, name=args.name, seeds=args.seeds, backend=args.backend,
                        address=args.address, progress=not args.no_progress, rehearse=args.rehearse,
                        faults=args.rehearse_faults))


def cmd_resume(args) -> int:
    from runner.batch import resume
    check_address(args.address)
    return _outcome(resume(args.run_dir, backend=args.backend, address=args.address, progress=not args.no_progress,
                           rehearse=args.rehearse, faults=args.rehearse_faults))


def _outcome(batch) -> int:
    """The report's summary (secrets masked), then what did not succeed; the batch's exit code."""
    if batch.interrupted:
        print(f"pgolf: batch interrupted; finish it with `pgolf resume {batch.run_dir}`", file=sys.stderr)
        return batch.exit_code
    if batch.storage_error:
        print(f"pgolf: {batch.storage_error}", file=sys.stderr)
        return batch.exit_code
    if batch.report_error:
        print(f"pgolf: no report: {batch.report_error}", file=sys.stderr)
    if batch.report is not None:
        from rich.console import Console
        from results.report import render_summary
        console = Console()
        with console.capture() as cap:
            console.print(render_summary(batch.report))
        sys.stdout.write(batch.scrub(cap.get()))
        sys.stdout.flush()
    if batch.failed:
        print(f"pgolf: seed(s) {batch.failed} did not succeed (see `pgolf status {batch.run_dir}`)", file=sys.stderr)
        for s in batch.failed:
            last = batch.ledger.last_attempt(s) or {}
            if last.get("error"):
                print(f"pgolf:   seed {s}: {batch.scrub(last['error'])}", file=sys.stderr)
    return batch.exit_code


def driver_state(run_dir: Path) -> dict:
    """Whether a live driver (`pgolf run`/`resume`) holds the batch: {"alive", "pid", "host", "command",
    "started"}; when none is alive, "last" is what the lock file says of the last one (a dead driver)."""
    held = lock.holder(run_dir)
    if held is not None and (held.get("command") in DRIVERS or not held.get("pid")):
        return {"alive": True, **held}
    return {"alive": False, "last": lock.last_holder(run_dir) or None,
            **({"busy": held} if held is not None else {})}


def _driver_line(run_dir: Path, ledger: Ledger, d: dict) -> str:
    if d["alive"]:
        return f"driver: alive, {lock.describe(d)}"
    busy = f"; batch held by {lock.describe(d['busy'])}" if d.get("busy") else ""
    if ledger.has_open_attempt():
        last = f" ({lock.describe(d['last'])})" if d.get("last") else ""
        return (f"driver: dead{last}; its open attempts never ended here: `pgolf resume {run_dir}` closes them "
                f"and finishes the batch{busy}")
    return f"driver: none (the batch is not running){busy}"


def cmd_status(args) -> int:
    run_dir = Path(args.dir)
    ledger = Ledger.load(run_dir)
    driver = driver_state(run_dir)
    if args.json:
        try:
            rehearsal = bool(load_batch(run_dir).get("rehearsal"))
        except PgolfError:
            rehearsal = False
        print(json.dumps({**ledger.data, "rehearsal": rehearsal, "driver": driver}, indent=2))
        return 0
    from rich.console import Console
    from runner.progress import status_table
    rehearsal = False
    try:
        batch = load_batch(run_dir)
        rehearsal = bool(batch.get("rehearsal"))
        created = str(batch.get("created_at") or "?")
        created = f"{created[:10]} {created[11:19]} UTC" if len(created) >= 19 else created
        # two short lines, so that an 80-column terminal never wraps them
        head = f"{batch.get('name')}  created {created}\nscript {batch['script']['file']}  sha256 " \
               f"{batch['script']['sha256'][:12]}…"
        if rehearsal:
            head += "\nREHEARSAL: fake RunPod on this machine; its costs are fake, no money was spent"
    except PgolfError:
        head = str(run_dir)
    c = Console()
    c.print(head, markup=False, highlight=False)
    c.print(_driver_line(run_dir, ledger, driver), markup=False, highlight=False)
    c.print(status_table(ledger, rehearsal, driver_alive=driver["alive"]))
    from runner.progress import ledger_notes
    for line in ledger_notes(ledger, rehearsal):
        c.print(line, markup=False, highlight=False)
    return 0


def cmd_cluster(args) -> int:
    from runner.backends import cluster_gc, make_backend
    from runner.spec import load_spec
    if args.action == "gc":
        return cluster_gc(args.runs_dir, yes=args.yes, rehearse=args.rehearse)
    if not args.spec:
        raise PgolfError(f"pgolf cluster {args.action}: give the job spec, e.g. `pgolf cluster {args.action} "
                         f"jobs/record.toml`")
    # --rehearse is RunPod's rehearsal: the verb then acts on the fake API, whatever backend the spec names
    spec = load_spec(args.spec, {"backend": "runpod"} if args.rehearse else None)
    backend = make_backend(spec, rehearse=args.rehearse)
    if args.action != "down":
        return backend.cluster(args.action, Path(args.runs_dir), args.yes)
    with lock.LockSet(args.runs_dir, "pgolf cluster down") as locks:   # no driver starts on them meanwhile
        live = [(d, who) for d, who in locks.busy.items() if _batch_of(d, spec.name)]
        if live:
            d, who = live[0]
            raise PgolfError(f"{d}: batch in use by {lock.describe(who)}; `pgolf cluster down` terminates "
                             f"running attempts' pods only when no driver holds them: stop it first (Ctrl-C "
                             f"terminates its pods), then run this again")
        return backend.cluster(args.action, Path(args.runs_dir), args.yes)


def _batch_of(run_dir: Path, name: str) -> bool:
    """The batch in run_dir belongs to the spec called `name` (as `pgolf cluster down` reads it)."""
    try:
        if load_batch(run_dir).get("name") == name:
            return True
    except PgolfError:
        pass
    return run_dir.name == name or run_dir.name.startswith(f"{name}-")


def cmd_reproduce(args) -> int:
    """`pgolf reproduce RECORD_DIR`: a job spec from the record folder (results.reproduce), run as a batch
    through the library; the batch's report then puts the reproduced per-seed scores beside the claimed ones.
    `--dry-run` prints the spec (JSON) instead of running it."""
    from results.reproduce import spec_from_record
    from runner.batch import run
    from runner.spec import validate_spec
    raw, notes = spec_from_record(args.record_dir, seeds=args.seeds or None, data_paths=_data_paths(args.data))
    raw["reproduces"] = str(Path(args.record_dir).resolve())
    for n in notes:
        print(f"pgolf reproduce: note: {n}", file=sys.stderr)
    spec = validate_spec(raw, f"{args.record_dir} (the reproduction's job spec)")
    if args.dry_run:
        print(json.dumps(spec.model_dump(mode="json", exclude_defaults=True), indent=2))
        return 0
    check_address(args.address)
    return _outcome(run(spec, runs_dir=args.runs_dir, name=args.name, backend=args.backend, address=args.address,
                        progress=not args.no_progress, rehearse=args.rehearse, faults=args.rehearse_faults))


def _data_paths(items: list[str] | None) -> dict[str, str] | None:
    """`--data DATA_PATH=/x TOKENIZER_PATH=/y.model` -> {name: absolute path}."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PgolfError(f"--data {item!r}: use NAME=PATH, e.g. DATA_PATH=data/fineweb10B_sp8192")
        out[key] = str(Path(value).expanduser().resolve())
    return out
