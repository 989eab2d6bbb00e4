"""The pod lifecycle on RunPod, used by the backend (one pod per attempt) and by `pgolf cluster`.

Which API (`Session`: RunPod's, or the rehearsal's fake), create with back-off while there is no
capacity, wait until the pod's HTTP port is mapped, notice a pod that is gone, terminate and verify it is
gone, list pgolf's pods, and stop the pods a batch's ended attempts left behind. Polling intervals and
patience are named in `Timing`; the rehearsal's are short so tests stay fast.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from results.errors import PgolfError
from runner.backends.base import InfraFailure
from runner.backends.runpod import api
from runner.ledger import Ledger

if TYPE_CHECKING:
    from runner.spec import RunPodSettings

REHEARSAL_KEY = "pgolf-rehearsal"     # what the fake accepts when the user has no RunPod key at all
TERMINATE_AGAIN_EVERY = 10            # polls between repeated podTerminate calls while a pod is still listed

Say = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    """Polling intervals and patience of the lifecycle."""
    poll_s: float                  # status polls of a running pod
    startup_timeout_s: float       # create -> HTTP port mapped
    unreachable_s: float           # a pod whose HTTP port stays silent this long is lost
    gone_timeout_s: float          # terminate -> no longer listed
    gone_poll_s: float
    capacity_wait_s: float         # how long "no capacity" is waited out before the attempt fails
    capacity_backoff_s: float
    capacity_backoff_max_s: float
    pod_check_every: int           # status polls between two looks at the pod through the API


REAL = Timing(poll_s=5.0, startup_timeout_s=1200, unreachable_s=180, gone_timeout_s=300, gone_poll_s=2.0,
              capacity_wait_s=3 * 3600, capacity_backoff_s=15, capacity_backoff_max_s=300, pod_check_every=12)
REHEARSAL = Timing(poll_s=0.2, startup_timeout_s=60, unreachable_s=10, gone_timeout_s=30, gone_poll_s=0.2,
                   capacity_wait_s=120, capacity_backoff_s=0.2, capacity_backoff_max_s=1.0, pod_check_every=5)


class Session:
    """The RunPod API pgolf talks to: RunPod's own (key from RUNPOD_API_KEY or ~/.runpod/config.toml), or
    with `rehearse` the fake on 127.0.0.1, started on its state file so that pods an earlier rehearsal
    left behind are listed again. Pickled into Ray tasks without the fake: a task calls `connect()`."""

    def __init__(self, rehearse: bool = False, faults: str = ""):
        if faults and not rehearse:
            raise PgolfError("--rehearse-faults needs --rehearse (faults are only injected into the fake API)")
        if faults:
            from runner.backends.runpod.fake import parse_faults
            parse_faults(faults)   # a typo fails before anything starts
        self.rehearse, self.faults = rehearse, faults
        self.timing = REHEARSAL if rehearse else REAL
        self.base_url: str | None = None
        self.fake = None
        self._old_base: str | None = None

    def __getstate__(self) -> dict[str, Any]:   # never the fake server (threads, sockets)
        return dict(self.__dict__, fake=None)

    def open(self) -> "Session":
        """Start the fake (rehearsal, once) and point the client at the API."""
        if self.rehearse and self.fake is None:
            from runner.backends.runpod.fake import FakeRunPod
            self._old_base = os.environ.get(api.BASE_URL_ENV)
            self.fake = FakeRunPod(faults=self.faults)
            self.base_url = self.fake.start()
        self.connect()
        return self

    def connect(self, env: dict[str, str] | None = None) -> None:
        """Point this process's client at the API with the right key (`env`: the job's environment)."""
        if self.base_url:
            os.environ[api.BASE_URL_ENV] = self.base_url
        if self.rehearse:
            key = (env or {}).get(api.KEY_ENV) or os.environ.get(api.KEY_ENV) or REHEARSAL_KEY
            api.configure(key, backoff_s=0.05)
        else:
            api.configure(api.resolve_api_key(env))

    def close(self) -> None:
        if self.fake is None:
            return
        self.fake.stop()
        self.fake = None
        if self._old_base is None:
            os.environ.pop(api.BASE_URL_ENV, None)
        else:
            os.environ[api.BASE_URL_ENV] = self._old_base

    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def pod_name(run_dir: str, seed: int, attempt: int) -> str:
    """pgolf-<run>-s<seed>-a<attempt>: how gc and `cluster down` recognise pgolf's pods and their batch."""
    batch = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(os.path.normpath(run_dir)))[:40]
    return f"{api.NAME_PREFIX}{batch}-s{seed}-a{attempt}"


