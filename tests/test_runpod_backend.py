"""RunPodBackend.run_attempt against the fake RunPod API, with the real `runpod` client (no Ray, no driver).

Each test runs real pods: local process groups executing runner/backends/runpod/bootstrap.py with the fast
payload.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner.backends.base import AttemptSpec, InfraFailure
from runner.backends.runpod import api
from runner.backends.runpod.backend import START_COMMAND, RunPodBackend, chunk_env, job_env
from runner.backends.runpod.fake import FakeRunPod, parse_faults
from runner.backends.runpod.instances import Session, pod_name
from runner.spec import JobSpec, validate_spec

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = ROOT / "tests" / "payloads" / "fake_train.py"
SECRET = "sk-test-SECRETVALUE"
HF_SECRET = "hf_test_SECRETTOKEN"


def job_spec(**over) -> JobSpec:
    return validate_spec({"name": "b", "script": str(PAYLOAD), "seeds": [42], "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0, "data": {"variant": "tiny"},
                          "env": {"FAKE_SECONDS": "1"}, **over}, "test spec")


SPEC = job_spec()


class Events:
    """The driver's side of the interface, in memory: lines and meta as they arrive."""

    def __init__(self, fail_on: str | None = None):
        self.lines: list[str] = []
        self.metas: list[dict] = []
        self.fail_on = fail_on

    def line(self, text: str) -> None:
        self.lines.append(text)
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("driver side blew up")

    def meta(self, **fields) -> None:
        self.metas.append(fields)

    def process(self, host: str, pid: int) -> None:
        raise AssertionError("a RunPod attempt starts no local job process")

    def merged(self) -> dict:
        out: dict = {}
        for m in self.metas:
            out.update(m)
        return out


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("PGOLF_REHEARSE_STATE", str(tmp_path / "fake" / "state.json"))
    monkeypatch.delenv("RUNPOD_API_BASE_URL", raising=False)
    return tmp_path


@pytest.fixture
def rehearsal(env):
    """make(faults, spec) -> a started rehearsal backend; every pod and fake API is gone afterwards."""
    made: list[RunPodBackend] = []

    def make(faults: str = "", spec: JobSpec = SPEC) -> RunPodBackend:
        b = RunPodBackend(spec, rehearse=True, faults=faults)
        b.start()
        made.append(b)
        return b
    yield make
    for b in reversed(made):          # each restores the API address it found
        b.stop()
    FakeRunPod().terminate_all()      # the pods, through the state file they all share


def attempt(tmp: Path, seed: int = 42, k: int = 1, **env) -> AttemptSpec:
    adir = tmp / "runs" / "b" / "seeds" / str(seed) / f"attempt-{k}"
    (adir / "artifacts").mkdir(parents=True, exist_ok=True)
    job = {"FAKE_SECONDS": "1", "HF_TOKEN": HF_SECRET, "OTHER_API_KEY": "unrelated-secret", **env}
    return AttemptSpec(run_dir=str(tmp / "runs" / "b"), seed=seed, attempt=k, attempt_dir=str(adir),
                       script_path=str(PAYLOAD), env=job, timeout_s=60)


def hanging_pod(b: RunPodBackend, tmp: Path, name: str, timeout_s: float = 60) -> str:
    """A pod made straight through the API (no attempt drives it) whose job never ends; returns its id."""
    s, a = b.settings, attempt(tmp, FAKE_HANG="1")
    a.timeout_s = timeout_s
    return api.create_pod(name=name, image="x", gpu_type=s.gpu_type, gpu_count=8, cloud_type="SECURE",
                          container_disk_gb=10, volume_gb=0, ports="8000/http", env=b.pod_env(a, "tok"),
                          docker_args=START_COMMAND)["id"]


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_no_pods(b: RunPodBackend) -> None:
    assert b.session.fake.alive_pods() == []
    assert b.session.fake.pods == {}


def test_happy_path_streams_log_downloads_artifacts_and_terminates(env, rehearsal):
    b = rehearsal()
    ev = Events()
    r = b.run_attempt(attempt(env), ev)
    assert r.exit_code == 0 and r.error is None
    meta = ev.merged()
    assert ev.metas[1]["pod_id"] == r.pod_id and "started" in ev.metas[0]   # the pod id, before the pod is used
    assert meta["pod_terminated"] is True and r.pod_terminated is True
    assert meta["cost_usd"] > 0 and r.cost_usd == meta["cost_usd"]
    assert "seed:42" in ev.lines and any(l.startswith("step:5/5") for l in ev.lines)
    assert "artifacts/train.log" in r.artifacts
    assert (Path(attempt(env).attempt_dir) / "artifacts" / "train.log").read_text().startswith("seed:42")
    assert_no_pods(b)
    created = b.session.fake.requests_seen.count("create")
    assert created == 1


