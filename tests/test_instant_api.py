"""Instant Clusters without Ray: the /v2/clusters calls against the fake RunPod (every request and answer
checked against openapi-v2.json), the wave-to-cluster mapping, the money rules, cost from cluster billing,
and `pgolf cluster gc` for clusters."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from results.errors import PgolfError
from runner.backends import make_backend
from runner.backends.runpod import instant_api as ia
from runner.backends.runpod.api import InvalidRequest, Refused, RunPodClient
from runner.backends.runpod.backend import RunPodBackend
from runner.backends.runpod.fake import GPUS, FakeRunPod
from runner.backends.runpod.instant import (RECORD, InstantClusterBackend, _epoch, cluster_name, gc_clusters,
                                            nodes_for, read_record, start_command, write_record)
from runner.ledger import Ledger
from runner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"
H100_NODE = next(g[3] for g in GPUS if g[0] == H100) * 8        # the fake's $/h of one 8 x H100 node


@pytest.fixture
def fake(tmp_path):
    f = FakeRunPod(tmp_path / "state", faults="spend_limit=500")     # room for two clusters at once
    f.start()
    yield f
    f.terminate_clusters()
    f.stop()
    assert f.alive_pods() == []


def request(name="pgolf-t-c1", nodes=3, args="bash -c 'echo rank=$NODE_RANK of $NUM_NODES at $PRIMARY_ADDR; sleep 60'"):
    return ia.CreateCluster(name=name, image="img", args=args, env={"PGOLF_RAY_PORT": "1"},
                            compute=ia.ClusterCompute(gpu_type_id=H100, gpu_count_per_pod=8, pod_count=nodes))


def wait_running(c: RunPodClient, cid: str) -> ia.Cluster:
    deadline = time.time() + 20
    while not (cl := ia.get_cluster(c, cid)).running():
        assert time.time() < deadline, cl
        time.sleep(0.1)
    return cl


def test_cluster_calls_round_trip_against_the_schema(fake):
    c = RunPodClient("k", origin=fake.url)
    cl = ia.create_cluster(c, request())
    assert cl.compute.pod_count == 3 and cl.name == "pgolf-t-c1"
    cl = wait_running(c, cl.id)
    assert [x.id for x in ia.list_clusters(c)] == [cl.id] and ia.find_clusters(c, "pgolf-t-c1")[0].id == cl.id
    members = ia.cluster_pods(c, cl.id)
    assert len(members) == 3 and cl.primary.pod_id == members[0].id
    deadline = time.time() + 10
    while not all(fake.container_log(p.id) for p in members):
        assert time.time() < deadline
        time.sleep(0.1)
    # RunPod's cluster variables reach every node (rank 0 is the primary)
    assert [fake.container_log(p.id)[0] for p in members] == [f"rank={r} of 3 at 127.0.0.1" for r in range(3)]
    # members are not pods of the account's pod list, and not deletable as pods
    assert c.list_pods() == []
    listed = c._call("GET", "/v2/pods", "list", params={"includeClusterPods": "true"}).json()["pods"]
    assert sorted(p["cluster"]["rank"] for p in listed) == [0, 1, 2]
    with pytest.raises(Refused, match="cluster member"):
        c.delete_pod(members[1].id)
    assert ia.delete_cluster(c, cl.id) is True
    assert ia.get_cluster(c, cl.id) is None and ia.cluster_pods(c, cl.id) == [] and fake.alive_pods() == []
    assert ia.delete_cluster(c, cl.id) is False                  # already gone: 404 read as "gone"
    assert fake.violations == []
    assert {"createCluster", "getCluster", "listClusters", "listClusterPods", "deleteCluster"} <= set(fake.requests_seen)


def test_a_request_the_schema_refuses_never_leaves_and_the_fake_checks_anyway(fake):
    with pytest.raises(ValidationError):                          # podCount >= 2: one node is a pod
        ia.ClusterCompute(gpu_type_id=H100, gpu_count_per_pod=8, pod_count=1)
    c = RunPodClient("k", origin=fake.url)
    body = request().payload()
    body["compute"]["podCount"] = 1
    with pytest.raises(InvalidRequest):
        c._call("POST", "/v2/clusters", "create", json=body, transient_retry=False)
    assert any("podCount" in v for v in fake.violations)
    fake.violations.clear()
    body = request().payload() | {"cloud": "COMMUNITY"}           # not a cluster field (unevaluatedProperties)
    with pytest.raises(InvalidRequest):
        c._call("POST", "/v2/clusters", "create", json=body, transient_retry=False)
    assert fake.violations and ia.list_clusters(c) == []


def test_cost_comes_from_cluster_billing(fake):
    c = RunPodClient("k", origin=fake.url)
    one = ia.create_cluster(c, request("pgolf-t-c1", 2, "sleep 60"))
    other = ia.create_cluster(c, request("pgolf-u-c1", 3, "sleep 60"))
    time.sleep(1.0)
    t0 = time.time()
    ia.delete_cluster(c, one.id)
    lived_h = (t0 - _epoch(one.created_at)) / 3600
    records = ia.cluster_billing(c, one.id, one.created_at)
    assert records and {r.cluster_id for r in records} == {one.id}   # the other cluster's records are not this one's
    cost = ia.cluster_cost(c, one.id, one.created_at)
    assert cost == round(sum(r.total_amount for r in records), 6)
    assert cost == pytest.approx(2 * H100_NODE * lived_h, rel=0.2)   # two nodes x price x lifetime, + disk
    time.sleep(0.3)
    assert ia.cluster_cost(c, one.id, one.created_at) == cost       # deleted: billing stopped
    assert ia.cluster_cost(c, other.id, other.created_at) > 0
    assert fake.violations == []


def write_spec(tmp: Path, seeds, runpod: str) -> Path:
    spec = tmp / "job.toml"
    spec.write_text(f"""
