"""Issue 10 on the RunPod rehearsal (`--rehearse`: the fake RunPod API with its state in RUN_DIR/rehearsal/,
pods = local process trees running the real bootstrap): two `run --name same` at once, `resume` and `cluster
down`/`gc` during the live run, kill -9 then two `resume`s at once, and not one pod more than each batch
needs, ever (the fake's state counts every pod created)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backends.runpod.fake import FakeRunPod
from support import alive_pods, first_to_exit, pods_created

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, RUNPOD_API_KEY="sk-test-SECRETVALUE", RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT),
             RAY_ADDRESS="local", COLUMNS="200")
    e.pop("RUNPOD_API_BASE_URL", None)
    yield e
    for state in (tmp_path / "runs").glob("*/rehearsal"):
        FakeRunPod(state).terminate_all()      # never leave a pod behind, whatever failed


def spec(tmp: Path, seconds: float, until: Path | str = "", until2: Path | str = "") -> Path:
    """One seed whose job leaves a daemon on its pod (it must die with the pod); with `until` (`until2`),
    its first (second) attempt runs until that file exists."""
    p = tmp / f"job{seconds}.toml"
    p.write_text(f"""
name = "rl"
script = "{ROOT / 'tests' / 'payloads' / 'fake_train.py'}"
seeds = [1]
backend = "runpod"
launcher = "python"
gpus_per_seed = 0
[env]
FAKE_SECONDS = "{seconds}"
FAKE_SECONDS_A2 = "0.5"
FAKE_STEPS = "2"
FAKE_DAEMON = "1"
FAKE_UNTIL_A1 = "{until}"
FAKE_UNTIL_A2 = "{until2}"
FAKE_PID_DIR = "{tmp / 'pids'}"
[limits]
attempt_timeout_s = 120
retries = 0
infra_retries = 1
[data]
variant = "tiny"
paths = {{ TOKENIZER_PATH = "{ROOT / 'model' / 'data' / 'tiny' / 'tokenizer.model'}" }}
[runpod]
max_pods = 1
""")
    return p


def pgolf(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(p: subprocess.Popen, timeout=300) -> tuple[int, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, out + err


def attempts(run: Path) -> list[dict]:
    return json.loads((run / "ledger.json").read_text())["seeds"]["1"]["attempts"]


def daemons(tmp: Path) -> list[int]:
    pid_dir = tmp / "pids"
    return [int(f.name) for f in pid_dir.iterdir() if "daemon" in f.read_text()] if pid_dir.exists() else []


def wait_for_pod(run: Path) -> str:
    t_end = time.time() + 180
    while True:
        try:
            pod = attempts(run)[-1]["pod_id"]
            if pod and pod in alive_pods(run):
                return pod
        except (OSError, ValueError, IndexError, KeyError):
            pass
        assert time.time() < t_end, "no pod"
        time.sleep(0.3)


def test_rehearsal_one_driver_per_batch_no_extra_pod(tmp_path, env):
    runs = tmp_path / "runs"
    # two `run --name same` at once: one refuses; `resume` while it runs refuses and touches no pod
    release = tmp_path / "release"
    job = spec(tmp_path, 1, until=release)
    a, b = (pgolf(env, "run", job, "--rehearse", "--runs-dir", runs, "--name", "rl-same", "--no-progress")
            for _ in range(2))
    loser = first_to_exit(a, b)
    winner = b if loser is a else a
    rc, out = finish(loser)
    assert rc == 2 and "batch in use by `pgolf run`" in out, out
    pod = wait_for_pod(runs / "rl-same")
    rc, out = finish(pgolf(env, "resume", runs / "rl-same", "--rehearse", "--no-progress"))
    assert rc == 2 and f"pid {winner.pid}" in out, out
    rc, out = finish(pgolf(env, "cluster", "down", job, "--rehearse", "--yes", "--runs-dir", runs))
    assert rc == 2 and "batch in use by `pgolf run`" in out, out
    rc, out = finish(pgolf(env, "cluster", "gc", "--rehearse", "--yes", "--runs-dir", runs))
    assert rc == 0 and "in use by `pgolf run`" in out and "its pods are kept" in out, out
    assert alive_pods(runs / "rl-same") == [pod]
    release.touch()
    rc, out = finish(winner)
    assert rc == 0, out
    (att,) = attempts(runs / "rl-same")
    assert att["pod_id"] == pod and att["exit_code"] == 0 and att["pod_terminated"] is True

    # kill -9 of a driver, then two `resume`s at once: one refuses, the other stops the orphan and finishes
    release2 = tmp_path / "release2"
    drv = pgolf(env, "run", spec(tmp_path, 60, until2=release2), "--rehearse", "--runs-dir", runs, "--name", "k",
                "--no-progress")
    try:
        orphan = wait_for_pod(runs / "k")
        t_end = time.time() + 120           # its job runs (and has left its daemon) before the driver dies
        while len(daemons(tmp_path)) < 2:
            assert time.time() < t_end, "the orphan's job never started"
            time.sleep(0.2)
    finally:
        os.killpg(drv.pid, signal.SIGKILL)
        drv.wait()
    r1, r2 = (pgolf(env, "resume", runs / "k", "--rehearse", "--no-progress") for _ in range(2))
    loser = first_to_exit(r1, r2)
    rc, out = finish(loser)
    assert rc == 2 and "batch in use by `pgolf resume`" in out, out
    release2.touch()
    rc, out = finish(r2 if loser is r1 else r1)
    assert rc == 0, out
    a1, a2 = attempts(runs / "k")
    assert a1["pod_id"] == orphan and a1["error"].startswith("interrupted") and a2["exit_code"] == 0
    assert a2["pod_terminated"] is True and alive_pods(runs / "k") == [] and alive_pods(runs / "rl-same") == []
    assert pods_created(runs / "rl-same") == 1 and pods_created(runs / "k") == 2   # the killed driver's + the resume's
    left = daemons(tmp_path)                # one per attempt; every pod took its daemon with it
    assert len(left) == 3 and not [d for d in left if Path(f"/proc/{d}").exists()
                                   and Path(f"/proc/{d}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]
