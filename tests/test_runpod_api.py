"""The REST v2 client (runner/backends/runpod/api.py) against the v2 fake, which checks every request it gets
and every response it sends against RunPod's OpenAPI document (a violation fails the test at teardown).

Pods are real local process trees (runner/backends/runpod/fake_container.py) running small shell commands.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from results.errors import PgolfError
from runner.backends.runpod import api
from runner.backends.runpod.contract import contract
from runner.backends.runpod.fake import FakeRunPod

KEY = "rpa_TESTKEY_0123456789abcdef"


class Fakes:
    """Start fakes on a state dir; at the end: no contract violation, no pod, no process left."""

    def __init__(self, root: Path):
        self.root, self.started = root, []

    def __call__(self, faults: str = "", **kw) -> FakeRunPod:
        fake = FakeRunPod(self.root / "fake", faults, api_key=KEY, **kw)
        fake.start()
        self.started.append(fake)
        return fake

    def close(self) -> None:
        violations = [v for f in self.started for v in f.violations]
        for f in self.started:
            f.terminate_all()
            f.stop()
        assert FakeRunPod(self.root / "fake").alive_pods() == []
        assert violations == []


@pytest.fixture
def fakes(tmp_path):
    f = Fakes(tmp_path)
    yield f
    f.close()


def client(fake: FakeRunPod, notes: list[str] | None = None, key: str = KEY, **pacing) -> api.RunPodClient:
    return api.RunPodClient(key, origin=fake.url, pacing=api.Pacing(time_scale=0.01, **pacing),
                            notify=(notes.append if notes is not None else None))


def cpu_pod(name: str, command: str, **kw) -> api.CreatePod:
    return api.CreatePod(name=name, image="runpod/base:fake", args=f"bash -c {json.dumps(command)}",
                         cpu=api.CpuRequest(id="cpu3c", vcpu_count=2), **{"disk": 20, **kw})


def wait_status(c: api.RunPodClient, pod_id: str, *want: str, timeout: float = 10) -> api.Pod | None:
    end = time.time() + timeout
    while time.time() < end:
        pod = c.get_pod(pod_id)
        if (pod.status if pod else None) in want:
            return pod
        time.sleep(0.05)
    raise AssertionError(f"pod {pod_id} never reached {want}")


def test_shipped_schema_is_runpods_and_refs_resolve():
    doc = contract().doc               # RunPod's published v2 document (no copy outside the repository needed)
    assert doc["info"] == {"title": "Runpod REST API", "version": "2.0.0", "description": "Runpod public REST API — v2"}
    assert doc["servers"][0]["url"] == "https://api.runpod.io" and "/v2/pods" in doc["paths"]
    bad = {"name": "x", "image": "i", "gpu": {"id": "A", "count": 0}, "bogus": 1}
    errors = contract().errors(contract().component("CreatePodRequest"), bad, "$")
    assert any("bogus" in e for e in errors) and any("gpu.count" in e for e in errors)   # through allOf + $ref


def test_pod_lifecycle_with_every_message_checked(fakes):
    fake = fakes()
    c = client(fake)
    vol = c.create_volume("shards", 50, "EU-RO-1")
    script = ('echo "id=$RUNPOD_POD_ID port=$RUNPOD_TCP_PORT_70000 cpus=$RUNPOD_CPU_COUNT"; '
              'test -d "$PGOLF_POD_ROOT/workspace" && echo volume-mounted; '
              'case "$RUNPOD_API_KEY" in rpa_TESTKEY*) echo user-key-leaked;; *) echo pod-key;; esac; sleep 30')
    req = cpu_pod("pgolf-life-s1-a1", script, env={"JOB": "x"}, ports=["70000/tcp", "8000/http"], disk=20,
                  data_center_ids=["EU-RO-1"], mounts=api.Mounts(network=[api.NetworkMount(volume_id=vol.id)]))
    pod = c.create_pod(req)
    assert pod.status == "PROVISIONING" and pod.cost == pytest.approx(0.06) and pod.data_center_id == "EU-RO-1"
    pod = wait_status(c, pod.id, "RUNNING")
    end = time.time() + 10            # RUNNING comes before the runtime (RunPod: "may not be ready to use")
    while pod.tcp_endpoint() is None and time.time() < end:
        time.sleep(0.05)
        pod = c.get_pod(pod.id)
    ip, port = pod.tcp_endpoint()
    assert ip == "127.0.0.1" and port > 1024
    assert pod.proxy_url(8000) == f"https://{pod.id}-8000.proxy.runpod.net"
    assert [p.id for p in c.find_pods("pgolf-life-s1-a1")] == [pod.id]
    lines = []
    for entry in c.stream_logs(pod.id, since=pod.created_at):
        lines.append(entry.line)
        if len(lines) == 3:
            break
    assert lines == [f"id={pod.id} port={port} cpus=2", "volume-mounted", "pod-key"]
    stopped = c.pod_action(pod.id, "stop")
    assert stopped.status == "EXITED" and stopped.cost == 0
    assert fake.alive_pods() == []
    with pytest.raises(api.Conflict):
        c.pod_action(pod.id, "restart")                 # not allowed from EXITED: 409
    cost = c.pod_cost(pod.id, pod.created_at)
    assert cost is not None and cost > 0
    assert c.delete_pod(pod.id) is True
    wait_status(c, pod.id, None)
    assert c.delete_pod(pod.id) is False and c.get_pod(pod.id) is None
    assert c.pod_cost(pod.id, pod.created_at) == pytest.approx(cost, abs=1e-5)   # billing outlives the pod
    assert c.delete_volume(vol.id) is True and c.get_volume(vol.id) is None
    h100 = c.gpu_type(api.GPU_H100_SXM, count=8)
    assert h100.availability == "HIGH" and h100.price_per_hour("SECURE", 8) == pytest.approx(21.52)
    assert {cpu.id for cpu in c.cpu_types(vcpus=2)} >= {"cpu3c"}
    assert c.data_centers()[0].gpu_availability
    assert c.balance() == 1000.0
    assert "env" not in api.Pod.model_fields                # the pod's env (secrets) is never kept


def test_a_request_the_schema_rejects_gets_422_and_is_recorded(fakes):
    fake = fakes()
    r = httpx.post(f"{fake.url}/v2/pods", headers={"Authorization": f"Bearer {KEY}", "User-Agent": api.USER_AGENT},
                   json={"name": "x", "image": "i", "gpu": {"id": api.GPU_H100_SXM, "count": 0}, "bogus": 1})
    assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["title"] == "Unprocessable Entity" and any("bogus" in e for e in r.json()["errors"])
    r = httpx.get(f"{fake.url}/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD", "cuont": 8},
                  headers={"Authorization": f"Bearer {KEY}", "User-Agent": api.USER_AGENT})
    assert r.status_code == 422
    assert len(fake.violations) >= 3
    fake.violations.clear()
    with pytest.raises(ValueError):
        cpu_pod("x", "true", gpu=api.GpuRequest(id=api.GPU_H100_SXM))     # both gpu and cpu: refused before sending


def test_every_request_says_pgolf_and_its_version_and_a_library_agent_is_refused(fakes):
    """RunPod sits behind Cloudflare, which refuses a library's default User-Agent (403, error 1010)."""
    fake = fakes()
    from runner.ledger import pgolf_version
    assert api.USER_AGENT == f"pgolf/{pgolf_version()}"
    c = client(fake)
    c.list_pods()
    c.balance()
    assert fake.user_agents == {api.USER_AGENT}
    for agent in ("", "python-httpx/0.28.1", "Python-urllib/3.11"):
        r = httpx.get(f"{fake.url}/v2/pods", headers={"Authorization": f"Bearer {KEY}", "User-Agent": agent})
        assert r.status_code == 403 and r.text == "error code: 1010"
    with api.http_client({"Authorization": f"Bearer {KEY}"}, base_url=fake.url) as http:
        assert http.get("/v2/pods").status_code == 200        # the client pgolf uses toward pods, too
    plain = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=0.01))
    plain._http.headers["User-Agent"] = "python-httpx/0.28.1"
    with pytest.raises(api.Forbidden, match="Cloudflare refused the request's User-Agent"):
        plain.list_pods()


