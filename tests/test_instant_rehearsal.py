"""`[runpod] cluster = true` rehearsed end to end: the fake RunPod's Instant Cluster nodes are local processes
running a real `ray start` (head + workers, fake GPUs), the batch runs through the Ray backend on them, one
seed per node; a node killed mid-run, the CLI killed with -9 then `pgolf resume`, and gc."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.backends.runpod import fake_container as container
from runner.backends.runpod.fake import FakeRunPod
from runner.backends.runpod.instant import REHEARSAL_RAY_TMP

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PGOLF = [sys.executable, "-m", "runner.cli"]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT), COLUMNS="200")
    for k in ("RUNPOD_API_BASE_URL", "RAY_ADDRESS"):
        e.pop(k, None)
    yield e
    for state in (tmp_path / "runs").glob("*/rehearsal"):      # never a stray node, whatever failed
        f = FakeRunPod(state)
        f.terminate_clusters()
        f.terminate_all()


def fake_spec(tmp: Path, seeds: list[int], seconds: float) -> Path:
    spec = tmp / "job.toml"
    spec.write_text(f"""
name = "ic"
script = "{ROOT / 'tests' / 'payloads' / 'fake_train.py'}"
seeds = {seeds}
backend = "runpod"
launcher = "python"
gpus_per_seed = 0
[env]
FAKE_SECONDS = "{seconds}"
[limits]
attempt_timeout_s = 150
retries = 0
infra_retries = 2
[data]
variant = "tiny"
paths = {{ TOKENIZER_PATH = "{ROOT / 'model' / 'data' / 'tiny' / 'tokenizer.model'}" }}
[runpod]
cluster = true
""")
    return spec


def smoke_spec(tmp: Path) -> Path:
    """jobs/smoke.toml as it is, but for its [runpod] section: `cluster = true` (GPU nodes: no cpu flavor)."""
    text = (ROOT / "jobs" / "smoke.toml").read_text()
    head, rest = text.split("[runpod]", 1)
    tail = rest[rest.index("[baseline]"):]
    text = head.replace('"../', f'"{ROOT}/') + "[runpod]\ncluster = true\n\n" + tail
    spec = tmp / "smoke.toml"
    spec.write_text(text)
    return spec


def attempts(run: Path) -> list[dict]:
    led = json.loads((run / "ledger.json").read_text())
    return [dict(a, seed=s) for s, e in led["seeds"].items() for a in e["attempts"]]


def state(run: Path) -> dict:
    return json.loads((run / "rehearsal" / "state.json").read_text())


def ray_processes(port: str) -> list[int]:
    """Processes of the rehearsal's Ray (its folder is in their command lines)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"{REHEARSAL_RAY_TMP}{port}".encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def assert_cluster_gone(run: Path) -> None:
    record = json.loads((run / "cluster.json").read_text())["clusters"]
    assert record and all(c["deleted"] is True and c["gone"] is True for c in record)
    st = state(run)
    assert all(c["deleted"] for c in st["clusters"].values()) and st["pods"] == {}
    assert FakeRunPod(run / "rehearsal").alive_pods() == []
    for c in record:
        port = c["address"].rsplit(":", 1)[1]
        assert ray_processes(port) == [] and not Path(f"{REHEARSAL_RAY_TMP}{port}").exists()


