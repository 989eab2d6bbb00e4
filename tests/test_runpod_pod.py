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
    out = {"launcher": "python", "nproc_per_node": 1, "gpu_count": 0, "deadline_s": 60, "backstop_s": 120,
           "collect_grace_s": 120, "tcp_port": 70000, "script_name": "train_gpt.py", "data": {},
           "env": {"SEED": "42", "PGOLF_ATTEMPT": "1", "FAKE_SECONDS": "0.3", "PYTHONUNBUFFERED": "1"}}
    out.update(over)
    return out


def start_pod(c: api.RunPodClient, name: str, spec: dict, token: str) -> api.Pod:
    req = api.CreatePod(name=name, image="runpod/base:fake", args=shipping.START_COMMAND, ports=["70000/tcp"],
                        env=shipping.pod_env(PAYLOAD, spec, token), cpu=api.CpuRequest(id="cpu3c", vcpu_count=2))
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
    assert man.env == {"DATA_PATH": "DATA_PATH", "TOKENIZER_PATH": "DATA_PATH/sub/tokenizer.model"}
    spec = job(uploads=man.for_pod())
    spec["env"]["FAKE_PRINT"] = "DATA_PATH,TOKENIZER_PATH"
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
    assert "uploaded 2 local data file(s)" in notes[0]
    lines = []
    for entry in c.stream_logs(pod.id, since=pod.created_at):
        lines.append(entry.line)
        if entry.line.startswith(DONE_PREFIX):
            break
    assert lines[-1] == DONE_PREFIX + "0"
    root = Path(fake.root) / "pods" / pod.id / "rootfs" / "root" / "pgolf" / "uploads"
    assert f"env DATA_PATH={root / 'DATA_PATH'}" in lines
    assert f"env TOKENIZER_PATH={root / 'DATA_PATH' / 'sub' / 'tokenizer.model'}" in lines
    assert any(line.startswith("step:5/5") for line in lines) and lines == fake.container_log(pod.id)[:len(lines)]
    status = http.get(f"{base}/status").json()
    assert status["exit_code"] == 0 and status["uploads_missing"] == []
    paths = {a["path"]: a["size"] for a in status["artifacts"]}
    got = http.get(f"{base}/artifact", params={"path": "artifacts/final_model.int6.ptz"})
    assert len(got.content) == paths["artifacts/final_model.int6.ptz"] == 1001
    assert c.delete_pod(pod.id)


def test_too_much_local_data_is_refused_before_any_pod(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(PgolfError, match=r"DATA_PATH makes 0 MB of local data, over the 0 MB .* network_volume"):
        shipping.local_data({"DATA_PATH": str(tmp_path)}, limit=1000)


def test_backstop_terminates_its_own_pod_with_the_pod_key(fake):
    c = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=0.01))
    spec = job(backstop_s=1.0)
    spec["env"]["FAKE_HANG"] = "1"
    pod = start_pod(c, "pgolf-backstop-s42-a1", spec, secrets.token_hex(16))
    end = time.time() + 20
    while c.get_pod(pod.id) is not None:
        assert time.time() < end, "the pod did not terminate itself"
        time.sleep(0.1)
    assert f"terminate {pod.id}" in fake.events and fake.alive_pods() == []
