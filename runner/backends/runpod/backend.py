"""Backend `runpod`: each seed attempt is one Ray task (on the driver's machine) that drives one RunPod pod.

create (8 x H100 SXM, SECURE) -> pod id into the ledger first -> the pod's bootstrap prepares data, checks
the machine and runs torchrun -> the task streams the pod log into the ledger and downloads the artifacts ->
terminate and poll until the pod is gone, in a `finally` that no exception skips.

Capacity errors back off and retry the create; a pod that vanishes or stops answering raises InfraFailure
(the driver retries on a fresh pod); a non-zero exit is the job's (the spec's retries). The pod lifecycle
itself (create, wait, terminate-and-verify, leftovers) is in instances.py, the API calls in api.py. With
rehearse=True the session runs the fake RunPod API (fake.py) and points the client at it.
"""
from __future__ import annotations

import base64
import gzip
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import requests

from results.errors import PgolfError
from results.files import atomic_write
from results.secrets import is_secret_name
from runner.backends.base import AttemptResult, AttemptSpec, ClusterAction, Events, InfraFailure
from runner.backends.runpod import api, instances
from runner.backends.runpod.instances import Session
from runner.ledger import now_iso
from runner.spec import JobSpec

ENV_CHUNK = 16_000              # characters per env var: far under any per-value limit
MAX_SHIPPED_CHARS = 600_000     # the whole create request stays well under RunPod's request size limit
BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
SECRET_PASS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")   # secrets the job may need on the pod
NEVER_SHIP = re.compile(r"^(RUNPOD_|RAY_|PATH$|HOME$|PWD$|OLDPWD$|SHELL$|USER$|LOGNAME$|TERM$|TMPDIR$|"
                        r"PYTHON|VIRTUAL_ENV|LD_|CUDA_VISIBLE_DEVICES$|PGOLF_(BOOT|SCRIPT|JOB)_)")
OFFICIAL_VARIANTS = ("byte260", "sp512", "sp1024", "sp2048", "sp4096", "sp8192")
START_COMMAND = ("bash -c 'set -eo pipefail; W=${PGOLF_WORKDIR:-/root/pgolf}; mkdir -p $W; "
                 "for k in $(compgen -e PGOLF_BOOT_ | sort); do printf %s ${!k}; done "
                 "| base64 -d | gzip -dc > $W/bootstrap.py; exec python3 $W/bootstrap.py'")
REHEARSAL_COLLECT_GRACE_S = 120.0   # a rehearsal pod nobody collects goes sooner than a real one


def chunk_env(prefix: str, data: bytes) -> dict[str, str]:
    text = base64.b64encode(gzip.compress(data, 9)).decode()
    return {f"{prefix}{i // ENV_CHUNK:03d}": text[i:i + ENV_CHUNK] for i in range(0, len(text), ENV_CHUNK)}


def job_env(spec: JobSpec, attempt: AttemptSpec) -> dict[str, str]:
    """What the job gets on the pod: the driver's job env (spec env, data paths, limits) minus RunPod's own
    key and machine-local variables; of the user's secrets only those the spec names or jobs commonly need
    (HF_TOKEN, ...), never every *_KEY of the user's shell."""
    named = set(spec.env)
    out = {k: str(v) for k, v in attempt.env.items()
           if not NEVER_SHIP.match(k) and (not is_secret_name(k) or k in named or k in SECRET_PASS)}
    out.update(SEED=str(attempt.seed), RUN_ID=f"seed{attempt.seed}_attempt{attempt.attempt}",
               PGOLF_ATTEMPT=str(attempt.attempt), PYTHONUNBUFFERED="1")
    return out


