"""The driver on a real multi-node Ray cluster (ray.cluster_utils.Cluster, fake 8-GPU nodes).

`pgolf run` runs as a subprocess against the cluster's address, the payload is tests/payloads/fake_train.py
under torchrun. Covers: one seed per node, a node removed mid-run (infrastructure retry elsewhere), retries
after a non-zero exit, the per-attempt timeout, kill -9 of the driver then `pgolf resume`, Ctrl-C, secrets.
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

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "payloads" / "fake_train.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    for _ in range(3):
        c.add_node(num_cpus=1, num_gpus=8)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def gpu_nodes(c: Cluster) -> dict[str, object]:
    return {n.node_id: n for n in c.worker_nodes}


def spec(tmp_path: Path, seeds, env: dict, limits: str = "") -> Path:
    env_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    p = tmp_path / "job.toml"
    p.write_text(f'name = "t"\nscript = "{FAKE}"\nseeds = {list(seeds)}\nnproc_per_node = 1\ngpus_per_seed = 8\n'
                 f"env = {{ {env_toml} }}\n[limits]\ntrain_seconds = 60\neval_seconds = 60\n{limits}\n")
    return p


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # as in a terminal, even if pytest runs in the background


def pgolf(*args, env=None, **kw) -> subprocess.Popen:
    e = dict(os.environ, RAY_AUTH_MODE="disabled", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *map(str, args)], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint, **kw)


def run_pgolf(*args, env=None, timeout=240) -> tuple[int, str]:
    p = pgolf(*args, env=env)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / "ledger.json").read_text())["seeds"]


def wait_for(cond, timeout=120, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if cond():
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def node_id(att: dict) -> str:
    return att["node"].rpartition(":")[2]


def alive_in_groups(pid_dir: Path) -> list[int]:
    """Processes still alive in the process groups the payloads reported (zombies excluded)."""
    groups = {int(f.read_text().split()[2]) for f in pid_dir.iterdir()} if pid_dir.exists() else set()
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(d.name))
    return alive


def test_spread_and_node_death_retry(cluster, tmp_path):
    """Three seeds land on three nodes; the node of seed 2 dies mid-run; seed 2 reruns on another node."""
    job = spec(tmp_path, [1, 2, 3], {"FAKE_SECONDS": 6, "FAKE_SECONDS_2_A1": 60, "FAKE_STEPS": 3})
    run_dir = tmp_path / "runs" / "spread"
    p = pgolf("run", job, "--address", cluster.address, "--runs-dir", tmp_path / "runs", "--name", "spread",
              "--no-progress")
    wait_for(lambda: ledger(run_dir)["2"]["attempts"][0]["node"], what="seed 2 running")
    victim = node_id(ledger(run_dir)["2"]["attempts"][0])
    wait_for(lambda: "seed:2" in (run_dir / "seeds/2/attempt-1/train.log").read_text(), what="seed 2's first lines")
    cluster.remove_node(gpu_nodes(cluster)[victim])
    out, _ = p.communicate(timeout=240)
    cluster.add_node(num_cpus=1, num_gpus=8)   # the module's cluster keeps three GPU nodes
    assert p.returncode == 0, out
    led = ledger(run_dir)
    firsts = [node_id(led[s]["attempts"][0]) for s in ("1", "2", "3")]
    assert len(set(firsts)) == 3, firsts        # one seed per node
    a1, a2 = led["2"]["attempts"]
    assert a1["error"].startswith("infrastructure: "), a1
    print("node death error:", a1["error"])
    assert a2["exit_code"] == 0 and node_id(a2) != victim
    assert all(led[s]["state"] == "succeeded" for s in led)
    assert len(led["1"]["attempts"]) == 1 and len(led["3"]["attempts"]) == 1
    # the log of the lost attempt came back line by line; artifacts of the retry came back through Ray
    assert "seed:2" in (run_dir / "seeds/2/attempt-1/train.log").read_text()
    assert (run_dir / "seeds/2/attempt-2/artifacts/final_model.int6.ptz").stat().st_size > 1000
    result = json.loads((run_dir / "seeds/2/attempt-2/result.json").read_text())
    assert result["state"] == "succeeded" and "artifacts/final_model.int6.ptz" in result["artifacts"]
    assert (run_dir / "report.json").exists() and (run_dir / "results.csv").exists()


def test_retries_timeout_and_secrets(cluster, tmp_path):
    """Seed 1 fails once then succeeds; seed 2 hangs past the deadline (group killed, no strays);
    secret values printed by the job never reach a file under the run dir."""
    pid_dir = tmp_path / "pids"
    job = spec(tmp_path, [1, 2], {"FAKE_FAIL_1_A1": "1", "FAKE_HANG_2": "1", "FAKE_CHILD": "1",
                                  "FAKE_PID_DIR": str(pid_dir), "SPEC_API_KEY": "spec-secret-value-123",
                                  "FAKE_PRINT": "SPEC_API_KEY,SHELL_TOKEN"},
               limits="attempt_timeout_s = 12\nretries = 1\n")
    rc, out = run_pgolf("run", job, "--address", cluster.address, "--runs-dir", tmp_path / "runs", "--name", "rt",
                        "--no-progress", env={"SHELL_TOKEN": "shell-secret-value-456"})
    run_dir = tmp_path / "runs" / "rt"
    assert rc == 1, out
    led = ledger(run_dir)
    assert led["1"]["state"] == "succeeded" and [a["exit_code"] for a in led["1"]["attempts"]] == [1, 0]
    assert led["2"]["state"] == "failed" and len(led["2"]["attempts"]) == 2
    assert all(a["error"].startswith("timeout") for a in led["2"]["attempts"])
    assert alive_in_groups(pid_dir) == []
    assert "env SHELL_TOKEN=***" in (run_dir / "seeds/1/attempt-2/train.log").read_text()
    for f in run_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"spec-secret-value-123" not in data and b"shell-secret-value-456" not in data, f
    assert json.loads((run_dir / "batch.json").read_text())["spec"]["env"]["SPEC_API_KEY"] == "***"
    assert "spec-secret-value-123" not in out and "shell-secret-value-456" not in out


def test_kill9_driver_then_resume(cluster, tmp_path):
    """kill -9 of the driver mid-batch; `pgolf resume` runs only the unfinished seeds."""
    pid_dir = tmp_path / "pids"
    job = spec(tmp_path, [1, 2, 3], {"FAKE_SECONDS_1": 0.5, "FAKE_SECONDS": 60, "FAKE_SECONDS_A2": 1,
                                     "FAKE_PID_DIR": str(pid_dir), "FAKE_STEPS": 2})
    run_dir = tmp_path / "runs" / "k9"
    p = pgolf("run", job, "--address", cluster.address, "--runs-dir", tmp_path / "runs", "--name", "k9",
              "--no-progress")
    wait_for(lambda: ledger(run_dir)["1"]["state"] == "succeeded" and
             all(ledger(run_dir)[s]["attempts"][0]["node"] for s in ("2", "3")), what="seed 1 done, 2 and 3 running")
    wait_for(lambda: len(list(pid_dir.iterdir())) >= 3, what="payload pids")
    log1 = (run_dir / "seeds/1/attempt-1/train.log").stat().st_mtime_ns
    p.kill()
    p.communicate(timeout=30)
    assert ledger(run_dir)["2"]["state"] == "running"       # what a crashed driver leaves behind
    wait_for(lambda: alive_in_groups(pid_dir) == [], timeout=60, what="orphaned payloads to die")
    rc, out = run_pgolf("resume", run_dir, "--address", cluster.address, "--no-progress")
    assert rc == 0, out
    led = ledger(run_dir)
    assert len(led["1"]["attempts"]) == 1                    # never re-run
    assert (run_dir / "seeds/1/attempt-1/train.log").stat().st_mtime_ns == log1
    for s in ("2", "3"):
        a1, a2 = led[s]["attempts"]
        assert a1["error"].startswith("interrupted") and a1["ended"] and a2["exit_code"] == 0
        assert led[s]["state"] == "succeeded"


def test_ctrl_c_leaves_consistent_ledger_and_no_strays(cluster, tmp_path):
    pid_dir = tmp_path / "pids"
    job = spec(tmp_path, [1, 2], {"FAKE_HANG": "1", "FAKE_CHILD": "1", "FAKE_PID_DIR": str(pid_dir)})
    run_dir = tmp_path / "runs" / "int"
    p = pgolf("run", job, "--address", cluster.address, "--runs-dir", tmp_path / "runs", "--name", "int",
              "--no-progress")
    wait_for(lambda: pid_dir.exists() and len(list(pid_dir.iterdir())) >= 4, what="both payloads and children")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    led = ledger(run_dir)
    for s in ("1", "2"):
        assert led[s]["state"] == "pending"
        (a,) = led[s]["attempts"]
        assert a["ended"] and a["error"] == "interrupted"
    assert alive_in_groups(pid_dir) == []
    assert "pgolf resume" in out
