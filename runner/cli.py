"""The `pgolf` command line: argument parsing only; each verb lives in the module of its concern.

Every verb returns an exit code. Bad input raises PgolfError and becomes one line on stderr.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from importlib import import_module

from results.errors import PgolfError

# verb -> "module:function"; imported lazily so `pgolf audit` never pays for Ray or torch.
COMMANDS = {
    "run": "runner.commands:cmd_run",
    "resume": "runner.commands:cmd_resume",
    "status": "runner.commands:cmd_status",
    "plan": "runner.plan:cmd_plan",
    "audit": "results.commands:cmd_audit",
    "report": "results.commands:cmd_report",
    "submit": "results.commands:cmd_submit",
    "reproduce": "runner.commands:cmd_reproduce",
    "cluster": "runner.commands:cmd_cluster",
    "data": "model.data:cmd_data",
    "records": "runner.records:cmd_records",
}
LATEST_DEFAULT = ("status", "audit", "report")   # these take the newest run under runs/ when DIR is left out
RECORD_ARGS = ("dir", "baseline", "record_dir")  # arguments that may name a public record (`records:...`)


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (what is wrong and where the help is), not the usage
    block plus the error; its subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def run_name(value: str) -> str:
    """`--name`: one plain path component, so the run directory stays inside --runs-dir."""
    from runner.batch import check_run_name
    try:
        return check_run_name(value)
    except PgolfError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("pgolf")
    except Exception:  # noqa: BLE001 - running from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pgolf", description="Parameter Golf multi-seed runner and auditor")
    p.add_argument("--version", action="version", version=f"pgolf {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_backend(sp):
        sp.add_argument("--backend", choices=["ray", "runpod"], help="override the spec's backend")
        sp.add_argument("--address", help="Ray cluster address (default: start a local one)")
        sp.add_argument("--no-progress", action="store_true",
                        help="one plain line per event instead of live progress bars")
        sp.add_argument("--rehearse", action="store_true",
                        help="with --backend runpod: run the whole RunPod path for free against a local fake API")
        sp.add_argument("--rehearse-faults", default="", metavar="SPEC",
                        help="faults for the rehearsal, e.g. preempt=1,capacity=2,5xx=3,slow_start=2")

    def add_records(sp):
        sp.add_argument("--records", metavar="DIR",
                        help="where `records:NAME` references look (default: $PGOLF_RECORDS, else the folder "
                             "`pgolf records fetch` fills)")

    def add_latest_dir(sp, what):
        sp.add_argument("dir", nargs="?", metavar="DIR",
                        help=f"{what} (default: the newest run under runs/, i.e. runs/latest)")

    sp = sub.add_parser("run", help="start a batch of seeds from a job spec")
    sp.add_argument("job", help="job spec (TOML), e.g. jobs/smoke.toml")
    sp.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    sp.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    sp.add_argument("--name", type=run_name, help="run directory name under --runs-dir (default: spec name + timestamp)")
    add_backend(sp)
    add_records(sp)

    sp = sub.add_parser("resume", help="finish a batch from its ledger; succeeded seeds never run again")
    sp.add_argument("run_dir", help="the batch's run directory, e.g. runs/smoke-20261128-101500")
    add_backend(sp)
    add_records(sp)

    sp = sub.add_parser("status", help="show a batch's ledger")
    add_latest_dir(sp, "run directory")
    sp.add_argument("--json", action="store_true", help="print ledger.json instead of a table")

    sp = sub.add_parser("plan", help="seeds a claim needs (power per seed count) and what they cost")
    sp.add_argument("--baseline", help="record folder (or records:NAME), submission.json or bpb number "
                                       "(default: the spec's)")
    sp.add_argument("--improvement", type=float, required=True, metavar="BPB",
                    help="the true mean improvement in bpb you expect over the baseline")
    sp.add_argument("--std", type=float, metavar="BPB", help="seed standard deviation in bpb (default: the baseline's)")
    sp.add_argument("--policy", choices=["rule", "progression"], help="default: the spec's, else rule")
    sp.add_argument("--max-seeds", type=int, default=8, metavar="N", help="power for 1..N seeds (default 8, at most 100)")
    sp.add_argument("--spec", metavar="JOB.toml", help="cost and hours on this spec's backend")
    sp.add_argument("--seeds-per-pod", type=int, default=None, metavar="K",
                    help="with --spec on RunPod: K seeds one after another per pod after one set-up (cost "
                         "against wall-clock; default: the spec's [runpod] seeds_per_pod)")
    sp.add_argument("--json", action="store_true",
                    help='print {"power", "seeds_for_power", "cost_usd", "hours", ...} (README: pgolf plan)')
    add_records(sp)

    sp = sub.add_parser("audit", help="compliance audit of a run directory or record folder")
    add_latest_dir(sp, "run directory or record folder")
    sp.add_argument("--json", action="store_true", help="print the audit as JSON (docs/CHALLENGE.md has its keys)")
    sp.add_argument("--strict", action="store_true",
                    help="the written rules to the letter: practices maintainers accepted become failures (docs/CHALLENGE.md)")
    add_records(sp)

    sp = sub.add_parser("report", help="results table, statistics and significance; writes report.md and plots")
    add_latest_dir(sp, "run directory or record folder")
    sp.add_argument("--baseline", help="record folder (or records:NAME), submission.json or a bpb number")
    sp.add_argument("--policy", choices=["rule", "progression"], default=None,
                    help="significance policy (default: the spec's, else rule)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--out", help="where results.csv, report.md/json and plots/ go (default: the run directory; "
                                  "for a record folder nothing is written unless --out is given)")
    add_records(sp)

    sp = sub.add_parser("submit", help="turn a finished run into a record folder")
    sp.add_argument("run_dir", help="the batch's run directory")
    sp.add_argument("--out", required=True, help="record folder to write (must not exist or be empty)")
    sp.add_argument("--author", help="submission.json author (default: the spec's [submission])")
    sp.add_argument("--github-id", help="submission.json github_id (default: the spec's [submission])")
    sp.add_argument("--name", help="submission.json name (default: the spec's [submission] or name)")
    sp.add_argument("--baseline", help="record folder (or records:NAME), submission.json or a bpb number to "
                                       "test against (default: the spec's [baseline] ref)")
    sp.add_argument("--policy", choices=["rule", "progression"], default=None,
                    help="significance policy (default: the spec's, else rule)")
    add_records(sp)

    sp = sub.add_parser("reproduce", help="run a record folder again and say whether its claim reproduces")
    sp.add_argument("record_dir", help="record folder (or records:NAME) with its train_gpt.py, logs and "
                                       "submission.json")
    sp.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the record's)")
    sp.add_argument("--data", nargs="+", metavar="NAME=PATH",
                    help="where the data is on this cluster, e.g. DATA_PATH=... TOKENIZER_PATH=...")
    sp.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    sp.add_argument("--name", type=run_name,
                    help="run directory name under --runs-dir (default: reproduce-<record> + timestamp)")
    sp.add_argument("--dry-run", action="store_true", help="print the job spec and stop")
    add_backend(sp)
    add_records(sp)

    sp = sub.add_parser("cluster", help="manage clusters and pods")
    sp.add_argument("action", choices=["up", "status", "down", "gc"],
                    help="up: check budget; status: pods and spend; down: terminate a spec's pods; gc: orphans")
    sp.add_argument("spec", nargs="?", help="job spec (for up/status/down)")
    sp.add_argument("--runs-dir", default="runs", help="where the ledgers live (default: runs)")
    sp.add_argument("--yes", action="store_true", help="terminate without asking")
    sp.add_argument("--rehearse", action="store_true", help="act on the rehearsal's fake RunPod API")

    sp = sub.add_parser("records", help="the public record folders: fetch or update a local copy")
    rsub = sp.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    rp = rsub.add_parser("fetch", help="shallow, sparse git clone of the public repository's records/ (or an "
                                       "update of one)")
    rp.add_argument("--dest", metavar="DIR", help="where the clone goes (default: ~/.cache/pgolf/parameter-golf, "
                                                  "where pgolf looks when neither --records nor PGOLF_RECORDS is set)")
    rp.add_argument("--url", help="the repository to clone (default: $PGOLF_RECORDS_URL, else "
                                  "https://github.com/openai/parameter-golf.git)")

    sp = sub.add_parser("data", help="data preparation")
    dsub = sp.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="train a sentencepiece tokenizer and write official-format shards")
    dp.add_argument("--text", nargs="+", help="text files or folders to read (default: the Python standard library's docstrings)")
    dp.add_argument("--out", required=True, help="output folder (tokenizer + shards)")
    dp.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary size (default 1024)")
    dp.add_argument("--val-fraction", type=float, default=0.1,
                    help="fraction of documents in the validation split (default 0.1)")
    dp.add_argument("--shard-tokens", type=int, default=1_000_000, help="tokens per shard file (default 1,000,000)")
    dp.add_argument("--max-chars", type=int, default=None, help="cap on characters read")
    dp.add_argument("--python-src", nargs="+", metavar="DIR",
                    help="also read docstrings and comment blocks of every .py file under these folders")
    dp.add_argument("--tokenizer-max-chars", type=int, default=None,
                    help="train the tokenizer on this many characters of training text (default: all)")
    return p


_PATH_ERRORS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = COMMANDS["data" if args.command == "data" else args.command]
    module, func = target.split(":")
    try:
        from runner import records
        records.use(getattr(args, "records", None))
        for attr in RECORD_ARGS:
            if records.is_ref(getattr(args, attr, None)):
                setattr(args, attr, records.resolve(getattr(args, attr)))
        if args.command in LATEST_DEFAULT:
            if args.dir is None:
                from runner.ledger import latest_run
                args.dir = str(latest_run())
        return int(getattr(import_module(module), func)(args) or 0)
    except PgolfError as e:
        print(f"pgolf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgolf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback for users; PGOLF_DEBUG=1 shows it
        if os.environ.get("PGOLF_DEBUG"):
            raise
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            print(f"pgolf {args.command}: error: cannot write {e.filename or 'a file'} ({e.strerror}); free space "
                  f"on that disk (or make it writable), then run the command again", file=sys.stderr)
            return 75
        if isinstance(e, OSError) and e.filename and e.errno in _PATH_ERRORS:
            # a path the user gave that cannot be used (`--runs-dir /proc/nope`, a read-only folder): their input
            print(f"pgolf {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        print(f"pgolf {args.command}: internal error: {type(e).__name__}: {e} (set PGOLF_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
