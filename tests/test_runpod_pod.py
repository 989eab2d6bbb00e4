"""The pod side on REST v2: the v2 bootstrap in a fake pod receives the job's local data over the pod's
symmetrical TCP port, logs through the container log (read back as SSE), serves its artifacts, and
terminates its own pod with the pod-scoped key when its backstop passes."""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest

from results.errors import PgolfError
from runner.backends.runpod import api, shipping
from runner.backends.runpod.bootstrap import DONE_PREFIX
from runner.backends.runpod.fake import FakeRunPod

PAYLOAD = Path(__file__).resolve().parent / "payloads" / "fake_train.py"
KEY = "rpa_TESTKEY_0123456789abcdef"


@pytest.fixture
def fake(tmp_path):
    f = FakeRunPod(tmp_path / "fake", api_key=KEY)
    f.start()
    yield f
    f.terminate_all()
    f.stop()
    assert f.alive_pods() == [] and f.violations == []


def job(**over) -> dict:
    out = {"launcher": "python", "nproc_per_node": 1, "gpu_count": 0, "backstop_s": 120,
           "script": shipping.SCRIPT_PATH, "uploads": shipping.Manifest().with_script(PAYLOAD).for_pod(),
           "collect_grace_s": 120, "tcp_port": 70000, "script_name": "train_gpt.py", "data": {},
           "runs": [{"deadline_s": 60,
                     "env": {"SEED": "42", "PGOLF_ATTEMPT": "1", "FAKE_SECONDS": "0.3", "PYTHONUNBUFFERED": "1"}}]}
    out.update(over)
    return out


def start_pod(c: api.RunPodClient, name: str, spec: dict, token: str) -> api.Pod:
    req = api.CreatePod(name=name, image="runpod/base:fake", args=shipping.START_COMMAND, ports=["70000/tcp"],
                        env=shipping.pod_env(spec, token), cpu=api.CpuRequest(id="cpu3c", vcpu_count=2),
                        disk=20)
    pod = c.create_pod(req)
    end = time.time() + 15
    while time.time() < end:
        pod = c.get_pod(pod.id)
        if pod.tcp_endpoint():
            return pod
        time.sleep(0.05)
    raise AssertionError("pod never got its TCP port")


def test_local_data_travels_and_the_log_and_artifacts_come_back(fake, tmp_path):
    data = tmp_path / "tiny"
    (data / "sub").mkdir(parents=True)
    (data / "fineweb_val_000000.bin").write_bytes(b"\x01" * 3000)
    (data / "sub" / "tokenizer.model").write_bytes(b"model-bytes")
    man = shipping.local_data({"DATA_PATH": str(data), "TOKENIZER_PATH": str(data / "sub" / "tokenizer.model"),
                               "ELSEWHERE": "/workspace/not-here"})
    assert [f.path for f in man.files] == ["DATA_PATH/fineweb_val_000000.bin", "DATA_PATH/sub/tokenizer.model"]
    man = man.with_script(PAYLOAD)
    assert man.env == {"DATA_PATH": "DATA_PATH", "TOKENIZER_PATH": "DATA_PATH/sub/tokenizer.model"}
    spec = job(uploads=man.for_pod())
    spec["runs"][0]["env"]["FAKE_PRINT"] = "DATA_PATH,TOKENIZER_PATH"
    c = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=0.01))
    token = secrets.token_hex(16)
    pod = start_pod(c, "pgolf-pod-s42-a1", spec, token)
    ip, port = pod.tcp_endpoint()
    base = f"http://{ip}:{port}"
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    end = time.time() + 15
    while True:
        try:
            status = http.get(f"{base}/status").json()
            break
        except httpx.TransportError:
            assert time.time() < end
            time.sleep(0.05)
    assert status["phase"] in ("setup", "upload") and httpx.get(f"{base}/status").status_code == 403
    bad = http.put(f"{base}/upload", params={"path": man.files[0].path}, content=b"x" * 3000,
                   headers={"X-Sha256": man.files[0].sha256})
    assert bad.status_code == 400                              # a corrupted file is never kept
    notes: list[str] = []
    shipping.upload(http, base, man, notes.append)
    assert "uploaded the script and 2 local data file(s)" in notes[0]
    lines = []
    for entry in c.stream_logs(pod.id, since=pod.created_at):
        lines.append(entry.line)
        if entry.line.startswith(DONE_PREFIX):
            break
    assert lines[-1] == DONE_PREFIX + "0"
    root = fake.pod_dir(pod.id) / "rootfs" / "root" / "pgolf" / "uploads"
    assert f"env DATA_PATH={root / 'DATA_PATH'}" in lines
    assert f"env TOKENIZER_PATH={root / 'DATA_PATH' / 'sub' / 'tokenizer.model'}" in lines
    assert any(line.startswith("step:5/5") for line in lines) and lines == fake.container_log(pod.id)[:len(lines)]
    status = http.get(f"{base}/status").json()
    assert status["exit_code"] == 0 and status["uploads_missing"] == []
    paths = {a["path"]: a["size"] for a in status["runs"][0]["artifacts"]}
    got = http.get(f"{base}/artifact", params={"path": "artifacts/final_model.int6.ptz"})
    assert len(got.content) == paths["artifacts/final_model.int6.ptz"] == 1001
    assert c.delete_pod(pod.id)