def test_capacity_errors_back_off_then_succeed(env, rehearsal):
    b = rehearsal("capacity=3")
    ev = Events()
    r = b.run_attempt(attempt(env), ev)
    assert r.exit_code == 0
    assert b.session.fake.events.count("capacity") == 3
    assert sum("no capacity" in l for l in ev.lines) == 3
    assert_no_pods(b)


def test_5xx_and_lost_create_answers_never_make_a_second_pod(env, rehearsal):
    b = rehearsal("5xx=4,lost_create=1,slow_start=1")
    r = b.run_attempt(attempt(env), Events())
    assert r.exit_code == 0
    assert b.session.fake.n_pods == 1                     # the create whose answer was lost was adopted by name
    assert b.session.fake.events.count("5xx") == 4
    assert_no_pods(b)


def test_pod_lost_mid_run_is_an_infra_failure_and_the_next_pod_works(env, rehearsal):
    b = rehearsal("preempt=1")
    ev = Events()
    with pytest.raises(InfraFailure, match="lost"):
        b.run_attempt(attempt(env, FAKE_SECONDS="5"), ev)
    assert ev.merged()["pod_terminated"] is True
    assert any(e.startswith("preempt") for e in b.session.fake.events)
    ev2 = Events()
    r = b.run_attempt(attempt(env, k=2), ev2)        # what the driver does next: a fresh pod
    assert r.exit_code == 0 and r.pod_id != ev.merged()["pod_id"]
    assert_no_pods(b)


def test_an_exception_in_the_task_still_terminates_the_pod(env, rehearsal):
    b = rehearsal()
    ev = Events(fail_on="step:2/")
    with pytest.raises(RuntimeError, match="blew up"):
        b.run_attempt(attempt(env, FAKE_SECONDS="4"), ev)
    assert ev.merged()["pod_terminated"] is True
    assert_no_pods(b)


def test_nonzero_exit_is_the_jobs_and_the_pod_still_goes(env, rehearsal):
    b = rehearsal()
    r = b.run_attempt(attempt(env, FAKE_FAIL="1"), Events())
    assert r.exit_code == 3 and "exit 3" in r.error and r.pod_terminated is True
    assert_no_pods(b)


def test_preflight_refuses_when_balance_is_under_twice_the_estimate(env, rehearsal):
    with pytest.raises(PgolfError) as e:
        rehearsal("balance=40").preflight(2, "job.toml")     # 2 x 0.58 h x $21.52 = $25.11; $40 < $50.21
    assert "$25.11" in str(e.value) and "$40.00" in str(e.value) and "$50.21" in str(e.value)
    (note,) = rehearsal("balance=60").preflight(2, "job.toml")
    assert note.startswith("RunPod: 2 seed(s) x 0.58 h x $21.52/h = $25.11 estimated; balance $60.00")


def test_real_launch_refuses_local_only_data_before_any_pod(env):
    b = RunPodBackend(SPEC, rehearse=False)
    with pytest.raises(PgolfError, match="job.toml: .*official variant"):
        b.preflight(1, "job.toml")


def test_bad_faults_and_bad_runpod_keys_are_one_line_errors():
    with pytest.raises(PgolfError, match="bad item"):
        parse_faults("preempt=x")
    with pytest.raises(PgolfError, match="needs --rehearse"):
        RunPodBackend(SPEC, rehearse=False, faults="preempt=1")
    with pytest.raises(PgolfError, match="bad item"):
        Session(rehearse=True, faults="preemt=1")
    b = RunPodBackend(job_spec(runpod={"max_pods": 3}))
    assert b.local_resources(2) == {"runpod_pod": 3.0} and b.ray_options()["resources"] == {"runpod_pod": 1}


def test_api_key_from_runpod_config_file(tmp_path, monkeypatch):
    from runpod.cli.groups.config import functions
    cfg = tmp_path / "config.toml"
    cfg.write_text('[default]\napi_key = "from-config-file"\n')
    monkeypatch.setattr(functions, "CREDENTIAL_FILE", str(cfg))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert api.resolve_api_key({}) == "from-config-file"
    monkeypatch.setattr(functions, "CREDENTIAL_FILE", str(tmp_path / "none.toml"))
    with pytest.raises(PgolfError, match="RUNPOD_API_KEY"):
        api.resolve_api_key({})


