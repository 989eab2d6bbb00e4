"""Backends that run one seed attempt: a Ray node (torchrun) or a RunPod pod.

This factory is the only place that knows the backends by name; everything else talks to the
`Backend` protocol of runner/backends/base.py. A new backend is a module (or package) here, a name in
`runner.spec.JobSpec.backend`, and one branch below (docs/ARCHITECTURE.md, "Adding a backend").
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from results.errors import PgolfError

if TYPE_CHECKING:
    from runner.backends.base import Backend
    from runner.ledger import Ledger
    from runner.spec import JobSpec


def make_backend(spec: "JobSpec", rehearse: bool = False, faults: str = "",
                 run_dir: str | Path | None = None) -> "Backend":
    """The backend the spec names; its module is imported only when asked for (RunPod's needs its client).
    `rehearse` is RunPod's rehearsal (its fake keeps its state in `run_dir`); another backend refuses it."""
    if rehearse and spec.backend != "runpod":
        raise PgolfError(f"--rehearse rehearses the RunPod backend, and this batch's backend is {spec.backend!r}: "
                         f"add --backend runpod (or leave --rehearse out)")
    if spec.backend == "ray":
        from runner.backends.ray_node import RayNodeBackend
        return RayNodeBackend(spec)
    if spec.backend == "runpod" and spec.runpod.cluster:
        from runner.backends.runpod.instant import make_cluster_backend
        backend = make_cluster_backend(spec, rehearse=rehearse, faults=faults, run_dir=run_dir)
        if backend is not None:          # None: a batch of one node runs on a pod
            return backend
    if spec.backend == "runpod":
        from runner.backends.runpod.backend import RunPodBackend
        return RunPodBackend(spec, rehearse=rehearse, faults=faults, run_dir=run_dir)
    raise PgolfError(f"backend {spec.backend!r} is not known (use ray or runpod)")


def instant_cluster_nodes(launches: list[int], max_pods: int) -> int | None:
    """The nodes of the Instant Cluster a `[runpod] cluster = true` batch with these launches gets, by the
    backend's own rule (`pgolf plan` prices it); None when it would get one node, which runs on a pod."""
    from runner.backends.runpod.instant import nodes_for
    from runner.backends.runpod.instant_api import MIN_NODES
    nodes = nodes_for(launches, max_pods)
    return nodes if nodes >= MIN_NODES else None


def cluster_gc(runs_dir: str | Path, yes: bool, rehearse: bool = False) -> int:
    """`pgolf cluster gc`: machines that outlive a dead driver. Of the backends only RunPod leaves any
    (a Ray node's jobs die with their worker), so this is RunPod's garbage collection. It holds the lock
    of every idle batch under `runs_dir` while it works (no driver starts on them meanwhile), and keeps
    every machine of a batch a live process holds."""
    from runner.backends.runpod.cluster import gc
    from runner.backends.runpod.instant import gc_clusters
    from runner.lock import LockSet, describe
    with LockSet(runs_dir, "pgolf cluster gc") as locks:
        for d, who in sorted(locks.busy.items()):
            print(f"pgolf cluster gc: {d}: in use by {describe(who)}: its pods are kept")
        rc = gc(Path(runs_dir), yes=yes, rehearse=rehearse, live=set(locks.busy))
        return max(rc, gc_clusters(Path(runs_dir), yes=yes, rehearse=rehearse, live=set(locks.busy)))


def stop_left_machines(run_dir: str | Path, batch: dict, ledger: "Ledger", say: Callable[[str], None]) -> None:
    """`pgolf resume`, before anything that may refuse: the machines a dead driver left that still bill,
    stopped and recorded in `ledger`. Of the backends only RunPod leaves any (a Ray node's jobs die with
    their worker): a RunPod batch, a rehearsal, or any ledger that names a pod."""
    rehearse = bool(batch.get("rehearsal"))
    if rehearse or batch["spec"].get("backend") == "runpod" or \
            any(a.get("pod_id") for _s, a in ledger.all_attempts()):
        from runner.backends.runpod.instances import reap_dead_driver
        reap_dead_driver(run_dir, ledger, rehearse, say)