def test_too_much_local_data_is_refused_before_any_pod(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(PgolfError, match=r"DATA_PATH makes 0 MB of local data, over the 0 MB .* network_volume"):
        shipping.local_data({"DATA_PATH": str(tmp_path)}, limit=1000)


def test_backstop_terminates_its_own_pod_with_the_pod_key(fake):
    c = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=0.01))
    spec = job(backstop_s=1.0, user_agent=api.USER_AGENT)
    spec["runs"][0]["env"]["FAKE_HANG"] = "1"
    pod = start_pod(c, "pgolf-backstop-s42-a1", spec, secrets.token_hex(16))
    end = time.time() + 20
    while c.get_pod(pod.id) is not None:
        assert time.time() < end, "the pod did not terminate itself"
        time.sleep(0.1)
    assert f"terminate {pod.id}" in fake.events and fake.alive_pods() == []
    assert fake.user_agents == {api.USER_AGENT}      # the pod's own DELETE said pgolf/<version>, not urllib's


def test_bootstrap_downloads_the_official_variant_once_onto_a_volume(tmp_path, monkeypatch):
    """The pod's dataset download (manifest-driven, as data/cached_challenge_fineweb.py), against a local
    stand-in for huggingface.co (HF_ENDPOINT); a second pod on the same network volume downloads nothing."""
    import json
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
    seen, agents = [], set()

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            agents.add(self.headers.get("User-Agent"))
            return super().do_GET()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path / "hf")))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    volume = bootstrap.pod_path({"PGOLF_POD_ROOT": str(tmp_path / "pod")}, "/workspace", "pgolf-data")
    assert volume == str(tmp_path / "pod" / "workspace" / "pgolf-data")
    try:
        spec = {"variant": "sp1024", "repo": "org/pg", "train_shards": 2}
        out = bootstrap.download_official(spec, volume, "hf_tok", [].append)
        first = len(seen)
        again = bootstrap.download_official(spec, volume, "hf_tok", [].append)
    finally:
        srv.shutdown()
    data = Path(volume)
    assert out == again == {"DATA_PATH": str(data / "datasets" / "fineweb10B_sp1024"),
                            "TOKENIZER_PATH": str(data / "tokenizers" / "fineweb_1024_bpe.model")}
    got = sorted(p.name for p in (data / "datasets" / "fineweb10B_sp1024").iterdir())
    assert got == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert {auth for _path, auth in seen} == {"Bearer hf_tok"}
    assert agents == {bootstrap.USER_AGENT} and bootstrap.USER_AGENT.startswith("pgolf")
    assert len(seen) == first                     # the second pod found everything on the volume


def test_a_real_mode_pod_checks_its_gpus_and_refuses_without_them(tmp_path, monkeypatch):
    """Without --rehearse (here: the real client pointed at the fake by RUNPOD_API_BASE_URL, the key from
    RUNPOD_API_KEY) a GPU pod's bootstrap checks GPU count/type: no nvidia-smi -> exit 97, one clear line."""
    from runner.backends.base import AttemptSpec
    from runner.backends.runpod.backend import RunPodBackend
    from runner.spec import validate_spec
    fake = FakeRunPod(tmp_path / "fake", api_key=KEY)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.start())
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    spec = validate_spec({"name": "b", "script": str(PAYLOAD), "seeds": [42], "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0,
                          "data": {"variant": "tiny", "prepare": "echo data-ready"}}, "test spec")
    b = RunPodBackend(spec, rehearse=False)
    adir = tmp_path / "runs" / "b" / "seeds" / "42" / "attempt-1"
    adir.mkdir(parents=True)
    lines: list[str] = []
    metas: dict = {}

    class Events:
        line = staticmethod(lines.append)

        def meta(self, **fields):
            metas.update(fields)
    try:
        [(_, r)] = b.run_group([AttemptSpec(run_dir=str(adir.parents[2]), seed=42, attempt=1, attempt_dir=str(adir),
                                            script_path=str(PAYLOAD), env={}, timeout_s=60)], [Events()])
        assert r.exit_code == 97 and "pod check failed" in r.error and metas["pod_terminated"] is True
        assert "data-ready" in lines and not any("rehearsal" in line for line in lines)
        assert fake.requests_seen.count("createPod") == 1 and fake.alive_pods() == []
    finally:
        fake.terminate_all()
        fake.stop()
    assert fake.violations == []