def test_what_is_shipped_to_the_pod(env):
    a = attempt(env)
    shipped = job_env(SPEC, a)
    assert shipped["HF_TOKEN"] == HF_SECRET and "OTHER_API_KEY" not in shipped   # only named secrets travel
    assert "RUNPOD_API_KEY" not in shipped and shipped["SEED"] == "42"
    pod_env = RunPodBackend(SPEC, rehearse=True).pod_env(a, "tok")
    assert all(len(v) <= 16_000 for v in pod_env.values())
    assert not any(c in v for v in pod_env.values() for c in '"\\\n')          # safe in the client's GraphQL
    assert SECRET not in json.dumps(pod_env) and '"' not in START_COMMAND
    assert pod_name("/x/runs/my run!", 7, 2) == "pgolf-my-run--s7-a2"
    assert len(chunk_env("P_", os.urandom(100_000))) > 5


def test_bootstrap_terminates_its_own_pod_past_the_backstop(env, rehearsal):
    """The pod kills itself through the API with its own key when nobody stops it (driver gone)."""
    b = rehearsal(spec=job_spec(runpod={"setup_s": 0, "backstop_grace_s": 1}))
    pod = hanging_pod(b, env, "pgolf-backstop-s1-a1", timeout_s=2)
    wait_until(lambda: api.get_pod(pod) is None, 60, "the pod to terminate itself")
    assert f"terminate {pod}" in b.session.fake.events
    assert_no_pods(b)


def test_fake_state_file_survives_the_api_and_holds_no_secret(env, rehearsal):
    """A fake started again on the same state file lists the pods of the previous one (rehearsal gc)."""
    b = rehearsal()
    pod = hanging_pod(b, env, "pgolf-orphan-s1-a1")
    wait_until(b.session.fake.alive_pods, 30, "the pod's process")
    b.stop()                                       # the driver's API goes away; the pod does not
    state = Path(os.environ["PGOLF_REHEARSE_STATE"]).read_text()
    assert SECRET not in state and HF_SECRET not in state and pod in state
    again = FakeRunPod()
    assert again.alive_pods() == [pod]
    again.terminate_all()
    assert again.alive_pods() == [] and FakeRunPod().pods == {}


