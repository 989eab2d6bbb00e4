"""Seeds on a RunPod Instant Cluster, with Ray as the engine across its nodes (`[runpod] cluster = true`).

One cluster per `pgolf run` / `pgolf resume`: as many nodes as the largest launch of the batch (a fixed
batch: all its seeds; an adaptive one: its largest wave, the waves running one after another on it), at
most `max_pods` and RunPod's self-serve 8 (`nodes_for`); a batch that would get one node runs on a pod
instead (the factory asks `cluster_nodes` first). Every node's start command (`start_command`) joins the
nodes into one Ray cluster: `ray start --head` on NODE_RANK 0, `ray start --address PRIMARY_ADDR:PORT`
on the others, each node advertising its GPUs and one `pgolf_node` resource, over the private interface
(NCCL_SOCKET_IFNAME=ens1, as RunPod's configuration page requires). The batch then runs through the
existing Ray backend (`RayNodeBackend`: torchrun under its guard on the node holding the attempt), one
node per seed (each attempt holds the node's `pgolf_node`): the same driver, ledger, retries, abort,
waves and report as a local Ray run. A node lost mid-run is a Ray node death: the seed's infrastructure
retry waits for a free node of the same cluster.

How the driver reaches the cluster (docs/ARCHITECTURE.md, "Instant Clusters", says why): it stays on the
user's machine, holding the ledger and the batch lock, and joins the cluster's Ray: in a rehearsal the
fake's nodes run on this host and the driver joins the head's GCS address (127.0.0.1:PORT); on RunPod
through Ray Client (`ray://IP:PORT`, the primary's symmetrical public TCP port), whose versions must
match exactly, so the start command installs this machine's Ray version on every node first.

Money, as for pods: the stock and price of the shape before anything is made, the account's spend limit
(nodes x price per node must fit under it), the estimate against the balance (twice over); the cluster
is written to RUN_DIR/cluster.json before it is used (id, name, address), deleted and polled until
RunPod no longer knows it on every way out (`stop`), its real cost read from /v2/billing/clusters and
shared across the attempts it ran (ledger `cost_usd`, `cost_source`, `pod_terminated` = the cluster
verified gone). A driver killed with -9 leaves the cluster running: `pgolf resume` finds it in
cluster.json and reattaches; the nodes' own backstop (`timeout` around `ray start`) stops them past the
batch's deadline; `pgolf cluster gc` deletes pgolf's clusters no live batch holds.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from results.errors import PgolfError
from results.files import atomic_write
from runner.backends.base import ClusterAction
from runner.backends.ray_node import RayNodeBackend
from runner.backends.runpod import api, instant_api as ia
from runner.backends.runpod.instances import (NAME_PREFIX, REHEARSAL_DIR, PodShape, Session, Timing, batch_prefix,
                                              offer, start_limit_s)
from runner.ledger import Ledger, now_iso

NODE_RESOURCE = "pgolf_node"      # one per node, one per attempt: one seed per node
RAY_PORT = 6379                   # the head's GCS port on the cluster's private network
CLIENT_PORT = "70001/tcp"         # symmetrical public TCP port of the primary: Ray Client (ray://)
RECORD = "cluster.json"           # RUN_DIR/cluster.json: the clusters of the batch, written before use
NCCL_IFACE = "ens1"
START_RETRY_S = 150               # a node's `ray start` that fails sooner is tried again
JOIN_TIMEOUT_S = {False: 900.0, True: 300.0}    # a rehearsal on a busy 2-core CI machine is slow
REHEARSAL_RAY_TMP = "/tmp/pgolf-ray-"   # + the head's port: the rehearsal's nodes' Ray folder (Unix sockets
                                        # must stay under 108 bytes: never inside the run directory)


def nodes_for(launches: list[int], max_pods: int) -> int:
    """Nodes of the batch's cluster: its largest launch (all seeds, or an adaptive batch's largest wave),
    capped by max_pods and RunPod's self-serve 8. 1 (or 0) means a pod, not a cluster."""
    return min(max(launches, default=0), max_pods, ia.MAX_NODES)


