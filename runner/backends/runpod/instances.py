"""The pod lifecycle on RunPod's REST API v2, used by the backend (one pod per attempt) and by `pgolf cluster`.

Which API (`Session`: RunPod's, or the rehearsal's fake with its state in the run directory), what a pod is (`PodShape`: GPUs or a CPU flavor, in a cloud), what RunPod offers for it right now (`offer`:
list price and stock, said in one line before anything is created), create with back-off while there is
no capacity or the account's spend limit is reached, wait until the pod's own bootstrap answers (`wait_ready`:
RunPod lists a pod RUNNING while its host still pulls the image, so RUNNING is not ready; a pod whose
bootstrap has not answered `start_timeout_s` after its creation is `Stuck`: the caller terminates it and the
driver retries on a fresh pod, as for any lost machine), terminate and verify gone (404, TERMINATED or no
longer listed), and what the pod cost
(RunPod's billing records; None while they have nothing yet). Polling intervals are named in `Timing`; the
rehearsal's are short so tests stay fast. `reap_dead_driver` stops, verifies and records the pods a dead
driver left (and their twins), for `pgolf resume` before anything else.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from results.errors import PgolfError
from runner.backends.base import InfraFailure
from runner.backends.runpod import api
from runner.ledger import Ledger

NAME_PREFIX = "pgolf-"
SYMMETRIC_PORT = 70000           # "70000/tcp": RunPod gives the pod one port number used inside and out
PROXY_PORT = 8000                # "8000/http": RunPod's HTTPS proxy, when the pod has no public address
LIVE = ("PROVISIONING", "STARTING", "RUNNING")
REHEARSAL_DIR = "rehearsal"      # a rehearsal keeps its fake RunPod's state in RUN_DIR/rehearsal/
REHEARSAL_KEY = "pgolf-rehearsal"   # the key every rehearsal uses: the user's real key never meets the fake

Say = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    """Polling intervals and patience of the lifecycle."""
    poll_s: float                  # status polls of a pod
    gone_timeout_s: float          # terminate -> no longer listed
    gone_poll_s: float
    terminate_again_every: int     # polls between repeated DELETEs while a pod is still listed
    capacity_wait_s: float         # how long "no capacity" / "spend limit" is waited out
    capacity_backoff_s: float
    capacity_backoff_max_s: float
    billing_tries: int             # billing records can lag the pod's end: look this many times
    time_scale: float              # the API client's waits (Retry-After, backoff) are scaled by this


REAL = Timing(poll_s=5.0, gone_timeout_s=300, gone_poll_s=2.0, terminate_again_every=10,
              capacity_wait_s=3 * 3600, capacity_backoff_s=15, capacity_backoff_max_s=300,
              billing_tries=6, time_scale=1.0)
REHEARSAL = Timing(poll_s=0.1, gone_timeout_s=30, gone_poll_s=0.1, terminate_again_every=10,
                   capacity_wait_s=120, capacity_backoff_s=0.2, capacity_backoff_max_s=1.0,
                   billing_tries=2, time_scale=0.01)


class Session:
    """The RunPod API pgolf talks to: RunPod's own (key from RUNPOD_API_KEY or ~/.runpod/config.toml), or
    with `rehearse` the fake on 127.0.0.1 serving `state_dir` (the run directory's rehearsal/ folder), so
    that the pods an earlier rehearsal of the batch left are listed again and two rehearsals never see each
    other's pods. Pickled into Ray tasks without the fake: a task builds its clients with `client()`."""

    def __init__(self, rehearse: bool = False, faults: str = "", state_dir: str | Path | None = None):
        if faults and not rehearse:
            raise PgolfError("--rehearse-faults needs --rehearse (faults are only injected into the fake API)")
        if faults:
            from runner.backends.runpod.fake import parse_faults
            parse_faults(faults)   # a typo fails before anything starts
        self.rehearse, self.faults = rehearse, faults
        self.state_dir = Path(state_dir) if state_dir else None
        self.timing = REHEARSAL if rehearse else REAL
        self.origin: str | None = None
        self.fake = None

    def __getstate__(self) -> dict[str, Any]:   # never the fake server (threads, sockets)
        return dict(self.__dict__, fake=None)

    def open(self) -> "Session":
        """Start the fake (rehearsal, once)."""
        if self.rehearse and self.fake is None:
            if self.state_dir is None:
                raise PgolfError("a rehearsal needs its run directory (its fake RunPod keeps its state there)")
            from runner.backends.runpod.fake import FakeRunPod
            self.fake = FakeRunPod(self.state_dir, faults=self.faults)
            self.origin = self.fake.start()
        return self

    def client(self, env: dict[str, str] | None = None, notify: Say | None = None,
               patient: bool = False) -> api.RunPodClient:
        """A client of this session's API (`env`: the job's environment, where the key may be); `patient`
        waits out a used-up rate-limit window however long (gc), where others stop at the cap."""
        key = REHEARSAL_KEY if self.rehearse else api.resolve_api_key({**os.environ, **(env or {})})
        pacing = api.Pacing(time_scale=self.timing.time_scale,
                            sse_read_timeout_s=2.0 if self.rehearse else api.Pacing.sse_read_timeout_s)
        return api.RunPodClient(key, origin=self.origin, pacing=pacing, notify=notify, patient=patient)

    def close(self) -> None:
        if self.fake is not None:
            self.fake.stop()
            self.fake = None

    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


class Stuck(InfraFailure):
    """The pod's bootstrap never answered within [runpod] start_timeout_s of its creation (an image pull
    that never ends, a host that never starts it; RunPod bills such pods all the same)."""


@dataclass(frozen=True)
class PodShape:
    """What kind of pod: `gpu_count` x `gpu_type`, or a CPU flavor (`cpu`, e.g. cpu3c) with `vcpus`."""
    gpu_type: str | None = api.GPU_H100_SXM
    gpu_count: int = 8
    cpu: str | None = None
    vcpus: int = 4
    cloud: str = "SECURE"
    data_centers: tuple[str, ...] = ()
    min_cuda: str | None = None      # the host's CUDA floor (gpu.minCudaVersion): the image's CUDA

    def __str__(self) -> str:
        what = f"{self.cpu} x {self.vcpus} vCPU" if self.cpu else f"{self.gpu_count} x {self.gpu_type}"
        return f"{what} ({self.cloud})"

    def compute(self) -> dict:
        """The `gpu` or `cpu` part of a create request."""
        if self.cpu:
            return {"cpu": api.CpuRequest(id=self.cpu, vcpu_count=self.vcpus)}
        return {"gpu": api.GpuRequest(id=self.gpu_type, count=self.gpu_count, min_cuda_version=self.min_cuda)}


@dataclass(frozen=True)
class Offer:
    price_per_hour: float            # RunPod's list price for this shape and cloud
    availability: str                # NONE LOW MEDIUM HIGH
    data_centers: tuple[str, ...]    # where it is in stock
    line: str                        # what pgolf found, said to the user before creating anything


def offer(client: api.RunPodClient, shape: PodShape, money: Callable[[float], str] = "${:.2f}".format) -> Offer:
    """Price and stock of the shape from RunPod's catalog; PgolfError when RunPod cannot make such a pod.
    `money` formats the price in the line (a rehearsal's is not money)."""
    if shape.cpu:
        flavor = next((c for c in client.cpu_types(shape.vcpus) if c.id == shape.cpu), None)
        if flavor is None:
            raise PgolfError(f"[runpod] cpu = {shape.cpu!r}: RunPod has no such CPU flavor; known: "
                             f"{', '.join(c.id for c in client.cpu_types())}")
        n = shape.vcpus
        if n & (n - 1) or not flavor.vcpu.min <= n <= flavor.vcpu.max:
            raise PgolfError(f"[runpod] vcpus = {n}: {flavor.id} takes a power of two from {flavor.vcpu.min} "
                             f"to {flavor.vcpu.max}")
        price, level, dcs = flavor.price_per_hour(n), flavor.availability or "unknown", flavor.data_centers
    else:
        gpu = client.gpu_type(shape.gpu_type, shape.gpu_count, shape.cloud, shape.min_cuda)
        if gpu is None:
            raise PgolfError(f"[runpod] gpu_type = {shape.gpu_type!r}: not in RunPod's GPU catalog")
        most = gpu.max_count.community if shape.cloud == "COMMUNITY" else gpu.max_count.secure
        if shape.gpu_count > most:
            raise PgolfError(f"[runpod] gpu_count = {shape.gpu_count}: {gpu.name} pods have at most {most} GPUs "
                             f"in {shape.cloud} cloud")
        price, level, dcs = gpu.price_per_hour(shape.cloud, shape.gpu_count), gpu.availability or "unknown", gpu.data_centers
    where = tuple(d.id for d in dcs if d.availability != "NONE" and (not shape.data_centers or d.id in shape.data_centers))
    cuda = f", CUDA >= {shape.min_cuda}" if shape.min_cuda else ""
    line = (f"RunPod stock for {shape}{cuda}: {level}" + (f" in {', '.join(where)}" if where else ", in no data center")
            + f"; {money(price)}/h list price")
    return Offer(round(price, 4), level, where, line)


def volume_placement(client: api.RunPodClient, volume_id: str, data_centers: tuple[str, ...]) -> tuple[str, ...]:
    """(the network volume's data center,): a pod mounts a volume of its own data center only (v2's
    NetworkMount). PgolfError, before any pod, when the volume is unknown or [runpod] data_centers leaves
    its data center out."""
    try:
        vol = client.get_volume(volume_id)
    except api.ApiError as e:
        raise PgolfError(f"[runpod] network_volume = {volume_id!r}: {e}") from None
    if vol is None:
        raise PgolfError(f"[runpod] network_volume = {volume_id!r}: no such network volume on this RunPod account")
    if data_centers and vol.data_center not in data_centers:
        raise PgolfError(f"[runpod] data_centers = {list(data_centers)} leaves out {vol.data_center}, where network "
                         f"volume {volume_id} lives: a pod elsewhere cannot mount it; add it or drop data_centers")
    return (vol.data_center,)


def pod_name(run_dir: str, seed: int, attempt: int) -> str:
    """pgolf-<run>-s<seed>-a<attempt>: unique per attempt, so a lost create answer is adopted by name, and
    gc and `cluster down` recognise pgolf's pods and their batch."""
    return f"{batch_prefix(run_dir)}s{seed}-a{attempt}"


def batch_prefix(run_dir: str | Path) -> str:
    """pgolf-<run>-: the start of every pod name of the batch in `run_dir`."""
    batch = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(os.path.normpath(str(run_dir))))[:40]
    return f"{NAME_PREFIX}{batch}-"


