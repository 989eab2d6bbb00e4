"""`pgolf run --backend runpod --rehearse` on REST v2, kill -9 + `pgolf resume` + `pgolf cluster gc`, end to end.

Real Ray local cluster, the real v2 client, the fake RunPod with its state in the run directory
(RUN_DIR/rehearsal/), pods = local process trees running the real bootstrap.
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
from support import HF_SECRET, SECRET, alive_pods

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PGOLF = [sys.executable, "-m", "runner.cli"]


def write_spec(tmp: Path, seeds: list[int], seconds: float) -> Path:
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
paths = {{ TOKENIZER_PATH = "{ROOT / 'model' / 'data' / 'tiny' / 'tokenizer.model'}" }}
""")
    return spec


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, RUNPOD_API_KEY=SECRET, HF_TOKEN=HF_SECRET, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT),
             RAY_ADDRESS="local", COLUMNS="200")   # a fresh local Ray, never another test's (or a dead driver's) cluster
    e.pop("RUNPOD_API_BASE_URL", None)
    yield e
    for state in (tmp_path / "runs").glob("*/rehearsal"):
        FakeRunPod(state).terminate_all()      # never leave a stray process behind, whatever failed


def attempts(run_dir: Path) -> list[dict]:
    led = json.loads((run_dir / "ledger.json").read_text())
    return [dict(a, seed=s) for s, e in led["seeds"].items() for a in e["attempts"]]