def create(name: str, s: "RunPodSettings", env: dict[str, str], docker_args: str, timing: Timing,
           say: Say) -> dict[str, Any]:
    """A pod of `s.gpu_count` x `s.gpu_type`; while RunPod has no capacity, back off (doubling) and try
    again for up to `timing.capacity_wait_s` before the attempt fails as infrastructure."""
    def note(state) -> None:
        say(f"pgolf-runpod: no capacity for {s.gpu_count} x {s.gpu_type} ({s.cloud_type}); "
            f"retrying in {state.next_action.sleep:.0f} s")
    try:
        for try_ in Retrying(retry=retry_if_exception_type(api.CapacityError), reraise=True,
                             stop=stop_after_delay(timing.capacity_wait_s), before_sleep=note,
                             wait=wait_exponential(multiplier=timing.capacity_backoff_s,
                                                   max=timing.capacity_backoff_max_s)):
            with try_:
                return api.create_pod(name=name, image=s.image, gpu_type=s.gpu_type, gpu_count=s.gpu_count,
                                      cloud_type=s.cloud_type, container_disk_gb=s.container_disk_gb,
                                      volume_gb=s.volume_gb, ports=f"{s.port}/http", env=env,
                                      docker_args=docker_args)
    except api.CapacityError as e:
        raise InfraFailure(f"no RunPod capacity after {timing.capacity_wait_s / 60:.0f} min: {e}") from None
    except api.TransientError as e:
        raise InfraFailure(f"RunPod API unreachable while creating the pod: {e}") from None
    raise AssertionError("unreachable")


def check_alive(pod_id: str) -> dict[str, Any]:
    """The pod as the API lists it ({} when the API is unreachable for now); InfraFailure once it is gone
    or no longer meant to run (preempted, exited)."""
    try:
        pod = api.get_pod(pod_id)
    except api.TransientError:
        return {}
    if pod is None or pod.get("desiredStatus") not in ("RUNNING", None):
        state = "gone" if pod is None else pod.get("desiredStatus")
        raise InfraFailure(f"pod {pod_id} lost ({state})")
    return pod


def wait_for_address(pod_id: str, port: int, timing: Timing, price: list[float]) -> str:
    """Base URL of the pod's HTTP port once the container runs. `price[0]` follows the pod's price per
    hour as the API reports it, so that even a pod that never started has a known cost."""
    up_by = time.time() + timing.startup_timeout_s
    while True:
        pod = check_alive(pod_id)
        if pod.get("costPerHr"):
            price[0] = float(pod["costPerHr"])
        addr = api.pod_address(pod, port) if pod else None
        if addr:
            return addr
        if time.time() > up_by:
            raise InfraFailure(f"pod {pod_id} did not start within {timing.startup_timeout_s:.0f} s")
        time.sleep(timing.poll_s)


def terminate_verified(pod_ids: list[str], timing: Timing, say: Say | None = None) -> list[str]:
    """podTerminate every pod, then poll until RunPod lists none of them, asking again now and then.
    Returns the ids still listed at the deadline. Never raises: it runs on every path out of an attempt."""
    left = list(pod_ids)
    deadline = time.time() + timing.gone_timeout_s
    polls = 0
    while left:
        still = []
        for pid in left:
            try:
                if polls % TERMINATE_AGAIN_EVERY == 0:
                    api.terminate_pod(pid)
                if api.get_pod(pid) is not None:
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


def list_ours(prefix: str = api.NAME_PREFIX) -> list[dict[str, Any]]:
    """The account's pods whose name starts with `prefix` (pgolf's by default)."""
    try:
        return [p for p in api.list_pods() if str(p.get("name") or "").startswith(prefix)]
    except api.ApiError as e:
        raise PgolfError(f"RunPod API: {e}") from None


def reap_leftovers(run_dir: str | Path, say: Say) -> None:
    """Pods of this batch's ended attempts that may still bill (a dead driver's, closed by `pgolf resume`,
    or one whose termination was not verified): terminate them now rather than wait for their backstop.
    Never fails the attempt; `pgolf cluster gc` verifies and records them."""
    try:
        ledger = Ledger.load(run_dir)
    except PgolfError:
        return
    for seed, att in ledger.all_attempts():
        pid = att.get("pod_id")
        if not pid or att.get("ended") is None or att.get("pod_terminated") is True:
            continue
        try:
            if api.get_pod(pid) is not None:
                api.terminate_pod(pid)
                say(f"pgolf-runpod: terminated pod {pid} left by seed {seed} attempt "
                    f"{att.get('attempt')} ({att.get('error') or 'not verified gone'})")
        except api.ApiError:
            pass