def create(client: api.RunPodClient, req: api.CreatePod, timing: Timing, say: Say) -> api.Pod:
    """The pod; while RunPod has no capacity, or the account's spend limit is reached (other pods may end),
    back off (doubling) for up to `timing.capacity_wait_s`, then the attempt fails as infrastructure.
    Refusals no wait can fix (402 balance, 422, other 400s) are PgolfError: the batch cannot go on."""
    def note(state) -> None:
        e = state.outcome.exception()
        why = str(e) if isinstance(e, api.SpendLimitError) else f"no capacity ({e.detail})"
        say(f"pgolf-runpod: {why}; retrying in {state.next_action.sleep:.0f} s")
    try:
        for try_ in Retrying(retry=retry_if_exception_type((api.CapacityError, api.SpendLimitError)), reraise=True,
                             stop=stop_after_delay(timing.capacity_wait_s), before_sleep=note,
                             wait=wait_exponential(multiplier=timing.capacity_backoff_s, max=timing.capacity_backoff_max_s)):
            with try_:
                return client.create_pod(req)
    except (api.CapacityError, api.SpendLimitError) as e:
        raise InfraFailure(f"no pod after {timing.capacity_wait_s / 60:.0f} min of waiting: {e}") from None
    except api.QuotaExhausted as e:          # hours away: no retry can help, the batch says so and stops
        raise PgolfError(str(e)) from None
    except (api.TransientError, api.RateLimited) as e:
        raise InfraFailure(f"RunPod API unreachable while creating the pod: {e}") from None
    except (api.BalanceError, api.Refused, api.InvalidRequest, api.Forbidden, api.AuthError) as e:
        raise PgolfError(str(e)) from None
    raise AssertionError("unreachable")