def test_fake_places_pods_as_runpod_documents_it(fakes):
    """A volume mounts only in its own data center; stock is per data center; a CUDA floor no host meets
    and a CPU pod's disk over its cap are refused; the pod shows where it went."""
    fake = fakes(stock={"US-KS-2": "NONE"})
    c = client(fake)
    vol = c.create_volume("shards", 10, "EU-RO-1")
    mount = api.Mounts(network=[api.NetworkMount(volume_id=vol.id)])
    with pytest.raises(api.Refused, match=f"network volume {vol.id} is in data center EU-RO-1"):
        c.create_pod(cpu_pod("pgolf-far", "true", mounts=mount, data_center_ids=["US-KS-2"]))
    with pytest.raises(api.CapacityError):
        c.create_pod(cpu_pod("pgolf-dry", "true", data_center_ids=["US-KS-2"]))      # no stock there
    assert [d.id for d in c.cpu_types(2)[0].data_centers] == ["EU-RO-1"]
    assert [d.id for d in c.gpu_type(api.GPU_H100_SXM, 8, min_cuda="12.8").data_centers] == ["EU-RO-1"]
    assert c.gpu_type(api.GPU_H100_SXM, 8, min_cuda="12.9").availability == "NONE"
    with pytest.raises(api.CapacityError):
        c.create_pod(api.CreatePod(name="pgolf-new-cuda", image="i", gpu=api.GpuRequest(
            id=api.GPU_H100_SXM, min_cuda_version="12.10")))     # 12.10 > 12.8: compared as numbers
    with pytest.raises(api.Refused, match="container disk 80 GB is over the 20 GB limit of a cpu3c pod with 2"):
        c.create_pod(cpu_pod("pgolf-fat", "true", disk=80))
    pod = c.create_pod(cpu_pod("pgolf-near", "sleep 30", mounts=mount))
    assert pod.data_center_id == "EU-RO-1" and c.delete_pod(pod.id)


