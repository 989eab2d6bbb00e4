"""The embedded default (pgolf starts its own local Ray) stopped by SIGTERM while SIGINT is ignored, as
under `nohup pgolf run ... &`: attempts are cancelled, their processes killed, the ledger closed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"
pytestmark = pytest.mark.slow


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigterm_under_nohup_embedded_default(tmp_path):
    pid_dir = tmp_path / "pids"
    job = tmp_path / "job.toml"
    job.write_text(f'name = "t"\nscript = "{FAKE}"\nseeds = [1, 2]\nnproc_per_node = 1\ngpus_per_seed = 0\n'
                   f'env = {{ FAKE_HANG = "1", FAKE_CHILD = "1", FAKE_PID_DIR = "{pid_dir}" }}\n')
    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(job), "--runs-dir", str(tmp_path / "runs"),
                          "--name", "n", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_sigint,
                         env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    t0 = time.time()
    # both seeds fit at once only on a machine of 2+ cores; one running payload is enough to test
    while not (pid_dir.exists() and len(list(pid_dir.iterdir())) >= 2):
        assert time.time() - t0 < 120 and p.poll() is None, "payload never started"
        time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    led = json.loads((tmp_path / "runs" / "n" / "ledger.json").read_text())["seeds"]
    for e in led.values():
        assert e["state"] == "pending" and all(a["ended"] and a["error"] == "interrupted" for a in e["attempts"])
    time.sleep(0.5)
    alive = [f.name for f in pid_dir.iterdir() if Path(f"/proc/{f.name}").exists()
             and Path(f"/proc/{f.name}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]
    assert alive == [], alive


def test_force_cancel_of_an_overdue_attempt_leaves_no_processes(tmp_path):
    """The driver's backstop force-cancels an attempt (Ray SIGKILLs the worker and its direct children);
    the job's guard and torchrun still take the ranks down. A negative grace makes it fire before the
    attempt's own deadline, as a hung backend would."""
    pid_dir = tmp_path / "pids"
    job = tmp_path / "job.toml"
    job.write_text(f'name = "t"\nscript = "{FAKE}"\nseeds = [1]\nnproc_per_node = 1\ngpus_per_seed = 0\n'
                   f'env = {{ FAKE_HANG = "1", FAKE_CHILD = "1", FAKE_PID_DIR = "{pid_dir}" }}\n'
                   f"[limits]\nattempt_timeout_s = 16\nretries = 0\n")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(job), "--runs-dir", str(tmp_path / "runs"),
                        "--name", "o", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, RAY_AUTH_MODE="disabled", PGOLF_OVERDUE_GRACE_S="-8"))
    assert r.returncode == 1, r.stdout + r.stderr
    (a,) = json.loads((tmp_path / "runs" / "o" / "ledger.json").read_text())["seeds"]["1"]["attempts"]
    assert a["error"].startswith("timeout: no result"), a
    deadline = time.time() + 20
    while True:
        alive = [f.name for f in pid_dir.iterdir() if Path(f"/proc/{f.name}").exists()
                 and Path(f"/proc/{f.name}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]
        if not alive or time.time() > deadline:
            break
        time.sleep(0.5)
    assert alive == [], alive
