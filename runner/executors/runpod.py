"""Backend `runpod`: each seed attempt is one Ray task (on the driver's machine) that drives one RunPod pod.

create (8 x H100 SXM, SECURE) -> pod id into the ledger first -> the pod's bootstrap prepares data, checks
the machine and runs torchrun -> the task streams the pod log into the ledger and downloads the artifacts ->
terminate and poll until the pod is gone, in a `finally` that no exception skips.

Capacity errors back off and retry the create (tenacity); a pod that vanishes or stops answering raises
InfraFailure (the driver retries on a fresh pod); a non-zero exit is the job's (the spec's retries).
With rehearse=True, start() runs the fake RunPod API (runner/fake_runpod.py) and points the client at it.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from results.errors import PgolfError
from runner import runpod_api as api
from runner.executors.base import AttemptResult, AttemptSpec, Events, InfraFailure

ENV_CHUNK = 16_000              # characters per env var: far under any per-value limit
MAX_SHIPPED_CHARS = 600_000     # the whole create request stays well under RunPod's request size limit
BOOTSTRAP = Path(__file__).resolve().parents[1] / "bootstrap.py"
REHEARSAL_KEY = "pgolf-rehearsal"
SECRET_PASS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")   # secrets the job may need on the pod
NEVER_SHIP = re.compile(r"^(RUNPOD_|RAY_|PATH$|HOME$|PWD$|OLDPWD$|SHELL$|USER$|LOGNAME$|TERM$|TMPDIR$|"
                        r"PYTHON|VIRTUAL_ENV|LD_|CUDA_VISIBLE_DEVICES$|PGOLF_(BOOT|SCRIPT|JOB)_)")
OFFICIAL_VARIANTS = ("byte260", "sp512", "sp1024", "sp2048", "sp4096", "sp8192")
START_COMMAND = ("bash -c 'set -eo pipefail; W=${PGOLF_WORKDIR:-/root/pgolf}; mkdir -p $W; "
                 "for k in $(compgen -e PGOLF_BOOT_ | sort); do printf %s ${!k}; done "
                 "| base64 -d | gzip -dc > $W/bootstrap.py; exec python3 $W/bootstrap.py'")

DEFAULTS: dict[str, Any] = {
    "gpu_type": api.GPU_H100_SXM, "gpu_count": 8, "cloud_type": "SECURE",
    "image": "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04",
    "container_disk_gb": 80, "volume_gb": 0, "port": 8000, "max_pods": 8,
    "price_per_hour": None,        # dollars per pod-hour for the estimate; None = RunPod's list price
    "setup_s": 900,                # pod start + data + compile, for the cost estimate and the backstop
    "train_s": 600, "eval_s": 600,
    "setup_command": "",           # shell command on the pod before the data (e.g. pip install ...)
    "data_repo": "", "data_remote_root": "", "train_shards": 80,   # the official dataset on Hugging Face
    "min_triton": "3.7.1",
    "backstop_grace_s": 900,       # the pod kills itself this long after its job should have ended
    "collect_grace_s": 1800,       # ... or this long after the job ended with nobody collecting
}


@dataclass(frozen=True)
class Timing:
    """Polling intervals and patience; the rehearsal's are short so tests stay fast."""
    poll_s: float
    startup_timeout_s: float
    unreachable_s: float
    gone_timeout_s: float
    capacity_wait_s: float
    capacity_backoff_s: float
    capacity_backoff_max_s: float
    pod_check_every: int


REAL = Timing(poll_s=5.0, startup_timeout_s=1200, unreachable_s=180, gone_timeout_s=300,
              capacity_wait_s=3 * 3600, capacity_backoff_s=15, capacity_backoff_max_s=300, pod_check_every=12)
