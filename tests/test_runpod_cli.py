"""`pgolf run --backend runpod --rehearse`, kill -9 + `pgolf resume` + `pgolf cluster gc`, end to end.

Real Ray local cluster, real `runpod` client, the fake RunPod API, pods = local bootstrap processes.
"""
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

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PGOLF = [sys.executable, "-m", "runner.cli"]
SECRET = "sk-test-SECRETVALUE"
HF_SECRET = "hf_test_SECRETTOKEN"


def write_spec(tmp: Path, seeds: list[int], seconds: float, faults_free: bool = True) -> Path:
    spec = tmp / "job.toml"
    spec.write_text(f"""
name = "rp"
script = "{ROOT / 'tests' / 'payloads' / 'fake_train.py'}"
seeds = {seeds}
backend = "runpod"
launcher = "python"
nproc_per_node = 1
gpus_per_seed = 0
[env]
FAKE_SECONDS = "{seconds}"
FAKE_PRINT = "HF_TOKEN"
[limits]
attempt_timeout_s = 120
retries = 0
infra_retries = 2
[data]
variant = "tiny"
[runpod]
max_pods = {len(seeds)}
""")
    return spec


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, RUNPOD_API_KEY=SECRET, HF_TOKEN=HF_SECRET, RAY_AUTH_MODE="disabled",
             PGOLF_REHEARSE_STATE=str(tmp_path / "fake" / "state.json"), PYTHONPATH=str(ROOT),
             RAY_ADDRESS="local")   # a fresh local Ray, never another test's (or a dead driver's) cluster
    e.pop("RUNPOD_API_BASE_URL", None)
    yield e
    os.environ["PGOLF_REHEARSE_STATE"] = e["PGOLF_REHEARSE_STATE"]
    try:
        FakeRunPod().terminate_all()      # never leave a stray process behind, whatever failed
    finally:
        os.environ.pop("PGOLF_REHEARSE_STATE", None)


def alive(env) -> list[str]:
    os.environ["PGOLF_REHEARSE_STATE"] = env["PGOLF_REHEARSE_STATE"]
    try:
        return FakeRunPod().alive_pods()
    finally:
        os.environ.pop("PGOLF_REHEARSE_STATE", None)


def attempts(run_dir: Path) -> list[dict]:
    led = json.loads((run_dir / "ledger.json").read_text())
    return [dict(a, seed=s) for s, e in led["seeds"].items() for a in e["attempts"]]


def start_driver(tmp: Path, env, spec: Path, name: str, output: bool) -> subprocess.Popen:
    """`pgolf run --rehearse` in the background, in a session of its own (killed as a whole by the tests);
    with `output`, its stdout and stderr are read at the end."""
    out = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(PGOLF + ["run", str(spec), "--rehearse", "--runs-dir", str(tmp / "runs"), "--name", name,
                                     "--no-progress"], cwd=tmp, env=env, stdout=out,
                            stderr=subprocess.STDOUT if output else subprocess.DEVNULL, text=True,
                            start_new_session=True)


def wait_for_pods(run: Path, env, n: int) -> None:
    """Until the batch has `n` pods, each in the ledger and running."""
    deadline = time.time() + 180
    while not ((run / "ledger.json").exists() and len([a for a in attempts(run) if a["pod_id"]]) == n
               and len(alive(env)) == n):
        assert time.time() < deadline, "the pods never started"
        time.sleep(0.3)


def assert_no_secret(*dirs: Path) -> None:
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert SECRET.encode() not in data and HF_SECRET.encode() not in data, p


