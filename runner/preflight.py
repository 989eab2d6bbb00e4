"""Checks before anything starts: a batch that cannot succeed must fail before any seed or pod runs.

Each check raises PgolfError with one line (what, where, how to fix).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from results.errors import PgolfError
from runner.spec import JobSpec

FLA_CHECK_TIMEOUT_S = 300


def check_static(spec: JobSpec, where: str) -> None:
    """Script and data exist (or a prepare step builds the data); seeds unique."""
    if not Path(spec.script).is_file():
        raise PgolfError(f"{where}: script: {spec.script} does not exist (fix the path; it is relative to the spec file)")
    if not spec.data.prepare:
        for key, p in spec.data.paths.items():
            if not Path(p).exists():
                raise PgolfError(f"{where}: [data] paths.{key}: {p} does not exist "
                                 f"(fix the path, run `pgolf data prepare`, or give [data] prepare = \"command\")")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise PgolfError(f"{where}: seeds: must be unique, got {spec.seeds}")


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


def _fla_probe() -> tuple[str | None, str | None]:
    """Inside a GPU task: (error, note). error is check_fla_triton's verdict; note explains a skip."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        import torch
    except ImportError:
        return None, "torch not importable on the GPU node"
    if not torch.cuda.is_available():
        return None, "no CUDA device visible on the GPU node; fla/Triton check skipped"
    try:
        from model.train_gpt import check_fla_triton
    except Exception as e:  # the payload module is missing or broken there
        return None, f"model.train_gpt not importable on the GPU node ({type(e).__name__}); fla/Triton check skipped"

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None
    cap = torch.cuda.get_device_capability()
    return check_fla_triton(cap, v("flash-linear-attention") or v("fla-core"), v("triton")), None


def check_gpu_stack(options: dict[str, Any], where: str) -> str | None:
    """On GPU clusters run the fla/Triton compatibility check on a GPU node (GPU.md). Returns a note."""
    import ray
    if not options.get("num_gpus"):
        return None
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_fla_probe)
    try:
        err, note = ray.get(probe.remote(), timeout=FLA_CHECK_TIMEOUT_S)
    except Exception as e:
        return f"fla/Triton check could not run ({type(e).__name__})"
    if err:
        raise PgolfError(f"{where}: GPU node fails the fla/Triton check: {err}")
    return note