REHEARSAL = Timing(poll_s=0.2, startup_timeout_s=60, unreachable_s=10, gone_timeout_s=30,
                   capacity_wait_s=120, capacity_backoff_s=0.2, capacity_backoff_max_s=1.0, pod_check_every=5)


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's [runpod] section over the defaults; unknown keys are errors (typos cost money)."""
    section = dict((spec or {}).get("runpod") or {})
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise PgolfError(f"job spec [runpod]: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **section}
    if out["cloud_type"] not in ("SECURE", "COMMUNITY", "ALL"):
        raise PgolfError(f"job spec [runpod] cloud_type={out['cloud_type']!r}: use SECURE, COMMUNITY or ALL")
    if int(out["gpu_count"]) < 1 or int(out["max_pods"]) < 1:
        raise PgolfError("job spec [runpod]: gpu_count and max_pods must be >= 1")
    return out


def pod_name(run_dir: str, seed: int, attempt: int) -> str:
    batch = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(os.path.normpath(run_dir)))[:40]
    return f"{api.NAME_PREFIX}{batch}-s{seed}-a{attempt}"


def chunk_env(prefix: str, data: bytes) -> dict[str, str]:
    text = base64.b64encode(gzip.compress(data, 9)).decode()
    return {f"{prefix}{i // ENV_CHUNK:03d}": text[i:i + ENV_CHUNK] for i in range(0, len(text), ENV_CHUNK)}


def job_env(attempt: AttemptSpec) -> dict[str, str]:
    """What the job gets on the pod: the driver's job env (spec env, data paths, limits) minus RunPod's own
    key and machine-local variables; of the user's secrets only those the spec names or jobs commonly need
    (HF_TOKEN, ...), never every *_KEY of the user's shell."""
    from results.secrets import is_secret_name as is_secret
    named = set((attempt.spec or {}).get("env") or {})
    out = {k: str(v) for k, v in attempt.env.items()
           if not NEVER_SHIP.match(k) and (not is_secret(k) or k in named or k in SECRET_PASS)}
    out.update(SEED=str(attempt.seed), RUN_ID=f"seed{attempt.seed}_attempt{attempt.attempt}",
               PGOLF_ATTEMPT=str(attempt.attempt), PYTHONUNBUFFERED="1")
    return out


def check_budget(spec: dict[str, Any], n_seeds: int, rehearse: bool = False) -> float:
    """Refuse (PgolfError, numbers in the message) when the balance is under twice the batch estimate:
    seeds x (train + eval + setup) x the pod's price. Returns the estimate in dollars."""
    s = settings(spec)
    try:
        price = float(s["price_per_hour"] or api.gpu_price_per_hour(s["gpu_type"], int(s["gpu_count"]),
                                                                    s["cloud_type"]))
        balance = api.get_balance()["clientBalance"]
    except api.ApiError as e:
        raise PgolfError(f"RunPod API: {e}") from None
    hours = (float(s["train_s"]) + float(s["eval_s"]) + float(s["setup_s"])) / 3600
    estimate = n_seeds * hours * price
    msg = (f"RunPod: {n_seeds} seed(s) x {hours:.2f} h x ${price:.2f}/h = ${estimate:.2f} estimated; "
           f"balance ${balance:.2f}")
    if balance < 2 * estimate:
        raise PgolfError(f"{msg}: under twice the estimate (${2 * estimate:.2f}); add funds or run fewer seeds")
    print(msg + (" (rehearsal: fake API, no money)" if rehearse else ""), flush=True)
    return estimate


