"""Checks before anything starts: a batch that cannot succeed must fail before any seed or pod runs.

The checks here hold for every backend (the files exist, some Ray node can hold one attempt); a
backend adds its own in `Backend.preflight` (the GPU stack of a Ray GPU node, RunPod's balance).
Each check raises PgolfError with one line (what, where, how to fix).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from results.errors import PgolfError
from runner.spec import JobSpec


def check_static(spec: JobSpec, where: str) -> None:
    """The script and the data exist (or a prepare step builds the data)."""
    if not Path(spec.script).is_file():
        raise PgolfError(f"{where}: script: {spec.script} does not exist (fix the path; it is relative to the spec file)")
    if not spec.data.prepare:
        for key, p in spec.data.paths.items():
            if not Path(p).exists():
                raise PgolfError(f"{where}: [data] paths.{key}: {p} does not exist "
                                 f"(fix the path, run `pgolf data prepare`, or give [data] prepare = \"command\")")


def _need(options: dict[str, Any]) -> dict[str, float]:
    need = {"CPU": float(options.get("num_cpus", 1) or 0), "GPU": float(options.get("num_gpus", 0) or 0)}
    need.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in need.items() if v > 0}


def check_cluster(options: dict[str, Any], where: str) -> None:
    """Some alive node of the Ray cluster can hold one attempt (else it would wait forever)."""
    import ray
    need = _need(options)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0) >= v for k, v in need.items()) for res in nodes):
        return
    best = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    have = {k: best.get(k, 0) for k in need}
    raise PgolfError(f"{where}: no node of the Ray cluster can hold one seed: it needs {_fmt(need)}, the largest "
                     f"node has {_fmt(have)} (lower gpus_per_seed / nproc_per_node, or add nodes)")


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in d.items()) or "nothing"
