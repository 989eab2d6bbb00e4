"""`pgolf submit`: turn a finished run directory into a record folder as the public repository expects.

Writes README.md (the PR body), submission.json, train_gpt.py and train_seed{S}.log into a temporary
sibling folder, audits that folder as a record, and only then renames it into place: a refused submission
leaves nothing behind. Secrets never reach these files: env-like `NAME=value` pairs whose NAME looks
secret, and the values of this process's secret-named environment variables, are masked.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from results.audit import audit
from results.batch import read_batch, spec_of
from results.errors import PgolfError
from results.files import atomic_write, sha256_file
from results.load import load
from results.report import build, markdown
from results.secrets import scrub, secret_lines
from results.summary import summarize

DEFAULT_TRACK = "10min_16mb"


def _script(run_dir: Path, batch: dict) -> Path:
    """The script the batch ran: batch.json "script": {"file", "sha256"}, checked against its hash."""
    info = batch.get("script")
    name = info.get("file") if isinstance(info, dict) else info if isinstance(info, str) else None
    name = name or spec_of(batch).get("script")
    if not name:
        raise PgolfError(f"{run_dir}/batch.json: no \"script\" entry; cannot tell which script to ship")
    candidates = [run_dir / str(name), run_dir / Path(str(name)).name, Path(str(name))]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise PgolfError(f"{run_dir}: script {name} named in batch.json not found in the run directory")
    want = info.get("sha256") if isinstance(info, dict) else None
    if want and sha256_file(path) != want:
        raise PgolfError(f"{path}: sha256 differs from batch.json's script.sha256; the script changed after the "
                         "run — ship the exact script that produced the logs")
    return path


def _compliance(checks: list[dict]) -> dict:
    st = {c["id"]: c["status"] for c in checks}

    def ok(cid):
        return None if st.get(cid) in (None, "skip") else st[cid] == "pass"
    return {"artifact_under_16mb": ok("artifact_cap"), "training_under_600s": ok("train_time"),
            "eval_under_600s": ok("eval_time"), "logs_present": ok("logs_present"),
            "seed_labels_match": ok("seed_labels"), "bpb_canonical": ok("bpb_consistency"),
            "provenance_verified": ok("provenance"), "audit_passed": all(s != "fail" for s in st.values())}


def _failures(report: dict) -> str:
    bad = [c for c in report.get("checks", []) if c.get("status") == "fail"]
    return "; ".join(f"{c['id']}: {c.get('detail', '')}" for c in bad) or "verdict fail"


def _r8(x: float | None) -> float | None:
    """Published precision (8 decimals, as the records print): within the audit's rounding tolerance."""
    return None if x is None else round(float(x), 8)


def submission_dict(runs, report: dict, spec: dict, author, github_id, name) -> dict:
    s = summarize(runs)
    sub = spec.get("submission") or {}
    d = {"author": author or sub.get("author"), "github_id": github_id or sub.get("github_id"),
         "name": name or sub.get("name") or spec.get("name"),
         "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
         "track": sub.get("track") or DEFAULT_TRACK,
         "val_bpb": _r8(s["mean_val_bpb"]), "val_bpb_std": _r8(s["std_val_bpb"]),
         "val_loss": _r8(s["mean_val_loss"]), "val_loss_std": _r8(s["std_val_loss"]),
         "seeds": [r.seed for r in runs],
         "seed_results": {str(r.seed): {"val_loss": r.val_loss, "val_bpb": r.val_bpb,
                                        "artifact_bytes": r.artifact_bytes, "steps": r.steps,
                                        "train_time_ms": r.train_time_ms, "eval_time_ms": r.eval_time_ms}
                          for r in runs}}
    sizes = [r.artifact_bytes for r in runs if r.artifact_bytes is not None]
    codes = [r.code_bytes for r in runs if r.code_bytes is not None]
    if sizes:
        d["bytes_total"] = max(sizes)
    if codes:
        d["bytes_code"] = max(codes)
    if report.get("significance"):
        d["significance"] = report["significance"]
    d["compliance"] = _compliance(report.get("checks", []))
    return d