def test_bootstrap_downloads_the_official_variant_layout(tmp_path, monkeypatch):
    """The pod's dataset download (manifest-driven, as data/cached_challenge_fineweb.py), against a local
    stand-in for huggingface.co (HF_ENDPOINT); the real one is only reachable from real pods."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from runner.backends.runpod import bootstrap
    root = "matched_10B_docs2m_seed1337"
    repo_dir = tmp_path / "hf" / "datasets" / "org" / "pg" / "resolve" / "main" / root
    (repo_dir / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)
    (repo_dir / "tokenizers").mkdir()
    (repo_dir / "manifest.json").write_text(json.dumps({
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp1024",
                      "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]}))
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin",
                 "fineweb_train_000002.bin"):
        (repo_dir / "datasets" / "fineweb10B_sp1024" / name).write_bytes(name.encode())
    for name in ("fineweb_1024_bpe.model", "fineweb_1024_bpe.vocab"):
        (repo_dir / "tokenizers" / name).write_bytes(b"tok")
    seen = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            return super().do_GET()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path / "hf")))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    try:
        logs = []
        out = bootstrap.download_official({"variant": "sp1024", "repo": "org/pg", "train_shards": 2},
                                          str(tmp_path / "data"), "hf_tok", logs.append)
    finally:
        srv.shutdown()
    data = tmp_path / "data"
    assert out == {"DATA_PATH": str(data / "datasets" / "fineweb10B_sp1024"),
                   "TOKENIZER_PATH": str(data / "tokenizers" / "fineweb_1024_bpe.model")}
    got = sorted(p.name for p in (data / "datasets" / "fineweb10B_sp1024").iterdir())
    assert got == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert set(seen) == {"Bearer hf_tok"}


def test_two_fakes_on_one_state_file_never_resurrect_a_terminated_pod(env, rehearsal):
    """gc --rehearse while a rehearsal runs: both fakes share the state file; what one removes stays removed."""
    b = rehearsal()
    fake = b.session.fake
    pod = hanging_pod(b, env, "pgolf-shared-s1-a1")
    wait_until(fake.alive_pods, 30, "the pod's process")
    other = FakeRunPod()
    assert other.alive_pods() == [pod]
    other.terminate_all()                         # the pod's process dies; the first fake reaps it
    wait_until(lambda: fake._save() or pod not in fake.pods, 10, "the first fake to drop the pod")
    assert api.get_pod(pod) is None
    assert FakeRunPod().pods == {}


def test_pod_address_public_mapping_else_runpod_proxy():
    pod = {"id": "abc", "runtime": None}
    assert api.pod_address(pod, 8000) is None
    pod["runtime"] = {"ports": [{"ip": "100.65.0.2", "isIpPublic": False, "privatePort": 8000,
                                 "publicPort": 60123, "type": "http"}]}
    assert api.pod_address(pod, 8000) == "https://abc-8000.proxy.runpod.net"
    pod["runtime"]["ports"].append({"ip": "203.0.113.9", "isIpPublic": True, "privatePort": 8000,
                                    "publicPort": 40001, "type": "tcp"})
    assert api.pod_address(pod, 8000) == "http://203.0.113.9:40001"
    assert api.pod_address({"id": "abc", "runtime": {"ports": None}}, 8000) == "https://abc-8000.proxy.runpod.net"


def test_runpod_client_errors_are_sorted_into_what_pgolf_does():
    import requests
    from runpod import error as rp_error
    from runner.backends.runpod.fake import CAPACITY_MESSAGE
    assert isinstance(api._classify(rp_error.QueryError(CAPACITY_MESSAGE)), api.CapacityError)
    assert isinstance(api._classify(rp_error.QueryError("This machine does not have the resources to deploy "
                                                        "your pod.")), api.CapacityError)
    assert isinstance(api._classify(requests.ConnectionError("refused")), api.TransientError)
    assert isinstance(api._classify(requests.exceptions.JSONDecodeError("x", "<html>", 0)), api.TransientError)
    err = api._classify(rp_error.AuthenticationError("Unauthorized"))
    assert type(err) is api.ApiError and "API key" in str(err)
    assert type(api._classify(rp_error.QueryError("Something else"))) is api.ApiError


def test_a_real_mode_pod_checks_its_gpus_and_refuses_without_them(env, monkeypatch):
    """Without --rehearse the bootstrap checks GPU count/type (here: no nvidia-smi -> exit 97, one clear line);
    the rehearsal skips that check with a logged line instead."""
    fake = FakeRunPod()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.start())
    b = RunPodBackend(job_spec(data={"variant": "tiny", "prepare": "echo data-ready"}), rehearse=False)
    try:
        ev = Events()
        r = b.run_attempt(attempt(env), ev)
        assert r.exit_code == 97 and "pod check failed" in r.error and r.pod_terminated is True
        assert "data-ready" in ev.lines and not any("rehearsal" in l for l in ev.lines)
        assert fake.alive_pods() == [] and fake.pods == {}
    finally:
        fake.terminate_all()
        fake.stop()


def test_cluster_gc_terminates_orphans_keeps_owned_and_records_it(env, rehearsal, capsys):
    """Three pgolf pods: one owned by an open attempt (kept), one by an ended attempt and one by no ledger
    (both terminated, verified gone, the ledger updated); a pod without pgolf's prefix is never touched."""
    from runner.backends.runpod.cluster import gc
    b = rehearsal()
    ids = {name: hanging_pod(b, env, name)
           for name in ("pgolf-live-s1-a1", "pgolf-done-s1-a1", "pgolf-stray-s1-a1", "someone-elses-pod")}
    runs = env / "gcruns"
    for run, pod, ended in (("live", ids["pgolf-live-s1-a1"], None), ("done", ids["pgolf-done-s1-a1"], "x")):
        (runs / run).mkdir(parents=True)
        (runs / run / "ledger.json").write_text(json.dumps({"seeds": {"1": {"state": "failed", "attempts": [
            {"attempt": 1, "backend": "runpod", "node": None, "pod_id": pod, "started": "x", "ended": ended,
             "exit_code": None, "error": None, "cost_usd": None, "pod_terminated": None}]}}}))
    rc = gc(runs, yes=True, rehearse=True)
    out = capsys.readouterr().out
    assert rc == 0 and "terminated 2 pod(s)" in out, out
    left = {p["name"] for p in api.list_pods()}
    assert left == {"pgolf-live-s1-a1", "someone-elses-pod"}
    done = json.loads((runs / "done" / "ledger.json").read_text())["seeds"]["1"]["attempts"][0]
    live = json.loads((runs / "live" / "ledger.json").read_text())["seeds"]["1"]["attempts"][0]
    assert done["pod_terminated"] is True and live["pod_terminated"] is None
    with pytest.raises(PgolfError, match="--yes"):      # no terminal, no --yes: refuse, never assume
        gc(env / "none", yes=False, rehearse=True)