def pgolf(tmp: Path, env, *args, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(PGOLF + [str(a) for a in args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start_driver(tmp: Path, env, spec: Path, name: str, output: bool) -> subprocess.Popen:
    """`pgolf run --rehearse` in the background, in a session of its own (killed as a whole by the tests);
    with `output`, its stdout and stderr are read at the end."""
    out = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(PGOLF + ["run", str(spec), "--rehearse", "--runs-dir", str(tmp / "runs"), "--name", name,
                                     "--no-progress"], cwd=tmp, env=env, stdout=out,
                            stderr=subprocess.STDOUT if output else subprocess.DEVNULL, text=True,
                            start_new_session=True)


def wait_for_pods(run: Path, n: int) -> None:
    """Until the batch has `n` pods, each in the ledger and running."""
    deadline = time.time() + 180
    while not ((run / "ledger.json").exists() and len([a for a in attempts(run) if a["pod_id"]]) == n
               and (run / "rehearsal").exists() and len(alive_pods(run)) == n):
        assert time.time() < deadline, "the pods never started"
        time.sleep(0.3)


def assert_no_secret(*dirs: Path) -> None:
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert SECRET.encode() not in data and HF_SECRET.encode() not in data, p


def test_rehearsal_three_seeds_with_faults_every_pod_terminated_and_marked(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2, 3], 2)
    out = pgolf(tmp_path, env, "run", spec, "--rehearse", "--rehearse-faults", "preempt=1,capacity=1,sse_drop=2,429=3",
                "--runs-dir", tmp_path / "runs", "--name", "b", "--no-progress")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "max_pods 3: what a $80/h spend limit allows" in out.stdout       # 3 x 8 x H100 (fake prices)
    run = tmp_path / "runs" / "b"
    atts = attempts(run)
    assert len(atts) == 4                                          # one retry, on a fresh pod
    lost = [a for a in atts if a["error"]]
    assert len(lost) == 1 and lost[0]["error"].startswith("infrastructure: ") and "lost" in lost[0]["error"]
    assert len({a["pod_id"] for a in atts}) == 4
    assert all(a["pod_terminated"] is True and a["cost_usd"] > 0 and a["cost_source"] == "billed"
               and a["backend"] == "runpod" for a in atts)
    assert alive_pods(run) == []
    ok = [a for a in atts if not a["error"]]
    for a in ok:
        log = (run / "seeds" / a["seed"] / f"attempt-{a['attempt']}" / "train.log").read_text()
        assert "step:5/5" in log and "pgolf-pod: done exit_code=0" in log and "HF_TOKEN=***" in log
    assert json.loads((run / "batch.json").read_text())["rehearsal"] is True
    status = pgolf(tmp_path, env, "status", run, "--json")
    assert json.loads(status.stdout)["rehearsal"] is True
    table = pgolf(tmp_path, env, "status", run).stdout
    rows = [line for line in table.splitlines() if " fake " in line and " billed " in line]
    assert "REHEARSAL" in table and len(rows) == 4 and all(row.rstrip().endswith("yes") for row in rows)
    assert "seed " in table and "attempt 1: infrastructure: pod" in table           # every attempt, errors in full
    report = (run / "report.md").read_text()
    assert "**Rehearsal**" in report and "no money spent" in report
    assert "$" not in report.split("## Cost")[1].split("##")[0]
    assert_no_secret(run)


def test_driver_killed_then_resume_then_gc_leaves_no_pod(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2], 15)
    runs = tmp_path / "runs"
    drv = start_driver(tmp_path, env, spec, "k", output=False)
    run = runs / "k"
    try:
        wait_for_pods(run, 2)
        old = {a["pod_id"] for a in attempts(run)}
        os.killpg(drv.pid, signal.SIGKILL)            # the driver, its local Ray and its fake: pods keep billing
        drv.wait(timeout=30)
    finally:
        try:
            os.killpg(drv.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(2)                                     # let the dead session's Ray processes go
    assert set(alive_pods(run)) == old                     # orphans, as on RunPod

    # the orphans are owned by open attempts: gc keeps them until the batch is resumed
    out = pgolf(tmp_path, env, "cluster", "gc", "--rehearse", "--yes", "--runs-dir", runs, timeout=120)
    assert out.returncode == 0 and "kept" in out.stdout and set(alive_pods(run)) == old, out.stdout + out.stderr

    out = pgolf(tmp_path, env, "resume", run, "--no-progress")      # a rehearsal stays one without the flag
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    new = [a for a in attempts(run) if a["pod_id"] not in old]
    assert len(new) == 2 and all(a["pod_terminated"] is True and a["exit_code"] == 0 for a in new)
    assert alive_pods(run) == []                           # resume stopped the dead driver's pods itself
    assert "pgolf resume: terminated 2 pod(s) the dead driver left, verified gone" in out.stdout
    assert out.stdout.index("the dead driver left") < out.stdout.index("pgolf resume: closed 2 attempt(s)")
    assert all(a["pod_terminated"] is True for a in attempts(run))  # recorded by resume, before gc
    resumed_logs = "".join((run / "seeds" / s / "attempt-2" / "train.log").read_text() for s in ("1", "2"))
    assert "left by seed" not in resumed_logs and "dead driver" not in resumed_logs   # once, not per seed

    out = pgolf(tmp_path, env, "cluster", "gc", "--rehearse", "--yes", "--runs-dir", runs, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recorded pod_terminated" not in out.stdout                # nothing left for gc to record
    assert alive_pods(run) == []
    out = pgolf(tmp_path, env, "cluster", "gc", "--rehearse", "--yes", "--runs-dir", runs, timeout=120)
    assert "no orphaned pgolf pods" in out.stdout
    assert_no_secret(run)


def test_ctrl_c_terminates_every_pod_before_exiting(tmp_path, env):
    spec = write_spec(tmp_path, [1, 2], 60)
    drv = start_driver(tmp_path, env, spec, "c", output=True)
    run = tmp_path / "runs" / "c"
    try:
        wait_for_pods(run, 2)
        drv.send_signal(signal.SIGINT)
        out, _ = drv.communicate(timeout=120)
    finally:
        if drv.poll() is None:
            os.killpg(drv.pid, signal.SIGKILL)
    assert drv.returncode == 130, out[-2000:]
    assert alive_pods(run) == []
    atts = attempts(run)
    assert len(atts) == 2 and all(a["pod_terminated"] is True and a["error"] == "interrupted" for a in atts), \
        [(a["pod_terminated"], a["error"]) for a in atts]


def test_rehearse_is_runpods_and_a_real_batch_never_resumes_on_the_fake(tmp_path, env):
    spec = write_spec(tmp_path, [1], 1)
    out = pgolf(tmp_path, env, "run", spec, "--backend", "ray", "--rehearse", "--runs-dir", tmp_path / "runs")
    assert out.returncode != 0 and "--rehearse rehearses the RunPod backend" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_smoke_job_rehearsed_on_runpod_with_a_slow_pull_a_twin_and_a_lost_pod(tmp_path, env):
    """The acceptance line: `pgolf run jobs/smoke.toml --backend runpod --rehearse --rehearse-faults
    slow_pull=600,twin=1,preempt=1` (the real payload, CPU, its bundled data uploaded to the pods) completes:
    every pod pulls its image for 10 minutes of rehearsal time and is waited for (starting, not lost), one
    create answer is lost and its twin is terminated and recorded, one pod is lost mid-run and its seed
    retried on a fresh pod; every pod, the twin included, verified gone and no fake-pod process left."""
    from runner.backends.runpod.fake import pods_root
    out = pgolf(tmp_path, env, "run", ROOT / "jobs" / "smoke.toml", "--backend", "runpod", "--rehearse",
                "--rehearse-faults", "slow_pull=600,twin=1,preempt=1", "--runs-dir", tmp_path / "runs",
                "--name", "smoke", "--no-progress", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "smoke"
    atts = attempts(run)
    assert len(atts) == 4 and len({a["pod_id"] for a in atts}) == 4
    assert [a["error"].startswith("infrastructure: ") for a in atts if a["error"]] == [True]
    assert all(a["pod_terminated"] is True for a in atts)
    twins = [t for a in atts for t in a.get("twin_pods") or []]
    assert len(twins) == 1 and twins[0] not in {a["pod_id"] for a in atts}
    assert "starting: pulling image" in out.stdout
    state = json.loads((run / "rehearsal" / "state.json").read_text())
    assert state["n_pods"] == 5 and not [p for p in state["pods"].values() if not p.get("terminated")]
    assert alive_pods(run) == []
    root = pods_root(run / "rehearsal")
    left = []
    for proc in Path("/proc").iterdir():                       # no process of any of its pods, whatever its state
        try:
            if proc.name.isdigit() and str(root) in os.readlink(proc / "cwd"):
                left.append(proc.name)
        except OSError:
            pass
    assert left == []
    assert "audit: pass" in out.stdout
    twin_att = next(a for a in atts if a.get("twin_pods"))
    status = " ".join(pgolf(tmp_path, env, "status", run).stdout.split())     # rich wraps at 80 columns
    assert f"twin pod(s) {twins[0]} of its pod (a create answer lost, the create retried), terminated by pgolf; " \
           f"they cost fake {twin_att['twin_cost_usd']:.2f}, counted in this attempt's cost" in status, status
