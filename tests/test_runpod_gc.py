"""`pgolf cluster gc` and `pgolf resume` tell pods apart (issue 18, item 8): a pod is judged gone only by
the API that made it (RunPod's own for real batches, a rehearsal's fake for that rehearsal alone); resume
stops a dead driver's pods first, before any check that may refuse, and records each one once; twins (live
pods carrying one of the batch's deterministic names) are terminated, verified gone and recorded.

"RunPod" here is a fake on its own state directory reached through RUNPOD_API_BASE_URL, as the real
client reaches RunPod; each rehearsal has its fake in RUN_DIR/rehearsal/. No Ray: resume stops at its
missing secret, after the pods are handled.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from results.errors import PgolfError
from results.secrets import Scrubber
from runner.backends.runpod import api
from runner.backends.runpod.cluster import gc
from runner.backends.runpod.fake import FakeRunPod
from runner.backends.runpod.instances import REHEARSAL_DIR, REHEARSAL_KEY, pod_name
from runner.progress import ledger_notes
from runner.batch import resume
from runner.ledger import Ledger, create_batch
from runner.spec import spec_to_batch, validate_spec
from support import PAYLOAD, SECRET


@pytest.fixture
def world(tmp_path, monkeypatch):
    """runs/ with fakes: 'RunPod' (real batches) and one per rehearsal; all stopped and emptied after."""
    fakes: dict[str, FakeRunPod] = {}

    def fake(key: str, state: Path, api_key: str | None = None) -> FakeRunPod:
        f = FakeRunPod(state, api_key=api_key)
        f.start()
        fakes[key] = f
        return f
    real = fake("real", tmp_path / "runpod-account", SECRET)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", real.url)
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path / "runs", fake, real
    for f in fakes.values():
        f.terminate_all()
        f.stop()
        assert f.alive_pods() == [] and f.violations == []


def batch(run_dir: Path, rehearsal: bool, seeds: list[int]) -> Ledger:
    """A frozen batch (its [env] names a secret batch.json does not keep: resume refuses without it)."""
    spec = validate_spec({"name": run_dir.name, "script": str(PAYLOAD), "seeds": seeds, "backend": "runpod",
                          "launcher": "python", "gpus_per_seed": 0, "env": {"WANDB_API_KEY": "wandb-secret-value"},
                          "runpod": {"cpu": "cpu3c", "vcpus": 2}}, "test spec")
    create_batch(run_dir, spec_to_batch(spec, Scrubber({})), PAYLOAD, rehearsal=rehearsal)
    return Ledger.create(run_dir, seeds)


def pod(c: api.RunPodClient, run_dir: Path, seed: int, attempt: int = 1) -> api.Pod:
    return c.create_pod(api.CreatePod(name=pod_name(str(run_dir), seed, attempt), image="img", args="sleep 300",
                                      cpu=api.CpuRequest(id="cpu3c", vcpu_count=2), disk=20))


def attempt(led: Ledger, seed: int, pod_id: str, ended: bool) -> None:
    att = led.start_attempt(seed, "runpod")
    led.update_attempt(seed, att["attempt"], pod_id=pod_id)
    if ended:
        led.end_attempt(seed, att["attempt"], "pending", error="infrastructure: driver lost")


def recorded(run_dir: Path) -> dict[str, object]:
    """pod id -> its pod_terminated, and twin id -> 'twin', from the ledger on disk."""
    out: dict[str, object] = {}
    for _s, att in Ledger.load(run_dir).all_attempts():
        out[att["pod_id"]] = att.get("pod_terminated")
        out.update({t: "twin" for t in att.get("twin_pods") or []})
    return out


def test_gc_judges_pods_only_by_their_own_api_and_resume_stops_the_dead_batchs_pods(world, capsys):
    runs, fake, real = world
    c = api.RunPodClient(SECRET, origin=real.url, pacing=api.Pacing(time_scale=0.01))
    # Z: a real batch whose driver died, then its resume died after closing both attempts: pods still billing
    z = runs / "z-dead"
    led = batch(z, False, [1, 2])
    z1, z2 = pod(c, z, 1), pod(c, z, 2)
    attempt(led, 1, z1.id, ended=True)
    attempt(led, 2, z2.id, ended=True)
    twin = pod(c, z, 1)                                   # a create whose answer was lost left a same-name twin
    # D: a real batch that finished; its pod is gone but the ledger never heard (pod_terminated unset)
    d = runs / "d-done"
    led_d = batch(d, False, [1])
    d1 = pod(c, d, 1)
    attempt(led_d, 1, d1.id, ended=True)
    assert c.delete_pod(d1.id)
    # H: a rehearsal that finished; its fake (its own state) knows none of Z's or D's pods
    h = runs / "h-rehearsal"
    led_h = batch(h, True, [1])
    hf = fake("h", h / REHEARSAL_DIR)
    hc = api.RunPodClient(REHEARSAL_KEY, origin=hf.url, pacing=api.Pacing(time_scale=0.01))
    h1 = pod(hc, h, 1)
    attempt(led_h, 1, h1.id, ended=True)
    assert hc.delete_pod(h1.id)
    hf.stop()                                             # as after the rehearsal's driver exited

    assert gc(runs, yes=True, rehearse=True) == 0         # visits H's fake only
    out = capsys.readouterr().out
    assert recorded(h) == {h1.id: True} and f"recorded pod_terminated for 1 pod(s) already gone: {h1.id}" in out
    assert recorded(z) == {z1.id: None, z2.id: None}      # H's fake never heard of them: it says nothing
    assert recorded(d) == {d1.id: None}
    assert {p.id for p in c.list_pods() if p.status != "TERMINATED"} == {z1.id, z2.id, twin.id}

    deletes = real.requests_seen.count("deletePod")
    with pytest.raises(PgolfError, match="env.WANDB_API_KEY is a secret"):
        resume(z)                                         # refuses on the secret, but only after the pods
    out = capsys.readouterr().out
    assert "pgolf resume: terminated 3 pod(s) the dead driver left, verified gone" in out and twin.id in out
    assert recorded(z) == {z1.id: True, z2.id: True, twin.id: "twin"}
    z_att = Ledger.load(z).attempt(1, 1)                  # the twin's cost, billed by RunPod, is the attempt's
    billed = c.pod_cost(twin.id, "2000-01-01T00:00:00Z")
    assert billed > 0 and z_att["twin_cost_usd"] == pytest.approx(billed, abs=1e-6)
    assert z_att["cost_usd"] is None                      # the dead driver recorded no cost of its own pod
    note = [n for n in ledger_notes(Ledger.load(z)) if "twin pod(s)" in n]
    assert note == [f"seed 1 attempt 1: twin pod(s) {twin.id} of its pod (a create answer lost, the create retried), "
                    f"terminated by pgolf; they cost ${billed:.2f}"]   # not "counted in this attempt's cost"
    assert {z1.id, z2.id, twin.id}.isdisjoint(p.id for p in c.list_pods() if p.status != "TERMINATED")
    again = real.requests_seen.count("deletePod")
    assert again > deletes
    with pytest.raises(PgolfError, match="WANDB_API_KEY"):
        resume(z)                                         # once: nothing left to terminate, nothing said
    assert real.requests_seen.count("deletePod") == again and "terminated" not in capsys.readouterr().out

    assert gc(runs, yes=True) == 0                        # RunPod's own gc: only the real batches' ledgers
    assert recorded(d) == {d1.id: True} and recorded(h) == {h1.id: True}


def test_gc_terminates_a_twin_of_an_ended_attempt_and_records_it(world, capsys):
    runs, fake, real = world
    c = api.RunPodClient(SECRET, origin=real.url, pacing=api.Pacing(time_scale=0.01))
    run = runs / "t-twin"
    led = batch(run, False, [7])
    first = pod(c, run, 7)
    attempt(led, 7, first.id, ended=True)
    led.update_attempt(7, 1, cost_usd=1.0, cost_source="billed")   # what its driver recorded for its pod
    assert c.delete_pod(first.id)
    twin = pod(c, run, 7)                                 # same deterministic name, another id: still billing
    dead = runs / "u-open"                                # a dead driver's open attempt: its pod is kept,
    led_u = batch(dead, False, [3])                       # its twin is not
    owned = pod(c, dead, 3)
    attempt(led_u, 3, owned.id, ended=False)
    twin_u = pod(c, dead, 3)
    assert gc(runs, yes=True) == 0
    out = capsys.readouterr().out
    assert f"recorded twin pod(s) of an attempt's name: {twin.id}, {twin_u.id}" in out, out   # run dirs in order
    assert recorded(run) == {first.id: True, twin.id: "twin"}
    entry = json.loads((run / "ledger.json").read_text())["seeds"]["7"]["attempts"][0]
    billed = c.pod_cost(twin.id, "2000-01-01T00:00:00Z")
    assert entry["twin_pods"] == [twin.id] and billed > 0
    assert entry["twin_cost_usd"] == pytest.approx(billed, abs=1e-6)       # money spent for that attempt:
    assert entry["cost_usd"] == pytest.approx(1.0 + billed, abs=1e-6)      # counted in its cost too
    assert recorded(dead) == {owned.id: None, twin_u.id: "twin"}
    assert [p.id for p in c.list_pods() if p.status != "TERMINATED"] == [owned.id]


def test_gc_waits_out_a_used_up_daily_window_and_says_so(world, capsys, monkeypatch):
    """Where any other call stops at the 120 s cap, gc keeps waiting (here a 1000 s window on a clock
    1000 times faster) and terminates the orphan all the same."""
    import dataclasses

    from runner.backends.runpod import fake as fake_module, instances
    runs, fake, real = world
    monkeypatch.setattr(fake_module, "QUOTA_DAY_RESET_S", 1000)
    monkeypatch.setattr(instances, "REAL", dataclasses.replace(instances.REAL, time_scale=0.001, gone_poll_s=0.1))
    c = api.RunPodClient(SECRET, origin=real.url, pacing=api.Pacing(time_scale=0.001))
    run = runs / "q-quota"
    led = batch(run, False, [5])
    orphan = pod(c, run, 5)
    attempt(led, 5, orphan.id, ended=True)
    real.faults["quota_day"] = 1                          # the next request: the day's window is used up
    with pytest.raises(api.QuotaExhausted, match="day window is used up"):
        c.list_pods()
    real.faults["quota_day"] = 2
    assert gc(runs, yes=True) == 0
    err = capsys.readouterr().err
    assert "the day window resets in 17 min; waiting for it (terminating and gc never give up)" in err, err
    assert recorded(run) == {orphan.id: True} and real.events.count("quota_day") == 2