name = "ic"
script = "{ROOT / 'tests' / 'payloads' / 'fake_train.py'}"
seeds = {list(seeds)}
backend = "runpod"
launcher = "python"
gpus_per_seed = 0
[data]
variant = "tiny"
paths = {{ TOKENIZER_PATH = "{ROOT / 'model' / 'data' / 'tiny' / 'tokenizer.model'}" }}
[runpod]
{runpod}
""")
    return spec


def test_each_wave_is_one_cluster_capped_by_max_pods_and_a_wave_of_one_is_a_pod(tmp_path):
    assert nodes_for([3], 8) == 3 and nodes_for([12], 8) == 8 and nodes_for([12], 3) == 3
    assert nodes_for([3, 2, 3], 8) == 3 and nodes_for([1], 8) == 1 and nodes_for([], 8) == 0
    three = load_spec(write_spec(tmp_path, [1, 2, 3], "cluster = true"))
    b = make_backend(three, rehearse=True, run_dir=tmp_path / "run")
    assert isinstance(b, InstantClusterBackend) and b.nodes == 3
    assert b.ray_options()["resources"] == {"pgolf_node": 1}      # one seed per node
    capped = make_backend(load_spec(write_spec(tmp_path, range(10), "cluster = true\nmax_pods = 4")), rehearse=True,
                          run_dir=tmp_path / "run")
    assert capped.nodes == 4
    assert isinstance(make_backend(load_spec(write_spec(tmp_path, [7], "cluster = true")), rehearse=True,
                                   run_dir=tmp_path / "run"), RunPodBackend)
    assert isinstance(make_backend(load_spec(write_spec(tmp_path, [1, 2], "cluster = true\nmax_pods = 1")),
                                   rehearse=True, run_dir=tmp_path / "run"), RunPodBackend)
    # a resumed batch counts the seeds left: one left runs on a pod
    run = tmp_path / "resumed"
    led = Ledger.create(run, [1, 2, 3])
    for s in (1, 2):
        led.start_attempt(s, backend="runpod")
        led.end_attempt(s, 1, exit_code=0, error=None, state="succeeded")
    assert isinstance(make_backend(three, rehearse=True, run_dir=run), RunPodBackend)
    with pytest.raises(PgolfError, match="GPU nodes only"):
        load_spec(write_spec(tmp_path, [1, 2], 'cluster = true\ncpu = "cpu3c"'))
    with pytest.raises(PgolfError, match="one seed per node"):
        load_spec(write_spec(tmp_path, [1, 2], "cluster = true\nseeds_per_pod = 2"))


@contextlib.contextmanager
def served(state: Path, faults: str):
    f = FakeRunPod(state, faults=faults)
    try:
        with RunPodClient("k", origin=f.start()) as c:
            yield c
    finally:
        f.stop()


def test_money_spend_limit_per_cluster_and_balance_twice_the_estimate(tmp_path):
    spec = load_spec(write_spec(tmp_path, [1, 2, 3], "cluster = true"))
    lim = spec.limits
    with served(tmp_path / "s1", "balance=5") as c:
        with pytest.raises(PgolfError, match="under twice the estimate"):
            InstantClusterBackend(spec, rehearse=True, run_dir=tmp_path / "r", nodes=3).estimate(c, 3, H100_NODE)
        # 2 nodes at 1/h: 2/h x (set-up + 2 rounds of a seed's train + eval, 3 seeds on 2 nodes)
        est, line = InstantClusterBackend(spec, rehearse=True, run_dir=tmp_path / "r", nodes=2).estimate(c, 3, 1.0)
        assert est == pytest.approx(2 * (spec.runpod.setup_s + 2 * (lim.train_seconds + lim.eval_seconds)) / 3600)
        assert "2 nodes" in line and "2 round(s)" in line and "balance 5.0000 fake" in line
    spec = load_spec(write_spec(tmp_path, [1, 2, 3, 4], "cluster = true\nmax_pods = 4\nspend_limit = 60"))
    with served(tmp_path / "s2", "") as c:       # max_pods asks for more than the limit allows: refused
        with pytest.raises(PgolfError, match=r"above the \$60/h spend limit.*max_pods = 2"):
            InstantClusterBackend(spec, rehearse=True, run_dir=tmp_path / "r", nodes=4).estimate(c, 4, H100_NODE)
    # without max_pods the spend limit sets the nodes (4 seeds, $80/h: 3 nodes of 8 x H100), or refuses a cluster
    b = InstantClusterBackend(load_spec(write_spec(tmp_path, [1, 2, 3, 4], "cluster = true")), rehearse=True, nodes=4)
    assert "nodes 3: what a $80/h spend limit allows" in b.fit_spend_limit(H100_NODE) and b.nodes == 3
    assert b.fit_spend_limit(H100_NODE) is None
    b = InstantClusterBackend(load_spec(write_spec(tmp_path, [1, 2], "cluster = true\nspend_limit = 30")), nodes=2)
    with pytest.raises(PgolfError, match=r"two nodes cost \$43.04/h, above the \$30/h spend limit"):
        b.fit_spend_limit(H100_NODE)


def test_gc_deletes_orphaned_clusters_and_keeps_a_resumable_batchs(tmp_path):
    runs = tmp_path / "runs"
    dead, done = runs / "dead", runs / "done"
    for d in (dead, done):
        led = Ledger.create(d, [1])
        led.start_attempt(1, backend="runpod")                     # open: a driver died mid-run
    Ledger.load(done).end_attempt(1, 1, "succeeded", exit_code=0)
    f = FakeRunPod(dead / "rehearsal", faults="spend_limit=500")   # one fake per rehearsal; gc starts its own
    f.start()
    try:
        c = RunPodClient("k", origin=f.url)
        kept = ia.create_cluster(c, request(cluster_name(dead, 1), 2, "sleep 60"))
        orphan = ia.create_cluster(c, request(cluster_name(done, 1), 2, "sleep 60"))
        write_record(done, {"clusters": [{"id": orphan.id, "name": orphan.name, "deleted": False}]})
        c.close()
    finally:
        f.stop()
    assert gc_clusters(runs, yes=True, rehearse=True) == 0
    f = FakeRunPod(dead / "rehearsal")
    f.start()
    try:
        with RunPodClient("k", origin=f.url) as c:
            assert [x.id for x in ia.list_clusters(c)] == [kept.id]
        assert read_record(done)["clusters"][0]["gone"] is True
        assert not (dead / RECORD).exists()
        assert gc_clusters(runs, yes=True, rehearse=True, live={dead}) == 0     # a live batch's: kept too
        Ledger.load(dead).end_attempt(1, 1, "failed", exit_code=1)
        assert gc_clusters(runs, yes=True, rehearse=True) == 0                  # nobody resumes it now: deleted
        with RunPodClient("k", origin=f.url) as c:
            assert ia.list_clusters(c) == []
        assert f.alive_pods() == [] and f.violations == []
    finally:
        f.terminate_clusters()
        f.stop()


def run_start_command(tmp: Path, rank: int, rehearse: bool, ray_version: str, extra_env: dict) -> tuple[str, list[str]]:
    """A node's start command under bash, with `ray` and `pip` stand-ins that log their arguments: the
    first `ray start` fails at once (a raylet that missed Ray's 30 s), the second ends as the backstop would."""
    import stat
    import subprocess
    import sys
    bin_dir = tmp / f"bin{rank}{rehearse}"
    bin_dir.mkdir()
    log = tmp / f"calls{rank}{rehearse}.txt"
    for name, body in (("ray", f'echo "ray $*" >> {log}; n=$(grep -c "^ray" {log}); [ "$n" = 1 ] && exit 1; exit 124'),
                       ("pip", f'echo "pip $*" >> {log}')):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "NODE_RANK": str(rank),
           "NODE_ADDR": "127.0.0.1", "PRIMARY_ADDR": "127.0.0.1", "NUM_TRAINERS": "8", **extra_env}
    import shlex
    out = subprocess.run(shlex.split(start_command(ray_version, 600, rehearse)), env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 124, out.stdout + out.stderr
    return out.stdout, log.read_text().splitlines()


def test_node_start_command_joins_one_ray_cluster_and_retries_a_failed_start(tmp_path):
    import socket
    import ray
    with socket.socket() as head:                         # the primary's GCS port, for the worker to wait on
        head.bind(("127.0.0.1", 0))
        head.listen()
        port = str(head.getsockname()[1])
        out, calls = run_start_command(tmp_path, 0, True, ray.__version__, {"PGOLF_RAY_PORT": port})
        assert "ray start failed (exit 1), try 1 of 5" in out and len(calls) == 2      # tried again, fresh ports
        assert calls[0].split(" --dashboard")[0] == calls[1].split(" --dashboard")[0]
        assert calls[0].startswith(f"ray start --head --port={port} ")
        for arg in ('--resources={"pgolf_node": 1}', "--num-gpus=8", "--node-ip-address=127.0.0.1", "--block",
                    f"--temp-dir=/tmp/pgolf-ray-{port}"):
            assert arg in calls[0]
        _, calls = run_start_command(tmp_path, 1, True, ray.__version__, {"PGOLF_RAY_PORT": port})
        assert calls[0].startswith(f"ray start --address=127.0.0.1:{port} ") and "--head" not in calls[0]
        # on RunPod: this machine's Ray version is installed first, Ray Client listens on the public port
        _, calls = run_start_command(tmp_path, 0, False, "0.0.0", {"PGOLF_RAY_PORT": "6379",
                                                                   "RUNPOD_TCP_PORT_70001": "70001"})
        assert calls[0] == "pip install -q ray[default,client]==0.0.0"
        assert "--ray-client-server-port=70001" in calls[1] and "--temp-dir" not in calls[1]


def test_cluster_status_and_down_act_on_the_specs_clusters_only(tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / "ic-1"
    run.mkdir(parents=True)
    (run / "batch.json").write_text(json.dumps({"name": "ic", "spec": {}, "script": {}}))
    f = FakeRunPod(run / "rehearsal", faults="spend_limit=500")
    f.start()
    try:
        with RunPodClient("k", origin=f.url) as c:
            mine = ia.create_cluster(c, request(cluster_name(run, 1), 2, "sleep 60"))
            other = ia.create_cluster(c, request("pgolf-other-c1", 2, "sleep 60"))
        write_record(run, {"clusters": [{"id": mine.id, "name": mine.name, "deleted": False}]})
    finally:
        f.stop()
    backend = make_backend(load_spec(write_spec(tmp_path, [1, 2], "cluster = true")), rehearse=True)
    assert backend.cluster("status", runs, False) == 0
    out = capsys.readouterr().out
    assert f"cluster {mine.id} (pgolf-ic-1-c1): 2 nodes" in out and other.id not in out
    assert backend.cluster("down", runs, True) == 0
    assert "deleted, verified gone" in capsys.readouterr().out and read_record(run)["clusters"][0]["gone"] is True
    f = FakeRunPod(run / "rehearsal")
    f.start()
    try:
        with RunPodClient("k", origin=f.url) as c:
            assert [x.id for x in ia.list_clusters(c)] == [other.id]
        assert f.violations == []
    finally:
        f.terminate_clusters()
        f.stop()


def test_resume_reattaches_to_a_whole_cluster_and_deletes_one_that_lost_a_node(tmp_path):
    from runner.backends.runpod import fake_container as container
    run = tmp_path / "run"
    spec = load_spec(write_spec(tmp_path, [1, 2], "cluster = true"))
    with served(run / "rehearsal", "spend_limit=500") as c:
        whole = ia.create_cluster(c, request(cluster_name(run, 1), 2, "sleep 60"))
        broken = ia.create_cluster(c, request(cluster_name(run, 2), 2, "sleep 60"))
        for cl in (whole, broken):
            wait_running(c, cl.id)
        node = ia.cluster_pods(c, broken.id)[1]
        pod = json.loads((run / "rehearsal" / "state.json").read_text())["pods"][node.id]
        assert container.kill_pod(pod["mark"], pod["pid"], pod["proc_start"])   # a node lost with the driver
        write_record(run, {"clusters": [{"id": cl.id, "name": cl.name, "deleted": False, "address": f"127.0.0.1:{k}"}
                                        for k, cl in enumerate((whole, broken), 1)]})
        b = InstantClusterBackend(spec, rehearse=True, run_dir=run, nodes=2)
        assert b._reattach(c) == "127.0.0.1:1" and b.made.id == whole.id    # the whole one is used ...
        assert ia.get_cluster(c, broken.id) is None and read_record(run)["clusters"][1]["gone"] is True  # ... not this
        assert ia.get_cluster(c, whole.id).running()
        ia.delete_cluster(c, whole.id)
        assert InstantClusterBackend(spec, rehearse=True, run_dir=run, nodes=2)._reattach(c) is None   # none left


def test_runpods_nodes_get_pgolf_through_rays_runtime_env_and_a_rehearsals_share_this_machine(tmp_path):
    import results
    import runner
    spec = load_spec(write_spec(tmp_path, [1, 2], "cluster = true"))
    env = InstantClusterBackend(spec, rehearse=False, nodes=2).runtime_env()
    assert env["py_modules"] == [runner, results]
    names = {d.split(">")[0].split("=")[0] for d in env["pip"]}
    assert {"pydantic", "httpx", "tenacity"} <= names and not names & {"ray", "torch", "pytest"}
    assert InstantClusterBackend(spec, rehearse=True, nodes=2).runtime_env() is None


def test_no_capacity_for_a_cluster_is_waited_out_then_said_in_one_line(tmp_path, capsys):
    import dataclasses
    spec = load_spec(write_spec(tmp_path, [1, 2], "cluster = true"))
    with served(tmp_path / "s", "capacity=2") as c:
        b = InstantClusterBackend(spec, rehearse=True, run_dir=tmp_path / "r", nodes=2)
        cl = b._create_waiting(c, request("pgolf-r-c1", 2, "sleep 60"))
        assert capsys.readouterr().out.count("pgolf: no cluster yet (There are no longer any instances") == 2
        assert ia.delete_cluster(c, cl.id)
    with served(tmp_path / "s2", "capacity=1000") as c:
        b = InstantClusterBackend(spec, rehearse=True, run_dir=tmp_path / "r", nodes=2)
        b.session.timing = dataclasses.replace(b.session.timing, capacity_wait_s=0.5)
        with pytest.raises(PgolfError, match="no 2-node cluster after 0 min of waiting: There are no longer"):
            b._create_waiting(c, request("pgolf-r-c2", 2, "sleep 60"))
        assert ia.list_clusters(c) == []
