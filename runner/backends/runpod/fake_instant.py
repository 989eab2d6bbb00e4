"""The fake RunPod's Instant Clusters: /v2/clusters and /v2/billing/clusters, mixed into `FakeRunPod`.

A cluster is `compute.podCount` member pods made by the fake's own pod machinery (fake_container.py:
local processes in sessions of their own, killed whole on delete), each with RunPod's cluster variables
(instant-clusters/configuration.mdx): NODE_ADDR, PRIMARY_ADDR/MASTER_ADDR, PRIMARY_PORT/MASTER_PORT,
NODE_RANK (0 is the primary), NUM_NODES, NUM_TRAINERS (GPUs per node), WORLD_SIZE, HOST_NODE_ADDR. Every
node of the fake lives on this host, so every address is 127.0.0.1 and the nodes tell themselves apart by
port (the start command picks its ports; the primary's comes in the request's env). Member pods are left
out of `GET /v2/pods` (unless includeClusterPods=true) and cannot be deleted through the pod endpoints, as
the schema says; DELETE /v2/clusters/{id} kills every node and the cluster leaves the API once they are
gone. Billing is per cluster (nodes x price per node, plus disk), served by /v2/billing/clusters.

The schema checks of `FakeRunPod.dispatch` apply: every request and answer here is validated against
openapi-v2.json like the pod routes.
"""
from __future__ import annotations

import os
import secrets
import threading
import time

from runner.backends.runpod import fake_container as container

PRIMARY_PORT = 29500          # RunPod's PRIMARY_PORT for torch.distributed rendezvous ("all ports are available")
CIDR = "127.0.0.0/8"


