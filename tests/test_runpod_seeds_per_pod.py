"""`[runpod] seeds_per_pod = K`: several seeds one after another on one pod after a single set-up.

The backend's side (`RunPodBackend.run_group`, no Ray) against the fake RunPod with the real bootstrap, and
the whole batch (`pgolf run --rehearse`, real local Ray, the driver's groups) end to end: a pod lost after
its first seed keeps that seed's result and only the unfinished seeds run again, on one replacement pod.
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

from runner.backends.base import AttemptSpec, InfraFailure
from runner.backends.runpod.backend import split_cost
from runner.backends.runpod.bootstrap import DONE_PREFIX, RUN_PREFIX
from runner.backends.runpod.fake import FakeRunPod
from runner.driver import groups
from runner.spec import validate_spec
from support import PAYLOAD, ROOT, SECRET, TINY, MemoryEvents, rehearsal_backends



@pytest.fixture
def backend(tmp_path, monkeypatch):
    """make(faults) -> a started rehearsal backend (seeds_per_pod 3, a CPU pod); afterwards: no pod, no
    process, no contract violation."""
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    spec = validate_spec({"name": "b", "script": str(PAYLOAD), "seeds": [1, 2, 3], "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0,
                          "data": {"variant": "tiny", "paths": {"TOKENIZER_PATH": str(TINY / "tokenizer.model")}},
                          "runpod": {"cpu": "cpu3c", "seeds_per_pod": 3}}, "test spec")
    with rehearsal_backends(tmp_path / "runs" / "b") as start:
        yield lambda faults="": start(spec, faults)


def attempts(tmp: Path, seeds: list[int], k: int = 1, **env) -> list[AttemptSpec]:
    out = []
    for seed in seeds:
        adir = tmp / "runs" / "b" / "seeds" / str(seed) / f"attempt-{k}"
        (adir / "artifacts").mkdir(parents=True, exist_ok=True)
        job = {"FAKE_SECONDS": "0.3", "FAKE_PRINT": "TRITON_CACHE_DIR,TOKENIZER_PATH",
               "TOKENIZER_PATH": str(TINY / "tokenizer.model"), **env}
        out.append(AttemptSpec(run_dir=str(tmp / "runs" / "b"), seed=seed, attempt=k, attempt_dir=str(adir),
                               script_path=str(PAYLOAD), env=job, timeout_s=60))
    return out


def test_groups_split_as_evenly_as_the_cost_model_prices_them():
    assert groups([1, 2, 3], 2) == [[1, 2], [3]]
    assert groups([1, 2, 3, 4], 3) == [[1, 2], [3, 4]]           # results.power.cost: 2 pods of 2, not 3 + 1
    assert groups([1, 2, 3, 4, 5], 3) == [[1, 2, 3], [4, 5]]
    assert groups([7, 8], 1) == [[7], [8]] and groups([], 3) == []
    shares = split_cost([10.0, 20.0, 0.0], 60.0)                 # 30 s of set-up and waits, 10 s each
    assert shares == pytest.approx([20 / 60, 30 / 60, 10 / 60]) and sum(shares) == pytest.approx(1)
    assert split_cost([0.0, 0.0], 0.0) == [0.5, 0.5]


def test_one_set_up_three_runs_each_its_own_log_artifacts_and_share(tmp_path, backend):
    b = backend()
    group = attempts(tmp_path, [1, 2, 3])
    evs = [MemoryEvents() for _ in group]
    out = list(b.run_group(group, evs))
    assert [i for i, _r in out] == [0, 1, 2] and all(r.exit_code == 0 and r.error is None for _i, r in out)
    fake = b.session.fake
    assert fake.requests_seen.count("createPod") == 1 and fake.pod_ids() == [] and fake.alive_pods() == []
    pod = out[0][1].pod_id
    metas = [ev.merged() for ev in evs]
    for i, (ev, meta) in enumerate(zip(evs, metas)):
        first_pod = next(m for m in ev.metas if "pod_id" in m)
        assert first_pod["pod_id"] == pod and first_pod["shared_pod"]["position"] == i + 1   # before the pod is used
        assert meta["pod_terminated"] is True and meta["cost_source"] == "billed"
        assert meta["shared_pod"]["attempts"] == [[1, 1], [2, 1], [3, 1]]
        own = [line for line in ev.lines if not line.startswith(("pgolf-runpod:", "pgolf-pod:"))]
        assert own[0] == f"seed:{i + 1}" and all(not line.startswith("seed:") for line in own[1:])
        assert sum(line.startswith(DONE_PREFIX) for line in ev.lines) == 1           # its own end, once
        got = Path(group[i].attempt_dir) / "artifacts" / "train.log"
        assert got.read_text().startswith(f"seed:{i + 1}")                           # its own artifacts
    assert "pgolf-pod: files received" in "\n".join(evs[0].lines)               # the set-up: once, seed 1's
    assert not any("files received" in line for ev in evs[1:] for line in ev.lines)
    assert evs[1].lines[0].startswith("pgolf-runpod: queued on pod") and any(
        line.startswith(RUN_PREFIX + "2/3: seed 2 attempt 1") for line in evs[1].lines)
    caches = {line for ev in evs for line in ev.lines if line.startswith("env TRITON_CACHE_DIR=")}
    assert len(caches) == 1 and caches.pop().endswith("/pgolf/cache/triton")         # one warm cache for all
    total = metas[0]["shared_pod"]["pod_cost_usd"]
    assert sum(m["cost_usd"] for m in metas) == pytest.approx(total, abs=1e-3)       # split, nothing lost
    assert sum(m["shared_pod"]["share"] for m in metas) == pytest.approx(1, abs=1e-3)


def test_a_pod_lost_after_its_first_seed_keeps_it_and_ends_the_rest(tmp_path, backend):
    b = backend("preempt_mid=1")
    group = attempts(tmp_path, [1, 2, 3], FAKE_SECONDS_1="0.3", FAKE_SECONDS="20")
    evs = [MemoryEvents() for _ in group]
    got = []
    with pytest.raises(InfraFailure, match="lost|stopped answering"):
        for i, r in b.run_group(group, evs):
            got.append((i, r))
    assert [(i, r.exit_code) for i, r in got] == [(0, 0)]
    assert (Path(group[0].attempt_dir) / "artifacts" / "final_model.int6.ptz").is_file()
    fake = b.session.fake
    assert any(e.startswith("preempt_mid ") for e in fake.events) and fake.alive_pods() == []
    assert all(ev.merged()["pod_terminated"] is True for ev in evs)
    assert "seed:2" in evs[1].lines and not any(line.startswith("seed:") for line in evs[2].lines)  # 2 began, 3 not


def test_a_cancelled_seed_stops_alone_and_the_pod_goes_on(tmp_path, backend):
    b = backend()
    group = attempts(tmp_path, [1, 2], FAKE_SECONDS_1="30", FAKE_STEPS_1="100")
    evs = [MemoryEvents(cancel_at="step:3/"), MemoryEvents()]
    out = dict(b.run_group(group, evs))
    assert out[0].exit_code == 137 and out[0].error == "cancelled by the driver"
    assert out[1].exit_code == 0 and out[0].pod_id == out[1].pod_id
    assert b.session.fake.requests_seen.count("createPod") == 1


def write_spec(tmp: Path, seeds: list[int], per_pod: int, env: dict, limits: str = "", extra: str = "") -> Path:
    spec = tmp / "job.toml"
    env_toml = "\n".join(f"{k} = {json.dumps(str(v))}" for k, v in env.items())
    spec.write_text(f"""