class RunPodBackend:
    name = "runpod"

    def __init__(self, spec: dict[str, Any] | None = None, rehearse: bool = False, faults: str = ""):
        self.spec = spec or {}
        self.rehearse = rehearse
        self.faults = faults
        self.timing = REHEARSAL if rehearse else REAL
        self.api_base: str | None = None
        self.fake = None
        if faults and not rehearse:
            raise PgolfError("--rehearse-faults needs --rehearse (faults are only injected into the fake API)")
        if faults:
            from runner.fake_runpod import parse_faults
            parse_faults(faults)   # a typo fails before anything starts

    def __getstate__(self):   # shipped to Ray tasks: never the fake server (threads, sockets)
        state = dict(self.__dict__)
        state["fake"] = None
        return state

    # ---- driver side
    def ray_options(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"num_cpus": 0, "resources": {"runpod_pod": 1}}

    def max_pods(self) -> int:
        """Capacity of the `runpod_pod` Ray resource the driver registers on its node."""
        return int(settings(self.spec)["max_pods"])

    def start(self) -> None:
        if self.rehearse and self.fake is None:
            from runner.fake_runpod import FakeRunPod
            self.fake = FakeRunPod(faults=self.faults)
            self.api_base = self.fake.start()
            os.environ["RUNPOD_API_BASE_URL"] = self.api_base

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()
            self.fake = None
            if os.environ.get("RUNPOD_API_BASE_URL") == self.api_base:
                del os.environ["RUNPOD_API_BASE_URL"]

    def _connect(self, env: dict[str, str] | None = None) -> None:
        if self.api_base:
            os.environ["RUNPOD_API_BASE_URL"] = self.api_base
        if self.rehearse:
            api.configure((env or {}).get("RUNPOD_API_KEY") or os.environ.get("RUNPOD_API_KEY") or REHEARSAL_KEY,
                          backoff_s=0.05)
        else:
            api.configure(api.resolve_api_key(env))

    def preflight(self, spec: dict[str, Any], n_seeds: int) -> None:
        """Refuse to start when the balance is under twice the batch estimate (numbers in the message)."""
        s = settings(spec)
        data = (spec or {}).get("data") or {}
        if not self.rehearse and not data.get("prepare") and data.get("variant") not in OFFICIAL_VARIANTS:
            raise PgolfError(f"[data] variant={data.get('variant')!r} exists only on this machine; a RunPod pod "
                             f"needs an official variant ({', '.join(OFFICIAL_VARIANTS)}) or a [data] prepare "
                             f"command (or rehearse with --rehearse)")
        self.start()
        self._connect()
        check_budget(spec, n_seeds, self.rehearse)

    # ---- one attempt, inside a Ray task
    def run_attempt(self, attempt: AttemptSpec, events: Events) -> AttemptResult:
        s = settings(attempt.spec or self.spec)
        self._connect(attempt.env)
        name = pod_name(attempt.run_dir, attempt.seed, attempt.attempt)
        token = secrets.token_hex(16)
        pod_id: str | None = None
        created = time.time()
        price: list[float] = [0.0]
        result: AttemptResult | None = None
        try:
            from runner.ledger import now_iso
            events.meta(started=now_iso())      # when it really starts, not when Ray queued it
            self._reap_leftovers(attempt, events)
            pod = self._create(name, s, self._pod_env(attempt, s, token), events)
            pod_id, created = pod["id"], time.time()
            events.meta(pod_id=pod_id, node=f"runpod:{pod_id}")       # durable before the pod is used
            events.line(f"pgolf-runpod: pod {pod_id} ({name}) created")
            result = self._drive(pod_id, attempt, s, token, events, price)
            return result
        finally:
            self._finish(pod_id, name, created, price[0], events, result)

    def _reap_leftovers(self, attempt: AttemptSpec, events: Events) -> None:
        """Pods of this batch's ended attempts that may still bill (a dead driver's, closed by `pgolf resume`,
        or one whose termination was not verified): terminate them now rather than wait for their backstop.
        Never fails the attempt; `pgolf cluster gc` verifies and records them."""
        try:
            ledger = json.loads((Path(attempt.run_dir) / "ledger.json").read_text())
        except (OSError, ValueError):
            return
        for seed, entry in (ledger.get("seeds") or {}).items():
            for att in entry.get("attempts") or []:
                pid = att.get("pod_id")
                if not pid or att.get("ended") is None or att.get("pod_terminated") is True:
                    continue
                try:
                    if api.get_pod(pid) is not None:
                        api.terminate_pod(pid)
                        events.line(f"pgolf-runpod: terminated pod {pid} left by seed {seed} attempt "
                                    f"{att.get('attempt')} ({att.get('error') or 'not verified gone'})")
                except api.ApiError:
                    pass

    def _finish(self, pod_id, name, created, price, events, result) -> None:
        """Terminate and verify gone; record lifetime cost. Runs on every path out of run_attempt."""
        try:
            ids = [pod_id] if pod_id else [p["id"] for p in api.list_pods() if p.get("name") == name]
        except Exception:  # noqa: BLE001 - the API is down; gc will find it by name
            ids = []
        for pid in ids:
            gone = self._terminate_verified(pid)
            if pid != pod_id:
                continue
            cost = round(price * (time.time() - created) / 3600, 4) if price else None
            try:
                events.line(f"pgolf-runpod: pod {pid} " + ("terminated (verified gone)" if gone else
                            "NOT verified terminated: run `pgolf cluster gc`") +
                            (f", cost ${cost:.2f}" if cost is not None else ""))
                events.meta(pod_terminated=gone, cost_usd=cost)
            finally:
                if result is not None:
                    result.pod_terminated, result.cost_usd = gone, cost

    def _pod_env(self, attempt: AttemptSpec, s: dict[str, Any], token: str) -> dict[str, str]:
        data = (attempt.spec or {}).get("data") or {}
        job = {"launcher": (attempt.spec or {}).get("launcher") or "torchrun", "env": job_env(attempt), "nproc_per_node": attempt.nproc_per_node,
               "gpu_type": s["gpu_type"], "gpu_count": int(s["gpu_count"]), "deadline_s": attempt.timeout_s,
               "backstop_s": float(s["setup_s"]) + attempt.timeout_s + float(s["backstop_grace_s"]),
               "collect_grace_s": 120.0 if self.rehearse else float(s["collect_grace_s"]),
               "setup_command": s["setup_command"], "min_triton": s["min_triton"], "rehearse": self.rehearse,
               "script_name": "train_gpt.py",
               "data": {"variant": data.get("variant") if data.get("variant") in OFFICIAL_VARIANTS else None,
                        "repo": s["data_repo"], "remote_root": s["data_remote_root"],
                        "train_shards": s["train_shards"], "command": data.get("prepare")}}
        env = {"PGOLF_POD_TOKEN": token}
        env.update(chunk_env("PGOLF_BOOT_", BOOTSTRAP.read_bytes()))
        env.update(chunk_env("PGOLF_SCRIPT_", Path(attempt.script_path).read_bytes()))
        env.update(chunk_env("PGOLF_JOB_", json.dumps(job).encode()))
        size = sum(len(k) + len(v) for k, v in env.items())
        if size > MAX_SHIPPED_CHARS:
            raise PgolfError(f"{attempt.script_path}: script + bootstrap = {size} characters encoded, over the "
                             f"{MAX_SHIPPED_CHARS} pgolf ships in a pod's environment; shrink the script")
        return env

    def _create(self, name: str, s: dict[str, Any], env: dict[str, str], events: Events) -> dict[str, Any]:
        t = self.timing

        def note(state):
            events.line(f"pgolf-runpod: no capacity for {s['gpu_count']} x {s['gpu_type']} ({s['cloud_type']}); "
                        f"retrying in {state.next_action.sleep:.0f} s")
        try:
            for try_ in Retrying(retry=retry_if_exception_type(api.CapacityError), reraise=True,
                                 stop=stop_after_delay(t.capacity_wait_s), before_sleep=note,
                                 wait=wait_exponential(multiplier=t.capacity_backoff_s, max=t.capacity_backoff_max_s)):
                with try_:
                    return api.create_pod(name=name, image=s["image"], gpu_type=s["gpu_type"],
                                          gpu_count=int(s["gpu_count"]), cloud_type=s["cloud_type"],
                                          container_disk_gb=int(s["container_disk_gb"]),
                                          volume_gb=int(s["volume_gb"]), ports=f"{int(s['port'])}/http",
                                          env=env, docker_args=START_COMMAND)
        except api.CapacityError as e:
            raise InfraFailure(f"no RunPod capacity after {t.capacity_wait_s / 60:.0f} min: {e}") from None
        except api.TransientError as e:
            raise InfraFailure(f"RunPod API unreachable while creating the pod: {e}") from None
        raise AssertionError("unreachable")

    def _pod_or_lost(self, pod_id: str) -> dict[str, Any]:
        try:
            pod = api.get_pod(pod_id)
        except api.TransientError:
            return {}
        if pod is None or pod.get("desiredStatus") not in ("RUNNING", None):
            state = "gone" if pod is None else pod.get("desiredStatus")
            raise InfraFailure(f"pod {pod_id} lost ({state})")
        return pod

    def _drive(self, pod_id: str, attempt: AttemptSpec, s: dict[str, Any], token: str, events: Events,
               price: list[float]) -> AttemptResult:
        t = self.timing
        port = int(s["port"])
        up_by = time.time() + t.startup_timeout_s
        while True:                                    # wait for the container to have its port mapped
            pod = self._pod_or_lost(pod_id)
            if pod.get("costPerHr"):
                price[0] = float(pod["costPerHr"])
            addr = api.pod_address(pod, port) if pod else None
            if addr:
                break
            if time.time() > up_by:
                raise InfraFailure(f"pod {pod_id} did not start within {t.startup_timeout_s:.0f} s")
            time.sleep(t.poll_s)

        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        stream = _LogStream(events)
        last_ok, polls = time.time(), 0
        give_up = time.time() + float(s["setup_s"]) + attempt.timeout_s + float(s["backstop_grace_s"])
        while True:
            polls += 1
            try:
                stream.pull(http, addr)
                status = http.get(f"{addr}/status", timeout=30).json()
                last_ok = time.time()
            except (requests.RequestException, ValueError):
                self._pod_or_lost(pod_id)              # a vanished pod is InfraFailure at once
                if time.time() - last_ok > t.unreachable_s:
                    raise InfraFailure(f"pod {pod_id} stopped answering for {t.unreachable_s:.0f} s") from None
                time.sleep(t.poll_s)
                continue
            if status.get("phase") == "done":
                stream.pull(http, addr, drain=True)
                got = self._download(http, addr, status.get("artifacts") or [], attempt.attempt_dir)
                return AttemptResult(exit_code=status.get("exit_code"), error=status.get("error"),
                                     node=f"runpod:{pod_id}", pod_id=pod_id, artifacts=got)
            if polls % t.pod_check_every == 0:
                self._pod_or_lost(pod_id)
            if time.time() > give_up:
                stream.flush()
                return AttemptResult(exit_code=124, error=f"attempt passed its deadline on pod {pod_id}",
                                     node=f"runpod:{pod_id}", pod_id=pod_id)
            time.sleep(t.poll_s)

    @staticmethod
    def _download(http: requests.Session, addr: str, artifacts: list[dict], attempt_dir: str) -> list[str]:
        """Every artifact of the run into attempt_dir/artifacts/, each written atomically."""
        got = []
        root = Path(attempt_dir) / "artifacts"
        for a in artifacts:
            rel = a["path"]
            if rel.startswith(("/", "..")) or "/../" in rel:
                continue
            dest = Path(attempt_dir) / rel if rel.startswith("artifacts/") else root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            r = http.get(f"{addr}/artifact", params={"path": rel}, timeout=600)
            r.raise_for_status()
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(r.content)
            os.replace(tmp, dest)
            got.append(str(dest.relative_to(attempt_dir)))
        return got

    def _terminate_verified(self, pod_id: str) -> bool:
        """podTerminate, then poll until RunPod no longer lists the pod; re-ask now and then."""
        t = self.timing
        deadline = time.time() + t.gone_timeout_s
        n = 0
        while time.time() < deadline:
            try:
                if n % 10 == 0:
                    api.terminate_pod(pod_id)
                if api.get_pod(pod_id) is None:
                    return True
            except Exception:  # noqa: BLE001 - keep trying until the deadline, whatever the API does
                pass
            n += 1
            time.sleep(min(t.poll_s, 2.0))
        return False


class _LogStream:
    """The pod log by byte offset, cut into lines for events.line (a partial last line waits)."""

    def __init__(self, events: Events):
        self.events, self.offset, self.partial = events, 0, b""

    def pull(self, http: requests.Session, addr: str, drain: bool = False) -> None:
        while True:
            r = http.get(f"{addr}/log", params={"offset": self.offset}, timeout=60)
            r.raise_for_status()
            size = int(r.headers.get("X-Log-Size") or 0)
            self.offset += len(r.content)
            *lines, self.partial = (self.partial + r.content).split(b"\n")
            for line in lines:
                self.events.line(line.decode("utf-8", "replace").rstrip("\r"))
            if not r.content or self.offset >= size:
                break
        if drain:
            self.flush()

    def flush(self) -> None:
        if self.partial:
            self.events.line(self.partial.decode("utf-8", "replace"))
            self.partial = b""
