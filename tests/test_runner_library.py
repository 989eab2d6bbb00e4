"""The library API on the embedded local Ray: `runner.run(...)` -> Batch, then `runner.resume(run_dir)`
finishes only what did not succeed (as Ray Tune's `Tuner.fit()` / `Tuner.restore(path)`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import runner
from results.errors import PgolfError
from runner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"
pytestmark = pytest.mark.slow


def test_run_then_resume_returns_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    job = tmp_path / "job.toml"
    job.write_text(f'name = "lib"\nscript = "{FAKE}"\nseeds = [9]\nlauncher = "python"\ngpus_per_seed = 0\n'
                   f'env = {{ FAKE_SECONDS = 0.5, FAKE_FAIL_2_A1 = "1" }}\n[limits]\nretries = 0\n')
    spec = load_spec(job)
    batch = runner.run(spec, seeds=[1, 2], run_dir=tmp_path / "runs" / "lib", progress=False)
    assert batch.exit_code == 1 and batch.states == {1: "succeeded", 2: "failed"} and batch.failed == [2]
    assert batch.report is not None and [r["seed"] for r in batch.report["runs"]] == [1]
    assert (batch.run_dir / "report.json").is_file() and os.path.samefile(batch.run_dir, tmp_path / "runs" / "lib")
    with pytest.raises(PgolfError, match="a batch already lives here"):
        runner.run(job, run_dir=batch.run_dir, progress=False)

    again = runner.resume(batch.run_dir, progress=False)
    assert again.exit_code == 0 and again.states == {1: "succeeded", 2: "succeeded"}
    assert len(again.ledger.attempts(1)) == 1 and [a["exit_code"] for a in again.ledger.attempts(2)] == [3, 0]
    assert [r["seed"] for r in again.report["runs"]] == [1, 2]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_run_name_from_python_stays_under_runs_dir(tmp_path, name):
    """Issue 20's `--name ../escape` rule holds for the library too: `runner.run(name=...)` with anything but
    one plain folder name is refused before Ray starts or a folder is made."""
    job = tmp_path / "job.toml"
    job.write_text(f'name = "lib"\nscript = "{FAKE}"\nseeds = [9]\nlauncher = "python"\ngpus_per_seed = 0\n')
    with pytest.raises(PgolfError, match="not a plain folder name"):
        runner.run(job, runs_dir=tmp_path / "runs", name=name, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]