def submit(run_dir, out, author: str | None = None, github_id: str | None = None,
           name: str | None = None, baseline=None, policy: str | None = None) -> dict:
    """Write the record folder OUT from RUN_DIR; returns the record's report dict. Refuses with PgolfError.

    `baseline` / `policy` as for `pgolf report` (default: the spec's [baseline]); the significance test's
    result goes into submission.json and the README."""

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PgolfError(f"{out}: already exists and is not empty; choose a new --out folder")
    if not run_dir.is_dir():
        raise PgolfError(f"{run_dir}: no such run directory")
    runset = load(run_dir)
    if runset.kind != "run":
        raise PgolfError(f"{run_dir}: not a run directory (no batch.json); pgolf submit takes what `pgolf run` wrote")
    batch = read_batch(runset) or {}
    spec = spec_of(batch)
    script = _script(run_dir, batch)
    script_text = script.read_text(encoding="utf-8", errors="replace")
    leaks = secret_lines(script_text)
    if leaks:
        raise PgolfError(f"{script}:{leaks[0]}: looks like a secret (a secret-named NAME=value); the shipped script "
                         "must not hold one and cannot be edited after the run: remove it, rerun, then submit")

    if not any(r.val_bpb is not None for r in runset.runs):
        # nothing scored: no record to write, whatever the audit of an empty run says (val_bpb would be null)
        raise PgolfError(f"{run_dir}: no seed finished with a score (see `pgolf status {run_dir}`); nothing to "
                         f"submit: finish the batch with `pgolf resume {run_dir}` or run it again")
    report, _ = build(runset, baseline, policy)
    if report.get("verdict") != "pass":
        raise PgolfError(f"{run_dir}: the audit fails, a reviewer would reject this record ({_failures(report)}); "
                         "fix the run, then submit")
    runs = [r for r in runset.runs if r.val_bpb is not None]
    if any(r.seed is None for r in runs):
        raise PgolfError(f"{run_dir}: a scored log has no seed; cannot name train_seed{{S}}.log")
    if len({r.seed for r in runs}) != len(runs):
        raise PgolfError(f"{run_dir}: two scored logs claim the same seed; keep one attempt per seed")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        atomic_write(tmp / "train_gpt.py", script.read_bytes())
        for r in runs:
            text = (run_dir / r.log).read_text(encoding="utf-8", errors="replace")
            atomic_write(tmp / f"train_seed{r.seed}.log", scrub(text))
        sub = submission_dict(runs, report, spec, author, github_id, name)
        atomic_write(tmp / "submission.json", scrub(json.dumps(sub, indent=2)) + "\n")
        atomic_write(tmp / "README.md", "")          # written from the audit below; required_files wants one
        record = load(tmp)
        rec_report = dict(audit(record))
        if rec_report.get("verdict") != "pass":
            raise PgolfError(f"{out}: the written record would fail its audit ({_failures(rec_report)}); "
                             "nothing was written")
        rec_report["dir"] = str(out)
        rec_report["significance"] = report.get("significance")
        if report.get("adaptive"):        # an adaptive batch: the README states how it stopped, its p only
            rec_report["adaptive"] = report["adaptive"]
        readme = markdown(rec_report, None, batch=batch, title=sub["name"],
                          byline=_byline(sub))
        atomic_write(tmp / "README.md", readme)
        os.chmod(tmp, 0o755)                 # mkdtemp makes 0700
        if out.exists():
            out.rmdir()                      # empty (checked above); rename needs it gone
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rec_report


def _byline(sub: dict) -> str | None:
    who = sub.get("author")
    if not who:
        return None
    return f"By {who}" + (f" (@{sub['github_id']})" if sub.get("github_id") else "") + f", {sub['date']}."
