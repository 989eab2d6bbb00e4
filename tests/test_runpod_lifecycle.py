"""A pod's life as RunPod documents it, through the one pod path (`RunPodBackend.run_group`, no Ray) on a
pod of one seed (K=1) and of three (K=3), against the fake RunPod with the real bootstrap: ready when its
bootstrap answers (not when RunPod says RUNNING), a pod that never answers replaced, TERMINATED counted as
gone, a twin from a lost create answer terminated and recorded, the script shipped over the pod's server,
RunPod's environment limits kept before any pod.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner.backends.base import AttemptSpec, InfraFailure
from runner.backends.runpod import api, fake as fake_mod
from runner.backends.runpod.backend import RunPodBackend
from runner.backends.runpod.bootstrap import DONE_PREFIX
from runner.backends.runpod.fake import FakeRunPod
from runner.backends.runpod.instances import Stuck, gone
from runner.progress import BatchProgress
from runner.spec import validate_spec
from support import HF_SECRET, PAYLOAD, SECRET, TINY, MemoryEvents, rehearsal_backends

K = [1, 3]


def spec(k: int, script: Path = PAYLOAD, env: dict | None = None, **runpod):
    return validate_spec({"name": "b", "script": str(script), "seeds": [1, 2, 3][:k], "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0, "env": env or {},
                          "data": {"variant": "tiny", "paths": {"TOKENIZER_PATH": str(TINY / "tokenizer.model")}},
                          "runpod": {"cpu": "cpu3c", "seeds_per_pod": k, **runpod}}, "test spec")


@pytest.fixture
def backend(tmp_path, monkeypatch):
    """make(k, faults, **runpod) -> a started rehearsal backend; afterwards: no pod, no process, no contract
    violation."""
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    with rehearsal_backends(tmp_path / "runs" / "b") as start:
        yield lambda k, faults="", script=PAYLOAD, **runpod: start(spec(k, script, **runpod), faults)


def group(tmp: Path, k: int, attempt: int = 1, script: Path = PAYLOAD) -> list[AttemptSpec]:
    out = []
    for seed in [1, 2, 3][:k]:
        adir = tmp / "runs" / "b" / "seeds" / str(seed) / f"attempt-{attempt}"
        (adir / "artifacts").mkdir(parents=True, exist_ok=True)
        out.append(AttemptSpec(run_dir=str(tmp / "runs" / "b"), seed=seed, attempt=attempt, attempt_dir=str(adir),
                               script_path=str(script), env={"FAKE_SECONDS": "0.3",
                                                             "TOKENIZER_PATH": str(TINY / "tokenizer.model")},
                               timeout_s=60))
    return out


def run(b: RunPodBackend, attempts: list[AttemptSpec]) -> tuple[dict, list[MemoryEvents]]:
    evs = [MemoryEvents() for _ in attempts]
    return dict(b.run_group(attempts, evs)), evs


def assert_all_gone(b: RunPodBackend) -> None:
    assert b.session.fake.alive_pods() == [] and b.session.fake.pod_ids() == []


@pytest.mark.parametrize("k", K)
def test_a_ten_minute_image_pull_is_starting_not_lost(tmp_path, backend, k):
    """slow_pull=600: every pod is RUNNING with `runtime: null` for 600 s of rehearsal time (6 s here), far
    past the 180 s silence rule, yet within the 1200 s start timeout: the seeds succeed with no retry."""
    b = backend(k, "slow_pull=600")
    out, evs = run(b, group(tmp_path, k))
    assert sorted(out) == list(range(k)) and all(r.exit_code == 0 for r in out.values())
    lines = evs[0].lines
    pod = evs[0].merged()["pod_id"]
    starting = [line for line in lines if line.startswith(f"pgolf-runpod: pod {pod} starting: ")]
    labels = [line.split(": ")[2].split(" (")[0] for line in starting]
    order = ["provisioning", "pulling image", "container starting"]      # what RunPod says, as it says it
    assert "pulling image" in labels and labels == [x for x in order if x in labels], starting
    up = next(re.fullmatch(rf"pgolf-runpod: pod {pod} up (\d+):(\d\d) \(rehearsal time\) after its creation "
                           r"\(its bootstrap answered\); its server at http://127\.0\.0\.1:\d+", line)
              for line in lines if line.startswith(f"pgolf-runpod: pod {pod} up "))
    assert 600 <= 60 * int(up[1]) + int(up[2]) < 1200, up[0]      # a 10-minute pull, within the start timeout
    assert b.session.fake.requests_seen.count("createPod") == 1
    assert all(ev.merged()["pod_terminated"] is True for ev in evs)
    assert_all_gone(b)


@pytest.mark.parametrize("k", K)
def test_a_pod_that_never_answers_is_replaced_once(tmp_path, backend, k):
    """stuck=1 with start_timeout_s = 600 (6 s here): the first pod's bootstrap never answers; it is
    terminated, verified gone and billed, and the attempts fail as infrastructure (Stuck), which the driver
    retries; the next pod serves them all."""
    b = backend(k, "stuck=1", start_timeout_s=600)
    evs = [MemoryEvents() for _ in range(k)]
    with pytest.raises(Stuck, match=r"did not answer within \[runpod\] start_timeout_s = 600 s") as e:
        dict(b.run_group(group(tmp_path, k), evs))
    assert isinstance(e.value, InfraFailure)
    first = evs[0].merged()
    assert first["pod_terminated"] is True and first["cost_source"] == "billed"
    out, evs2 = run(b, group(tmp_path, k, attempt=2))
    assert all(r.exit_code == 0 for r in out.values()) and evs2[0].merged()["pod_id"] != first["pod_id"]
    assert b.session.fake.requests_seen.count("createPod") == 2
    assert_all_gone(b)


@pytest.mark.parametrize("k", K)
def test_terminated_is_gone_and_its_billing_is_read(tmp_path, backend, monkeypatch, k):
    """The fake answers TERMINATED after DELETE (here for a minute, never 404 within the test): the pod
    counts as gone at once, and its cost comes from RunPod's billing records."""
    monkeypatch.setattr(fake_mod, "TERMINATED_S", 60.0)
    b = backend(k)
    out, evs = run(b, group(tmp_path, k))
    meta = evs[0].merged()
    with b.session.client() as c:
        assert c.get_pod(meta["pod_id"]).status == "TERMINATED"          # not a 404: TERMINATED counted as gone
    assert all(ev.merged()["pod_terminated"] is True and ev.merged()["cost_source"] == "billed" for ev in evs)
    assert any("terminated (verified gone)" in line for ev in evs for line in ev.lines)


