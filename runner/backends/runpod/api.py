"""RunPod API calls, through the official `runpod` client (GraphQL), sorted into the errors pgolf acts on.

One concern: talk to RunPod. The client honours RUNPOD_API_BASE_URL (the rehearsal points it at the fake
on 127.0.0.1). The API key comes from RUNPOD_API_KEY or RunPod's own ~/.runpod/config.toml; it is held in
memory only (the client's module global) and never written anywhere by pgolf.

Errors: a capacity answer ("no longer any instances available") is `CapacityError` (back off, retry the
create; not a seed failure); connection errors, 5xx pages and unparseable answers are `TransientError`
(retried here a few times with tenacity); anything else is `ApiError`.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from results.errors import PgolfError

NAME_PREFIX = "pgolf-"
BASE_URL_ENV = "RUNPOD_API_BASE_URL"   # where the client sends its requests (the rehearsal: the fake)
KEY_ENV = "RUNPOD_API_KEY"
TRANSIENT_TRIES = 6          # one call: 6 tries over ~30 s of backoff, then the error surfaces
TRANSIENT_WAIT_MAX_S = 8.0
_wait_base_s = 0.5           # first backoff; the rehearsal shortens it (set_backoff) so tests stay fast

_CAPACITY_RE = re.compile(r"no longer any instances available|no instances? (currently )?available|"
                          r"not enough (gpus|capacity|machines)|insufficient capacity|"
                          r"does not have the resources to deploy", re.I)
_NOT_FOUND_RE = re.compile(r"not found|does not exist|no pod", re.I)


class ApiError(Exception):
    """RunPod answered with an error pgolf cannot fix by waiting."""


class CapacityError(ApiError):
    """No machine with the requested GPUs is free right now."""


class TransientError(ApiError):
    """Network trouble, a 5xx page or a garbled answer: worth another try."""


def resolve_api_key(env: dict[str, str] | None = None) -> str:
    """The key from the environment, else from RunPod's config file (as the runpod client reads it)."""
    env = os.environ if env is None else env
    key = env.get(KEY_ENV) or os.environ.get(KEY_ENV)
    if key:
        return key
    from runpod.cli.groups.config.functions import get_credentials
    creds = get_credentials("default") or {}
    if creds.get("api_key"):
        return creds["api_key"]
    raise PgolfError("no RunPod API key: set RUNPOD_API_KEY or run `runpod config` "
                     "(writes ~/.runpod/config.toml); or rehearse for free with --rehearse")


def configure(api_key: str, backoff_s: float | None = None) -> None:
    """Hand the key to the client (module global, memory only; terminate_pod reads it from there)."""
    global _wait_base_s
    import runpod
    runpod.api_key = api_key
    if backoff_s is not None:
        _wait_base_s = backoff_s


def _backoff(n: int) -> float:
    return min(TRANSIENT_WAIT_MAX_S, _wait_base_s * 2 ** (n - 1))


def _classify(exc: Exception) -> Exception:
    from runpod import error as rp_error
    if isinstance(exc, requests.RequestException):      # connection errors, timeouts, 5xx non-JSON bodies
        return TransientError(f"{type(exc).__name__}: {_scrub(str(exc))}")
    if isinstance(exc, rp_error.AuthenticationError):
        return ApiError("RunPod refused the API key (401): check RUNPOD_API_KEY / ~/.runpod/config.toml")
    if isinstance(exc, rp_error.QueryError):
        msg = _scrub(str(exc))
        if _CAPACITY_RE.search(msg):
            return CapacityError(msg)
        if re.search(r"internal server error|timeout|try again later|rate limit", msg, re.I):
            return TransientError(msg)
        return ApiError(msg)
    if isinstance(exc, ValueError) and "No GPU found" in str(exc):
        return ApiError(str(exc))
    return exc


def _scrub(text: str) -> str:
    """Error texts never carry the key (the client puts it only in a header, but be sure)."""
    import runpod
    key = getattr(runpod, "api_key", None)
    return text.replace(key, "***") if key else text


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - sorted into our three kinds
        raise _classify(e) from None