class RunPodBackend:
    name = "runpod"

    def __init__(self, spec: JobSpec, rehearse: bool = False, faults: str = ""):
        self.spec = spec
        self.settings = spec.runpod
        self.rehearse = rehearse
        self.session = Session(rehearse, faults)
        self.timing = self.session.timing

    # ---- driver side
    def local_resources(self, cpus: int) -> dict[str, float]:
        """A logical resource on the driver's node: at most `max_pods` attempts (pods) at once."""
        return {"runpod_pod": float(self.settings.max_pods)}

    def ray_options(self) -> dict[str, Any]:
        return {"num_cpus": 0, "resources": {"runpod_pod": 1}}

    def preflight(self, n_seeds: int, where: str) -> list[str]:
        """The data can exist on a pod, and the balance covers twice the batch estimate."""
        data = self.spec.data
        if not self.rehearse and not data.prepare and data.variant not in OFFICIAL_VARIANTS:
            raise PgolfError(f"{where}: [data] variant={data.variant!r} exists only on this machine; a RunPod pod "
                             f"needs an official variant ({', '.join(OFFICIAL_VARIANTS)}) or a [data] prepare "
                             f"command (or rehearse with --rehearse)")
        self.session.open()
        return [self.estimate(n_seeds)]

    def estimate(self, n_seeds: int) -> str:
        """The cost line; PgolfError (numbers in the message) when the balance is under twice the batch
        estimate: seeds x (train + eval + setup) x the pod's price."""
        s, limits = self.settings, self.spec.limits
        try:
            price = s.price_per_hour or api.gpu_price_per_hour(s.gpu_type, s.gpu_count, s.cloud_type)
            balance = api.get_balance()["clientBalance"]
        except api.ApiError as e:
            raise PgolfError(f"RunPod API: {e}") from None
        hours = (limits.train_seconds + limits.eval_seconds + s.setup_s) / 3600
        estimate = n_seeds * hours * price
        msg = (f"RunPod: {n_seeds} seed(s) x {hours:.2f} h x ${price:.2f}/h = ${estimate:.2f} estimated; "
               f"balance ${balance:.2f}")
        if balance < 2 * estimate:
            raise PgolfError(f"{msg}: under twice the estimate (${2 * estimate:.2f}); add funds or run fewer seeds")
        return msg + (" (rehearsal: fake API, no money)" if self.rehearse else "")

    def start(self) -> None:
        self.session.open()

    def stop(self) -> None:
        self.session.close()

    def kill_local(self, pids: list[int]) -> None:
        """Nothing runs locally: each task terminates its pod on its way out, `pgolf cluster gc` the rest."""

    def cluster(self, action: ClusterAction, runs_dir: Path, yes: bool) -> int:
        from runner.backends.runpod import cluster
        return cluster.run_verb(self, action, Path(runs_dir), yes)

    # ---- one attempt, inside a Ray task
    def run_attempt(self, attempt: AttemptSpec, events: Events) -> AttemptResult:
        self.session.connect(attempt.env)
        name = instances.pod_name(attempt.run_dir, attempt.seed, attempt.attempt)
        token = secrets.token_hex(16)
        pod_id: str | None = None
        created = time.time()
        price: list[float] = [0.0]
        result: AttemptResult | None = None
        try:
            events.meta(started=now_iso())      # when it really starts, not when Ray queued it
            instances.reap_leftovers(attempt.run_dir, events.line)
            pod = instances.create(name, self.settings, self.pod_env(attempt, token), START_COMMAND, self.timing,
                                   events.line)
            pod_id, created = pod["id"], time.time()
            events.meta(pod_id=pod_id, node=f"runpod:{pod_id}")       # durable before the pod is used
            events.line(f"pgolf-runpod: pod {pod_id} ({name}) created")
            result = self._drive(pod_id, attempt, token, events, price)
            return result
        finally:
            self._finish(pod_id, name, created, price[0], events, result)

    def _finish(self, pod_id: str | None, name: str, created: float, price: float, events: Events,
                result: AttemptResult | None) -> None:
        """Terminate and verify gone; record lifetime cost. Runs on every path out of run_attempt (a pod
        whose create answer was lost is found by its name)."""
        try:
            ids = [pod_id] if pod_id else [p["id"] for p in api.list_pods() if p.get("name") == name]
        except Exception:  # noqa: BLE001 - the API is down; gc will find it by name
            ids = []
        left = instances.terminate_verified(ids, self.timing)
        if pod_id is None:
            return
        gone = pod_id not in left
        cost = round(price * (time.time() - created) / 3600, 4) if price else None
        try:
            events.line(f"pgolf-runpod: pod {pod_id} " + ("terminated (verified gone)" if gone else
                        "NOT verified terminated: run `pgolf cluster gc`") +
                        (f", cost ${cost:.2f}" if cost is not None else ""))
            events.meta(pod_terminated=gone, cost_usd=cost)
        finally:
            if result is not None:
                result.pod_terminated, result.cost_usd = gone, cost

    def pod_env(self, attempt: AttemptSpec, token: str) -> dict[str, str]:
        """The pod's environment: its HTTP token, and the bootstrap, the script and the job (JSON), each
        gzip+base64 in chunks (the pod's start command joins PGOLF_BOOT_* and runs it)."""
        s, data = self.settings, self.spec.data
        job = {"launcher": self.spec.launcher, "env": job_env(self.spec, attempt),
               "nproc_per_node": self.spec.nproc_per_node, "gpu_type": s.gpu_type, "gpu_count": s.gpu_count,
               "deadline_s": attempt.timeout_s, "backstop_s": s.setup_s + attempt.timeout_s + s.backstop_grace_s,
               "collect_grace_s": REHEARSAL_COLLECT_GRACE_S if self.rehearse else s.collect_grace_s,
               "setup_command": s.setup_command, "min_triton": s.min_triton, "rehearse": self.rehearse,
               "script_name": "train_gpt.py",
               "data": {"variant": data.variant if data.variant in OFFICIAL_VARIANTS else None,
                        "repo": s.data_repo, "remote_root": s.data_remote_root,
                        "train_shards": s.train_shards, "command": data.prepare}}
        env = {"PGOLF_POD_TOKEN": token}
        env.update(chunk_env("PGOLF_BOOT_", BOOTSTRAP.read_bytes()))
        env.update(chunk_env("PGOLF_SCRIPT_", Path(attempt.script_path).read_bytes()))
        env.update(chunk_env("PGOLF_JOB_", json.dumps(job).encode()))
        size = sum(len(k) + len(v) for k, v in env.items())
        if size > MAX_SHIPPED_CHARS:
            raise PgolfError(f"{attempt.script_path}: script + bootstrap = {size} characters encoded, over the "
                             f"{MAX_SHIPPED_CHARS} pgolf ships in a pod's environment; shrink the script")
        return env

    def _drive(self, pod_id: str, attempt: AttemptSpec, token: str, events: Events,
               price: list[float]) -> AttemptResult:
        """Stream the pod's log until its job is done, then download the artifacts."""
        t, s = self.timing, self.settings
        addr = instances.wait_for_address(pod_id, s.port, t, price)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        stream = _LogStream(events)
        last_ok, polls = time.time(), 0
        give_up = time.time() + s.setup_s + attempt.timeout_s + s.backstop_grace_s
        while True:
            polls += 1
            try:
                stream.pull(http, addr)
                status = http.get(f"{addr}/status", timeout=30).json()
                last_ok = time.time()
            except (requests.RequestException, ValueError):
                instances.check_alive(pod_id)              # a vanished pod is InfraFailure at once
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
                instances.check_alive(pod_id)
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
            atomic_write(dest, r.content)
            got.append(str(dest.relative_to(attempt_dir)))
        return got


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
