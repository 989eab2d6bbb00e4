"""Adaptive batches and early abort on the embedded default (pgolf starts its own local Ray), with the fake
payload whose final val_bpb and train losses are set per seed by env (tests/payloads/fake_train.py).

The baseline is a small record folder written here: three seeds whose logs have the fake payload's format
(train loss 4.0 − 0.1·step against real train time, val_bpb near 1.100), so both the sequential test and
the abort's curve have something real to read.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runner
from runner.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"
BPT = 2.43593
RECORD_BPB = {1: 1.1000, 2: 1.1004, 3: 1.0997}
pytestmark = pytest.mark.slow


def record_folder(tmp_path: Path, seconds: float = 4.0, steps: int = 20) -> Path:
    """A record folder of three seeds: step lines at real-looking train times, final scores."""
    d = tmp_path / "record"
    d.mkdir()
    for seed, bpb in RECORD_BPB.items():
        lines = [f"seed:{seed}", f"val_bytes_per_token:{BPT}"]
        for i in range(1, steps + 1):
            ms = 1000 * seconds * i / steps
            lines.append(f"step:{i}/{steps} train_loss:{4.0 - 0.1 * i:.4f} train_time:{ms:.0f}ms step_avg:1ms")
        loss = bpb * math.log(2) * BPT
        lines.append(f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f} eval_time:1234ms")
        (d / f"train_seed{seed}.log").write_text("\n".join(lines) + "\n")
    return d


def job(tmp_path: Path, seeds, env: dict, extra: str, limits: str = "retries = 0") -> Path:
    env_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    p = tmp_path / "job.toml"
    p.write_text(f'name = "adaptive"\nscript = "{FAKE}"\nseeds = {list(seeds)}\nlauncher = "python"\n'
                 f"gpus_per_seed = 0\nenv = {{ {env_toml} }}\n[limits]\n{limits}\n{extra}")
    return p


def bpb_env(scores: dict[int, float]) -> dict:
    return {f"FAKE_BPB_{s}": v for s, v in scores.items()}


@pytest.fixture(autouse=True)
def _no_ray_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def test_bad_candidate_stops_for_futility_after_the_first_wave(tmp_path):
    rec = record_folder(tmp_path)
    spec = job(tmp_path, [1, 2, 3], {"FAKE_SECONDS": 0.3, **bpb_env({1: 1.1060, 2: 1.1052, 3: 1.1066})},
               f'[baseline]\nref = "{rec}"\npolicy = "rule"\n[adaptive]\nmin = 3\nmax = 8\n')
    batch = runner.run(spec, run_dir=tmp_path / "runs" / "f", progress=False)
    assert batch.exit_code == 0 and sorted(batch.states) == [1, 2, 3]       # seeds 4..8 never started
    out = batch.outcome
    assert out["action"] == "stop_futility" and out["wave"] == 1 and out["seeds_run"] == 3
    look = batch.ledger.data["adaptive"]["waves"][0]["look"]
    assert look["conditional_power"] < 0.10 and look["p_adjusted"] is None
    rep = batch.report
    assert rep["adaptive"]["outcome"]["action"] == "stop_futility"
    assert rep["significance"]["p"] is None and rep["significance"]["p_nominal"] > 0.5   # no p to claim
    md = (batch.run_dir / "report.md").read_text()
    assert "stopped for futility" in md and "no p-value" in md


def _alive(pid_dir: Path) -> list[str]:
    return [f.name for f in pid_dir.iterdir() if Path(f"/proc/{f.name}").exists()
            and Path(f"/proc/{f.name}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]


def test_clear_winner_stops_for_success_and_an_aborted_seed_is_not_counted(tmp_path, capsys):
    """Wave 1 has four seeds; seed 4's train loss runs 1 nat above the record's curve and is aborted at a
    quarter of the budget (not retried, no process left); the three others are far better than the record,
    so the look after wave 1, on three scored seeds, crosses the O'Brien–Fleming boundary."""
    rec = record_folder(tmp_path, seconds=2.0)
    pid_dir = tmp_path / "pids"
    env = {"FAKE_SECONDS": 2, "FAKE_STEPS": 20, "FAKE_LOSS_4": 1.0, "FAKE_PID_DIR": str(pid_dir),
           **bpb_env({1: 1.0500, 2: 1.0506, 3: 1.0497, 4: 1.0400})}
    spec = job(tmp_path, [1, 2, 3, 4], env,
               f'[baseline]\nref = "{rec}"\npolicy = "rule"\n[adaptive]\nmin = 4\nmax = 8\n'
               f"[abort]\nat = [0.25]\nmargin = 0.5\n", limits="train_seconds = 2\nretries = 1")
    batch = runner.run(spec, run_dir=tmp_path / "runs" / "s", progress=False)
    assert batch.exit_code == 0 and batch.states == {1: "succeeded", 2: "succeeded", 3: "succeeded", 4: "aborted"}
    (att,) = batch.ledger.attempts(4)                                   # aborted once, never retried
    assert att["abort"]["fraction"] == 0.25 and att["abort"]["loss"] - att["abort"]["record_loss"] > 0.5
    assert att["abort"]["saved_hours"] > 0 and att["abort"]["saved_usd"] is None   # Ray: no price
    assert att["error"].startswith("aborted: train loss") and att["exit_code"] != 0
    assert "final_int6" not in (batch.run_dir / "seeds/4/attempt-1/train.log").read_text()
    out = batch.outcome
    assert out["action"] == "stop_success" and out["n"] == 3 and out["p_adjusted"] < 0.01
    look = batch.ledger.data["adaptive"]["waves"][0]["look"]
    assert look["seeds"] == [1, 2, 3] and look["crossed"]              # seed 4's 1.0400 never counted
    rep = batch.report
    assert [r["seed"] for r in rep["runs"]] == [1, 2, 3]
    assert rep["significance"]["passes"] and rep["significance"]["p"] == out["p_adjusted"]
    assert rep["aborted"]["attempts"][0]["seed"] == "4"
    md = (batch.run_dir / "report.md").read_text()
    assert "Stopped for success" in md and "stage-wise-ordering adjusted p" in md and "## Early aborts" in md
    assert "O'Brien–Fleming" in md
    time.sleep(0.5)
    assert _alive(pid_dir) == []
    from runner.cli import main
    capsys.readouterr()
    assert main(["status", str(batch.run_dir)]) == 0
    status = capsys.readouterr().out
    assert "aborted" in status and "stop_success" in status