name = "k"
script = "{PAYLOAD}"
seeds = {seeds}
backend = "runpod"
launcher = "python"
gpus_per_seed = 0
[env]
{env_toml}
[limits]
attempt_timeout_s = 120
retries = 0
infra_retries = 2
{limits}
[data]
variant = "tiny"
paths = {{ TOKENIZER_PATH = "{TINY / 'tokenizer.model'}" }}
[runpod]
cpu = "cpu3c"
seeds_per_pod = {per_pod}
{extra}
""")
    return spec


def cli_env() -> dict:
    env = dict(os.environ, RUNPOD_API_KEY=SECRET, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT),
               RAY_ADDRESS="local", COLUMNS="200")
    env.pop("RUNPOD_API_BASE_URL", None)
    return env


def rehearse(tmp: Path, spec: Path, name: str, faults: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    env = cli_env()
    args = [sys.executable, "-m", "runner.cli", "run", str(spec), "--rehearse", "--runs-dir", str(tmp / "runs"),
            "--name", name, "--no-progress"] + (["--rehearse-faults", faults] if faults else [])
    run = tmp / "runs" / name
    try:
        out = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    finally:
        if (run / "rehearsal").exists():
            FakeRunPod(run / "rehearsal").terminate_all()
    return out, run


def ledger_attempts(run: Path) -> list[dict]:
    led = json.loads((run / "ledger.json").read_text())
    return [dict(a, seed=int(s)) for s, e in led["seeds"].items() for a in e["attempts"]]


@pytest.mark.slow
def test_rehearsal_three_seeds_per_pod_pod_lost_after_the_first(tmp_path):
    spec = write_spec(tmp_path, [1, 2, 3], 3, {"FAKE_SECONDS": 0.5, "FAKE_SECONDS_2_A1": 20})
    out, run = rehearse(tmp_path, spec, "lost", "preempt_mid=1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = ledger_attempts(run)
    assert sorted((a["seed"], a["attempt"]) for a in atts) == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]
    first = [a for a in atts if a["attempt"] == 1]
    again = [a for a in atts if a["attempt"] == 2]
    assert len({a["pod_id"] for a in first}) == 1 and len({a["pod_id"] for a in again}) == 1   # one replacement
    assert {a["pod_id"] for a in first} != {a["pod_id"] for a in again}
    assert [a["error"] for a in first if a["seed"] == 1] == [None]                  # seed 1 kept its result
    lost = [a for a in first if a["seed"] != 1]
    assert all(a["error"].startswith("infrastructure: ") for a in lost)
    assert "seed:2" in (run / "seeds/2/attempt-1/train.log").read_text()             # it had begun
    assert "queued on pod" in (run / "seeds/3/attempt-1/train.log").read_text()     # it had not
    assert all(a["pod_terminated"] is True and a["cost_usd"] > 0 for a in atts)      # every pod verified gone
    assert all(a["shared_pod"]["attempts"] == [[1, 1], [2, 1], [3, 1]] for a in first)
    assert all(a["shared_pod"]["attempts"] == [[2, 2], [3, 2]] for a in again)
    for a in first + again:
        share = a["shared_pod"]
        assert a["cost_usd"] == pytest.approx(share["pod_cost_usd"] * share["share"], abs=1e-3)
    states = json.loads((run / "ledger.json").read_text())["seeds"]
    assert {s: e["state"] for s, e in states.items()} == {"1": "succeeded", "2": "succeeded", "3": "succeeded"}
    for seed, k in ((1, 1), (2, 2), (3, 2)):
        adir = run / "seeds" / str(seed) / f"attempt-{k}"
        log = (adir / "train.log").read_text()
        assert [line for line in log.splitlines() if line.startswith("seed:")] == [f"seed:{seed}"]   # its own
        assert log.count("step:5/5") == 1 and log.count(DONE_PREFIX + "0") == 1
        assert json.loads((adir / "result.json").read_text())["pod_terminated"] is True
        assert (adir / "artifacts" / "final_model.int6.ptz").is_file()
    assert FakeRunPod(run / "rehearsal").alive_pods() == []
    assert "3 seed(s), up to 3 per pod: 1 pod(s)" in out.stdout


@pytest.mark.slow
def test_rehearsal_two_seeds_per_pod_three_seeds_make_pods_of_two_and_one(tmp_path):
    spec = write_spec(tmp_path, [1, 2, 3], 2, {"FAKE_SECONDS": 0.5})
    out, run = rehearse(tmp_path, spec, "k2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = ledger_attempts(run)
    assert len(atts) == 3 and all(a["error"] is None and a["pod_terminated"] is True for a in atts)
    by_pod: dict[str, list[int]] = {}
    for a in atts:
        by_pod.setdefault(a["pod_id"], []).append(a["seed"])
    assert sorted(sorted(v) for v in by_pod.values()) == [[1, 2], [3]]
    alone = next(a for a in atts if a["seed"] == 3)
    assert alone["shared_pod"] is None and alone["cost_source"] == "billed"          # a pod of one: as today
    assert all(a["shared_pod"]["position"] == a["seed"] for a in atts if a["seed"] != 3)


def record_folder(tmp: Path) -> Path:
    """A baseline record of three seeds in the fake payload's log format (train loss 4.0 - 0.1 * step over
    2 s of training), for the adaptive test and the abort's curve."""
    d = tmp / "record"
    d.mkdir()
    for seed, bpb in {1: 1.1000, 2: 1.1004, 3: 1.0997}.items():
        lines = [f"seed:{seed}", "val_bytes_per_token:2.43593"]
        lines += [f"step:{i}/20 train_loss:{4.0 - 0.1 * i:.4f} train_time:{100 * i}ms step_avg:1ms" for i in range(1, 21)]
        lines.append(f"legal_ttt_exact val_loss:{bpb * math.log(2) * 2.43593:.8f} val_bpb:{bpb:.8f} eval_time:1234ms")
        (d / f"train_seed{seed}.log").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.slow