def start_limit_s(start_timeout_s: float, timing: Timing) -> float:
    """How long, in this session's seconds, a pod may take from its creation until its bootstrap answers:
    `[runpod] start_timeout_s` (a rehearsal's clock runs `time_scale` times faster, as its faults do)."""
    return start_timeout_s * timing.time_scale


def starting_label(pod: api.Pod) -> str:
    """What a pod whose bootstrap has not answered yet is doing, by what RunPod says of it: RUNNING with no
    `runtime` is the host still pulling the image (RunPod lists such a pod RUNNING all the same)."""
    if pod.status == "RUNNING":
        return "pulling image" if pod.runtime is None else "container starting"
    return pod.status.lower()


def wait_ready(client: api.RunPodClient, pod: api.Pod, limit_s: float, timing: Timing,
               answers: Callable[[str], bool], serving: Callable[[], bool],
               starting: Callable[[str, float], None]) -> tuple[api.Pod, str]:
    """(pod, base URL of its bootstrap's server) once the bootstrap answers: its /status at the public
    ip:port of its symmetrical TCP port (or RunPod's proxy, for a pod with an HTTP port and no TCP address
    yet), or its "serving on port(s)" line in the pod log (`serving()`), whichever comes first. Until then
    the pod is *starting*, whatever its status says (`starting(label, seconds since creation)` on every
    look); Stuck once `limit_s` passed since its creation (image pull included); InfraFailure when it is
    gone or ended first."""
    created = _epoch(pod.created_at) or time.time()
    while True:
        waited = time.time() - created
        try:
            cur = client.get_pod(pod.id)
        except (api.TransientError, api.RateLimited) as e:
            if waited > limit_s:
                raise InfraFailure(f"RunPod API unreachable while pod {pod.id} starts: {e}") from None
            time.sleep(timing.poll_s)
            continue
        if cur is None or cur.status not in LIVE:
            raise InfraFailure(f"pod {pod.id} lost ({'gone' if cur is None else cur.status} before it started)")
        end = cur.tcp_endpoint()
        bases = [f"http://{end[0]}:{end[1]}"] if end else \
            [cur.proxy_url(PROXY_PORT)] if cur.status == "RUNNING" and f"{PROXY_PORT}/http" in cur.ports else []
        for base in bases:
            if answers(base) or serving():
                return cur, base
        if waited > limit_s:
            here = "" if timing.time_scale == 1 else f", rehearsal time: {waited:.1f} s here"
            raise Stuck(f"pod {pod.id} did not answer within [runpod] start_timeout_s = "
                        f"{limit_s / timing.time_scale:.0f} s of its creation (waited {waited / timing.time_scale:.0f} "
                        f"s{here}); still {starting_label(cur)} ({cur.status})")
        starting(starting_label(cur), waited)
        time.sleep(timing.poll_s)


