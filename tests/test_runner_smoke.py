"""End to end: `pgolf run jobs/smoke.toml` with the real payload on the embedded local Ray (CPU), then
`pgolf submit` and `pgolf audit` of the record folder. The slowest test of the runner (a few minutes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def pgolf(*args, timeout):
    return subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=timeout)


def test_smoke_run_submit_audit(tmp_path):
    r = pgolf("run", "jobs/smoke.toml", "--runs-dir", tmp_path, "--name", "smoke", "--no-progress", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "smoke"
    led = json.loads((run / "ledger.json").read_text())["seeds"]
    assert sorted(led) == ["1337", "2025", "42"] and all(e["state"] == "succeeded" for e in led.values())
    for seed in led:
        adir = run / "seeds" / seed / "attempt-1"
        assert "legal_ttt_exact" in (adir / "train.log").read_text()
        assert (adir / "artifacts" / "final_model.int6.ptz").stat().st_size > 0
        assert json.loads((adir / "result.json").read_text())["exit_code"] == 0
    for f in ("batch.json", "results.csv", "report.md", "report.json", "train_gpt.py"):
        assert (run / f).is_file(), f
    assert "audit: pass" in r.stdout                     # the summary is printed last
    rec = tmp_path / "record"
    s = pgolf("submit", run, "--out", rec, timeout=300)
    assert s.returncode == 0, s.stdout + s.stderr
    a = pgolf("audit", rec, "--json", timeout=300)
    assert a.returncode == 0, a.stdout + a.stderr
    assert json.loads(a.stdout)["verdict"] == "pass"
    # the follow-up commands name the newest batch without a glob: runs/latest
    assert (tmp_path / "latest").resolve() == run.resolve()
    st = pgolf("status", tmp_path / "latest", "--json", timeout=120)
    assert st.returncode == 0 and set(json.loads(st.stdout)["seeds"]) == {"42", "1337", "2025"}

    # pgolf reproduce: the record folder written by submit runs again (two of its seeds) on the embedded default
    again = pgolf("reproduce", rec, "--seeds", 42, 1337, "--runs-dir", tmp_path, "--name", "again", "--no-progress",
                  timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rep = json.loads((tmp_path / "again" / "report.json").read_text())["reproduction"]
    assert rep["n"] == 2 and set(rep["differences"]) == {"42", "1337"} and isinstance(rep["stands"], bool)
    # (whether it stands depends on this machine's load: the smoke job stops at a 25 s wall-clock cap)
    assert "## Reproduction check" in (tmp_path / "again" / "report.md").read_text()
    assert (tmp_path / "latest").resolve() == (tmp_path / "again").resolve()