@pytest.mark.parametrize("k", K)
def test_a_twin_from_a_lost_create_is_terminated_and_recorded(tmp_path, backend, k):
    """twin=1: the first create makes its pod but its answer is lost, and the pod is listed only a moment
    later, so the client's retry makes a second pod of the same name. The twin is terminated and verified
    gone as soon as the pod is up, before the script is sent (not at the pod's end: it would bill the whole
    run), and the first attempt's ledger entry names it and counts what RunPod billed for it."""
    b = backend(k, "twin=1")
    out, evs = run(b, group(tmp_path, k))
    assert all(r.exit_code == 0 for r in out.values())
    fake = b.session.fake
    twin = next(e.split()[1] for e in fake.events if e.startswith("twin "))
    meta = evs[0].merged()
    assert meta["twin_pods"] == [twin] and meta["pod_id"] != twin
    assert all("twin_pods" not in ev.merged() and "twin_cost_usd" not in ev.merged() for ev in evs[1:])
    lines = evs[0].lines
    said = next(i for i, line in enumerate(lines) if f"twin pod(s) {twin} of " in line)
    assert "terminated (verified gone)" in lines[said] and "seed 1's" in lines[said]
    assert said < next(i for i, line in enumerate(lines) if line.startswith("pgolf-runpod: uploaded the script"))
    assert fake.events.index(f"terminate {twin}") < fake.events.index(f"terminate {meta['pod_id']}")
    assert fake.requests_seen.count("createPod") == 2
    with b.session.client() as c:
        billed = c.pod_cost(twin, "2000-01-01T00:00:00Z")
        pod_billed = c.pod_cost(meta["pod_id"], "2000-01-01T00:00:00Z")
    assert billed and meta["twin_cost_usd"] == pytest.approx(billed, abs=1e-6)
    share = 1.0 if k == 1 else meta["shared_pod"]["share"]
    assert meta["cost_usd"] == pytest.approx(pod_billed * share + billed, abs=1e-5)
    assert_all_gone(b)


