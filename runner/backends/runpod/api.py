"""RunPod's REST API v2 as pgolf uses it: pods, their logs, the catalog, billing, network volumes (and the
balance, which only GraphQL still answers).

One concern: talk to RunPod. httpx does the HTTP, tenacity the retries, pydantic types what goes out
(`CreatePod`, checked before sending) and what comes back (`Pod`, `GpuType`, ...; fields RunPod adds later
are ignored). The origin is https://api.runpod.io unless RUNPOD_API_BASE_URL says otherwise (the variable
runpod-python honours; the rehearsal points it at the fake); pgolf appends /v2/... to it.

The key comes from RUNPOD_API_KEY or RunPod's own config file (~/.runpod/config.toml, `[default] api_key`;
read here with tomllib: pgolf does not use the runpod package, so its errors never send users to it). It lives only
in the client's Authorization header: never in a URL, a log line or an error text (`_scrub` makes sure).

Errors are sorted the way the create endpoint's description tells clients to act on them:
  422 InvalidRequest   the body breaks the contract: fix it, never retry
  400 CapacityError    no machine free for this GPU/data center (the detail says so): back off or try another
  400 Refused          any other rule the request breaks (RunPod's detail says which)
  402 BalanceError     not enough credit: stop, no candidate will succeed
  SpendLimitError      the account's $/h spend limit (any 4xx whose detail names it): one clear line
  403 Forbidden        this key cannot use that pool or pod: skip it
  429                  waited out here (Retry-After, else the RateLimit header), then RateLimited if it never ends;
                       a window resetting later than Pacing.quota_cap_s (120 s; a day's) is QuotaExhausted at once,
                       one line naming the window and its reset, except for DELETE and a `patient` client (gc):
                       they wait however long and say so
  5xx, lost answers    retried here with backoff (TransientError once the tries are spent)
A create is never blindly retried: an answer lost on the way back may belong to a pod that exists, so
before trying again `create_pod` adopts a live pod of the same name (pgolf names are unique per attempt).

The pod log is Server-Sent Events; `stream_logs` yields (event id, line) pairs and reconnects after a drop
with Last-Event-ID. Anything but a log line (comments, heartbeats, other event types) is skipped, never
fatal. Event ids are timestamps and several lines may share one, so a `LogCursor` counts the
lines it has taken at the last id and drops that many repeats after reconnecting: no line lost or doubled
whether RunPod resumes at or after the id.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

import http_sf
import httpx
from httpx_sse import ServerSentEvent, SSEError, connect_sse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from results.errors import PgolfError
from runner.ledger import pgolf_version

DEFAULT_ORIGIN = "https://api.runpod.io"
CONFIG_FILE = Path("~/.runpod/config.toml")
GPU_H100_SXM = "NVIDIA H100 80GB HBM3"
MAX_LOG_TAIL = 5000                 # the most lines a log stream backfills without a resume point
BALANCE_QUERY = "query { myself { clientBalance } }"
_CAPACITY = re.compile(r"no longer any instances available|no instances? (currently )?available|not enough "
                       r"(gpus|capacity|machines)|insufficient capacity|could not be placed|no capacity|"
                       r"does not have the resources", re.I)
_SPEND_LIMIT = re.compile(r"spend(ing)?[ _-]?limit", re.I)
USER_AGENT = f"pgolf/{pgolf_version()}"   # on every request pgolf makes: Cloudflare refuses library defaults (1010)

log = logging.getLogger("pgolf.runpod")


# ---- errors
class ApiError(Exception):
    """RunPod answered with an error; `status` is the HTTP status (None: no answer), `detail` RunPod's text."""

    def __init__(self, what: str, status: int | None, detail: str):
        self.what, self.status, self.detail = what, status, detail
        super().__init__(f"RunPod API: {what}: {detail}" + (f" (HTTP {status})" if status else ""))


class InvalidRequest(ApiError):
    """422: the request breaks RunPod's contract; pgolf must be fixed, retrying cannot help."""


class Refused(ApiError):
    """400: the request matches the contract but breaks a rule, or cannot be placed."""