def test_rehearsal_adaptive_waves_and_an_early_abort_on_a_shared_pod(tmp_path):
    """K = 3 with waves of 2 then 1: a pod per wave (2 seeds, then 1: seeds of different waves never share
    a pod). Seed 1, first on its pod, runs 1 nat above the record's curve: aborted alone, the pod goes on
    with seed 2. `pgolf status` and the report show the shared pod and its split cost."""
    rec = record_folder(tmp_path)
    spec = write_spec(tmp_path, [1, 2], 3, {"FAKE_SECONDS": 1, "FAKE_STEPS": 10, "FAKE_SECONDS_1": 30,
                                           "FAKE_STEPS_1": 300, "FAKE_LOSS_1": 1.0},
                      limits="train_seconds = 2",
                      extra=f'[baseline]\nref = "{rec}"\npolicy = "rule"\n'
                            "[adaptive]\nmin = 2\nmax = 3\nwave = 1\nfutility = 0\nspending = \"none\"\n"
                            "[abort]\nat = [0.25]\nmargin = 0.5\n")
    out, run = rehearse(tmp_path, spec, "waves")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = {a["seed"]: a for a in ledger_attempts(run)}
    assert sorted(atts) == [1, 2, 3] and all(a["attempt"] == 1 for a in atts.values())    # nothing retried
    states = {s: e["state"] for s, e in json.loads((run / "ledger.json").read_text())["seeds"].items()}
    assert states == {"1": "aborted", "2": "succeeded", "3": "succeeded"}
    assert atts[1]["pod_id"] == atts[2]["pod_id"] != atts[3]["pod_id"]
    assert atts[1]["shared_pod"]["attempts"] == [[1, 1], [2, 1]] and atts[3]["shared_pod"] is None
    assert atts[1]["abort"]["fraction"] == 0.25 and atts[1]["exit_code"] == 137
    assert "cancelled by the driver" in (run / "seeds/1/attempt-1/train.log").read_text()
    assert "step:10/10" in (run / "seeds/2/attempt-1/train.log").read_text()
    assert all(a["pod_terminated"] is True for a in atts.values()) and FakeRunPod(run / "rehearsal").alive_pods() == []
    assert "the pod goes on with its next seed" in out.stdout
    pod = atts[1]["pod_id"]
    status = subprocess.run([sys.executable, "-m", "runner.cli", "status", str(run)], cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=60).stdout
    assert f"{pod} [1/2]" in status and f"{pod} [2/2]" in status
    assert f"pod {pod} shared by 2 seeds one after another: cost fake" in status
    assert "1 pod(s) shared by several seeds" in (run / "report.md").read_text()


