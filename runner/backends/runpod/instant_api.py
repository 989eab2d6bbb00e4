"""RunPod's Instant Clusters in REST API v2: create, get, list, member pods, delete, billing.

One concern: the /v2/clusters calls. They go through `RunPodClient._call`, the one place that does pgolf's
HTTP (429s waited out, 5xx retried, errors sorted, the key scrubbed), and are typed like the pod calls:
pydantic checks what goes out (`CreateCluster`, against `CreateClusterRequest`: `name`, `type`, `compute
{gpuTypeId, gpuCountPerPod, podCount}` plus the container config every member pod shares) and what comes
back (`Cluster`; fields RunPod adds later are ignored). The fake RunPod validates both sides against
openapi-v2.json as it does for pods.

A create is never blindly retried (an answer lost on the way may belong to a cluster that exists): before
a second try, a cluster of the same name is adopted, as `create_pod` does for pods.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner.backends.runpod.api import ApiError, Mounts, NotFound, Pod, RunPodClient, TransientError, _In, _Out

ClusterType = Literal["APPLICATION", "TRAINING", "SLURM", "RAY"]
MAX_NODES = 8          # "2-8 nodes" self-serve (instant-clusters.mdx); more only through RunPod's sales team
MIN_NODES = 2          # podCount's schema minimum: one node is a pod


class ClusterCompute(_Out):
    gpu_type_id: str = Field(min_length=1)
    gpu_count_per_pod: int = Field(ge=1)
    pod_count: int = Field(ge=MIN_NODES, le=250)


class CreateCluster(_Out):
    """POST /v2/clusters: `pod_count` identical nodes in one data center, every one running `args`."""
    name: str = Field(min_length=1)
    type: ClusterType = "TRAINING"
    compute: ClusterCompute
    image: str
    args: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[str] = Field(default_factory=list)
    disk: int | None = Field(None, ge=1)
    data_center_ids: list[str] | None = None
    mounts: Mounts | None = None

    def __repr__(self) -> str:                 # env may carry secrets: never in a repr or a traceback
        return f"CreateCluster(name={self.name!r}, type={self.type!r}, compute={self.compute!r})"

    __str__ = __repr__


class _Compute(_In):
    gpu_type_id: str
    gpu_count_per_pod: int
    pod_count: int


class _PodsSummary(_In):
    total: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)


class _Primary(_In):
    pod_id: str
    status: str


class Cluster(_In):
    """A cluster as RunPod reports it: identity, shape, where, and its member pods counted by status."""
    id: str
    name: str
    type: str
    compute: _Compute
    pods: _PodsSummary
    created_at: str
    data_center_id: str | None = None
    primary: _Primary | None = None

    def running(self) -> bool:
        """Every node RUNNING (the cluster is whole)."""
        return self.pods.by_status.get("RUNNING", 0) == self.compute.pod_count == self.pods.total


class ClusterBillingRecord(_In):
    cluster_id: str
    start_time: str
    end_time: str
    total_amount: float
    gpu_amount: float = 0.0
    disk_amount: float = 0.0
    networking_amount: float = 0.0


def create_cluster(client: RunPodClient, req: CreateCluster) -> Cluster:
    """POST /v2/clusters; before any second try, a cluster of this name is adopted instead."""
    last: TransientError | None = None
    for n in range(client.pacing.transient_tries):
        if last is not None:
            found = find_clusters(client, req.name)
            if found:
                return found[0]
            client._sleep(client._backoff(n), f"cluster create lost ({last.detail}); trying again")
        try:
            body = client._call("POST", "/v2/clusters", f"create cluster {req.name}", json=req.payload(),
                                transient_retry=False).json()
            return Cluster.model_validate(body)
        except TransientError as e:
            last = e
    assert last is not None
    raise last


def get_cluster(client: RunPodClient, cluster_id: str) -> Cluster | None:
    """The cluster, or None once RunPod no longer knows it (deleted)."""
    try:
        return Cluster.model_validate(client._call("GET", f"/v2/clusters/{cluster_id}", f"get cluster {cluster_id}").json())
    except NotFound:
        return None


def list_clusters(client: RunPodClient) -> list[Cluster]:
    return [Cluster.model_validate(c) for c in client._call("GET", "/v2/clusters", "list clusters").json()["clusters"]]


def find_clusters(client: RunPodClient, name: str) -> list[Cluster]:
    return [c for c in list_clusters(client) if c.name == name]


def cluster_pods(client: RunPodClient, cluster_id: str) -> list[Pod]:
    """The member pods (full Pod objects, with their `cluster` rank); [] once the cluster is gone."""
    try:
        body = client._call("GET", f"/v2/clusters/{cluster_id}/pods", f"pods of cluster {cluster_id}").json()
    except NotFound:
        return []
    return [Pod.model_validate(p) for p in body["pods"]]


def delete_cluster(client: RunPodClient, cluster_id: str) -> bool:
    """DELETE /v2/clusters/{id} (every member pod goes with it): True when deleted now, False when gone."""
    try:
        client._call("DELETE", f"/v2/clusters/{cluster_id}", f"delete cluster {cluster_id}")
        return True
    except NotFound:
        return False


def cluster_billing(client: RunPodClient, cluster_id: str, since: str, bucket: str = "hour") -> list[ClusterBillingRecord]:
    params = {"clusterId": cluster_id, "startTime": since, "bucketSize": bucket}
    body = client._call("GET", "/v2/billing/clusters", f"billing of cluster {cluster_id}", params=params).json()
    return [ClusterBillingRecord.model_validate(r) for r in body["records"] if r.get("clusterId") == cluster_id]


def cluster_cost(client: RunPodClient, cluster_id: str, since: str) -> float | None:
    """What RunPod billed for the cluster so far (GPU, disk and inter-node networking), in dollars; None
    while it has no record of it yet."""
    records = cluster_billing(client, cluster_id, since)
    return round(sum(r.total_amount for r in records), 6) if records else None


__all__ = ["ApiError", "Cluster", "ClusterBillingRecord", "ClusterCompute", "CreateCluster", "MAX_NODES", "MIN_NODES",
           "cluster_billing", "cluster_cost", "cluster_pods", "create_cluster", "delete_cluster", "find_clusters",
           "get_cluster", "list_clusters"]
