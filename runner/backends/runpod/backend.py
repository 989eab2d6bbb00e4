"""Backend `runpod`: each seed attempt is one Ray task (on the driver's machine) that drives one RunPod pod
through RunPod's REST API v2.

create (the spec's GPUs or CPU flavor) -> pod id into the ledger first -> wait until it runs (a pod still
PROVISIONING/STARTING after `start_timeout_s` is terminated and the seed retried on a fresh pod, an
infrastructure retry) -> the job's local data uploaded to the pod's server -> the pod's bootstrap prepares
data, checks the machine and runs the job -> its log streams in from RunPod (Server-Sent Events, resumed
after a drop with no line lost or doubled) -> artifacts downloaded from the pod's server -> terminate and
verify gone, in a `finally` that no exception skips -> what the pod cost, from RunPod's billing records
(the price x lifetime estimate kept beside it, and used when no record comes).

Before the batch: what RunPod has in stock and at what price (one line), `max_pods` from the account's spend
limit at that price when the spec does not set it, and the cost estimate against the balance. With
rehearse=True the session runs the fake RunPod (fake.py) with its state in the run directory.
"""
from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from results.errors import PgolfError
from results.files import atomic_write
from results.secrets import is_secret_name
from runner.backends.base import AttemptResult, AttemptSpec, ClusterAction, Events, InfraFailure
from runner.backends.runpod import api, shipping
from runner.backends.runpod.bootstrap import DONE_PREFIX
from runner.backends.runpod.instances import (PROXY_PORT, REHEARSAL_DIR, SYMMETRIC_PORT, Offer, PodShape, Session,
                                              billed_cost, check_alive, create, max_pods_for, offer, pod_name,
                                              reap_leftovers, terminate_verified, wait_running)
from runner.ledger import now_iso
from runner.spec import JobSpec

SECRET_PASS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")   # secrets the job may need on the pod
NEVER_SHIP = re.compile(r"^(RUNPOD_|RAY_|PATH$|HOME$|PWD$|OLDPWD$|SHELL$|USER$|LOGNAME$|TERM$|TMPDIR$|"
                        r"PYTHON|VIRTUAL_ENV|LD_|CUDA_VISIBLE_DEVICES$|PGOLF_(BOOT|SCRIPT|JOB)_)")