@pytest.mark.slow
def test_rehearsal_driver_killed_mid_pod_then_resume_reruns_only_the_unfinished(tmp_path):
    """The driver dies (kill -9) while its pod runs the second of three seeds: `pgolf resume` keeps seed 1's
    result, runs seeds 2 and 3 again together on one fresh pod, and stops the dead driver's pod."""
    spec = write_spec(tmp_path, [1, 2, 3], 3, {"FAKE_SECONDS": 0.5, "FAKE_SECONDS_2_A1": 60})
    run = tmp_path / "runs" / "crash"
    drv = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(spec), "--rehearse", "--runs-dir",
                            str(tmp_path / "runs"), "--name", "crash", "--no-progress"], cwd=tmp_path, env=cli_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        log2 = run / "seeds" / "2" / "attempt-1" / "train.log"
        while not ((run / "ledger.json").exists() and log2.exists() and "seed:2" in log2.read_text()
                   and json.loads((run / "ledger.json").read_text())["seeds"]["1"]["state"] == "succeeded"):
            assert drv.poll() is None and time.time() < deadline, "seed 2 never began on the shared pod"
            time.sleep(0.3)
        old = {a["pod_id"] for a in ledger_attempts(run)}
        os.killpg(drv.pid, signal.SIGKILL)            # the driver, its Ray and its fake: the pod goes on billing
        drv.wait(timeout=30)
        time.sleep(2)
        assert FakeRunPod(run / "rehearsal").alive_pods() == list(old)
        out = subprocess.run([sys.executable, "-m", "runner.cli", "resume", str(run), "--no-progress"], cwd=tmp_path,
                             env=cli_env(), capture_output=True, text=True, timeout=400)
    finally:
        try:
            os.killpg(drv.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if (run / "rehearsal").exists():
            FakeRunPod(run / "rehearsal").terminate_all()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = ledger_attempts(run)
    assert sorted((a["seed"], a["attempt"]) for a in atts) == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert [a["error"] for a in atts if a["seed"] == 1] == [None]                  # kept, not run again
    assert (run / "seeds/1/attempt-1/artifacts/final_model.int6.ptz").is_file()
    again = [a for a in atts if a["attempt"] == 2]
    assert all(a["error"] is None and a["pod_terminated"] is True for a in again)
    assert len({a["pod_id"] for a in again}) == 1 and not {a["pod_id"] for a in again} & old
    assert all(a["shared_pod"]["attempts"] == [[2, 2], [3, 2]] for a in again)      # regrouped
    assert FakeRunPod(run / "rehearsal").alive_pods() == []                         # the dead driver's pod too
