"""RunPodBackend.run_group with a group of one (the one pod path; K > 1 in test_runpod_seeds_per_pod.py) on REST v2 against the fake RunPod (no Ray, no driver): every request and answer
checked against RunPod's OpenAPI schema, pods are local process trees running the real bootstrap with the
fast payload. The default spec here is a CPU pod (cpu3c), the cheap real trial; one test uses 8 x H100.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner.backends.base import AttemptResult, AttemptSpec, InfraFailure
from runner.backends.runpod import api
from runner.backends.runpod.backend import RunPodBackend, job_env
from runner.backends.runpod.bootstrap import DONE_PREFIX
from runner.backends.runpod.instances import Stuck
from runner.spec import JobSpec, validate_spec
from support import HF_SECRET, PAYLOAD, SECRET, TINY, MemoryEvents, rehearsal_backends



def job_spec(runpod: dict | None = None, **over) -> JobSpec:
    return validate_spec({"name": "b", "script": str(PAYLOAD), "seeds": [42], "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0,
                          "data": {"variant": "tiny", "paths": {"TOKENIZER_PATH": str(TINY / "tokenizer.model")}},
                          "env": {"FAKE_SECONDS": "0.5", "FAKE_PRINT": "TOKENIZER_PATH"},
                          "runpod": {"cpu": "cpu3c", **(runpod or {})}, **over}, "test spec")


@pytest.fixture
def rehearsal(tmp_path, monkeypatch):
    """make(faults, spec) -> a started rehearsal backend of run dir tmp/runs/b; afterwards: no pod, no
    process, no contract violation."""
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    with rehearsal_backends(tmp_path / "runs" / "b") as start:
        yield lambda faults="", spec=None: start(spec or job_spec(), faults)


def attempt(tmp: Path, seed: int = 42, k: int = 1, **env) -> AttemptSpec:
    run = tmp / "runs" / "b"
    adir = run / "seeds" / str(seed) / f"attempt-{k}"
    (adir / "artifacts").mkdir(parents=True, exist_ok=True)
    job = {"FAKE_SECONDS": "0.5", "FAKE_PRINT": "TOKENIZER_PATH", "TOKENIZER_PATH": str(TINY / "tokenizer.model"),
           "HF_TOKEN": HF_SECRET, "OTHER_API_KEY": "unrelated-secret", **env}
    return AttemptSpec(run_dir=str(run), seed=seed, attempt=k, attempt_dir=str(adir), script_path=str(PAYLOAD),
                       env=job, timeout_s=60)


def run_one(b: RunPodBackend, a: AttemptSpec, ev: MemoryEvents) -> AttemptResult:
    """A group of one through the one pod path: its result, with what its pod's end told the driver
    afterwards (pod_terminated, cost) folded in."""
    [(i, r)] = list(b.run_group([a], [ev]))
    meta = ev.merged()
    return dataclasses.replace(r, **{k: meta[k] for k in ("pod_terminated", "cost_usd", "cost_source",
                                                          "cost_estimate_usd") if k in meta})


def job_lines(ev: MemoryEvents) -> list[str]:
    return [line for line in ev.lines if not line.startswith("pgolf-runpod: ")]


def assert_pods_gone(b: RunPodBackend) -> None:
    assert b.session.fake.alive_pods() == [] and b.session.fake.pod_ids() == []


def test_happy_path_data_up_log_over_sse_artifacts_down_pod_gone_cost_billed(tmp_path, rehearsal):
    b = rehearsal("sse_drop=2")
    notes = b.preflight(1, "test spec")
    assert notes[0].startswith("rehearsal: a fake RunPod") and "$" not in " ".join(notes[1:3])
    assert "RunPod stock for cpu3c x 4 vCPU (SECURE): HIGH" in notes[1] and "0.1200 fake/h" in notes[1]
    assert "local data: 1 file(s)" in notes[2]
    ev = MemoryEvents()
    r = run_one(b, attempt(tmp_path), ev)
    assert r.exit_code == 0 and r.error is None and r.pod_terminated is True
    assert "started" in ev.metas[0] and ev.metas[1]["pod_id"] == r.pod_id    # the pod id, before the pod is used
    meta = ev.merged()
    assert meta["cost_source"] == "billed" and 0 < meta["cost_usd"] <= meta["cost_estimate_usd"] + 1e-3
    assert (r.cost_usd, r.cost_source) == (meta["cost_usd"], "billed")
    pod_log = b.session.fake.final_logs[r.pod_id]
    assert job_lines(ev) == pod_log[:len(job_lines(ev))] and job_lines(ev)[-1] == DONE_PREFIX + "0"
    assert b.session.fake.events.count("sse_drop") == 2               # two drops, not a line lost or doubled
    uploaded = next(line for line in ev.lines if line.startswith("env TOKENIZER_PATH="))
    assert uploaded.endswith("/uploads/TOKENIZER_PATH/tokenizer.model")        # the local file, on the pod
    assert sorted(r.artifacts) == ["artifacts/final_model.int6.ptz", "artifacts/train.log"]
    assert (Path(attempt(tmp_path).attempt_dir) / "artifacts" / "train.log").read_text().startswith("seed:42")
    assert_pods_gone(b)
    assert b.session.fake.requests_seen.count("createPod") == 1


def test_capacity_and_a_429_storm_are_waited_out(tmp_path, rehearsal):
    b = rehearsal("capacity=2,429=6")
    ev = MemoryEvents()
    r = run_one(b, attempt(tmp_path), ev)
    assert r.exit_code == 0 and r.pod_terminated is True
    assert sum("no capacity" in line for line in ev.lines) == 2
    assert sum("as asked (Retry-After)" in line for line in ev.lines) == 6
    assert_pods_gone(b)


def test_stuck_pod_is_terminated_and_the_next_attempt_gets_a_fresh_one(tmp_path, rehearsal):
    b = rehearsal("stuck=1", spec=job_spec({"start_timeout_s": 600}))
    ev = MemoryEvents()
    with pytest.raises(Stuck, match=r"did not answer within \[runpod\] start_timeout_s = 600 s of its creation "
                                    r"\(waited 6\d\d s, rehearsal time: 6\.\d s here\); still provisioning"):
        run_one(b, attempt(tmp_path), ev)
    stuck = ev.merged()
    assert stuck["pod_terminated"] is True and stuck["cost_usd"] > 0      # billed though it never booted
    assert_pods_gone(b)
    ev2 = MemoryEvents()
    r = run_one(b, attempt(tmp_path, k=2), ev2)
    assert r.exit_code == 0 and r.pod_id != stuck["pod_id"]


def test_pod_lost_mid_run_is_infrastructure_and_still_verified_gone(tmp_path, rehearsal):
    b = rehearsal("preempt=1")
    ev = MemoryEvents()
    with pytest.raises(InfraFailure, match="lost|stopped answering"):
        run_one(b, attempt(tmp_path, FAKE_SECONDS="30"), ev)
    assert ev.merged()["pod_terminated"] is True
    assert_pods_gone(b)


def test_an_exception_in_the_task_still_terminates_the_pod(tmp_path, rehearsal):
    b = rehearsal()
    ev = MemoryEvents(fail_on="step:2/")
    with pytest.raises(RuntimeError, match="driver side blew up"):
        run_one(b, attempt(tmp_path), ev)
    assert ev.merged()["pod_terminated"] is True
    assert_pods_gone(b)


def test_nonzero_exit_is_the_jobs_and_the_pod_still_goes(tmp_path, rehearsal):
    b = rehearsal()
    r = run_one(b, attempt(tmp_path, FAKE_FAIL="1"), MemoryEvents())
    assert r.exit_code == 3 and r.error == "torchrun exit 3" and r.pod_terminated is True
    assert_pods_gone(b)


def test_preflight_money_lines_for_h100_pods(tmp_path, rehearsal):
    b = rehearsal(spec=job_spec({"cpu": None}))
    notes = b.preflight(3, "test spec")
    assert "8 x NVIDIA H100 80GB HBM3 (SECURE), CUDA >= 12.8: HIGH" in notes[1]
    assert any(n.startswith("max_pods 3: what a $80/h spend limit allows at 21.5200/h fake") for n in notes)
    assert b.local_resources(2) == {"runpod_pod": 3.0}
    assert rehearsal(spec=job_spec({"cpu": None, "max_pods": 2})).local_resources(2) == {"runpod_pod": 2.0}
    poor = rehearsal("balance=1", spec=job_spec({"cpu": None}))
    with pytest.raises(PgolfError, match="under twice the estimate"):
        poor.preflight(3, "test spec")
    gone = rehearsal("graphql_gone=1")
    assert "balance unknown (RunPod's GraphQL API is gone)" in gone.preflight(1, "test spec")[-1]


def test_data_that_cannot_reach_a_pod_is_refused_before_any_pod(tmp_path, rehearsal, monkeypatch):
    from runner.backends.runpod import shipping
    b = RunPodBackend(job_spec(data={"variant": "mine"}), rehearse=True, run_dir=tmp_path / "r")
    with pytest.raises(PgolfError, match="no local \\[data\\] paths to upload and is not an official variant"):
        b.preflight(1, "x.toml")
    monkeypatch.setattr(shipping, "MAX_UPLOAD_BYTES", 1000)
    big = RunPodBackend(job_spec(data={"variant": "tiny", "paths": {"DATA_PATH": str(TINY)}}), rehearse=True,
                        run_dir=tmp_path / "r")
    with pytest.raises(PgolfError, match=r"x.toml: \[data\] paths: DATA_PATH makes .* MB of local data, over the 0 MB"):
        big.preflight(1, "x.toml")
    assert not (tmp_path / "r").exists()                   # no fake, no pod


def test_network_volume_is_mounted_and_places_the_pod(tmp_path, rehearsal):
    b = rehearsal()
    with b.session.client() as c:
        vol = c.create_volume("shards", 100, "EU-RO-1")
    v = rehearsal(spec=job_spec({"network_volume": vol.id}))
    assert "in EU-RO-1;" in v.preflight(1, "x.toml")[1]      # the stock read is the volume's data center's
    req = v.create_request("pgolf-b-s42-a1", [attempt(tmp_path)], "tok")
    assert req.mounts.network[0].volume_id == vol.id and req.mounts.network[0].path == "/workspace"
    assert req.data_center_ids == ["EU-RO-1"]                # pinned where the volume lives
    assert v.job(attempt(tmp_path))["volume_path"] == "/workspace"
    r = run_one(v, attempt(tmp_path), MemoryEvents())
    assert r.exit_code == 0
    with b.session.client() as c:
        assert c.get_volume(vol.id).data_center == "EU-RO-1"
    elsewhere = rehearsal(spec=job_spec({"network_volume": vol.id, "data_centers": ["US-KS-2"]}))
    with pytest.raises(PgolfError, match=r"data_centers = \['US-KS-2'\] leaves out EU-RO-1, where network volume"):
        elsewhere.preflight(1, "x.toml")
    with pytest.raises(PgolfError, match="no such network volume"):
        rehearsal(spec=job_spec({"network_volume": "vol-nope"})).preflight(1, "x.toml")
    empty = rehearsal(spec=job_spec({"network_volume": vol.id}))
    empty.session.fake.stock["EU-RO-1"] = "NONE"             # stock elsewhere does not help a pod with this volume
    with pytest.raises(PgolfError, match=f"network volume {vol.id} lives in EU-RO-1, which has no cpu3c x 4 vCPU"):
        empty.preflight(1, "x.toml")
    assert empty.session.fake.pod_ids() == []


def test_create_pins_the_images_cuda_and_sizes_a_cpu_pods_disk(tmp_path, rehearsal):
    gpu = rehearsal(spec=job_spec({"cpu": None}))
    req = gpu.create_request("pgolf-b-s42-a1", [attempt(tmp_path)], "tok")
    assert req.payload()["gpu"] == {"id": api.GPU_H100_SXM, "count": 8, "minCudaVersion": "12.8"}   # the image's
    assert req.disk == 80
    pinned = RunPodBackend(job_spec({"cpu": None, "min_cuda_version": "12.4"}))
    assert pinned.create_request("n", [attempt(tmp_path)], "tok").gpu.min_cuda_version == "12.4"
    other = RunPodBackend(job_spec({"cpu": None, "image": "me/img:1-cuda12.6.3-devel"}))
    assert other.create_request("n", [attempt(tmp_path)], "tok").gpu.min_cuda_version == "12.6"
    cpu = rehearsal().create_request("n", [attempt(tmp_path)], "tok")
    assert cpu.gpu is None and cpu.disk == 20          # RunPod's 80 GB default is over a small CPU pod's cap
    assert RunPodBackend(job_spec({"container_disk_gb": 30})).create_request("n", [attempt(tmp_path)], "tok").disk == 30
    with pytest.raises(PgolfError, match=r"container_disk_gb = 50: a cpu3c pod with 4 vCPUs takes at most 40 GB"):
        job_spec({"container_disk_gb": 50})
    newer = rehearsal(spec=job_spec({"cpu": None, "min_cuda_version": "13.0"}))
    assert "CUDA >= 13.0: NONE, in no data center" in newer.preflight(1, "x.toml")[1]   # no host that new


def test_bad_runpod_keys_and_faults_are_one_line_errors():
    with pytest.raises(PgolfError, match=r"\[runpod\] cloud_type"):
        job_spec({"cloud_type": "ALL"})
    with pytest.raises(PgolfError, match="power of two"):
        job_spec({"vcpus": 6})
    with pytest.raises(PgolfError, match="--rehearse-faults: bad item"):
        RunPodBackend(job_spec(), rehearse=True, faults="meteor=1")


def test_what_is_shipped_to_the_pod_and_what_is_kept(tmp_path, rehearsal):
    b = rehearsal()
    a = attempt(tmp_path)
    env = job_env(b.spec, a)
    assert env["HF_TOKEN"] == HF_SECRET and "OTHER_API_KEY" not in env and "RUNPOD_API_KEY" not in env
    job = b.job(a)
    assert job["gpu_count"] == 0 and job["tcp_port"] == 70000 and job["http_port"] is None   # rehearsal: no proxy
    assert job["user_agent"] == api.USER_AGENT          # the bootstrap's own requests say pgolf/<version>
    assert job["uploads"]["env"] == {"TOKENIZER_PATH": "TOKENIZER_PATH/tokenizer.model"}
    assert b.create_request("n", [a], "tok").ports == ["70000/tcp"]
    real = RunPodBackend(job_spec(), rehearse=False)
    assert real.create_request("n", [a], "tok").ports == ["70000/tcp", "8000/http"]
    run_one(b, a, MemoryEvents())
    assert b.session.fake.user_agents == {api.USER_AGENT}
    state = (tmp_path / "runs" / "b" / "rehearsal" / "state.json").read_text()
    assert SECRET not in state and HF_SECRET not in state and "tok" not in json.loads(state)["pods"]


def test_cluster_gc_terminates_orphans_keeps_owned_and_records_it(tmp_path, rehearsal, capsys):
    """Pods on the rehearsal of run b: one owned by an open attempt of any ledger (kept), one by an ended
    attempt of b's own ledger and one by no ledger (terminated, verified gone, b's ledger updated); a pod
    without pgolf's prefix is never touched."""
    from runner.backends.runpod.cluster import gc
    b = rehearsal()
    with b.session.client() as c:
        ids = {name: c.create_pod(api.CreatePod(name=name, image="img", args="sleep 300",
                                                cpu=api.CpuRequest(id="cpu3c", vcpu_count=2), disk=20)).id
               for name in ("pgolf-live-s1-a1", "pgolf-done-s1-a1", "pgolf-stray-s1-a1", "someone-elses-pod")}
    runs = tmp_path / "runs"
    for run, pod, ended in (("live", ids["pgolf-live-s1-a1"], None), ("b", ids["pgolf-done-s1-a1"], "x")):
        (runs / run).mkdir(parents=True, exist_ok=True)
        (runs / run / "ledger.json").write_text(json.dumps({"seeds": {"1": {"state": "failed", "attempts": [
            {"attempt": 1, "backend": "runpod", "node": None, "pod_id": pod, "started": "x", "ended": ended,
             "exit_code": None, "error": None, "cost_usd": None, "pod_terminated": None}]}}}))
    b.stop()                                             # the driver is gone; gc starts the fake on its own
    rc = gc(runs, yes=True, rehearse=True)
    out = capsys.readouterr().out
    assert rc == 0 and "rehearsal b: terminated 2 pod(s)" in out, out
    with b.session.open().client() as c:
        assert {p.name for p in c.list_pods()} == {"pgolf-live-s1-a1", "someone-elses-pod"}
        c.create_pod(api.CreatePod(name="pgolf-stray-s2-a1", image="img", args="sleep 300",
                                   cpu=api.CpuRequest(id="cpu3c", vcpu_count=2), disk=20))
    b.stop()
    done = json.loads((runs / "b" / "ledger.json").read_text())["seeds"]["1"]["attempts"][0]
    live = json.loads((runs / "live" / "ledger.json").read_text())["seeds"]["1"]["attempts"][0]
    assert done["pod_terminated"] is True and live["pod_terminated"] is None
    with pytest.raises(PgolfError, match="--yes"):      # no terminal, no --yes: refuse, never assume
        gc(runs, yes=False, rehearse=True)
