"""Time to load + audit every record folder of the public records (target: under 1 s per folder, in one process).

Usage: python bench/audit_corpus.py [RECORDS_DIR] [--repeat N] [--out JSON]
RECORDS_DIR defaults to $PGOLF_RECORDS, else the snapshot in tests/data/records. Prints one row per folder
(logs, runs, verdict, ms) and the total, best of N repeats. Writes nothing unless --out names a file (the
numbers kept in the repository are bench/results/audit_corpus.json: pass that path to update them on purpose).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from results.audit import audit
from results.files import atomic_write_json
from results.load import find_logs, load


def default_records() -> Path:
    """$PGOLF_RECORDS, else the public records kept in the repository for the tests."""
    env = os.environ.get("PGOLF_RECORDS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "tests" / "data" / "records"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="?", default=str(default_records()))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="write the numbers to this JSON file (default: print only)")
    args = ap.parse_args()
    root = Path(args.records)
    folders = sorted(p for t in root.glob("track_*") for p in t.iterdir() if p.is_dir())
    if not folders:
        print(f"no record folders under {root}")
        return 2
    nbytes = sum(f.stat().st_size for d in folders for f in find_logs(d))
    best_total, rows = None, []
    for _ in range(args.repeat):
        rows, t_all = [], time.perf_counter()
        for d in folders:
            t0 = time.perf_counter()
            a = audit(load(d))
            rows.append((d.name, len(find_logs(d)), len(a["runs"]), a["verdict"], (time.perf_counter() - t0) * 1000))
        total = time.perf_counter() - t_all
        best_total = total if best_total is None else min(best_total, total)
    table = Table(title=f"pgolf audit over {root}", show_edge=False)
    for col in ("folder", "logs", "runs", "verdict", "ms"):
        table.add_column(col, justify="left" if col in ("folder", "verdict") else "right")
    for name, nl, nr, v, ms in rows:
        table.add_row(name[:60], str(nl), str(nr), v, f"{ms:.1f}")
    con = Console(width=110)
    con.print(table)
    fails = sum(r[3] == "fail" for r in rows)
    per_folder = best_total / len(folders)
    con.print(f"folders: {len(folders)}  logs: {sum(r[1] for r in rows)} ({nbytes / 1e6:.1f} MB)  "
              f"verdict fail: {fails}  total (best of {args.repeat}): {best_total:.3f} s  "
              f"per folder: {per_folder:.3f} s (target < 1 s)")
    if args.out:
        out = Path(args.out)
        atomic_write_json(out, {"folders": len(folders), "logs": sum(r[1] for r in rows), "log_bytes": nbytes,
                                "verdict_fail": fails, "total_s_best": round(best_total, 4),
                                "per_folder_s": round(per_folder, 4), "repeat": args.repeat,
                                "python": platform.python_version(), "machine": platform.machine(),
                                "per_folder_ms": {name: round(ms, 2) for name, _, _, _, ms in rows}})
        con.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