def cluster_name(run_dir: str | Path, k: int) -> str:
    """pgolf-<run>-c<k>: the k-th cluster of the batch (gc and `cluster down` know the batch by it)."""
    return f"{batch_prefix(run_dir)}c{k}"


def start_command(ray_version: str, backstop_s: float, rehearse: bool) -> str:
    """The start command of every node (bash): join one Ray cluster, rank 0 the head. On RunPod it first
    installs this machine's Ray version (Ray Client needs the very same) and pins NCCL to ens1. Ports are
    picked free on the node (the rehearsal's nodes share one host). The backstop ends the node (and its
    Ray) past the batch's deadline even when no driver ever comes back."""
    free = "python3 -c 'import socket;s=socket.socket();s.bind((\"\",0));print(s.getsockname()[1])'"
    lines = ["set -u", f"export NCCL_SOCKET_IFNAME={NCCL_IFACE} RAY_USAGE_STATS_ENABLED=0"]
    if not rehearse:
        lines.append(f"python3 -c 'import ray,sys; sys.exit(ray.__version__ != \"{ray_version}\")' 2>/dev/null || "
                     f"pip install -q 'ray[default,client]=={ray_version}'")
    common = (f"--num-gpus=${{NUM_TRAINERS}} --resources='{{\"{NODE_RESOURCE}\": 1}}' --node-ip-address=${{NODE_ADDR}} "
              f"--dashboard-agent-listen-port=$({free}) --metrics-export-port=$({free}) "
              f"--min-worker-port=0 --max-worker-port=0 --disable-usage-stats --block"
              + (f" --object-store-memory=100000000 --temp-dir={REHEARSAL_RAY_TMP}${{PGOLF_RAY_PORT}}" if rehearse else ""))
    head = "--head --port=${PGOLF_RAY_PORT} --include-dashboard=false" + (
        "" if rehearse else " --ray-client-server-port=${RUNPOD_TCP_PORT_70001}")   # the driver joins the GCS here
    wait = ("for i in $(seq 600); do python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], "
            "int(sys.argv[2])), 2)' ${PRIMARY_ADDR} ${PGOLF_RAY_PORT} 2>/dev/null && break; sleep 1; done")
    # `ray start` gives its raylet 30 s to register (hard-coded in Ray): on a loaded machine a node may miss
    # it. A start that fails within START_RETRY_S is tried again (up to 5 times) after killing what it left
    # (its own process group, made by setsid); one that ran longer (stopped, or the backstop) ends the node.
    lines += [f'if [ "${{NODE_RANK}}" = 0 ]; then ARGS="{head}"; else {wait}; '
              f'ARGS="--address=${{PRIMARY_ADDR}}:${{PGOLF_RAY_PORT}}"; fi',
              f"for try in 1 2 3 4 5; do t0=$SECONDS; setsid timeout $(({int(backstop_s)} - SECONDS)) "
              f"ray start $ARGS {common} & p=$!; wait $p; rc=$?; kill -9 -- -$p 2>/dev/null; "
              f'if [ $((SECONDS - t0)) -gt {START_RETRY_S} ] || [ $rc = 124 ]; then exit $rc; fi; '
              f'echo "pgolf-node: ray start failed (exit $rc), try $try of 5"; sleep 3; done',
              "exit 1"]
    return shlex.join(["bash", "-c", "; ".join(lines)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epoch(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def delete_verified(c: api.RunPodClient, cluster_id: str, timing: Timing) -> bool:
    """DELETE the cluster, then poll until RunPod no longer knows it (asking again now and then); True once
    gone. Never raises: it runs on every way out."""
    deadline, polls = time.time() + timing.gone_timeout_s, 0
    while time.time() < deadline:
        try:
            if polls % timing.terminate_again_every == 0:
                ia.delete_cluster(c, cluster_id)
            if ia.get_cluster(c, cluster_id) is None:
                return True
        except api.ApiError:
            pass
        polls += 1
        time.sleep(timing.gone_poll_s)
    return False


def read_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"clusters": []}
    except (OSError, ValueError) as e:
        raise PgolfError(f"{path}: unreadable ({e}); its clusters may still bill: `pgolf cluster gc`") from None


def write_record(run_dir: str | Path, record: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / RECORD, json.dumps(record, indent=1) + "\n")


class InstantClusterBackend(RayNodeBackend):
    """RunPod Instant Cluster + the Ray backend. Built by the factory for `[runpod] cluster = true` when the
    batch gets two nodes or more."""
    name = "runpod"

    def __init__(self, spec, rehearse: bool = False, faults: str = "", run_dir: str | Path | None = None,
                 nodes: int = 2):
        super().__init__(spec)
        s = self.settings = spec.runpod
        self.rehearse, self.run_dir, self.nodes = rehearse, Path(run_dir) if run_dir else None, nodes
        self.session = Session(rehearse, faults, self.run_dir / REHEARSAL_DIR if rehearse and self.run_dir else None)
        self.shape = PodShape(gpu_type=s.gpu_type, gpu_count=s.gpu_count, cloud="SECURE",
                              data_centers=tuple(s.data_centers))
        self.made: ia.Cluster | None = None
        self.entry: dict[str, Any] | None = None
        self._notes: list[str] = []

    def __getstate__(self):                    # pickled into Ray tasks: no fake server, no notes
        return dict(self.__dict__, session=None, _notes=[])

    # ---- driver side: before Ray
    def money(self, usd: float, per: str = "") -> str:
        return f"{usd:.4f}{per} fake" if self.rehearse else f"${usd:.2f}{per}"

    def estimate(self, client: api.RunPodClient, n_seeds: int, per_node: float) -> tuple[float, str]:
        """(estimate, line): the nodes x (set-up + the seeds' rounds on them) x price per node; PgolfError
        when the cluster breaks the spend limit or the balance is under twice the estimate."""
        lim, s = self.spec.limits, self.settings
        seed_h, setup_h = (lim.train_seconds + lim.eval_seconds) / 3600, s.setup_s / 3600
        rounds = math.ceil(n_seeds / self.nodes)
        hourly = per_node * self.nodes
        est = hourly * (setup_h + rounds * seed_h)
        m = self.money
        if hourly > s.spend_limit + 1e-9:
            raise PgolfError(f"RunPod: a {self.nodes}-node cluster costs {m(hourly, '/h')}, above the ${s.spend_limit:.0f}/h "
                             f"spend limit ([runpod] spend_limit); set [runpod] max_pods = "
                             f"{s.within_spend_limit(per_node)} or ask RunPod to raise the limit")
        line = (f"RunPod Instant Cluster: {self.nodes} nodes x {m(per_node, '/h')} = {m(hourly, '/h')}; {n_seeds} seed(s) "
                f"in {rounds} round(s): ({setup_h:.2f} h set-up + {rounds} x {seed_h:.2f} h) x {m(hourly, '/h')} = "
                f"{m(est)} estimated")
        balance = client.balance()
        if balance is None:
            return est, line + "; balance unknown (RunPod's GraphQL API is gone): the estimate only"
        line += f"; balance {m(balance)}"
        if balance < 2 * est:
            raise PgolfError(f"{line}: under twice the estimate ({m(2 * est)}); add funds or run fewer seeds")
        return est, line

    def fit_spend_limit(self, per_node: float) -> str | None:
        """Without [runpod] max_pods, the nodes the account's spend limit allows at this price (as max_pods
        defaults for pods): fewer nodes, each running more seeds one after another. A note when it cut
        them; PgolfError when not even two nodes fit (one node is a pod: cluster = false)."""
        s = self.settings
        fit = s.within_spend_limit(per_node)
        if s.max_pods is not None or fit >= self.nodes:
            return None
        if fit < ia.MIN_NODES:
            raise PgolfError(f"RunPod: two nodes cost {self.money(2 * per_node, '/h')}, above the ${s.spend_limit:.0f}/h "
                             f"spend limit: run on pods ([runpod] cluster = false) or ask RunPod to raise the limit")
        self.nodes = fit
        return (f"nodes {fit}: what a ${s.spend_limit:.0f}/h spend limit allows at {self.money(per_node, '/h')} per node "
                f"([runpod] max_pods or spend_limit to change it)")

    def provision(self, n_seeds: int, where: str, address: str | None) -> str:
        """Before Ray: stock, price, spend limit and balance, then this batch's live cluster (resume) or a
        new one, written to cluster.json before use; returns the Ray address the driver joins."""
        if address:
            raise PgolfError(f"{where}: [runpod] cluster = true makes its own Ray cluster; leave --address out")
        if self.run_dir is None:
            raise PgolfError("an Instant Cluster batch needs its run directory")
        self.session.open()
        with self.session.client() as c:
            try:
                got = offer(c, self.shape, lambda usd: self.money(usd))
                per_node = self.settings.price_per_hour or got.price_per_hour
                capped = self.fit_spend_limit(per_node)
                _, line = self.estimate(c, n_seeds, per_node)
                self._notes = [got.line] + ([capped] if capped else []) + [line]
                if self.rehearse:
                    self._notes.insert(0, f"rehearsal: a fake RunPod on 127.0.0.1 with its state in "
                                          f"{self.session.state_dir}; its nodes are local Ray nodes, no money is spent")
                return self._reattach(c) or self._create(c, per_node)
            except api.ApiError as e:
                raise PgolfError(str(e)) from None

    def _reattach(self, c: api.RunPodClient) -> str | None:
        """The batch's cluster a killed driver left (cluster.json), when RunPod still runs all its nodes."""
        record = read_record(self.run_dir)
        for entry in reversed(record["clusters"]):
            if entry.get("deleted"):
                continue
            cl = ia.get_cluster(c, entry["id"])
            if cl is not None and cl.running() and cl.compute.pod_count >= self.nodes:
                self.made, self.entry, self.nodes = cl, entry, cl.compute.pod_count
                self._notes.append(f"pgolf: reattached to cluster {cl.id} ({cl.name}, {self.nodes} nodes) left by "
                                   f"the earlier driver")
                return entry["address"]
            # gone, or no longer whole (a node lost): ours and of no use, so it stops billing now
            gone = cl is None or delete_verified(c, cl.id, self.session.timing)
            entry.update(deleted=gone, gone=gone)
            write_record(self.run_dir, record)
            if cl is not None:
                self._notes.append(f"pgolf: deleted cluster {cl.id} left by the earlier driver: "
                                   f"{cl.pods.by_status} of {cl.compute.pod_count} nodes")
        return None

    def _create(self, c: api.RunPodClient, per_node: float) -> str:
        record = read_record(self.run_dir)
        s, lim = self.settings, self.spec.limits
        import ray
        port = _free_port() if self.rehearse else RAY_PORT
        backstop = s.setup_s + lim.timeout() * math.ceil(len(self.spec.seeds) / self.nodes) * (1 + lim.retries) \
            + s.backstop_grace_s
        name = cluster_name(self.run_dir, len(record["clusters"]) + 1)
        mounts = (api.Mounts(network=[api.NetworkMount(volume_id=s.network_volume, path=s.volume_path)])
                  if s.network_volume else None)
        req = ia.CreateCluster(
            name=name, type="TRAINING", image=s.image, args=start_command(ray.__version__, backstop, self.rehearse),
            env={"PGOLF_RAY_PORT": str(port)}, ports=[] if self.rehearse else [CLIENT_PORT],
            disk=s.container_disk_gb, data_center_ids=s.data_centers or None, mounts=mounts,
            compute=ia.ClusterCompute(gpu_type_id=s.gpu_type, gpu_count_per_pod=s.gpu_count, pod_count=self.nodes))
        cl = self._create_waiting(c, req)
        self.made = cl
        self.entry = {"id": cl.id, "name": cl.name, "nodes": self.nodes, "created_at": cl.created_at,
                      "usd_per_hour": round(per_node * self.nodes, 4), "address": None, "deleted": False}
        record["clusters"].append(self.entry)
        write_record(self.run_dir, record)                      # durable before the cluster is used
        print(f"pgolf: cluster {cl.id} ({name}) created: {self.nodes} nodes of {s.gpu_count} x {s.gpu_type}, "
              f"{self.money(per_node * self.nodes, '/h')}", flush=True)
        self.entry["address"] = self._address(c, cl, port)
        write_record(self.run_dir, record)
        return self.entry["address"]

    def _create_waiting(self, c: api.RunPodClient, req: ia.CreateCluster) -> ia.Cluster:
        """The cluster; while RunPod has no capacity for it (or the spend limit is reached: other machines may
        end), back off doubling for up to the pods' capacity wait, saying so; then one clear line."""
        t = self.session.timing

        def note(state) -> None:
            print(f"pgolf: no cluster yet ({state.outcome.exception().detail}); trying again in "
                  f"{state.next_action.sleep:.0f} s", flush=True)
        try:
            for try_ in Retrying(retry=retry_if_exception_type((api.CapacityError, api.SpendLimitError)), reraise=True,
                                 stop=stop_after_delay(t.capacity_wait_s), before_sleep=note,
                                 wait=wait_exponential(multiplier=t.capacity_backoff_s, max=t.capacity_backoff_max_s)):
                with try_:
                    return ia.create_cluster(c, req)
        except (api.CapacityError, api.SpendLimitError) as e:
            raise PgolfError(f"no {self.nodes}-node cluster after {t.capacity_wait_s / 60:.0f} min of waiting: {e.detail}; "
                             f"try fewer nodes ([runpod] max_pods), other data centers, or pods") from None
        raise AssertionError("unreachable")

    def _address(self, c: api.RunPodClient, cl: ia.Cluster, port: int) -> str:
        """Wait until every node runs, then the address the driver joins: the head's GCS on this host (a
        rehearsal) or Ray Client on the primary's public port."""
        # start_timeout_s on RunPod; a rehearsal's clock runs faster, but its nodes' `ray start` takes real
        # seconds: at least 20 s there
        limit = max(start_limit_s(self.settings.start_timeout_s, self.session.timing), 20.0)
        up_by = time.time() + limit
        while True:
            now = ia.get_cluster(c, cl.id)
            if now is None:
                raise PgolfError(f"cluster {cl.id} vanished while it started")
            if now.running():
                break
            if time.time() > up_by:
                raise PgolfError(f"cluster {cl.id} not running after {limit:.0f} s ({now.pods.by_status}); it is "
                                 "deleted now: try again, or other data centers ([runpod] data_centers)")
            time.sleep(self.session.timing.poll_s)
        if self.rehearse:
            host, gcs = "127.0.0.1", port
        else:
            primary = next((p for p in ia.cluster_pods(c, cl.id) if p.id == (now.primary.pod_id if now.primary else "")), None)
            end = primary.tcp_endpoint() if primary else None
            if end is None:
                raise PgolfError(f"cluster {cl.id}: its primary has no public TCP port for Ray Client")
            host, gcs = end
        self._wait_port(host, gcs, up_by + JOIN_TIMEOUT_S[self.rehearse])
        return f"{host}:{gcs}" if self.rehearse else f"ray://{host}:{gcs}"

    @staticmethod
    def _wait_port(host: str, port: int, until: float) -> None:
        while True:
            try:
                socket.create_connection((host, port), 2).close()
                return
            except OSError:
                if time.time() > until:
                    raise PgolfError(f"the cluster's Ray head at {host}:{port} never answered") from None
                time.sleep(0.5)

    # ---- driver side: on Ray
    def ray_options(self) -> dict[str, Any]:
        """One node per attempt (its `pgolf_node`), with the spec's GPUs on it."""
        gpus = min(self.spec.gpus_per_seed, self.settings.gpu_count)
        return {"num_gpus": gpus, "num_cpus": 1 if gpus else self.spec.nproc_per_node, "resources": {NODE_RESOURCE: 1}}

    def runtime_env(self) -> dict[str, Any] | None:
        """What RunPod's nodes need to run pgolf's Ray tasks: runner/ and results/ (shipped by Ray) and
        pgolf's own dependencies but Ray and torch (the image's). None in a rehearsal: its nodes share this
        machine's environment."""
        if self.rehearse:
            return None
        import importlib.metadata as md
        import results
        import runner
        deps = [r for r in (md.requires("pgolf") or []) if "extra ==" not in r
                and not r.split(">")[0].split("=")[0].strip() in ("ray", "torch")]
        return {"py_modules": [runner, results], "pip": deps}

    def preflight(self, n_seeds: int, where: str) -> list[str]:
        """Every node joined (Ray sees `nodes` x pgolf_node), then the Ray backend's GPU-stack check."""
        import ray
        until, polls = time.time() + JOIN_TIMEOUT_S[self.rehearse], 0
        while ray.cluster_resources().get(NODE_RESOURCE, 0) < self.nodes:
            polls += 1
            if polls % 10 == 0 and self.made is not None:      # a node whose Ray gave up: say so now
                with self.session.client() as c:
                    now = ia.get_cluster(c, self.made.id)
                if now is None or not now.running():
                    raise PgolfError(f"{where}: cluster {self.made.id} lost a node while its Ray started "
                                     f"({now.pods.by_status if now else 'cluster gone'}); run again")
            if time.time() > until:
                raise PgolfError(f"{where}: only {ray.cluster_resources().get(NODE_RESOURCE, 0):.0f} of the cluster's "
                                 f"{self.nodes} nodes joined its Ray within {JOIN_TIMEOUT_S[self.rehearse]:.0f} s")
            time.sleep(0.5)
        notes, self._notes = list(self._notes), []
        notes.append(f"pgolf: Ray on cluster {self.made.id if self.made else '?'}: {self.nodes} nodes joined, "
                     f"one seed per node")
        return notes + super().preflight(n_seeds, where)

    def start(self) -> None:
        pass

    def cluster(self, action: ClusterAction, runs_dir: Path, yes: bool) -> int:
        """`pgolf cluster up|status|down SPEC`: up makes nothing (`pgolf run` makes each batch's cluster) but
        says the stock, price and estimate; status lists the spec's clusters; down deletes them, verified
        gone (the CLI refuses while a driver holds one of the spec's batches)."""
        from runner.backends.runpod.cluster import _batch_name, _run_dirs, confirm, sessions
        spec = self.spec
        prefixes = tuple({batch_prefix(d) for d in _run_dirs(runs_dir, "batch.json") if _batch_name(d) == spec.name}
                         | {f"{NAME_PREFIX}{spec.name}-"})
        if action == "up":
            if self.rehearse:
                raise PgolfError("pgolf cluster up --rehearse: a rehearsal's fake RunPod lives in its run directory; "
                                 "`pgolf run SPEC --rehearse` makes one")
            with self.session.open().client() as c:
                try:
                    got = offer(c, self.shape, lambda usd: self.money(usd))
                    _, line = self.estimate(c, len(spec.seeds), self.settings.price_per_hour or got.price_per_hour)
                except api.ApiError as e:
                    raise PgolfError(str(e)) from None
            print(got.line, line, sep="\n")
            print("pgolf cluster up: `pgolf run` makes the batch's Instant Cluster and deletes it at the end; "
                  "nothing to start")
            return 0
        rc = 0
        for label, session, _dirs in sessions(runs_dir, self.rehearse, spec.name):
            with session.client() as c:
                mine = [cl for cl in ia.list_clusters(c) if cl.name.startswith(prefixes)]
                for cl in mine:
                    print(f"{label}: cluster {cl.id} ({cl.name}): {cl.compute.pod_count} nodes of "
                          f"{cl.compute.gpu_count_per_pod} x {cl.compute.gpu_type_id}, {cl.pods.by_status}, "
                          f"since {cl.created_at}")
                if not mine:
                    print(f"pgolf cluster {action}: {label}: no clusters of {spec.name}")
                if action != "down" or not mine:
                    continue
                if not confirm(f"Delete these {len(mine)} cluster(s), running seeds included?", yes):
                    rc = 1
                    continue
                for cl in mine:
                    gone = delete_verified(c, cl.id, session.timing)
                    mark_gone(runs_dir, cl.id, gone)
                    print(f"pgolf cluster down: {label}: cluster {cl.id} " + ("deleted, verified gone" if gone else
                                                                           "STILL THERE"))
                    rc = max(rc, 0 if gone else 1)
        return rc

    def stop(self) -> None:
        """Delete the cluster and poll until RunPod no longer knows it; its billed cost (else the estimate)
        into cluster.json and, shared, into the ledger's attempts that ran on it. Never raises."""
        if self.made is None or self.session is None:
            if self.session is not None:
                self.session.close()
            return
        gone = False
        try:
            with self.session.client() as c:
                gone = delete_verified(c, self.made.id, self.session.timing)
                lifetime = time.time() - (_epoch(self.made.created_at) or time.time())
                estimate = self.entry["usd_per_hour"] * lifetime / 3600
                billed = None
                for _ in range(self.session.timing.billing_tries if gone else 0):
                    try:
                        billed = ia.cluster_cost(c, self.made.id, self.made.created_at)
                    except api.ApiError:
                        billed = None
                    if billed is not None:
                        break
                    time.sleep(self.session.timing.poll_s)
            cost, source = (billed, "billed") if billed is not None else (estimate, "estimate")
            record = read_record(self.run_dir)
            for e in record["clusters"]:
                if e["id"] == self.made.id:
                    e.update(deleted=gone, gone=gone, ended=now_iso(), cost_usd=round(cost, 6), cost_source=source,
                             cost_estimate_usd=round(estimate, 6))
            write_record(self.run_dir, record)
            self._charge(cost, source, estimate, gone, lifetime)
            print(f"pgolf: cluster {self.made.id} " + ("deleted (verified gone)" if gone else
                  "NOT verified deleted: run `pgolf cluster gc`") +
                  f", cost {self.money(cost)} ({source}; estimate {self.money(estimate)})", flush=True)
        except Exception as e:  # noqa: BLE001 - stop runs on every way out; gc finds what is left by name
            print(f"pgolf: cluster {self.made.id}: clean-up failed ({e}); run `pgolf cluster gc`", flush=True)
        finally:
            self.session.close()
            if self.rehearse and gone and self.entry and self.entry.get("address"):   # the fake nodes' Ray folder
                shutil.rmtree(REHEARSAL_RAY_TMP + self.entry["address"].rsplit(":", 1)[1], ignore_errors=True)

    def _charge(self, cost: float, source: str, estimate: float, gone: bool, lifetime: float) -> None:
        """The cluster's cost shared across the attempts that ran on it (those started since it was made),
        as RunPod's shared pods are (`split_cost`: own run time plus an equal part of the rest)."""
        from runner.backends.runpod.backend import split_cost
        since = (_epoch(self.made.created_at) or 0.0) - 1.0
        try:
            led = Ledger.load(self.run_dir)
        except PgolfError:
            return                        # the batch never started (a preflight refused it): nothing ran
        mine = [a for _s, a in led.all_attempts() if (_epoch(a.get("started")) or 0.0) >= since
                and a.get("cost_usd") is None]
        if not mine:
            return
        runs = [max(0.0, (_epoch(a.get("ended")) or time.time()) - (_epoch(a["started"]) or time.time())) for a in mine]
        for a, share in zip(mine, split_cost(runs, lifetime)):
            a.update(cost_usd=round(cost * share, 6), cost_source=source, cost_estimate_usd=round(estimate * share, 6),
                     pod_terminated=gone)
        led.save()


def make_cluster_backend(spec, rehearse: bool = False, faults: str = "",
                         run_dir: str | Path | None = None) -> InstantClusterBackend | None:
    """The cluster backend for `[runpod] cluster = true`, or None when the batch would get one node (a
    wave of one, `max_pods = 1`): that runs on a pod. The seeds counted are the ones left to run (a
    resumed batch's unfinished ones); the spend limit may cap the nodes further once the price is known."""
    from runner.plan import launches
    n = spec.max_seeds()
    if run_dir is not None and (Path(run_dir) / "ledger.json").exists():
        try:
            n = len(Ledger.load(run_dir).unfinished()) or n
        except PgolfError:
            pass
    cap = spec.runpod.max_pods or ia.MAX_NODES
    nodes = nodes_for(launches(spec, n), cap)
    if nodes < ia.MIN_NODES:
        return None
    return InstantClusterBackend(spec, rehearse=rehearse, faults=faults, run_dir=run_dir, nodes=nodes)


def gc_clusters(runs_dir: Path, yes: bool, rehearse: bool = False, live=()) -> int:
    """`pgolf cluster gc`, clusters: pgolf's clusters (by name) are deleted and verified gone, and their
    batch's cluster.json says so, unless a live process holds their batch or its ledger has attempts a dead
    driver left open (`pgolf resume` reattaches to that cluster; resume it, then gc). With --rehearse, on
    each rehearsal's fake RunPod."""
    from runner.backends.runpod.cluster import _run_dirs, confirm, sessions
    keep = {batch_prefix(d): "its batch is in use (live driver)" for d in live}
    for d in _run_dirs(Path(runs_dir), "ledger.json"):           # a dead driver's batch: `pgolf resume` reattaches
        try:
            if Ledger.load(d).has_open_attempt():
                keep.setdefault(batch_prefix(d), "its batch has open attempts: `pgolf resume` reattaches to it")
        except PgolfError:
            continue
    rc = 0
    for label, session, _dirs in sessions(Path(runs_dir), rehearse):
        with session.client() as c:
            try:
                ours = [cl for cl in ia.list_clusters(c) if cl.name.startswith(NAME_PREFIX)]
            except api.ApiError as e:
                raise PgolfError(str(e)) from None
            why = {cl.id: next((w for p, w in keep.items() if cl.name.startswith(p)), None) for cl in ours}
            orphans = [cl for cl in ours if why[cl.id] is None]
            for cl in ours:
                if why[cl.id]:
                    print(f"pgolf cluster gc: {label}: cluster {cl.id} ({cl.name}) kept: {why[cl.id]}")
            if not orphans:
                print(f"pgolf cluster gc: {label}: no orphaned pgolf clusters")
                continue
            for cl in orphans:
                print(f"pgolf cluster gc: {label}: orphaned cluster {cl.id} ({cl.name}), {cl.compute.pod_count} nodes "
                      f"of {cl.compute.gpu_count_per_pod} x {cl.compute.gpu_type_id}, since {cl.created_at}")
            if not confirm(f"Delete these {len(orphans)} cluster(s)?", yes):
                rc = 1
                continue
            for cl in orphans:
                gone = delete_verified(c, cl.id, session.timing)
                print(f"pgolf cluster gc: {label}: cluster {cl.id} " + ("deleted, verified gone" if gone else "STILL THERE"))
                rc = max(rc, 0 if gone else 1)
                mark_gone(Path(runs_dir), cl.id, gone)
    return rc


def mark_gone(runs_dir: Path, cluster_id: str, gone: bool) -> None:
    """Say in the cluster.json that records the cluster (under runs_dir) whether it is verified gone."""
    from runner.backends.runpod.cluster import _run_dirs
    for d in _run_dirs(runs_dir, RECORD):
        record = read_record(d)
        hit = [e for e in record["clusters"] if e["id"] == cluster_id]
        for e in hit:
            e.update(deleted=gone, gone=gone)
        if hit:
            write_record(d, record)