def start_driver(tmp: Path, env, spec: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(PGOLF + ["run", str(spec), "--rehearse", "--runs-dir", str(tmp / "runs"), "--name", name,
                                     "--no-progress"], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_running(run: Path, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ((run / "ledger.json").exists() and
               len([a for a in attempts(run) if a["node"] and a["ended"] is None]) == n):
        assert time.time() < deadline, "the seeds never started on the cluster"
        time.sleep(0.3)


def test_smoke_job_on_a_three_node_cluster_through_ray(tmp_path, env):
    """The acceptance line: the smoke job (real payload, CPU) with `[runpod] cluster = true`, rehearsed:
    three seeds on three nodes of one fake Instant Cluster through real Ray, the usual report, the cluster
    deleted and gone, no process left."""
    out = subprocess.run(PGOLF + ["run", str(smoke_spec(tmp_path)), "--backend", "runpod", "--rehearse",
                                  "--runs-dir", str(tmp_path / "runs"), "--name", "smoke", "--no-progress"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 nodes joined, one seed per node" in out.stdout and "deleted (verified gone)" in out.stdout
    run = tmp_path / "runs" / "smoke"
    atts = attempts(run)
    assert len(atts) == 3 and len({a["node"] for a in atts}) == 3          # one node per seed
    assert all(a["exit_code"] == 0 and a["backend"] == "runpod" and a["cost_source"] == "billed"
               and a["cost_usd"] > 0 and a["pod_terminated"] is True for a in atts)
    for a in atts:                                                          # each seed's log, from its own node
        log = (run / "seeds" / a["seed"] / "attempt-1" / "train.log").read_text()
        assert "legal_ttt_exact" in log and log.startswith(f"seed:{a['seed']}\n")
    record = json.loads((run / "cluster.json").read_text())["clusters"]
    assert len(record) == 1 and record[0]["nodes"] == 3 and record[0]["cost_source"] == "billed"
    assert sum(a["cost_usd"] for a in atts) == pytest.approx(record[0]["cost_usd"], rel=1e-3)
    report = json.loads((run / "report.json").read_text())
    assert len(report["runs"]) == 3 and report["verdict"] == "pass"
    assert_cluster_gone(run)


def test_a_node_killed_mid_run_its_seed_runs_again_on_another_node(tmp_path, env):
    drv = start_driver(tmp_path, env, fake_spec(tmp_path, [1, 2, 3], 20), "lost")
    run = tmp_path / "runs" / "lost"
    try:
        wait_running(run, 3)
        time.sleep(2)
        node = next(p for p in state(run)["pods"].values() if p["cluster"]["rank"] == 2)   # not the driver's head
        assert container.kill_pod(node["mark"], node["pid"], node["proc_start"])
        out, _ = drv.communicate(timeout=400)
    finally:
        if drv.poll() is None:
            os.killpg(drv.pid, signal.SIGKILL)
    assert drv.returncode == 0, out[-4000:]
    atts = attempts(run)
    lost = [a for a in atts if a["error"]]
    assert len(lost) == 1 and lost[0]["error"].startswith("infrastructure: "), [a["error"] for a in atts]
    assert len(atts) == 4 and all(a["exit_code"] == 0 for a in atts if not a["error"])
    retry = next(a for a in atts if a["seed"] == lost[0]["seed"] and a["attempt"] == 2)
    assert retry["node"] != lost[0]["node"]
    assert json.loads((run / "ledger.json").read_text())["seeds"].keys() == {"1", "2", "3"}
    assert all(s["state"] == "succeeded" for s in json.loads((run / "ledger.json").read_text())["seeds"].values())
    assert_cluster_gone(run)


def test_cli_killed_the_cluster_waits_gc_keeps_it_and_resume_reattaches(tmp_path, env):
    runs = tmp_path / "runs"
    drv = start_driver(tmp_path, env, fake_spec(tmp_path, [1, 2], 30), "k")
    run = runs / "k"
    try:
        wait_running(run, 2)
        os.killpg(drv.pid, signal.SIGKILL)            # the CLI, its Ray driver and its fake API: the nodes go on
        drv.wait(timeout=30)
    finally:
        try:
            os.killpg(drv.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (cid, cl), = state(run)["clusters"].items()
    assert not cl["deleted"] and len(FakeRunPod(run / "rehearsal").alive_pods()) == 2    # still billing
    assert json.loads((run / "cluster.json").read_text())["clusters"][0]["id"] == cid    # recorded before use

    out = subprocess.run(PGOLF + ["cluster", "gc", "--rehearse", "--yes", "--runs-dir", str(runs)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"cluster {cid}" in out.stdout and "kept" in out.stdout, out.stdout + out.stderr
    assert len(FakeRunPod(run / "rehearsal").alive_pods()) == 2

    out = subprocess.run(PGOLF + ["resume", str(run), "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert f"reattached to cluster {cid}" in out.stdout
    atts = attempts(run)
    assert all(a["error"].startswith("interrupted") for a in atts if a["attempt"] == 1)   # closed by resume
    assert all(a["exit_code"] == 0 for a in atts if a["attempt"] == 2) and len(atts) == 4
    assert len(json.loads((run / "cluster.json").read_text())["clusters"]) == 1         # no second cluster
    assert_cluster_gone(run)
    out = subprocess.run(PGOLF + ["cluster", "gc", "--rehearse", "--yes", "--runs-dir", str(runs)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert "no orphaned pgolf clusters" in out.stdout, out.stdout + out.stderr
