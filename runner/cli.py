"""The `pgolf` command line: argument parsing only; each verb lives in the module of its concern.

Every verb returns an exit code. Bad input raises PgolfError and becomes one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from results.errors import PgolfError

# verb -> "module:function"; imported lazily so `pgolf audit` never pays for Ray or torch.
COMMANDS = {
    "run": "runner.commands:cmd_run",
    "resume": "runner.commands:cmd_resume",
    "status": "runner.commands:cmd_status",
    "audit": "results.commands:cmd_audit",
    "report": "results.commands:cmd_report",
    "submit": "results.commands:cmd_submit",
    "cluster": "runner.commands:cmd_cluster",
    "data": "model.data:cmd_data",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf multi-seed runner and auditor")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_backend(sp):
        sp.add_argument("--backend", choices=["ray", "runpod"], help="override the spec's backend")
        sp.add_argument("--rehearse", action="store_true",
                        help="with --backend runpod: run the whole RunPod path for free against a local fake API")
        sp.add_argument("--rehearse-faults", default="", metavar="SPEC",
                        help="faults for the rehearsal, e.g. preempt=1,capacity=2,5xx=3,slow_start=2")

    sp = sub.add_parser("run", help="start a batch of seeds from a job spec")
    sp.add_argument("job", help="job spec (TOML), e.g. jobs/smoke.toml")
    sp.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    sp.add_argument("--address", help="Ray cluster address (default: start a local one)")
    sp.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    sp.add_argument("--name", help="run directory name (default: spec name + timestamp)")
    sp.add_argument("--no-progress", action="store_true", help="plain log lines instead of live progress bars")
    add_backend(sp)

    sp = sub.add_parser("resume", help="finish a batch from its ledger; succeeded seeds never run again")
    sp.add_argument("run_dir")
    sp.add_argument("--address", help="Ray cluster address (default: start a local one)")
    sp.add_argument("--no-progress", action="store_true")
    add_backend(sp)

    sp = sub.add_parser("status", help="show a batch's ledger")
    sp.add_argument("run_dir")
    sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("audit", help="compliance audit of a run directory or record folder")
    sp.add_argument("dir")
    sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("report", help="results table, statistics and significance; writes report.md and plots")
    sp.add_argument("dir")
    sp.add_argument("--baseline", help="record folder, submission.json or a bpb number")
    sp.add_argument("--policy", choices=["rule", "progression"], default=None)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--out", help="where report.md and plots/ go (default: DIR for a run, else ./report-<name>)")

    sp = sub.add_parser("submit", help="turn a finished run into a record folder")
    sp.add_argument("run_dir")
    sp.add_argument("--out", required=True, help="record folder to write")
    sp.add_argument("--author")
    sp.add_argument("--github-id")
    sp.add_argument("--name")

    sp = sub.add_parser("cluster", help="manage clusters and pods")
    sp.add_argument("action", choices=["up", "status", "down", "gc"])
    sp.add_argument("spec", nargs="?", help="job spec (for up/status/down)")
    sp.add_argument("--runs-dir", default="runs")
    sp.add_argument("--yes", action="store_true", help="gc: terminate without asking")
    sp.add_argument("--rehearse", action="store_true", help="act on the rehearsal's fake RunPod API")

    sp = sub.add_parser("data", help="data preparation")
    dsub = sp.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="train a sentencepiece tokenizer and write official-format shards")
    dp.add_argument("--text", nargs="+", help="text files or folders to read (default: the Python standard library's docstrings)")
    dp.add_argument("--out", required=True, help="output folder (tokenizer + shards)")
    dp.add_argument("--vocab-size", type=int, default=1024)
    dp.add_argument("--val-fraction", type=float, default=0.1)
    dp.add_argument("--shard-tokens", type=int, default=1_000_000)
    dp.add_argument("--max-chars", type=int, default=None, help="cap on characters read")
    dp.add_argument("--python-src", nargs="+", metavar="DIR",
                    help="also read docstrings and comment blocks of every .py file under these folders")
    dp.add_argument("--tokenizer-max-chars", type=int, default=None,
                    help="train the tokenizer on this many characters of training text (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = COMMANDS["data" if args.command == "data" else args.command]
    module, func = target.split(":")
    try:
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
        print(f"pgolf {args.command}: internal error: {type(e).__name__}: {e} (set PGOLF_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