def test_429_storm_is_waited_out_as_asked(fakes):
    fake = fakes("429=6", retry_after_s=3)
    notes: list[str] = []
    c = client(fake, notes)
    t0 = time.time()
    assert c.list_pods() == []
    assert fake.events.count("429") == 6
    assert sum("waiting 3 s as asked" in n for n in notes) == 6
    assert time.time() - t0 >= 6 * 3 * 0.01
    fake2 = fakes("429=50", retry_after_s=30)
    with pytest.raises(api.RateLimited) as e:
        client(fake2, rate_limit_budget_s=1.0).list_pods()
    assert e.value.retry_after_s == 30


def test_ratelimit_header_holds_the_next_request_until_the_window_resets(fakes):
    fake = fakes(rate_quota_per_min=1)
    c = client(fake)
    c.list_pods()                                         # the answer says r=0 for the minute window
    assert c._not_before > time.time()
    assert api._windows('"minute";r=0;t=12, "hour";r=5;t=100') == [("minute", 0, 12.0), ("hour", 5, 100.0)]
    assert api._windows("garbage ;;") == []


def test_a_used_up_daily_window_is_one_line_at_the_cap_and_terminate_and_gc_wait_it_out(fakes):
    """RunPod's daily window (t=45000 s) is far past the 120 s cap: a call says at once which window and
    when it resets; a DELETE and a patient client (gc) keep waiting and say so."""
    fake = fakes("quota_day=1")
    notes: list[str] = []
    c = client(fake, notes)
    t0 = time.time()
    with pytest.raises(api.QuotaExhausted) as e:
        c.list_pods()
    assert time.time() - t0 < 2 and fake.events.count("quota_day") == 1     # no 450 s (scaled 12.5 h) nap
    line = str(e.value)
    assert "\n" not in line and "RunPod's day window is used up until" in line and "(in 12.5 h)" in line
    assert "waits at most 120 s" in line
    assert isinstance(e.value, api.RateLimited) and e.value.window == "day"
    # an answer whose RateLimit says the day is used up holds every later call: refused before sending
    c._track_quota(httpx.Response(200, headers={"RateLimit": '"minute";r=5;t=20, "day";r=0;t=45000'}))
    sent = fake.n_requests
    with pytest.raises(api.QuotaExhausted, match="day window is used up"):
        c.get_pod("whatever")
    assert fake.n_requests == sent
    # terminate and gc never give up: the same hold is waited out (time-scaled here), said in a note
    quick = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=2e-5), notify=notes.append)
    pod = quick.create_pod(cpu_pod("pgolf-q", "sleep 30"))
    quick._track_quota(httpx.Response(200, headers={"RateLimit": '"day";r=0;t=45000'}))
    with pytest.raises(api.QuotaExhausted):
        quick.get_pod(pod.id)
    assert quick.delete_pod(pod.id) is True
    assert any("day window is used up for 12.5 h; terminate pod" in n and "never give up" in n for n in notes)
    patient = api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=2e-5), patient=True)
    patient._track_quota(httpx.Response(200, headers={"RateLimit": '"day";r=0;t=45000'}))
    assert pod.id not in [p.id for p in patient.list_pods() if p.status != "TERMINATED"]
    fake.faults["quota_day"] = 2                                  # a 429 itself, too: waited out by a DELETE
    assert patient.delete_pod(pod.id) is False and fake.events.count("quota_day") == 2


