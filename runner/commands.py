"""`pgolf run`, `pgolf resume`, `pgolf status`, `pgolf cluster`: arguments in, the library called, results out.

The work is in the library (runner/batch.py for batches, the backends for `cluster`); these functions
only turn parsed arguments into calls and a Batch into what the terminal shows and the exit code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from results.errors import PgolfError
from runner.ledger import Ledger, load_batch


def cmd_run(args) -> int:
    from runner.batch import run
    return _outcome(run(args.job, runs_dir=args.runs_dir, name=args.name, seeds=args.seeds, backend=args.backend,
                        address=args.address, progress=not args.no_progress, rehearse=args.rehearse,
                        faults=args.rehearse_faults))


def cmd_resume(args) -> int:
    from runner.batch import resume
    return _outcome(resume(args.run_dir, backend=args.backend, address=args.address, progress=not args.no_progress,
                           rehearse=args.rehearse, faults=args.rehearse_faults))


def _outcome(batch) -> int:
    """The report's summary (secrets masked), then what did not succeed; the batch's exit code."""
    if batch.interrupted:
        print(f"pgolf: batch interrupted; finish it with `pgolf resume {batch.run_dir}`", file=sys.stderr)
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
    return batch.exit_code


def cmd_status(args) -> int:
    run_dir = Path(args.run_dir)
    ledger = Ledger.load(run_dir)
    if args.json:
        try:
            rehearsal = bool(load_batch(run_dir).get("rehearsal"))
        except PgolfError:
            rehearsal = False
        print(json.dumps({**ledger.data, "rehearsal": rehearsal}, indent=2))
        return 0
    from rich.console import Console
    from runner.progress import status_table
    rehearsal = False
    try:
        batch = load_batch(run_dir)
        rehearsal = bool(batch.get("rehearsal"))
        head = f"{batch.get('name')}  script {batch['script']['file']} sha256 {batch['script']['sha256'][:12]}…  " \
               f"created {batch.get('created_at')}"
        if rehearsal:
            head += "\nREHEARSAL: fake RunPod on this machine; its costs are fake, no money was spent"
    except PgolfError:
        head = str(run_dir)
    c = Console()
    c.print(head, markup=False, highlight=False)
    c.print(status_table(ledger, rehearsal))
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
    return make_backend(spec, rehearse=args.rehearse).cluster(args.action, Path(args.runs_dir), args.yes)