OFFICIAL_VARIANTS = ("byte260", "sp512", "sp1024", "sp2048", "sp4096", "sp8192")
REHEARSAL_COLLECT_GRACE_S = 120.0   # a rehearsal pod nobody collects goes sooner than a real one
UNREACHABLE_S = {False: 180.0, True: 10.0}     # a pod whose server stays silent this long is lost
LOG_DRAIN_S = {False: 120.0, True: 10.0}       # after the job is done, how long its last log lines may take
POD_CHECK_EVERY = 12                           # status polls between two looks at the pod through the API


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

    def __init__(self, spec: JobSpec, rehearse: bool = False, faults: str = "", run_dir: str | Path | None = None):
        self.spec = spec
        self.settings = s = spec.runpod
        self.rehearse = rehearse
        self.session = Session(rehearse, faults, Path(run_dir) / REHEARSAL_DIR if rehearse and run_dir else None)
        self.timing = self.session.timing
        self.shape = PodShape(gpu_type=None if s.cpu else s.gpu_type, gpu_count=s.gpu_count, cpu=s.cpu,
                              vcpus=s.vcpus, cloud=s.cloud_type, data_centers=tuple(s.data_centers))
        self._offer: Offer | None = None
        self._manifest: shipping.Manifest | None = None

    # ---- driver side
    def offer(self) -> Offer:
        """RunPod's price and stock for this batch's pods (asked once)."""
        if self._offer is None:
            with self.session.open().client() as c:
                try:
                    self._offer = offer(c, self.shape, self._money)
                except api.ApiError as e:
                    raise PgolfError(str(e)) from None
        return self._offer

    def price(self) -> float:
        return self.settings.price_per_hour or self.offer().price_per_hour

    def max_pods(self) -> int:
        return self.settings.max_pods or max_pods_for(self.price(), self.settings.spend_limit)

    def local_resources(self, cpus: int) -> dict[str, float]:
        """A logical resource on the driver's node: at most `max_pods` attempts (pods) at once."""
        return {"runpod_pod": float(self.max_pods())}

    def ray_options(self) -> dict[str, Any]:
        return {"num_cpus": 0, "resources": {"runpod_pod": 1}}

    def manifest(self, where: str = "job spec") -> shipping.Manifest:
        """The local data that travels to each pod: [data] paths that exist here, unless the pod makes its
        data itself (an official variant downloaded there, or a `prepare` command)."""
        if self._manifest is None:
            data = self.spec.data
            pod_makes_data = data.prepare or data.variant in OFFICIAL_VARIANTS
            self._manifest = (shipping.Manifest() if pod_makes_data
                              else shipping.local_data(data.paths, shipping.MAX_UPLOAD_BYTES, f"{where}: [data] paths"))
        return self._manifest

    def preflight(self, n_seeds: int, where: str) -> list[str]:
        """The data can reach a pod; what RunPod has and at what price; max_pods; the estimate vs the balance."""
        data = self.spec.data
        if not data.prepare and data.variant not in OFFICIAL_VARIANTS and not self.manifest(where).files:
            raise PgolfError(f"{where}: [data] variant={data.variant!r} has no local [data] paths to upload and is "
                             f"not an official variant ({', '.join(OFFICIAL_VARIANTS)}); give paths that exist "
                             f"here, an official variant or a [data] prepare command")
        notes = [f"rehearsal: a fake RunPod on 127.0.0.1 with its state in {self.session.state_dir}; "
                 "its prices are RunPod-like, no money is spent"] if self.rehearse else []
        notes.append(self.offer().line)
        if self.manifest(where).files:
            notes.append(f"local data: {len(self.manifest().files)} file(s), {self.manifest().size / 1e6:.1f} MB, "
                         "uploaded to each pod (sha256-checked)")
        if self.settings.max_pods is None:
            notes.append(f"max_pods {self.max_pods()}: what a ${self.settings.spend_limit:.0f}/h spend limit allows at "
                         f"{self._money(self.price(), '/h')} per pod ([runpod] max_pods or spend_limit to change it)")
        notes.append(self.estimate(n_seeds))
        return notes

    def estimate(self, n_seeds: int) -> str:
        """The cost line; PgolfError (numbers in the message) when the balance is under twice the batch
        estimate: seeds x (train + eval + setup) x the pod's price. Without a balance (GraphQL retired) the
        line says so and the estimate is all there is to go by."""
        s, limits = self.settings, self.spec.limits
        hours = (limits.train_seconds + limits.eval_seconds + s.setup_s) / 3600
        price = self.price()
        estimate = n_seeds * hours * price
        with self.session.open().client() as c:
            try:
                balance = c.balance()
            except api.ApiError as e:
                raise PgolfError(str(e)) from None
        m = self._money
        msg = f"RunPod: {n_seeds} seed(s) x {hours:.2f} h x {m(price, '/h')} = {m(estimate)} estimated"
        if balance is None:
            return msg + "; balance unknown (RunPod's GraphQL API is gone): no balance check, the estimate only"
        msg += f"; balance {m(balance)}"
        if balance < 2 * estimate:
            raise PgolfError(f"{msg}: under twice the estimate ({m(2 * estimate)}); add funds or run fewer seeds")
        return msg

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
        client = self.session.client(attempt.env, notify=lambda m: events.line(f"pgolf-runpod: {m}"))
        name = pod_name(attempt.run_dir, attempt.seed, attempt.attempt)
        token = secrets.token_hex(16)
        pod: api.Pod | None = None
        result: AttemptResult | None = None
        try:
            events.meta(started=now_iso())      # when it really starts, not when Ray queued it
            reap_leftovers(client, attempt.run_dir, events.line)
            pod = create(client, self.create_request(name, attempt, token), self.timing, events.line)
            events.meta(pod_id=pod.id, node=f"runpod:{pod.id}")       # durable before the pod is used
            events.line(f"pgolf-runpod: pod {pod.id} ({name}) created: {self.shape}, {self._money(pod.cost, '/h')}")
            result = self._drive(client, pod, attempt, token, events)
            return result
        finally:
            try:
                self._finish(client, pod, name, events, result)
            finally:
                client.close()

    def create_request(self, name: str, attempt: AttemptSpec, token: str) -> api.CreatePod:
        s = self.settings
        mounts = (api.Mounts(network=[api.NetworkMount(volume_id=s.network_volume, path=s.volume_path)])
                  if s.network_volume else None)
        ports = [f"{SYMMETRIC_PORT}/tcp"] + ([] if self.rehearse else [f"{PROXY_PORT}/http"])
        return api.CreatePod(name=name, image=s.image, args=shipping.START_COMMAND,
                             env=shipping.pod_env(attempt.script_path, self.job(attempt), token), ports=ports,
                             disk=s.container_disk_gb, cloud=s.cloud_type, data_center_ids=s.data_centers or None,
                             mounts=mounts, **self.shape.compute())

    def job(self, attempt: AttemptSpec) -> dict:
        """What the bootstrap does on the pod (JSON in the pod's environment)."""
        s, data = self.settings, self.spec.data
        return {"launcher": self.spec.launcher, "env": job_env(self.spec, attempt),
                "nproc_per_node": self.spec.nproc_per_node, "gpu_type": None if s.cpu else s.gpu_type,
                "gpu_count": 0 if s.cpu else s.gpu_count, "deadline_s": attempt.timeout_s,
                "backstop_s": s.setup_s + attempt.timeout_s + s.backstop_grace_s,
                "collect_grace_s": REHEARSAL_COLLECT_GRACE_S if self.rehearse else s.collect_grace_s,
                "setup_command": s.setup_command, "min_triton": s.min_triton, "rehearse": self.rehearse,
                "script_name": "train_gpt.py", "tcp_port": SYMMETRIC_PORT,
                "http_port": None if self.rehearse else PROXY_PORT, "uploads": self.manifest().for_pod(),
                "volume_path": s.volume_path if s.network_volume else None,
                "data": {"variant": data.variant if data.variant in OFFICIAL_VARIANTS else None,
                         "repo": s.data_repo, "remote_root": s.data_remote_root,
                         "train_shards": s.train_shards, "command": data.prepare}}

    def _drive(self, client: api.RunPodClient, pod: api.Pod, attempt: AttemptSpec, token: str,
               events: Events) -> AttemptResult:
        """Wait for the pod, send its data, follow its log until its job is done, fetch the artifacts."""
        t = self.timing
        pod, base = wait_running(client, pod.id, self.settings.start_timeout_s, t)
        events.line(f"pgolf-runpod: pod {pod.id} running; its server at {base}")
        log = _LogFollower(self.session, attempt.env, pod, events)
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            try:
                self._status(http, base, client, pod.id, time.time())      # the bootstrap is up
                shipping.upload(http, base, self.manifest(), events.line)
                give_up = time.time() + self.settings.setup_s + attempt.timeout_s + self.settings.backstop_grace_s
                last_ok, polls = time.time(), 0
                while True:
                    polls += 1
                    log.check()
                    status = self._status(http, base, client, pod.id, last_ok)
                    last_ok = time.time()
                    if status.get("phase") == "done":
                        log.drain(LOG_DRAIN_S[self.rehearse])
                        got = self._download(http, base, status.get("artifacts") or [], attempt.attempt_dir)
                        return AttemptResult(exit_code=status.get("exit_code"), error=status.get("error"),
                                             node=f"runpod:{pod.id}", pod_id=pod.id, artifacts=got)
                    if polls % POD_CHECK_EVERY == 0:
                        check_alive(client, pod.id)
                    if time.time() > give_up:
                        return AttemptResult(exit_code=124, error=f"attempt passed its deadline on pod {pod.id}",
                                             node=f"runpod:{pod.id}", pod_id=pod.id)
                    time.sleep(t.poll_s)
            finally:
                log.stop()

    def _status(self, http: httpx.Client, base: str, client: api.RunPodClient, pod_id: str, since: float) -> dict:
        """The bootstrap's /status; while it does not answer, the pod must still exist (InfraFailure once it
        is gone) and must answer again within UNREACHABLE_S."""
        while True:
            try:
                return http.get(f"{base}/status").json()
            except (httpx.HTTPError, ValueError):
                check_alive(client, pod_id)
                if time.time() - since > UNREACHABLE_S[self.rehearse]:
                    raise InfraFailure(f"pod {pod_id} stopped answering for {UNREACHABLE_S[self.rehearse]:.0f} s") from None
                time.sleep(self.timing.poll_s)

    @staticmethod
    def _download(http: httpx.Client, base: str, artifacts: list[dict], attempt_dir: str) -> list[str]:
        """Every artifact of the run into attempt_dir/artifacts/, each written atomically."""
        got = []
        root = Path(attempt_dir) / "artifacts"
        for a in artifacts:
            rel = a["path"]
            if rel.startswith(("/", "..")) or "/../" in rel:
                continue
            dest = Path(attempt_dir) / rel if rel.startswith("artifacts/") else root / rel
            r = http.get(f"{base}/artifact", params={"path": rel}, timeout=600)
            r.raise_for_status()
            atomic_write(dest, r.content)
            got.append(str(dest.relative_to(attempt_dir)))
        return got

    def _finish(self, client: api.RunPodClient, pod: api.Pod | None, name: str, events: Events,
                result: AttemptResult | None) -> None:
        """Terminate and verify gone; record the cost (billed when RunPod's records have it). Runs on every
        path out of run_attempt (a pod whose create answer was lost is found by its name)."""
        try:
            ids = [pod.id] if pod else [p.id for p in client.find_pods(name)]
        except Exception:  # noqa: BLE001 - the API is down; gc will find it by name
            ids = []
        left = terminate_verified(client, ids, self.timing)
        if pod is None:
            return
        gone = pod.id not in left
        created = _epoch(pod.created_at) or time.time()
        estimate = round((pod.cost or self.price()) * (time.time() - created) / 3600, 4)
        billed = billed_cost(client, pod.id, pod.created_at, self.timing) if gone and pod.created_at else None
        cost, source = (billed, "billed") if billed is not None else (estimate, "estimate")
        try:
            events.line(f"pgolf-runpod: pod {pod.id} " + ("terminated (verified gone)" if gone else
                        "NOT verified terminated: run `pgolf cluster gc`") +
                        f", cost {self._money(cost)} ({source}; estimate {self._money(estimate)})"
                        + (" [rehearsal: no money]" if self.rehearse else ""))
            events.meta(pod_terminated=gone, cost_usd=cost, cost_source=source, cost_estimate_usd=estimate)
        finally:
            if result is not None:
                result.pod_terminated, result.cost_usd = gone, cost
                result.cost_source, result.cost_estimate_usd = source, estimate

    def _money(self, usd: float, per: str = "") -> str:
        """Dollars, or a rehearsal's fake figure (never shown as money)."""
        return f"{usd:.4f}{per} fake" if self.rehearse else f"${usd:.2f}{per}"