@pytest.mark.parametrize("k", K)
def test_a_400_kB_script_goes_over_the_pods_server(tmp_path, backend, k):
    """The script is a file sent to the pod's server once it is up, sha256-checked there: a 400 kB script
    (incompressible, so it would have been 34 environment chunks before) leaves the pod's environment at a
    few variables, and the job runs it."""
    big = tmp_path / "big_train.py"
    big.write_text(PAYLOAD.read_text() + "".join(f"# {secrets.token_hex(40)}\n" for _ in range(4_800)))
    assert big.stat().st_size > 400_000
    b = backend(k, script=big)
    attempts = group(tmp_path, k, script=big)
    env = b.create_request("pgolf-b-s1-a1", attempts, "tok").env
    assert sorted(env) == ["PGOLF_BOOT_000", "PGOLF_JOB_000", "PGOLF_POD_TOKEN"]
    assert sum(len(v) for v in env.values()) < 40_000
    out, evs = run(b, attempts)
    assert all(r.exit_code == 0 for r in out.values())
    lines = [line for ev in evs for line in ev.lines]
    assert "pgolf-runpod: uploaded the script and 1 local data file(s), 0.7 MB, sha256 checked on the pod" in lines
    assert "pgolf-pod: files received: the script and 1 local data file(s), sha256 checked" in lines
    assert sum(line.startswith(DONE_PREFIX + "0") for line in lines) == k