def test_rehearsal_three_seeds_one_preempted_every_pod_terminated(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2, 3], 2)
    out = subprocess.run(PGOLF + ["run", str(spec), "--rehearse", "--rehearse-faults", "preempt=1,capacity=1",
                                  "--runs-dir", str(tmp_path / "runs"), "--name", "b", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "b"
    atts = attempts(run)
    assert len(atts) == 4                                          # one retry, on a fresh pod
    lost = [a for a in atts if a["error"]]
    assert len(lost) == 1 and lost[0]["error"].startswith("infrastructure: ") and "lost" in lost[0]["error"]
    assert len({a["pod_id"] for a in atts}) == 4
    assert all(a["pod_terminated"] is True and a["cost_usd"] > 0 and a["backend"] == "runpod" for a in atts)
    assert alive(env) == []
    for seed in ("1", "2", "3"):
        log = next(run.glob(f"seeds/{seed}/attempt-*/train.log")) if seed else None
        assert log is not None
    ok = [a for a in atts if not a["error"]]
    for a in ok:
        d = run / "seeds" / a["seed"] / f"attempt-{a['attempt']}"
        assert "step:5/5" in (d / "train.log").read_text() and (d / "artifacts" / "train.log").is_file()
    assert "HF_TOKEN=***" in (run / "seeds" / ok[0]["seed"] / f"attempt-{ok[0]['attempt']}" / "train.log").read_text()
    assert_no_secret(run, Path(env["PGOLF_REHEARSE_STATE"]).parent)


def test_driver_killed_then_resume_then_gc_leaves_no_pod(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2], 15)
    runs = tmp_path / "runs"
    drv = start_driver(tmp_path, env, spec, "k", output=False)
    run = runs / "k"
    try:
        wait_for_pods(run, env, 2)
        old = {a["pod_id"] for a in attempts(run)}
        os.killpg(drv.pid, signal.SIGKILL)            # the driver and its local Ray: its pods keep billing
        drv.wait(timeout=30)
    finally:
        try:
            os.killpg(drv.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(2)                                     # let the dead session's Ray processes go
    assert set(alive(env)) == old                     # orphans, as on RunPod

    # the orphans are owned by open attempts: gc keeps them until the batch is resumed
    out = subprocess.run(PGOLF + ["cluster", "gc", "--rehearse", "--yes", "--runs-dir", str(runs)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "kept" in out.stdout and set(alive(env)) == old, out.stdout + out.stderr

    env_fast = dict(env)
    out = subprocess.run(PGOLF + ["resume", str(run), "--rehearse", "--no-progress"], cwd=tmp_path, env=env_fast,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    new = [a for a in attempts(run) if a["pod_id"] not in old]
    assert len(new) == 2 and all(a["pod_terminated"] is True and a["exit_code"] == 0 for a in new)
    assert alive(env) == []                           # resume stopped the dead driver's pods itself
    # whichever resumed attempt starts first terminates the dead driver's pods: look in both logs
    resumed_logs = "".join((run / "seeds" / s / "attempt-2" / "train.log").read_text() for s in ("1", "2"))
    assert resumed_logs.count("left by seed") >= 2   # each orphan stopped at least once
    assert not any(a["pod_terminated"] for a in attempts(run) if a["pod_id"] in old)

    out = subprocess.run(PGOLF + ["cluster", "gc", "--rehearse", "--yes", "--runs-dir", str(runs)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recorded pod_terminated for 2 pod(s)" in out.stdout
    assert alive(env) == []
    assert all(a["pod_terminated"] is True for a in attempts(run))  # gc recorded what it stopped
    out = subprocess.run(PGOLF + ["cluster", "gc", "--rehearse", "--yes", "--runs-dir", str(runs)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "no orphaned pgolf pods" in out.stdout
    assert_no_secret(run, Path(env["PGOLF_REHEARSE_STATE"]).parent)


def test_ctrl_c_terminates_every_pod_before_exiting(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2], 60)
    drv = start_driver(tmp_path, env, spec, "c", output=True)
    run = tmp_path / "runs" / "c"
    try:
        wait_for_pods(run, env, 2)
        drv.send_signal(signal.SIGINT)
        out, _ = drv.communicate(timeout=120)
    finally:
        if drv.poll() is None:
            os.killpg(drv.pid, signal.SIGKILL)
    assert drv.returncode == 130, out[-2000:]
    assert alive(env) == []
    atts = attempts(run)
    assert len(atts) == 2 and all(a["pod_terminated"] is True and a["error"] == "interrupted" for a in atts), [(a["pod_terminated"], a["error"]) for a in atts]


def test_smoke_job_rehearsed_on_runpod_with_a_lost_pod(tmp_path, env):
    """The acceptance line: `pgolf run jobs/smoke.toml --backend runpod --rehearse --rehearse-faults preempt=1`
    (the real payload, CPU) completes with one retry on a fresh pod and every pod verified terminated."""
    out = subprocess.run(PGOLF + ["run", str(ROOT / "jobs" / "smoke.toml"), "--backend", "runpod", "--rehearse",
                                  "--rehearse-faults", "preempt=1", "--runs-dir", str(tmp_path / "runs"),
                                  "--name", "smoke", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = attempts(tmp_path / "runs" / "smoke")
    assert len(atts) == 4 and len({a["pod_id"] for a in atts}) == 4
    assert [a["error"].startswith("infrastructure: ") for a in atts if a["error"]] == [True]
    assert all(a["pod_terminated"] is True for a in atts)
    assert alive(env) == []
    assert "audit: pass" in out.stdout