def test_5xx_and_lost_create_answers_never_make_a_second_pod(fakes):
    fake = fakes("5xx=3,lost_create=1")
    notes: list[str] = []
    c = client(fake, notes)
    pod = c.create_pod(cpu_pod("pgolf-lost-s1-a1", "sleep 30"))
    assert fake.pod_ids() == [pod.id]
    assert any("adopted pod " + pod.id in n for n in notes)
    assert c.delete_pod(pod.id)
    for _ in range(4):
        c.list_pods()
    assert fake.events.count("5xx") == 3                  # every one retried: no call above failed
    assert sum("HTTP 503" in n for n in notes) == 3


def test_errors_are_classified_as_the_create_table_says_and_never_carry_the_key(fakes):
    fake = fakes("capacity=1,graphql_gone=1")
    notes: list[str] = []
    c = client(fake, notes)
    h100 = lambda n: api.CreatePod(name=f"pgolf-h100-{n}", image="img", args="sleep 30",   # noqa: E731
                                   gpu=api.GpuRequest(id=api.GPU_H100_SXM, count=8))
    texts = []
    with pytest.raises(api.CapacityError) as e:
        c.create_pod(h100(0))
    assert isinstance(e.value, api.Refused) and e.value.status == 400
    texts.append(str(e.value))
    pods = [c.create_pod(h100(i)) for i in range(1, 4)]          # 3 x $21.52/h fit the $80/h default limit
    with pytest.raises(api.SpendLimitError) as e:
        c.create_pod(h100(4))
    line = str(e.value)
    assert "\n" not in line and "spend limit" in line and "max_pods" in line and "$80/h" in line
    texts.append(line)
    for p in pods:
        c.delete_pod(p.id)
    fake.balance = 10.0
    with pytest.raises(api.BalanceError) as e:                       # RunPod wants an hour of credit: $21.52
        c.create_pod(h100(5))
    assert e.value.status == 402
    texts.append(str(e.value))
    with pytest.raises(api.Refused) as e:
        c.create_pod(api.CreatePod(name="pgolf-x", image="img", gpu=api.GpuRequest(id="NVIDIA B999")))
    assert not isinstance(e.value, api.CapacityError)
    texts.append(str(e.value))
    with pytest.raises(api.AuthError) as e:
        client(fake, key="rpa_WRONG_but_long_enough").list_pods()
    texts.append(str(e.value))
    fake.balance = 1000.0
    pod = c.create_pod(cpu_pod("pgolf-own", "sleep 30"))
    pod_key = fake.keys[pod.id]
    own = client(fake, key=pod_key)
    assert own.get_pod(pod.id).id == pod.id                        # a pod-scoped key manages its own pod
    with pytest.raises(api.Forbidden) as e:
        own.list_pods()
    texts.append(str(e.value))
    assert own.delete_pod(pod.id) is True
    assert c.balance() is None and any("GraphQL API is gone (HTTP 410)" in n for n in notes)
    for text in texts + notes:
        assert KEY not in text and pod_key not in text