class CapacityError(Refused):
    """400 saying no machine with the requested GPUs (or CPUs) is free right now."""


class BalanceError(ApiError):
    """402: not enough credit to deploy (RunPod wants an hour's worth)."""


class SpendLimitError(ApiError):
    """The account's spend limit ($/h, $80 by default) would be exceeded."""

    def __init__(self, what: str, status: int | None, detail: str):
        super().__init__(what, status, detail)
        self.args = (f"RunPod refused the pod: your account's spend limit would be exceeded ({detail.rstrip('.')}). "
                     "Run fewer pods at once ([runpod] max_pods) or ask RunPod support to raise the limit "
                     "(default $80/h).",)


class AuthError(ApiError):
    """401: the key is missing, malformed or revoked."""


class Forbidden(ApiError):
    """403: the key is valid but may not do this (another pool, another pod)."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: e.g. an action the pod's status does not allow."""


class RateLimited(ApiError):
    """429, with how long RunPod asked to wait and the window that is used up (None: not said)."""

    def __init__(self, what: str, status: int | None, detail: str, retry_after_s: float, window: str | None = None):
        super().__init__(what, status, detail)
        self.retry_after_s, self.window = retry_after_s, window


class QuotaExhausted(RateLimited):
    """A rate-limit window (a day's, say) that resets later than pgolf waits for one (Pacing.quota_cap_s):
    said at once in one line, which window and when it resets, instead of a driver asleep for hours."""

    def __init__(self, what: str, window: str | None, reset_in_s: float, cap_s: float):
        reset = dt.datetime.fromtimestamp(time.time() + reset_in_s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        detail = (f"RunPod's {window or 'rate-limit'} window is used up until {reset} (in {_span(reset_in_s)}); "
                  f"pgolf waits at most {cap_s:.0f} s for a window, so this stops here: run it again after the "
                  f"reset (terminating pods and `pgolf cluster gc` keep waiting)")
        super().__init__(what, 429, detail, reset_in_s, window)
        self.args = (f"RunPod API: {what}: {detail}",)


class TransientError(ApiError):
    """5xx, a dropped connection, a timeout: worth another try."""


# ---- what goes out (checked before sending) and what comes back (unknown fields ignored)
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


Cloud = Literal["SECURE", "COMMUNITY"]


class GpuRequest(_Out):
    id: str
    count: int = Field(1, ge=1)
    min_cuda_version: str | None = Field(None, pattern=r"^\d+\.\d+$")


class CpuRequest(_Out):
    id: str
    vcpu_count: int = Field(ge=2)


class NetworkMount(_Out):
    volume_id: str
    path: str = "/workspace"


class Mounts(_Out):
    network: list[NetworkMount] | None = Field(None, max_length=1)


class CreatePod(_Out):
    """POST /v2/pods: a GPU pod (`gpu`) or a CPU pod (`cpu`), never both."""
    name: str = Field(min_length=1)
    image: str
    args: str | None = None                 # the start command (arguments to the image's entrypoint)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[str] = Field(default_factory=list)     # "70000/tcp" (symmetrical), "8000/http"
    disk: int | None = Field(None, ge=1)    # container disk, GB
    gpu: GpuRequest | None = None
    cpu: CpuRequest | None = None
    cloud: Cloud = "SECURE"
    data_center_ids: list[str] | None = None
    mounts: Mounts | None = None

    @model_validator(mode="after")
    def _one_compute(self) -> "CreatePod":
        if (self.gpu is None) == (self.cpu is None):
            raise ValueError("a pod needs exactly one of gpu or cpu")
        for p in self.ports:
            if not re.fullmatch(r"\d{1,5}/(tcp|http)", p):
                raise ValueError(f"port {p!r}: use NUMBER/tcp or NUMBER/http")
        return self

    def __repr__(self) -> str:                # env may carry secrets: never in a repr or a traceback
        return f"CreatePod(name={self.name!r}, image={self.image!r}, gpu={self.gpu!r}, cpu={self.cpu!r})"

    __str__ = __repr__


class PortMapping(_In):
    private: int | None = None
    public: int | None = None
    type: str | None = None
    ip: str | None = None


class Runtime(_In):
    uptime: int | None = None
    ports: list[PortMapping] = Field(default_factory=list)


class PodGpu(_In):
    id: str
    count: int = 1


class PodCpu(_In):
    id: str
    vcpu_count: int
    memory: int | None = None


class Pod(_In):
    """A pod as RunPod reports it (its env is deliberately not kept: it may carry secrets)."""
    id: str
    name: str
    status: str                              # PROVISIONING STARTING RUNNING EXITED ERROR TERMINATED
    image: str = ""
    cost: float = 0.0                        # $/h now (0 once EXITED or TERMINATED)
    cloud: str | None = None
    data_center_id: str | None = None
    ports: list[str] = Field(default_factory=list)
    runtime: Runtime | None = None
    gpu: PodGpu | None = None
    cpu: PodCpu | None = None
    created_at: str | None = None
    started_at: str | None = None

    def tcp_endpoint(self) -> tuple[str, int] | None:
        """(public ip, port) of the symmetrical TCP port (public == private), once RunPod reports one."""
        for p in (self.runtime.ports if self.runtime else []):
            if p.type == "tcp" and p.ip and p.public and p.public == p.private:
                return p.ip, p.public
        return None

    def proxy_url(self, port: int) -> str:
        """RunPod's HTTPS proxy for an `N/http` port (Cloudflare: 100 s per request)."""
        return f"https://{self.id}-{port}.proxy.runpod.net"


class Price(_In):
    secure: float
    community: float


class MaxCount(_In):
    secure: int
    community: int


class Availability(_In):
    id: str
    name: str
    availability: str


class GpuType(_In):
    id: str
    name: str
    memory: int
    secure: bool
    community: bool
    price: Price
    max_count: MaxCount
    availability: str | None = None          # NONE LOW MEDIUM HIGH (asked with include=AVAILABILITY)
    data_centers: list[Availability] = Field(default_factory=list)

    def price_per_hour(self, cloud: str, count: int) -> float:
        return (self.price.community if cloud == "COMMUNITY" else self.price.secure) * count


class VcpuRange(_In):
    min: int
    max: int


class CpuPrice(_In):
    secure_per_vcpu: float


class CpuType(_In):
    id: str
    name: str
    group: str
    vcpu: VcpuRange
    ram_gb_per_vcpu: float
    price: CpuPrice
    availability: str | None = None
    data_centers: list[Availability] = Field(default_factory=list)

    def price_per_hour(self, vcpus: int) -> float:
        return self.price.secure_per_vcpu * vcpus


class DataCenter(_In):
    id: str
    name: str
    region: str
    network_volume_types: list[str] = Field(default_factory=list)
    gpu_availability: list[Availability] = Field(default_factory=list)


class PodBillingRecord(_In):
    pod_id: str
    start_time: str
    end_time: str
    total_amount: float
    gpu_amount: float = 0.0
    cpu_amount: float = 0.0
    disk_amount: float = 0.0


class NetworkVolume(_In):
    id: str
    name: str
    size: int
    data_center: str
    type: str | None = None


class LogLine(NamedTuple):
    id: str          # the SSE event id: the line's timestamp (RFC 3339)
    line: str


@dataclass
class LogCursor:
    """Where a log stream stands: the last event id taken and how many lines carried it. Reconnecting
    with Last-Event-ID = last_id, the first `at_last` events that carry last_id again are repeats."""
    last_id: str | None = None
    at_last: int = 0
    _skip: int = 0

    def reconnecting(self) -> None:
        self._skip = self.at_last

    def accept(self, event_id: str) -> bool:
        """True when the event is new (and is now taken), False for a repeat."""
        if event_id == self.last_id:
            if self._skip:
                self._skip -= 1
                return False
            self.at_last += 1
            return True
        self.last_id, self.at_last, self._skip = event_id, 1, 0
        return True


@dataclass(frozen=True)
class Pacing:
    """How long to wait and how often to try. Rehearsals shrink every wait (Retry-After included) by
    time_scale so that tests stay fast while the code path is the real one."""
    time_scale: float = 1.0
    transient_tries: int = 6               # one call: 6 tries over ~30 s, then the error surfaces
    backoff_s: float = 1.0
    backoff_max_s: float = 16.0
    rate_limit_budget_s: float = 900.0     # 429s waited out in one call before giving up
    quota_cap_s: float = 120.0             # the longest one rate-limit wait: a window resetting later is an error
    timeout_s: float = 60.0
    sse_read_timeout_s: float = 120.0      # a silent log stream is reconnected after this long


def resolve_api_key(env: dict[str, str] | None = None, config_file: Path | None = None) -> str:
    """The key from RUNPOD_API_KEY, else from RunPod's config file ([default] api_key)."""
    env = os.environ if env is None else env
    if env.get("RUNPOD_API_KEY"):
        return env["RUNPOD_API_KEY"]
    path = (config_file or CONFIG_FILE).expanduser()
    try:
        with open(path, "rb") as f:
            key = (tomllib.load(f).get("default") or {}).get("api_key")
    except FileNotFoundError:
        key = None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PgolfError(f"{path}: cannot read RunPod's config ({type(e).__name__}: {e}); fix it (TOML: "
                         "[default] api_key = \"...\") or set RUNPOD_API_KEY") from None
    if not key:
        raise PgolfError(f"no RunPod API key: pgolf reads RUNPOD_API_KEY, else `api_key` under [default] in {path}; "
                         "set one (a key from https://www.runpod.io/console/user/settings), or rehearse for free "
                         "with --rehearse")
    return str(key)


class RunPodClient:
    """One account's API, over one HTTP connection pool. Not picklable on purpose: build one per process."""

    def __init__(self, api_key: str, origin: str | None = None, pacing: Pacing = Pacing(),
                 notify: Callable[[str], None] | None = None, patient: bool = False):
        if not api_key:
            raise PgolfError("RunPod API key is empty")
        self.origin = (origin or os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_ORIGIN).rstrip("/")
        self.pacing = pacing
        self.notify = notify or log.info
        self._key = api_key
        self._not_before, self._spent_window = 0.0, None
        self.patient = patient          # wait out any window, however long (`pgolf cluster gc`); DELETEs always do
        self._http = http_client(base_url=self.origin, timeout=pacing.timeout_s,
                                 headers={"Authorization": f"Bearer {api_key}"})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kw: Any) -> "RunPodClient":
        return cls(resolve_api_key(env), **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RunPodClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunPodClient({self.origin})"

    def __getstate__(self):
        raise TypeError("RunPodClient holds a connection pool and a key: build one where it is used")

    # ---- pods
    def create_pod(self, req: CreatePod) -> Pod:
        """POST /v2/pods. Before any second try, a live pod of this name is adopted instead."""
        last: TransientError | None = None
        for n in range(1, self.pacing.transient_tries + 1):
            if last is not None:
                found = self.find_pods(req.name)
                if found:
                    self.notify(f"RunPod: the create answer for {req.name} was lost; adopted pod {found[0].id}")
                    return found[0]
                self._sleep(self._backoff(n - 1), f"create {req.name} failed ({last.detail}); trying again")
            try:
                return Pod.model_validate(self._call("POST", "/v2/pods", f"create pod {req.name}",
                                                     json=req.payload(), transient_retry=False).json())
            except TransientError as e:
                last = e
        assert last is not None
        raise last

    def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None once RunPod no longer knows it (terminated, lost)."""
        try:
            return Pod.model_validate(self._call("GET", f"/v2/pods/{pod_id}", f"get pod {pod_id}").json())
        except NotFound:
            return None

    def list_pods(self) -> list[Pod]:
        """Every pod of the account (v2 lists them in one answer; it has no paging)."""
        return [Pod.model_validate(p) for p in self._call("GET", "/v2/pods", "list pods").json()["pods"]]

    def find_pods(self, name: str) -> list[Pod]:
        """Pods of this exact name that still count (not TERMINATED)."""
        return [p for p in self.list_pods() if p.name == name and p.status != "TERMINATED"]

    def delete_pod(self, pod_id: str) -> bool:
        """DELETE /v2/pods/{id}: True when it was terminated now, False when it was already gone."""
        try:
            self._call("DELETE", f"/v2/pods/{pod_id}", f"terminate pod {pod_id}")
            return True
        except NotFound:
            return False

    def pod_action(self, pod_id: str, action: Literal["start", "stop", "restart", "terminate"]) -> Pod | None:
        """POST /v2/pods/{id}/action; the updated pod (None for terminate, which answers 204)."""
        r = self._call("POST", f"/v2/pods/{pod_id}/action", f"{action} pod {pod_id}", json={"action": action})
        return Pod.model_validate(r.json()) if r.status_code == 200 else None

    # ---- the pod log
    def stream_logs(self, pod_id: str, *, cursor: LogCursor | None = None, since: str | None = None,
                    source: str = "container") -> Iterator[LogLine]:
        """The pod's log lines as they come, each once, across reconnects. Without a cursor position the
        stream starts at `since` (e.g. the pod's createdAt) or backfills the last MAX_LOG_TAIL lines.
        Ends when the pod is gone, or when a stream ends and the pod is no longer live (its container
        exited); a caller that has what it needs simply stops iterating."""
        cursor = cursor if cursor is not None else LogCursor()
        failures = quiet = 0
        while True:
            headers: dict[str, str] = {}
            params: dict[str, Any] = {"source": source}
            if cursor.last_id:
                headers["Last-Event-ID"] = cursor.last_id
                cursor.reconnecting()
            elif since:
                params["since"] = since
            else:
                params["tail"] = MAX_LOG_TAIL
            self._respect_quota(f"the log stream of pod {pod_id}")
            try:
                with connect_sse(self._http, "GET", f"/v2/pods/{pod_id}/logs", params=params, headers=headers,
                                 timeout=httpx.Timeout(self.pacing.timeout_s, read=self.pacing.sse_read_timeout_s)) as es:
                    r = es.response
                    self._track_quota(r)
                    if r.status_code >= 400:
                        r.read()
                        raise self._error(f"stream the log of pod {pod_id}", r)
                    for event in es.iter_sse():
                        line = _log_line(event)
                        if line is None:              # a heartbeat, an unknown event: not a line, not an id
                            continue
                        if cursor.accept(event.id):
                            failures = quiet = 0
                            yield LogLine(event.id, line)
            except NotFound:
                return
            except httpx.ReadTimeout:
                continue                          # a quiet pod, not a failure: resume from the cursor
            except RateLimited as e:
                if e.retry_after_s > self.pacing.quota_cap_s:
                    raise QuotaExhausted(e.what, e.window, e.retry_after_s, self.pacing.quota_cap_s) from None
                self._sleep(e.retry_after_s * self.pacing.time_scale, f"log stream of pod {pod_id} rate limited")
                continue
            except (httpx.TransportError, SSEError, TransientError) as e:
                failures += 1
                if failures >= self.pacing.transient_tries:
                    raise TransientError(f"stream the log of pod {pod_id}", None,
                                         f"{failures} drops in a row ({_scrub(str(e), self._key)})") from None
                self._sleep(self._backoff(failures), f"log stream of pod {pod_id} dropped; resuming")
                continue
            pod = self.get_pod(pod_id)            # a clean end: the container exited, or a proxy cut us off
            if pod is None or pod.status not in ("PROVISIONING", "STARTING", "RUNNING"):
                return
            quiet += 1                            # a live pod whose stream keeps ending: do not spin
            time.sleep(self._backoff(quiet))

    # ---- catalog, billing, volumes, balance
    def gpu_types(self, count: int = 1, cloud: str = "SECURE", min_cuda: str | None = None) -> list[GpuType]:
        """GPU types with prices and, for pods of `count` GPUs in `cloud` on hosts with CUDA >= `min_cuda`,
        current stock."""
        params: dict[str, Any] = {"include": "AVAILABILITY", "product": "POD", "count": count, "cloud": cloud}
        if min_cuda:
            params["minCudaVersion"] = min_cuda
        return [GpuType.model_validate(g) for g in self._call("GET", "/v2/catalog/gpus", "GPU catalog",
                                                              params=params).json()["gpus"]]

    def gpu_type(self, gpu_id: str, count: int = 1, cloud: str = "SECURE",
                 min_cuda: str | None = None) -> GpuType | None:
        return next((g for g in self.gpu_types(count, cloud, min_cuda) if g.id == gpu_id), None)

    def cpu_types(self, vcpus: int | None = None) -> list[CpuType]:
        params: dict[str, Any] = {"include": "AVAILABILITY", "product": "POD"}
        if vcpus:
            params["vcpuCount"] = vcpus
        return [CpuType.model_validate(c) for c in self._call("GET", "/v2/catalog/cpus", "CPU catalog",
                                                              params=params).json()["cpus"]]

    def data_centers(self) -> list[DataCenter]:
        params = {"include": "GPU_AVAILABILITY"}
        return [DataCenter.model_validate(d) for d in self._call("GET", "/v2/catalog/datacenters", "data centers",
                                                                 params=params).json()["dataCenters"]]

    def pod_billing(self, pod_id: str, since: str, bucket: str = "hour") -> list[PodBillingRecord]:
        """Billing records of one pod from `since` (RFC 3339) on, one per time bucket."""
        params = {"podId": pod_id, "startTime": since, "bucketSize": bucket}
        body = self._call("GET", "/v2/billing/pods", f"billing of pod {pod_id}", params=params).json()
        return [PodBillingRecord.model_validate(r) for r in body["records"] if r.get("podId") == pod_id]

    def pod_cost(self, pod_id: str, since: str) -> float | None:
        """What RunPod billed for the pod so far, in dollars; None while it has no record of it yet."""
        records = self.pod_billing(pod_id, since)
        return round(sum(r.total_amount for r in records), 6) if records else None

    def list_volumes(self) -> list[NetworkVolume]:
        body = self._call("GET", "/v2/network-volumes", "list network volumes").json()
        return [NetworkVolume.model_validate(v) for v in body["networkVolumes"]]

    def get_volume(self, volume_id: str) -> NetworkVolume | None:
        try:
            return NetworkVolume.model_validate(self._call("GET", f"/v2/network-volumes/{volume_id}",
                                                           f"get network volume {volume_id}").json())
        except NotFound:
            return None

    def create_volume(self, name: str, size_gb: int, data_center: str) -> NetworkVolume:
        body = {"name": name, "size": size_gb, "dataCenter": data_center}
        return NetworkVolume.model_validate(self._call("POST", "/v2/network-volumes", f"create network volume "
                                                       f"{name}", json=body, transient_retry=False).json())

    def delete_volume(self, volume_id: str) -> bool:
        try:
            self._call("DELETE", f"/v2/network-volumes/{volume_id}", f"delete network volume {volume_id}")
            return True
        except NotFound:
            return False

    def balance(self) -> float | None:
        """The account balance in dollars, from GraphQL `myself { clientBalance }` (v2 has no route for it).
        None, with a warning, once GraphQL is gone (404/410): callers then guard on their estimate only."""
        try:
            r = self._call("POST", "/graphql", "balance (GraphQL)", json={"query": BALANCE_QUERY})
        except ApiError as e:
            if e.status in (404, 410):
                self.notify("RunPod's GraphQL API is gone (HTTP %d), so the balance is unknown: pgolf checks "
                            "the batch against its own cost estimate only" % e.status)
                return None
            raise
        body = r.json()
        if body.get("errors"):
            raise ApiError("balance (GraphQL)", r.status_code, _scrub(body["errors"][0].get("message", "?"), self._key))
        return float(body["data"]["myself"]["clientBalance"])

    # ---- plumbing
    def _call(self, method: str, path: str, what: str, *, json: Any = None, params: dict | None = None,
              transient_retry: bool = True) -> httpx.Response:
        """One request; 429s waited out and (unless transient_retry=False) 5xx/network errors retried."""
        kinds = (RateLimited, TransientError) if transient_retry else (RateLimited,)
        patient = self.patient or method == "DELETE"     # terminating a pod never gives up at the cap
        retrying = Retrying(retry=retry_if_exception_type(kinds), stop=lambda st: self._stop(st, patient),
                            wait=self._wait, before_sleep=self._note, reraise=True, sleep=time.sleep)
        try:
            return self._attempts(retrying, method, path, what, json, params, patient)
        except QuotaExhausted:
            raise
        except RateLimited as e:
            if e.retry_after_s > self.pacing.quota_cap_s:
                raise QuotaExhausted(what, e.window, e.retry_after_s, self.pacing.quota_cap_s) from None
            raise

    def _attempts(self, retrying: Retrying, method: str, path: str, what: str, json: Any, params: dict | None,
                  patient: bool) -> httpx.Response:
        for attempt in retrying:
            with attempt:
                self._respect_quota(what, patient)
                try:
                    r = self._http.request(method, path, json=json, params=params)
                except httpx.TransportError as e:
                    raise TransientError(what, None, f"no answer ({type(e).__name__}: "
                                                     f"{_scrub(str(e), self._key) or 'connection lost'})") from None
                self._track_quota(r)
                if r.status_code >= 400:
                    raise self._error(what, r)
                return r
        raise AssertionError("unreachable")

    def _error(self, what: str, r: httpx.Response) -> ApiError:
        status = r.status_code
        try:
            body = r.json()
            detail = str(body.get("detail") or body.get("title") or body.get("errors") or body)
            errors = [str(e) for e in body.get("errors") or [] if isinstance(e, str)]
        except (ValueError, AttributeError):
            detail, errors = (re.sub(r"\s+", " ", r.text).strip()[:200] or r.reason_phrase), []
        detail = _scrub(detail + (": " + "; ".join(errors) if errors else ""), self._key)
        if 400 <= status < 500 and _SPEND_LIMIT.search(detail):
            return SpendLimitError(what, status, detail)
        if status == 429:
            return RateLimited(what, status, detail, _retry_after(r), _spent_window(r))
        if status >= 500:
            return TransientError(what, status, detail)
        if status == 400:
            return (CapacityError if _CAPACITY.search(detail) else Refused)(what, status, detail)
        kind = {401: AuthError, 402: BalanceError, 403: Forbidden, 404: NotFound, 409: Conflict,
                422: InvalidRequest}.get(status, ApiError)
        if kind is AuthError:
            detail += "; check RUNPOD_API_KEY or ~/.runpod/config.toml"
        if kind is Forbidden and "1010" in detail:
            detail += f" (Cloudflare refused the request's User-Agent; pgolf sends {USER_AGENT!r})"
        return kind(what, status, detail)

    def _stop(self, state: RetryCallState, patient: bool = False) -> bool:
        e = state.outcome.exception() if state.outcome else None
        if isinstance(e, RateLimited):
            if patient:
                return False
            return (e.retry_after_s > self.pacing.quota_cap_s or
                    state.idle_for + e.retry_after_s * self.pacing.time_scale > self.pacing.rate_limit_budget_s)
        return state.attempt_number >= self.pacing.transient_tries

    def _wait(self, state: RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        if isinstance(e, RateLimited):
            return e.retry_after_s * self.pacing.time_scale
        return self._backoff(state.attempt_number)

    def _backoff(self, n: int) -> float:
        jitter = wait_exponential_jitter(initial=self.pacing.backoff_s, max=self.pacing.backoff_max_s)
        return jitter(_Attempt(n)) * self.pacing.time_scale

    def _note(self, state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(e, RateLimited) and e.retry_after_s > self.pacing.quota_cap_s:
            self.notify(f"RunPod rate limit on {e.what}: the {e.window or 'rate-limit'} window resets in "
                        f"{_span(e.retry_after_s)}; waiting for it (terminating and gc never give up)")
        elif isinstance(e, RateLimited):
            self.notify(f"RunPod rate limit on {e.what}: waiting {e.retry_after_s:.0f} s as asked (Retry-After)")
        elif isinstance(e, ApiError):
            self.notify(f"{e}; try {state.attempt_number + 1} in {wait:.1f} s")

    def _sleep(self, seconds: float, why: str) -> None:
        self.notify(f"RunPod: {why}; waiting {seconds:.1f} s")
        time.sleep(seconds)

    def _track_quota(self, r: httpx.Response) -> None:
        """RateLimit on any answer: a window with nothing left holds the next request until it resets."""
        for name, remaining, reset in _windows(r.headers.get("RateLimit")):
            until = time.time() + reset * self.pacing.time_scale
            if remaining <= 0 and until > self._not_before:
                self._not_before, self._spent_window = until, name

    def _respect_quota(self, what: str = "the next request", patient: bool = False) -> None:
        """Hold the request until a used-up window resets: up to Pacing.quota_cap_s, else QuotaExhausted
        at once (a day's window may be hours away). `patient` callers (terminate, gc) wait however long,
        and say so."""
        wait = self._not_before - time.time()
        if wait <= 0:
            return
        real = wait / self.pacing.time_scale          # what RunPod said, before a rehearsal's scaling
        if real > self.pacing.quota_cap_s:
            if not patient:
                raise QuotaExhausted(what, self._spent_window, real, self.pacing.quota_cap_s)
            self._sleep(wait, f"the {self._spent_window or 'rate-limit'} window is used up for {_span(real)}; "
                              f"{what} waits for it (terminating and gc never give up)")
            return
        self._sleep(wait, "RunPod rate-limit window used up")


def http_client(headers: dict[str, str] | None = None, **kw: Any) -> httpx.Client:
    """An httpx client that says who it is (`User-Agent: pgolf/<version>`): RunPod's API and its pod proxy
    sit behind Cloudflare, which answers 403 (error 1010) to a library's default agent. Every httpx client
    pgolf opens toward RunPod or a pod comes from here."""
    return httpx.Client(headers={"User-Agent": USER_AGENT, **(headers or {})}, **kw)


class _Attempt:
    """The one field of RetryCallState that tenacity's wait strategies read."""

    def __init__(self, n: int):
        self.attempt_number = n


def _windows(header: str | None) -> list[tuple[str, int, float]]:
    """(name, remaining, seconds to reset) per window of a RateLimit header; [] when absent or unreadable."""
    if not header:
        return []
    try:
        members = http_sf.parse(header.encode(), tltype="list")
    except Exception:  # noqa: BLE001 - a header we cannot read is a header we do not act on
        return []
    out = []
    for name, params in members:
        if isinstance(params, dict) and isinstance(params.get("r"), int) and isinstance(params.get("t"), (int, float)):
            out.append((str(name), params["r"], float(params["t"])))
    return out


def _spent_window(r: httpx.Response) -> str | None:
    """The used-up window of a 429 that resets last (the one to wait for), by its RateLimit name."""
    spent = [(reset, name) for name, remaining, reset in _windows(r.headers.get("RateLimit")) if remaining <= 0]
    return max(spent)[1] if spent else None


def _span(seconds: float) -> str:
    """45000 -> '12.5 h', 90 -> '90 s': a wait said the way a person reads it."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds:.0f} s"


def _retry_after(r: httpx.Response) -> float:
    """Seconds to wait after a 429: Retry-After (seconds or an HTTP date), else the RateLimit header's
    exhausted window, else 5 s."""
    value = r.headers.get("Retry-After")
    if value:
        if value.strip().isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    spent = [reset for _name, remaining, reset in _windows(r.headers.get("RateLimit")) if remaining <= 0]
    return max(spent) if spent else 5.0


def _log_line(event: ServerSentEvent) -> str | None:
    """The log line of a pod-log SSE event; None for anything else, which the follower skips: comments
    and keep-alives (an empty event still carries the last id, by the SSE spec), heartbeats and other event
    types, data that is not {"line": ...}. Only real lines move the LogCursor."""
    if event.event != "message" or not event.id or not event.data:
        return None
    try:
        payload = json.loads(event.data)
    except ValueError:
        return None
    line = payload.get("line") if isinstance(payload, dict) else None
    return line if isinstance(line, str) else None


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