def check_alive(client: api.RunPodClient, pod_id: str) -> api.Pod | None:
    """The pod (None when the API cannot say right now); InfraFailure once it is gone or no longer running."""
    try:
        pod = client.get_pod(pod_id)
    except (api.TransientError, api.RateLimited):
        return None
    if pod is None or pod.status != "RUNNING":
        raise InfraFailure(f"pod {pod_id} lost ({'gone' if pod is None else pod.status})")
    return pod


def gone(client: api.RunPodClient, pod_id: str) -> bool:
    """Whether RunPod is done with the pod: 404, TERMINATED ("permanently deleted", the schema's
    PodStatus), or, when it cannot say of that pod (an error other than 404), absent from the pod list."""
    try:
        pod = client.get_pod(pod_id)
    except api.ApiError:
        return all(p.id != pod_id for p in client.list_pods())
    return pod is None or pod.status == "TERMINATED"


def terminate_verified(client: api.RunPodClient, pod_ids: list[str], timing: Timing, say: Say | None = None) -> list[str]:
    """DELETE every pod, then poll until each one is `gone`, asking again now and then. Returns the ids
    still there at the deadline. Never raises: it runs on every path out of an attempt."""
    left = list(pod_ids)
    deadline = time.time() + timing.gone_timeout_s
    polls = 0
    while left:
        still = []
        for pid in left:
            try:
                if polls % timing.terminate_again_every == 0:
                    client.delete_pod(pid)
                if not gone(client, pid):
                    still.append(pid)
            except Exception as e:  # noqa: BLE001 - keep trying until the deadline, whatever the API does
                if polls == 0 and say is not None:
                    say(f"terminate {pid}: {e}")
                still.append(pid)
        left = still
        if not left or time.time() >= deadline:
            return left
        polls += 1
        time.sleep(timing.gone_poll_s)
    return left


def billed_cost(client: api.RunPodClient, pod_id: str, since: str, timing: Timing) -> float | None:
    """What RunPod billed for the pod (its billing records from `since`); None when none came in time."""
    for n in range(timing.billing_tries):
        try:
            cost = client.pod_cost(pod_id, since)
        except api.ApiError:
            cost = None
        if cost is not None:
            return cost
        if n + 1 < timing.billing_tries:
            time.sleep(timing.poll_s)
    return None


def pod_cost(client: api.RunPodClient, pod: api.Pod, timing: Timing, ended: float | None = None,
             usd_per_hour: float | None = None) -> tuple[float, str]:
    """(dollars, "billed" or "estimate"): what a pod cost, billed when RunPod's records have it, else its
    price (or `usd_per_hour`) times its lifetime, from its creation to `ended` (verified gone; default now)."""
    billed = billed_cost(client, pod.id, pod.created_at, timing) if pod.created_at else None
    if billed is not None:
        return billed, "billed"
    return estimated_cost(pod, usd_per_hour, ended), "estimate"


