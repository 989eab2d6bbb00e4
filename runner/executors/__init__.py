"""Backends that run one seed attempt: a Ray node (torchrun) or a RunPod pod."""
from __future__ import annotations

from typing import Any


def make_backend(name: str, spec: Any = None, rehearse: bool = False, faults: str = ""):
    """The backend called `name` ("ray" or "runpod"); RunPod's module is imported only when asked for."""
    if name == "ray":
        from runner.executors.ray_node import RayNodeBackend
        return RayNodeBackend(spec)
    if name == "runpod":
        from runner.executors.runpod import RunPodBackend
        return RunPodBackend(spec, rehearse=rehearse, faults=faults)
    from results.errors import PgolfError
    raise PgolfError(f"backend {name!r} is not known (use ray or runpod)")