def test_log_stream_survives_drops_with_no_line_lost_or_doubled(fakes):
    fake = fakes("sse_drop=3")
    c = client(fake, sse_read_timeout_s=0.1)              # a silent stream is reconnected, never given up on
    script = ('for i in $(seq 1 40); do echo "step $i"; echo "  detail $i"; sleep 0.01; '
              'if [ $i = 30 ]; then sleep 1; fi; done; printf "no newline"')
    pod = c.create_pod(cpu_pod("pgolf-sse-s1-a1", script))
    cursor = api.LogCursor()
    got = []
    for entry in c.stream_logs(pod.id, cursor=cursor, since=pod.created_at):
        got.append(entry)
        if len(got) == 10:
            break                                             # the caller stops, then resumes with its cursor
    got += list(c.stream_logs(pod.id, cursor=cursor))
    assert fake.events.count("sse_drop") == 3
    assert [e.line for e in got] == fake.container_log(pod.id)
    assert len(got) == 81 and got[-1].line == "no newline"
    assert cursor.last_id == got[-1].id


def test_log_stream_skips_heartbeats_and_resumes_amid_lines_sharing_one_id(fakes):
    """Ids to the whole second (bursts of lines share one), streams dropped right after the second line of
    an id, a comment and a `heartbeat` event before every line: each line once, in order, none lost."""
    fake = fakes("sse_drop_shared=3,sse_heartbeat=1")
    c = client(fake, sse_read_timeout_s=0.5)
    script = 'for i in 1 2 3 4 5 6; do for w in a b c d e; do echo "$w$i"; done; sleep 0.4; done'
    pod = c.create_pod(cpu_pod("pgolf-sse-shared", script))
    got = list(c.stream_logs(pod.id, since=pod.created_at))
    assert fake.events.count("sse_drop_shared") == 3 and fake.events.count("sse_heartbeat") >= 30
    assert [e.line for e in got] == fake.container_log(pod.id)
    assert len(got) == 30 and len({e.id for e in got}) < 30          # ids were shared
    assert all(e.id.endswith("Z") and "." not in e.id for e in got)


def test_log_event_filter_takes_only_log_lines():
    from httpx_sse import ServerSentEvent
    ok = ServerSentEvent(event="message", data='{"source": "container", "line": "x", "ts": "t"}', id="t")
    assert api._log_line(ok) == "x"
    for other in (ServerSentEvent(event="heartbeat", data="{}", id="t"),     # an unknown event type
                  ServerSentEvent(event="message", data="", id="t"),         # a comment's empty event (id kept)
                  ServerSentEvent(event="message", data="ping", id="t"),     # not JSON
                  ServerSentEvent(event="message", data='{"alive": true}', id="t"),
                  ServerSentEvent(event="message", data='{"line": "x"}', id="")):   # no id to resume from
        assert api._log_line(other) is None


def test_log_cursor_drops_repeats_of_a_shared_timestamp_either_way_the_server_resumes():
    events = [("t1", "a"), ("t2", "b"), ("t2", "c"), ("t2", "d"), ("t3", "e")]
    for inclusive in (True, False):
        cur, out = api.LogCursor(), []
        for eid, line in events[:3]:                          # dropped after "c"
            if cur.accept(eid):
                out.append(line)
        cur.reconnecting()
        resumed = [e for e in events if e[0] >= cur.last_id] if inclusive else [e for e in events if e[0] > cur.last_id]
        for eid, line in resumed:
            if cur.accept(eid):
                out.append(line)
        assert out == (["a", "b", "c", "d", "e"] if inclusive else ["a", "b", "c", "e"])   # exclusive loses "d"