def estimated_cost(pod: api.Pod, usd_per_hour: float | None = None, ended: float | None = None) -> float:
    """The pod's price (else `usd_per_hour`) times its lifetime, from its creation to `ended` (default now)."""
    end = ended or time.time()
    return (pod.cost or usd_per_hour or 0.0) * max(0.0, end - (_epoch(pod.created_at) or end)) / 3600


def record_twin(att: dict, pod_id: str, cost: float | None) -> None:
    """A twin of the attempt's pod (a lost create answer's), terminated: its id goes into `twin_pods` and its
    cost into `twin_cost_usd`, and into `cost_usd` too when the attempt's own cost is recorded (money spent
    for that attempt). A twin recorded already is left as it is."""
    if pod_id in (att.get("twin_pods") or []):
        return
    att["twin_pods"] = sorted(set(att.get("twin_pods") or []) | {pod_id})
    if cost is not None:
        att["twin_cost_usd"] = round((att.get("twin_cost_usd") or 0.0) + cost, 6)
        if att.get("cost_usd") is not None:
            att["cost_usd"] = round(att["cost_usd"] + cost, 6)


def list_ours(client: api.RunPodClient, prefix: str = NAME_PREFIX) -> list[api.Pod]:
    """The account's pods whose name starts with `prefix` (pgolf's by default)."""
    try:
        return [p for p in client.list_pods() if p.name.startswith(prefix)]
    except api.ApiError as e:
        raise PgolfError(str(e)) from None


def batch_pod_name(run_dir: str | Path) -> re.Pattern:
    """The deterministic names of a batch's pods (pod_name of any seed and attempt): a live pod carrying
    one that no ledger entry names is a twin (a create whose answer was lost, then made again)."""
    return re.compile(re.escape(batch_prefix(run_dir)) + r"s(\d+)-a(\d+)")


def reap_dead_driver(run_dir: str | Path, ledger: Ledger, rehearse: bool, say: Say) -> None:
    """The pods a dead driver left, stopped FIRST by `pgolf resume` (before any check that may refuse: a
    missing secret must not keep them billing), with the batch's lock held, so no pod of the batch is in
    use: every attempt's pod not recorded terminated, and every live twin (a pod carrying one of the batch's
    deterministic names that no entry names). Each is terminated and verified gone once, here, and
    recorded in the ledger (`pod_terminated`, twins and their cost in their attempt's entry: `record_twin`),
    so the rerun seeds' tasks find nothing to do. Judged by the API that made them: the batch's own (the rehearsal's fake when
    `rehearse`). Never raises: the resume goes on, and `pgolf cluster gc` is the fallback."""
    session = Session(rehearse, state_dir=Path(run_dir) / REHEARSAL_DIR if rehearse else None)
    if rehearse and not (Path(run_dir) / REHEARSAL_DIR / "state.json").exists():
        return                                    # the rehearsal never made a pod
    entries = [(seed, att) for seed, att in ledger.all_attempts() if att.get("pod_id")]
    named = {att["pod_id"] for _s, att in entries}
    try:
        with session, session.client(notify=say) as client:
            pattern = batch_pod_name(run_dir)
            twins = [p for p in list_ours(client, batch_prefix(run_dir))
                     if pattern.fullmatch(p.name) and p.id not in named and p.status != "TERMINATED"]
            ids = [att["pod_id"] for _s, att in entries if att.get("pod_terminated") is not True]
            ids += [p.id for p in twins]
            if not ids:
                return
            left = set(terminate_verified(client, ids, session.timing, say))
            costs = {p.id: pod_cost(client, p, session.timing)[0] for p in twins if p.id not in left}
    except (PgolfError, api.ApiError) as e:
        say(f"cannot stop the pods the dead driver left ({e}); `pgolf cluster gc` terminates them later")
        return
    for seed, att in entries:
        if att.get("pod_terminated") is not True and att["pod_id"] not in left:
            att["pod_terminated"] = True
    for twin in twins:
        seed, attempt = map(int, pattern.fullmatch(twin.name).groups())
        att = ledger.attempt(seed, attempt)
        if att is not None and twin.id not in left:
            record_twin(att, twin.id, costs.get(twin.id))
    ledger.save()
    gone = [i for i in ids if i not in left]
    say(f"terminated {len(gone)} pod(s) the dead driver left, verified gone: {', '.join(gone) or '-'}"
        + (f" (twins of the batch's pod names: {', '.join(t.id for t in twins)})" if twins else "")
        + (f"; STILL THERE: {', '.join(sorted(left))}: `pgolf cluster gc` tries again" if left else ""))


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