_retry_transient = retry(retry=retry_if_exception_type(TransientError), reraise=True,
                         stop=stop_after_attempt(TRANSIENT_TRIES),
                         wait=lambda state: _backoff(state.attempt_number))


def create_pod(*, name: str, image: str, gpu_type: str, gpu_count: int, cloud_type: str,
               container_disk_gb: int, volume_gb: int, ports: str, env: dict[str, str],
               docker_args: str) -> dict[str, Any]:
    """podFindAndDeployOnDemand; returns {"id", ...}. Raises CapacityError when no machine is free.

    A create whose answer was lost (timeout, 5xx) may still have made the pod: before trying again we
    look for a pod of this exact name and adopt it, so a flaky network never leaves a second pod billing."""
    import runpod
    for k, v in env.items():   # the client pastes values into the GraphQL text unescaped
        if any(c in v for c in '"\\\n'):
            raise ValueError(f"env value of {k} has a quote, backslash or newline; ship it encoded")
    last: Exception | None = None
    for i in range(TRANSIENT_TRIES):
        if last is not None:
            found = [p for p in list_pods() if p.get("name") == name]
            if found:
                return found[0]
            time.sleep(_backoff(i))
        try:
            return _call(runpod.create_pod, name=name, image_name=image, gpu_type_id=gpu_type,
                         cloud_type=cloud_type, gpu_count=gpu_count, container_disk_in_gb=container_disk_gb,
                         volume_in_gb=volume_gb, ports=ports, env=env, docker_args=docker_args,
                         support_public_ip=True, start_ssh=False)
        except TransientError as e:
            last = e
    raise last


@_retry_transient
def get_pod(pod_id: str) -> dict[str, Any] | None:
    """The pod, or None once it no longer exists (terminated or lost)."""
    import runpod
    try:
        return _call(runpod.get_pod, pod_id)
    except ApiError as e:
        if not isinstance(e, TransientError) and _NOT_FOUND_RE.search(str(e)):
            return None
        raise


@_retry_transient
def list_pods() -> list[dict[str, Any]]:
    import runpod
    return list(_call(runpod.get_pods) or [])


@_retry_transient
def terminate_pod(pod_id: str) -> None:
    """podTerminate; a pod that is already gone counts as terminated."""
    import runpod
    try:
        _call(runpod.terminate_pod, pod_id)
    except ApiError as e:
        if not isinstance(e, TransientError) and _NOT_FOUND_RE.search(str(e)):
            return
        raise


QUERY_BALANCE = "query myself { myself { id clientBalance currentSpendPerHr } }"


@_retry_transient
def get_balance() -> dict[str, float]:
    """{"clientBalance": $, "currentSpendPerHr": $/h} (fields the runpod client has no helper for)."""
    from runpod.api.graphql import run_graphql_query
    me = _call(run_graphql_query, QUERY_BALANCE)["data"]["myself"]
    return {"clientBalance": float(me.get("clientBalance") or 0.0),
            "currentSpendPerHr": float(me.get("currentSpendPerHr") or 0.0)}


@_retry_transient
def gpu_price_per_hour(gpu_type: str, gpu_count: int, cloud_type: str) -> float:
    """Price of one pod per hour from the GPU type's list price (secure or community) x count."""
    import runpod
    g = _call(runpod.get_gpu, gpu_type, gpu_count)
    per_gpu = g.get("communityPrice") if cloud_type == "COMMUNITY" else g.get("securePrice")
    if per_gpu is None:
        raise ApiError(f"RunPod lists no {cloud_type} price for {gpu_type}")
    return float(per_gpu) * gpu_count


def pod_address(pod: dict[str, Any], private_port: int) -> str | None:
    """Base URL of the pod's HTTP port: the public ip:port mapping when there is one, else RunPod's
    HTTPS proxy (https://{id}-{port}.proxy.runpod.net). None while the pod has no runtime yet."""
    runtime = pod.get("runtime")
    if not runtime:                   # no container yet (image pull, slow start)
        return None
    for p in runtime.get("ports") or []:
        if int(p.get("privatePort") or -1) == private_port and p.get("isIpPublic") and p.get("ip"):
            return f"http://{p['ip']}:{p['publicPort']}"
    return f"https://{pod['id']}-{private_port}.proxy.runpod.net"