# fake.py imports this module for its class; the fake's helpers (Reply, problem, prices) are imported from it
# inside the methods, once both modules are loaded.
class InstantRoutes:
    """The cluster operations of the fake (a mixin of FakeRunPod: its state, lock, faults and pod helpers)."""

    # ---- views
    def _cluster_members(self, st: dict, cluster_id: str) -> list[dict]:
        pods = [p for p in st["pods"].values() if (p.get("cluster") or {}).get("id") == cluster_id]
        return sorted(pods, key=lambda p: p["cluster"]["rank"])

    def _cluster_view(self, st: dict, c: dict) -> dict:
        members = [p for p in self._cluster_members(st, c["id"]) if not p.get("terminated")]
        by: dict[str, int] = {}
        for p in members:
            s = self._status(p)
            by[s] = by.get(s, 0) + 1
        out = {"id": c["id"], "name": c["name"], "type": c["type"], "compute": c["compute"],
               "pods": {"total": len(members), "byStatus": by}, "createdAt": self._iso(c["created"]),
               "dataCenterId": c["dataCenterId"], "network": {"cidr": CIDR}}
        if members and members[0]["cluster"]["rank"] == 0:
            out["primary"] = {"podId": members[0]["id"], "status": self._status(members[0])}
        return out

    def _member_view(self, pod: dict) -> dict:
        return dict(self._view(pod), cluster=pod["cluster"])

    @staticmethod
    def _iso(t: float) -> str:
        return container.timestamp(t)

    # ---- operations
    def _op_listClusters(self, req, who: str):
        from runner.backends.runpod.fake import Reply
        st = self.state.read()
        return Reply(200, {"clusters": [self._cluster_view(st, c) for c in st.get("clusters", {}).values()
                                        if not c.get("deleted")]})

    def _op_getCluster(self, req, who: str, id: str):
        from runner.backends.runpod.fake import Reply, problem
        st = self.state.read()
        c = st.get("clusters", {}).get(id)
        if c is None or c.get("deleted"):
            return problem(404, f"cluster {id} not found")
        return Reply(200, self._cluster_view(st, c))

    def _op_listClusterPods(self, req, who: str, id: str):
        from runner.backends.runpod.fake import Reply, problem
        st = self.state.read()
        c = st.get("clusters", {}).get(id)
        if c is None or c.get("deleted"):
            return problem(404, f"cluster {id} not found")
        return Reply(200, {"pods": [self._member_view(p) for p in self._cluster_members(st, id)
                                    if not p.get("terminated")]})

    def _op_createCluster(self, req, who: str):
        from runner.backends.runpod.fake import CAPACITY_DETAIL, DATA_CENTERS, GPUS, LIVE, Reply, _free_port, _hash, problem
        body = req.json()
        compute = body["compute"]
        gpu = next((g for g in GPUS if g[0] == compute["gpuTypeId"]), None)
        if gpu is None:
            return problem(400, f"unknown GPU type {compute['gpuTypeId']!r}")
        if compute["gpuCountPerPod"] > gpu[5]:
            return problem(400, f"{gpu[1]} nodes have at most {gpu[5]} GPUs")
        if compute["podCount"] > 8:
            return problem(400, "Instant Clusters of more than 8 nodes are arranged with RunPod's sales team")
        known = {d[0] for d in DATA_CENTERS}
        for dc in body.get("dataCenterIds") or []:
            if dc not in known:
                return problem(400, f"unknown data center {dc!r}")
        with self.lock:
            if self._take("capacity"):
                self.events.append("capacity cluster")
                return problem(400, CAPACITY_DETAIL)
        n = compute["podCount"]
        per_node = round(gpu[3] * compute["gpuCountPerPod"], 4)        # clusters run in secure cloud
        with self.state.edit() as st:
            clusters = st.setdefault("clusters", {})
            spend = sum(p["costPerHr"] for p in st["pods"].values() if self._status(p) in LIVE)
            if spend + per_node * n > self.spend_limit + 1e-9:
                return problem(400, f"Spend limit reached: this cluster (${per_node * n:.2f}/hr) would bring your "
                                    f"account to ${spend + per_node * n:.2f}/hr, above your spend limit of "
                                    f"${self.spend_limit:.2f}/hr. Contact support to raise it.")
            if self.balance < per_node * n:
                return problem(402, f"Insufficient balance: deploying needs at least one hour of credit "
                                    f"(${per_node * n:.2f}); your balance is ${self.balance:.2f}.")
            now = time.time()
            cid = f"fakecl{len(clusters) + 1:03d}{secrets.token_hex(4)}"
            dc = (body.get("dataCenterIds") or [DATA_CENTERS[0][0]])[0]
            clusters[cid] = {"id": cid, "name": body["name"], "type": body["type"], "compute": compute,
                             "dataCenterId": dc, "created": now, "deleted": False, "costPerHr": per_node * n,
                             "disk": int(body.get("disk") or 20) * n, "end": None}
            ports = list(body.get("ports") or [])
            members = []
            for rank in range(n):
                st["n_pods"] += 1
                pod_id = f"fake{st['n_pods']:03d}{secrets.token_hex(4)}"
                key = f"rpa_pod_{secrets.token_hex(16)}"
                pod = {"id": pod_id, "name": f"{body['name']}-pod-{rank}", "image": body.get("image") or "",
                       "args": body.get("args") or "", "disk": int(body.get("disk") or 20), "ports": ports,
                       "tcp": {s.split("/")[0]: _free_port() for s in ports if s.endswith("/tcp")},
                       "cloud": "SECURE", "dataCenterId": dc, "mounts": body.get("mounts") or {},
                       "costPerHr": per_node, "created": now, "started": None, "pid": None, "proc_start": None,
                       "mark": f"{pod_id}:{secrets.token_hex(8)}", "key_hash": _hash(key), "stuck": False,
                       "preempt": False, "gpu": {"id": gpu[0], "count": compute["gpuCountPerPod"]},
                       "cluster": {"id": cid, "rank": rank, "ip": "127.0.0.1",
                                   **({"role": "RAY_HEAD" if rank == 0 else "RAY_WORKER"} if body["type"] == "RAY" else {})},
                       "env_extra": {"NODE_ADDR": "127.0.0.1", "PRIMARY_ADDR": "127.0.0.1", "MASTER_ADDR": "127.0.0.1",
                                     "PRIMARY_PORT": str(PRIMARY_PORT), "MASTER_PORT": str(PRIMARY_PORT),
                                     "HOST_NODE_ADDR": f"127.0.0.1:{PRIMARY_PORT}", "NODE_RANK": str(rank),
                                     "NUM_NODES": str(n), "NUM_TRAINERS": str(compute["gpuCountPerPod"]),
                                     "WORLD_SIZE": str(n * compute["gpuCountPerPod"])}}
                st["pods"][pod_id] = pod
                members.append((pod_id, key))
            view = self._cluster_view(st, clusters[cid])
        for pod_id, key in members:
            self.envs[pod_id] = dict(body.get("env") or {})
            self.keys[pod_id] = key
            (self.pod_dir(pod_id) / "rootfs" / "root").mkdir(parents=True, exist_ok=True)
            os.chmod(self.pod_dir(pod_id), 0o700)
            from runner.backends.runpod.fake import PROVISION_S
            timer = threading.Timer(PROVISION_S, self._boot, args=(pod_id,))
            timer.daemon = True
            timer.start()
        self.events.append(f"create cluster {cid} ({n} nodes)")
        return Reply(201, view)

    def _op_deleteCluster(self, req, who: str, id: str):
        from runner.backends.runpod.fake import Reply, problem
        with self.state.edit() as st:
            c = st.get("clusters", {}).get(id)
            if c is None or c.get("deleted"):
                return problem(404, f"cluster {id} not found")
            c["deleted"] = True
            c["end"] = c["end"] or time.time()
            members = [p["id"] for p in self._cluster_members(st, id)]
        self.events.append(f"delete cluster {id}")
        for pod_id in members:
            self._terminate(pod_id, wait=True)      # every node's processes die before the answer
        return Reply(204)

    def terminate_clusters(self) -> None:
        """Delete every cluster of this state directory (tests' last resort)."""
        for cid, c in list(self.state.read().get("clusters", {}).items()):
            if not c.get("deleted"):
                self._op_deleteCluster(None, "user", cid)

    def _op_listClusterBilling(self, req, who: str):
        from runner.backends.runpod.fake import DISK_USD_PER_GB_H, Reply, _bucket_next, _bucket_start, parse_time, problem
        size = req.param("bucketSize", "day")
        last_n, start_p, end_p = req.param("lastN"), req.param("startTime"), req.param("endTime")
        if last_n and (start_p or end_p):
            return problem(400, "lastN is mutually exclusive with startTime/endTime")
        now = time.time()
        if last_n:
            end, start = _bucket_next(_bucket_start(now, size), size), _bucket_start(now, size)
            for _ in range(int(last_n) - 1):
                start = _bucket_start(start - 1, size)
        else:
            start = _bucket_start(parse_time(start_p) if start_p else now - 30 * 86400, size)
            raw = parse_time(end_p) if end_p else now
            end = raw if _bucket_start(raw, size) == raw else _bucket_next(_bucket_start(raw, size), size)
        want = req.param("clusterId")
        records = []
        for cid, c in sorted(self.state.read().get("clusters", {}).items()):
            if want and cid != want:
                continue
            until = c["end"] or now
            t = start
            while t < end:
                nxt = _bucket_next(t, size)
                hours = max(0.0, min(nxt, until) - max(t, c["created"])) / 3600
                if hours > 0:
                    gpu, disk = c["costPerHr"] * hours, c["disk"] * DISK_USD_PER_GB_H * hours
                    records.append({"startTime": self._iso(t), "endTime": self._iso(nxt), "clusterId": cid,
                                    "gpuAmount": round(gpu, 6), "diskAmount": round(disk, 6),
                                    "networkingAmount": 0.0, "totalAmount": round(gpu + disk, 6)})
                t = nxt
        keys = ("totalAmount", "gpuAmount", "diskAmount", "networkingAmount")
        meta = {"query": {"startTime": self._iso(start), "endTime": self._iso(end), "bucketSize": size, "clusterId": want},
                "recordCount": len(records), "uniqueClusterCount": len({r["clusterId"] for r in records}),
                "totals": {k: round(sum(r[k] for r in records), 6) for k in keys}}
        return Reply(200, {"records": records, "metadata": meta})