def test_resume_in_the_middle_of_a_wave_then_the_batch_runs_to_its_maximum(tmp_path):
    """Looks at 2 and 4 seeds. The first look continues (a middling candidate); the driver is stopped
    (SIGTERM) while wave 2 runs, seed 3 hanging; `resume` finishes wave 2 (seed 3 again, seed 1 and 2
    never), then the last look stops at the maximum with the design's p, not the fixed-n one."""
    rec = record_folder(tmp_path)
    env = {"FAKE_SECONDS": 0.3, "FAKE_HANG_3_A1": "1", **bpb_env({1: 1.0995, 2: 1.1001, 3: 1.1001, 4: 1.0999})}
    spec = job(tmp_path, [1, 2], env, f'[baseline]\nref = "{rec}"\npolicy = "progression"\n'
                                      f"[adaptive]\nmin = 2\nmax = 4\n")
    run_dir = tmp_path / "runs" / "m"
    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--runs-dir", str(tmp_path / "runs"),
                          "--name", "m", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    deadline = time.time() + 180

    def seed3_running() -> bool:
        try:
            led = json.loads((run_dir / "ledger.json").read_text())
        except (OSError, ValueError):
            return False
        atts = led["seeds"].get("3", {}).get("attempts") or []
        return bool(atts and atts[0]["node"]) and (run_dir / "seeds/3/attempt-1/train.log").stat().st_size > 0
    while not seed3_running():
        assert time.time() < deadline and p.poll() is None, p.communicate()[0][-3000:] if p.poll() is not None else "slow"
        time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out[-3000:]
    st = Ledger.load(run_dir).data["adaptive"]
    assert [w["look"] is None for w in st["waves"]] == [False, True] and st["outcome"] is None
    first = st["waves"][0]["look"]
    assert first["action"] == "continue" and first["success_chance"] == first["conditional_power"]  # one look left

    batch = runner.resume(run_dir, progress=False)
    assert batch.exit_code == 0 and set(batch.states.values()) == {"succeeded"}
    assert [len(batch.ledger.attempts(s)) for s in (1, 2)] == [1, 1]          # wave 1 never reruns
    assert [a["error"] for a in batch.ledger.attempts(3)] == ["interrupted", None]
    out = batch.outcome
    assert out["action"] == "stop_max" and out["wave"] == 2 and out["n"] == 4
    last = batch.ledger.data["adaptive"]["waves"][1]["look"]
    assert last["looks"] == [2, 4] and last["final"] and last["p_adjusted"] >= last["p_nominal"]
    sig = batch.report["significance"]
    assert sig["p"] == out["p_adjusted"] and sig["p_nominal"] == last["p_nominal"] and not sig["passes"]
    md = (run_dir / "report.md").read_text()
    assert "Ran to its maximum" in md and "| conditional power | success chance |" in md
    assert f"| {first['conditional_power']:.1%} | {first['success_chance']:.1%} | continue |" in md
