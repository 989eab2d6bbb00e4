"""CLI verbs of the results engine: each wires load → compute → render and returns an exit code."""
from __future__ import annotations

import json
import sys


# ---- pgolf audit ---------------------------------------------------------------------------------
_STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def cmd_audit(args) -> int:
    """`pgolf audit DIR [--json]`: 0 when the verdict is pass, 1 when a check fails, 2 on bad input."""
    from results.audit import audit
    from results.load import load

    result = audit(load(args.dir), strict=getattr(args, "strict", False))
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_audit(result)
    return 1 if result["verdict"] == "fail" else 0


def _print_audit(result: dict):
    from rich.console import Console
    from rich.table import Table

    import shutil

    # 100 columns at most (a terminal narrower than that gets its own width); --json has every field
    width = min(shutil.get_terminal_size().columns, 100) if sys.stdout.isatty() else 100
    con = Console(highlight=False, soft_wrap=False, width=width)
    kind = "run directory" if result["kind"] == "run" else "record folder"
    track = {"record": "record track", "non_record": "non-record track"}.get(result.get("track"), "")
    policy = ", strict policy" if result.get("policy") == "strict" else ""
    con.print(f"[bold]pgolf audit[/bold] {result['dir']}")
    con.print(f"{kind}, {track}{policy}")
    runs = Table(title="runs", title_justify="left", show_edge=False)
    for col in ("seed", "log", "metric", "val_bpb", "bytes", "train s", "eval s"):
        runs.add_column(col, justify="left" if col in ("log", "metric") else "right",
                        overflow="fold" if col in ("log", "metric") else "ellipsis",
                        min_width={"log": 18, "metric": 16}.get(col))

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in result["runs"]:
        runs.add_row(num(r["seed"], "d"), r["log"], r["metric"] or "[red]unparsed[/red]", num(r["val_bpb"], ".8f"),
                     num(r["artifact_bytes"], ","), num(r["train_time_ms"] and r["train_time_ms"] / 1000, ".1f"),
                     num(r["eval_time_ms"] and r["eval_time_ms"] / 1000, ".1f"))
    con.print(runs)
    s, c = result["summary"], result["claimed"]
    if s["n"]:
        std = "n/a" if s["std_val_bpb"] is None else f"{s['std_val_bpb']:.5f}"
        toks = "/".join(sorted({r["tokenizer"] for r in result["runs"] if r["tokenizer"]})) or "not stated"
        con.print(f"summary: n={s['n']}  mean val_bpb={s['mean_val_bpb']:.8f}  std={std}  tokenizer={toks}")
    if c["val_bpb"] is not None or c["seeds"]:
        con.print(f"claimed: val_bpb={c['val_bpb']}  seeds={c['seeds']}")
    checks = Table(title="checks", title_justify="left", show_edge=False)
    checks.add_column("check")
    checks.add_column("status")
    checks.add_column("detail", overflow="fold")
    for ch in result["checks"]:
        st = ch["status"]
        checks.add_row(ch["id"], f"[{_STATUS_STYLE[st]}]{st}[/]", ch["detail"])
    con.print(checks)
    from results.audit import overall
    v, warned = result["verdict"], [c["id"] for c in result["checks"] if c["status"] == "warn"]
    note = f" with {len(warned)} warning(s): {', '.join(warned)}" if warned and v == "pass" else ""
    con.print(f"verdict: [{'bold yellow' if overall(result) == 'warn' else 'bold green' if v == 'pass' else 'bold red'}]"
              f"{v.upper()}[/]{note}")


# ---- pgolf report / pgolf submit ------------------------------------------------------------------

def cmd_report(args) -> int:
    """`pgolf report DIR`: rich summary (or exactly the report dict with --json); writes the report files."""
    from rich.console import Console

    from results.report import render_summary, report_dir, write_report

    report = write_report(args.dir, baseline=args.baseline, policy=args.policy, out=args.out)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        Console().print(render_summary(report))
    sys.stdout.flush()
    out = report_dir(report.get("kind", "record"), args.dir, args.out)
    if out is None:
        print("pgolf report: a record folder: nothing written (pass --out DIR for results.csv, report.md, "
              "report.json and plots/)", file=sys.stderr)
    else:
        print(f"pgolf report: wrote results.csv, report.md, report.json and plots/ to {out}", file=sys.stderr)
    return 0


def cmd_submit(args) -> int:
    """`pgolf submit RUN_DIR --out RECORD_DIR`: writes the record folder, refuses when its audit would fail."""
    from results.submit import submit
    rep = submit(args.run_dir, args.out, author=args.author, github_id=args.github_id, name=args.name,
                 baseline=getattr(args, "baseline", None), policy=getattr(args, "policy", None))
    s = rep.get("summary", {})
    std = s.get("std_val_bpb")
    print(f"pgolf submit: wrote {args.out}: {s.get('n')} seed(s), val_bpb {s.get('mean_val_bpb'):.8f}"
          + (f" ± {std:.8f}" if std is not None else "") + f", audit {rep.get('verdict')}")
    sig = rep.get("significance")
    if sig is None:
        print("pgolf submit: note: no baseline known (pass --baseline RECORD|submission.json|BPB, or set [baseline] "
              "ref in the job spec): no significance in the record", file=sys.stderr)
    elif not sig.get("passes"):
        print(f"pgolf submit: note: the result does not pass the {sig['policy']} test against {sig['baseline']} "
              f"(p = {sig['p']}); submit it as a non-record or run more seeds", file=sys.stderr)
    return 0