def test_terminate_leaves_no_process_even_in_another_session(fakes):
    fake = fakes()
    c = client(fake)
    marker = f"pgolf-orphan-{os.getpid()}-{time.time_ns()}"
    pod = c.create_pod(cpu_pod("pgolf-tree", f'setsid bash -c "exec -a {marker} sleep 300" & echo started; sleep 300'))
    wait_status(c, pod.id, "RUNNING")
    end = time.time() + 5
    while marker not in os.popen("ps -eo args").read() and time.time() < end:
        time.sleep(0.05)
    assert marker in os.popen("ps -eo args").read()
    assert c.delete_pod(pod.id)
    wait_status(c, pod.id, None)
    assert marker not in os.popen("ps -eo args").read()
    assert fake.alive_pods() == []


def test_stuck_pod_stays_provisioning_and_is_billed(fakes):
    fake = fakes("stuck=1")
    c = client(fake)
    pod = c.create_pod(cpu_pod("pgolf-stuck", "sleep 30"))
    time.sleep(0.6)
    assert c.get_pod(pod.id).status == "PROVISIONING" and c.get_pod(pod.id).runtime is None
    assert c.pod_cost(pod.id, pod.created_at) > 0
    assert c.delete_pod(pod.id)


def test_preempted_pod_vanishes_once_its_job_runs(fakes):
    """A lost pod reads TERMINATED for a while (LOST_TERMINATED_S, long enough for a driver on a loaded
    machine: the README's `lost (TERMINATED)`), unlisted, and 404 after that."""
    fake = fakes("preempt=1")
    c = client(fake)
    pod = c.create_pod(cpu_pod("pgolf-preempt", "echo phase running; sleep 300"))
    wait_status(c, pod.id, "TERMINATED")
    time.sleep(0.5)                      # a slow poll still reads it
    assert c.get_pod(pod.id).status == "TERMINATED" and pod.id not in [p.id for p in c.list_pods()]
    wait_status(c, pod.id, None)
    assert f"preempt {pod.id}" in fake.events and fake.alive_pods() == []


def test_pods_outlive_their_fake_and_another_fake_on_the_state_can_end_them(fakes, tmp_path):
    first = fakes()
    secret = "hf_SECRET_VALUE_123456"
    pod = client(first).create_pod(cpu_pod("pgolf-orphaned", "sleep 300", env={"HF_TOKEN": secret}))
    wait_status(client(first), pod.id, "RUNNING")
    end = time.time() + 10                    # RUNNING comes before the container runs: wait for its process
    while first.alive_pods() != [pod.id] and time.time() < end:
        time.sleep(0.05)
    first.stop()                                               # the driver (and its fake) died
    state = (tmp_path / "fake" / "state.json").read_text()
    assert secret not in state and KEY not in state and first.keys[pod.id] not in state
    second = fakes()
    c = client(second)
    assert [p.id for p in c.list_pods()] == [pod.id] and second.alive_pods() == [pod.id]
    assert c.delete_pod(pod.id)
    wait_status(c, pod.id, None)
    assert second.alive_pods() == []


def test_api_key_from_env_or_runpods_config_file(tmp_path):
    cfg = tmp_path / "config.toml"
    assert api.resolve_api_key({"RUNPOD_API_KEY": "from-env"}, cfg) == "from-env"
    with pytest.raises(PgolfError, match="no RunPod API key") as e:
        api.resolve_api_key({}, cfg)
    assert f"RUNPOD_API_KEY, else `api_key` under [default] in {cfg}" in str(e.value)
    assert "runpod config" not in str(e.value)           # pgolf does not use the runpod package
    cfg.write_text('[default]\napi_key = "from-file"\n')
    assert api.resolve_api_key({}, cfg) == "from-file"
    cfg.write_text("[default\napi_key = ")
    with pytest.raises(PgolfError, match=str(cfg)) as e:
        api.resolve_api_key({}, cfg)
    assert "runpod config" not in str(e.value)