class _LogFollower:
    """The pod's log, from RunPod's SSE stream into events.line, in a thread of its own (its own client):
    every line once, across reconnects, until the bootstrap's DONE line or stop(). A failure of the API is
    said in the log (the status poll goes on); a failure of the driver's side (events.line) is kept in
    `failure` and raised in the attempt's own thread by `check()`, so the pod is terminated as usual."""

    def __init__(self, session: Session, env: dict[str, str], pod: api.Pod, events: Events):
        self.pod, self.events = pod, events
        self.client = session.client(env, notify=lambda m: self._say(f"pgolf-runpod: {m}"))
        self.cursor = api.LogCursor()
        self.failure: BaseException | None = None
        self.done, self.stopped = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"log-{pod.id}", daemon=True)
        self.thread.start()

    def _say(self, text: str) -> None:
        if self.stopped.is_set() or self.failure is not None:
            return
        try:
            self.events.line(text)
        except BaseException as e:  # noqa: BLE001 - handed to the attempt's thread by check()
            self.failure = e
            self.stopped.set()

    def _run(self) -> None:
        try:
            for entry in self.client.stream_logs(self.pod.id, cursor=self.cursor, since=self.pod.created_at):
                self._say(entry.line)
                if self.stopped.is_set() or entry.line.startswith(DONE_PREFIX):
                    return
        except Exception as e:  # noqa: BLE001 - the log is not the result: say it, the status poll goes on
            self._say(f"pgolf-runpod: the pod log stopped: {e}")
        finally:
            self.done.set()
            self.client.close()

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def drain(self, timeout: float) -> None:
        """Wait (bounded) for the last lines: the DONE line comes after everything the job printed."""
        if not self.done.wait(timeout):
            self._say(f"pgolf-runpod: the pod log did not reach its end within {timeout:.0f} s")
        self.check()

    def stop(self) -> None:
        """No more lines to the attempt; the thread ends with the stream (the pod is terminated next)."""
        self.stopped.set()


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