@pytest.mark.parametrize("k", K)
def test_a_spec_over_the_env_limit_is_refused_before_any_pod(tmp_path, backend, k):
    """A job variable so large that the pod's environment would need over 50 variables: preflight refuses
    in one line naming the variables and the largest job variable; no pod is created."""
    noise = secrets.token_hex(400_000)                                # 800,000 characters, incompressible
    b = backend(k, env={"HUGE_CONFIG": noise, "SMALL": "1"})
    with pytest.raises(PgolfError) as e:
        b.preflight(k, "big.toml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("big.toml: the pod's environment would be ")
    assert "PGOLF_POD_TOKEN" in msg and "PGOLF_JOB_000..PGOLF_JOB_" in msg and "RunPod allows 50 variables" in msg
    assert "HUGE_CONFIG: 800000 characters" in msg
    assert "createPod" not in b.session.fake.requests_seen


def test_the_fake_refuses_more_than_50_env_variables(tmp_path, backend):
    b = backend(1)
    with b.session.client() as c, pytest.raises(api.Refused, match="at most 50 environment variables per pod"):
        c.create_pod(api.CreatePod(name="pgolf-b-s1-a1", image="img", args="sleep 5",
                                   env={f"V{i}": "x" for i in range(51)}, cpu=api.CpuRequest(id="cpu3c", vcpu_count=2)))
    assert b.session.fake.pod_ids() == []


def test_the_live_view_shows_a_starting_pod_with_its_clock():
    """The backend's `pod ID starting: LABEL (...)` lines make the seed's phase LABEL, timed from the first
    of them; its `pod ID up ...` line hands the row back to the set-up."""
    bars = BatchProgress([7], enabled=False)
    bars.attempt_started(7, 1)
    bars.node(7, "runpod:fake001")
    v = bars.views[7]
    bars.line(7, "pgolf-runpod: pod fake001 starting: provisioning (0:01 since its creation)")
    first = v.starting_since
    bars.line(7, "pgolf-runpod: pod fake001 starting: pulling image (0:07 since its creation)")
    assert v.starting == "pulling image" and v.starting_since == first and v.phase == "set-up"
    bars.line(7, "pgolf-runpod: pod fake001 up 3:40 after its creation (its bootstrap answered); its server at x")
    assert v.starting is None and v.phase == "set-up"


def test_a_live_rehearsal_pod_keeps_no_secret_in_the_run_directory(tmp_path, backend):
    """issue 20: a rehearsal pod's disk (its files, its container log: secrets in plain text, as on a real
    pod) lives outside the run directory, in a private temp folder; while the pod runs, no file of the run
    directory holds the secret, and the pod's disk goes with the pod."""
    b = backend(1)
    run_dir = tmp_path / "runs" / "b"
    seen: dict = {}

    class Look(MemoryEvents):
        def line(self, text: str) -> None:
            super().line(text)
            if text.startswith("step:1/") and not seen:
                pod = self.merged()["pod_id"]
                seen["pod_dir"] = b.session.fake.pod_dir(pod)
                seen["mode"] = seen["pod_dir"].stat().st_mode & 0o777
                seen["pod"] = [p.name for p in seen["pod_dir"].rglob("*") if p.is_file()
                               and HF_SECRET.encode() in p.read_bytes()]
                seen["run"] = [str(p) for p in run_dir.rglob("*") if p.is_file() and HF_SECRET.encode() in p.read_bytes()]
    a = group(tmp_path, 1)[0]
    a.env.update(HF_TOKEN=HF_SECRET, FAKE_PRINT="HF_TOKEN")
    [(_, r)] = list(b.run_group([a], [Look()]))
    assert r.exit_code == 0
    assert "container.log" in seen["pod"] and seen["run"] == []          # on the pod's disk, not in the run dir
    assert tmp_path not in seen["pod_dir"].parents and seen["mode"] == 0o700
    end = time.time() + 10
    while seen["pod_dir"].exists():                  # its disk goes as its processes are killed, just after
        assert time.time() < end, "the pod's disk outlived it"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("k", K)
def test_through_the_driver_a_pod_that_never_answers_is_replaced_once_and_the_seeds_succeed(tmp_path, k):
    """The whole batch (`pgolf run --rehearse`, real local Ray, the driver's one path): stuck=1 makes the
    first pod never answer; after start_timeout_s (600 s: 6 s here) it is terminated, verified gone, and its
    seeds are retried as infrastructure on one fresh pod, where they succeed."""
    from test_runpod_seeds_per_pod import ledger_attempts, rehearse, write_spec
    spec = write_spec(tmp_path, [1, 2, 3][:k], k, {"FAKE_SECONDS": 0.3}, extra="start_timeout_s = 600")
    out, run = rehearse(tmp_path, spec, f"stuck{k}", "stuck=1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    atts = ledger_attempts(run)
    assert sorted((a["seed"], a["attempt"]) for a in atts) == sorted((s, n) for s in [1, 2, 3][:k] for n in (1, 2))
    first = [a for a in atts if a["attempt"] == 1]
    assert all(a["error"].startswith("infrastructure: pod ") and "did not answer within [runpod] start_timeout_s "
               "= 600 s" in a["error"] for a in first), [a["error"] for a in first]
    assert all(a["error"] is None for a in atts if a["attempt"] == 2)
    assert len({a["pod_id"] for a in atts}) == 2 and all(a["pod_terminated"] is True for a in atts)
    assert json.loads((run / "rehearsal" / "state.json").read_text())["n_pods"] == 2
    assert FakeRunPod(run / "rehearsal").alive_pods() == []


def test_the_fake_answers_terminated_for_a_while_then_404(backend):
    """As RunPod's PodStatus says: a deleted pod is TERMINATED (no longer listed, its processes gone) for a
    while, then unknown (404); `gone` holds in both."""
    b = backend(1)
    with b.session.client() as c:
        pod = c.create_pod(api.CreatePod(name="pgolf-b-s9-a1", image="img", args="sleep 30",
                                         cpu=api.CpuRequest(id="cpu3c", vcpu_count=2), disk=20))
        assert c.delete_pod(pod.id)
        assert c.get_pod(pod.id).status == "TERMINATED" and gone(c, pod.id)
        assert pod.id not in {p.id for p in c.list_pods()} and b.session.fake.alive_pods() == []
        end = time.time() + 10
        while c.get_pod(pod.id) is not None:
            assert time.time() < end, "never 404"
            time.sleep(0.1)
        assert gone(c, pod.id)
