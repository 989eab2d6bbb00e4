"""The v2 pod lifecycle (runner/backends/runpod/instances.py) against the v2 fake: stock and price said
before creating, capacity and spend-limit back-off, stuck pods, terminate-and-verify, billed cost."""
from __future__ import annotations

import dataclasses
import time

import pytest

from runner.spec import RunPodSettings

from results.errors import PgolfError
from runner.backends.runpod import api, instances as inst
from runner.backends.runpod.fake import FakeRunPod
from runner.backends.base import InfraFailure

KEY = "rpa_TESTKEY_0123456789abcdef"
FAST = dataclasses.replace(inst.REHEARSAL, capacity_wait_s=1.0, capacity_backoff_s=0.05, capacity_backoff_max_s=0.1)
CPU = inst.PodShape(cpu="cpu3c", vcpus=4)


@pytest.fixture
def start(tmp_path):
    fakes = []

    def make(faults: str = "") -> tuple[FakeRunPod, api.RunPodClient]:
        fake = FakeRunPod(tmp_path / "fake", faults, api_key=KEY)
        fake.start()
        fakes.append(fake)
        return fake, api.RunPodClient(KEY, origin=fake.url, pacing=api.Pacing(time_scale=0.01))
    yield make
    for f in fakes:
        f.terminate_all()
        f.stop()
        assert f.alive_pods() == [] and f.violations == []


def request(name: str, shape: inst.PodShape = CPU, args: str = "sleep 60") -> api.CreatePod:
    return api.CreatePod(name=name, image="img", args=args, ports=[f"{inst.SYMMETRIC_PORT}/tcp"], disk=20,
                         cloud=shape.cloud, **shape.compute())


def test_offer_says_stock_and_price_and_the_spend_limit_sets_max_pods(start):
    _, c = start()
    h100 = inst.offer(c, inst.PodShape())
    assert h100.price_per_hour == pytest.approx(21.52) and h100.availability == "HIGH"
    assert h100.line == ("RunPod stock for 8 x NVIDIA H100 80GB HBM3 (SECURE): HIGH in US-KS-2, EU-RO-1; "
                         "$21.52/h list price")
    assert RunPodSettings().pods_at_once(h100.price_per_hour) == 3      # $80/h default: 3 pods of 8 x H100
    assert inst.offer(c, CPU).price_per_hour == pytest.approx(0.12)
    for bad, match in ((inst.PodShape(cpu="cpu3c", vcpus=3), "power of two"),
                       (inst.PodShape(cpu="cpu9z"), "no such CPU flavor"),
                       (inst.PodShape(gpu_count=16), "at most 8 GPUs"),
                       (inst.PodShape(gpu_type="NVIDIA B999"), "not in RunPod's GPU catalog")):
        with pytest.raises(PgolfError, match=match):
            inst.offer(c, bad)


def test_capacity_is_waited_out_and_the_pod_runs_with_a_public_address(start):
    fake, c = start("capacity=2")
    notes: list[str] = []
    pod = inst.create(c, request("pgolf-b-s1-a1"), FAST, notes.append)
    assert sum("no capacity" in n for n in notes) == 2
    pod, url = inst.wait_ready(c, pod, 900, FAST, lambda base: True, lambda: False, lambda *a: None)
    assert pod.status == "RUNNING" and url.startswith("http://127.0.0.1:")
    assert inst.terminate_verified(c, [pod.id], FAST) == [] and fake.alive_pods() == []
    assert inst.billed_cost(c, pod.id, pod.created_at, FAST) > 0


def test_spend_limit_is_one_clear_line_and_balance_stops_the_batch(start):
    fake, c = start("spend_limit=0.1")
    notes: list[str] = []
    with pytest.raises(InfraFailure, match="spend limit"):
        inst.create(c, request("pgolf-b-s1-a1"), FAST, notes.append)
    assert notes and all("spend limit would be exceeded" in n and "\n" not in n for n in notes)
    fake.spend_limit, fake.balance = 80.0, 0.05
    with pytest.raises(PgolfError, match="Insufficient balance"):
        inst.create(c, request("pgolf-b-s1-a2"), FAST, notes.append)
    assert fake.pod_ids() == []


def test_a_used_up_daily_window_stops_the_batch_in_one_line_not_an_infra_retry(start):
    fake, c = start("quota_day=1")
    with pytest.raises(PgolfError, match=r"RunPod's day window is used up until .* \(in 12.5 h\)") as e:
        inst.create(c, request("pgolf-b-s1-a1"), FAST, print)
    assert not isinstance(e.value, InfraFailure) and fake.pod_ids() == []


def test_a_stuck_pod_is_reported_and_can_be_terminated(start):
    fake, c = start("stuck=1")
    pod = inst.create(c, request("pgolf-b-s1-a1"), FAST, print)
    said: list[str] = []
    with pytest.raises(inst.Stuck, match=r"did not answer within \[runpod\] start_timeout_s = 30 s of its creation "
                                          r"\(waited \d\d s, rehearsal time: 0\.\d s here\); still provisioning"):
        inst.wait_ready(c, pod, 0.3, FAST, lambda base: True, lambda: False, lambda label, s: said.append(label))
    assert set(said) == {"provisioning"}
    assert inst.terminate_verified(c, [pod.id], FAST) == []
    assert inst.billed_cost(c, pod.id, pod.created_at, FAST) > 0        # billed though it never booted
    fresh = inst.create(c, request("pgolf-b-s1-a2"), FAST, print)
    ready = inst.wait_ready(c, fresh, 5.3, FAST, lambda base: True, lambda: False, lambda *a: None)
    assert ready[0].status == "RUNNING"


def test_a_pod_lost_before_it_runs_is_infrastructure(start):
    fake, c = start()
    pod = inst.create(c, request("pgolf-b-s1-a1", args="true"), FAST, print)   # its container ends at once
    with pytest.raises(InfraFailure, match=r"lost \(EXITED"):
        inst.wait_ready(c, pod, 900, FAST, lambda base: False, lambda: False, lambda *a: None)   # it ends first
        time.sleep(0.5)
        inst.check_alive(c, pod.id)
