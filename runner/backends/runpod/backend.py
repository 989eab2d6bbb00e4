"""Backend `runpod`: each pod is one Ray task (on the driver's machine) that drives it through RunPod's REST
API v2 for a group of seed attempts: one (`seeds_per_pod = 1`, the default) or up to K. There is one path
for any K (`run_group`); a pod of one seed is a group of one.

create (the spec's GPUs or CPU flavor) -> pod id into the ledger first -> wait until it runs (a pod still
PROVISIONING/STARTING after `start_timeout_s` is terminated and the seed retried on a fresh pod, an
infrastructure retry) -> the job's local data uploaded to the pod's server -> the pod's bootstrap prepares
data, checks the machine and runs the job -> its log streams in from RunPod (Server-Sent Events, resumed
after a drop with no line lost or doubled) -> artifacts downloaded from the pod's server -> terminate and
verify gone, in a `finally` that no exception skips -> what the pod cost, from RunPod's billing records
(the price x lifetime estimate kept beside it, and used when no record comes).

Several seeds per pod (`[runpod] seeds_per_pod = K`): one pod, set up once, runs the attempts
of up to K seeds one after another (the bootstrap keeps its work folder, data and compile caches between
them). Every attempt's ledger entry gets the pod id before the pod is used; the pod's log is routed to the
seed it is running (the bootstrap's `run I/N` lines); each attempt is yielded to the driver as soon as its
artifacts are down, so a pod lost later keeps what it finished. The pod is terminated and verified gone
once, after its last seed or on any way out, and its cost is split across its attempts (`split_cost`),
each marked `shared_pod` when there are several.

Before the batch: what RunPod has in stock and at what price (one line), `max_pods` from the account's spend
limit at that price when the spec does not set it, and the cost estimate against the balance. With
rehearse=True the session runs the fake RunPod (fake.py) with its state in the run directory.
"""
from __future__ import annotations

import math
import re
import secrets
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx

from results.errors import PgolfError
from results.files import atomic_write
from results.secrets import is_secret_name, secret_env
from runner.backends.base import AttemptResult, AttemptSpec, ClusterAction, Events, InfraFailure, NotRecorded
from runner.backends.runpod import api, shipping
from runner.backends.runpod.bootstrap import DONE_PREFIX, RUN_PREFIX, SERVING_PREFIX
from runner.backends.runpod.instances import (PROXY_PORT, REHEARSAL_DIR, SYMMETRIC_PORT, Offer, PodShape, Session,
                                              check_alive, create, estimated_cost, offer, pod_cost, pod_name,
                                              _epoch, start_limit_s, terminate_verified, volume_placement,
                                              wait_ready)
from runner.ledger import now_iso
from runner.spec import JobSpec

SECRET_PASS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")   # secrets the job may need on the pod
NEVER_SHIP = re.compile(r"^(RUNPOD_|RAY_|PATH$|HOME$|PWD$|OLDPWD$|SHELL$|USER$|LOGNAME$|TERM$|TMPDIR$|"
                        r"PYTHON|VIRTUAL_ENV|LD_|CUDA_VISIBLE_DEVICES$|PGOLF_(BOOT|SCRIPT|JOB)_)")
OFFICIAL_VARIANTS = ("byte260", "sp512", "sp1024", "sp2048", "sp4096", "sp8192")
REHEARSAL_COLLECT_GRACE_S = 120.0   # a rehearsal pod nobody collects goes sooner than a real one
UNREACHABLE_S = {False: 180.0, True: 10.0}     # a pod whose server, once up, stays silent this long is lost
ANSWER_TIMEOUT_S = {False: 10.0, True: 1.0}    # one readiness probe of a starting pod's server
LOG_DRAIN_S = {False: 120.0, True: 10.0}       # after the job is done, how long its last log lines may take
STARTING_PREFIX = "pgolf-runpod: pod "             # + "ID starting: LABEL (...)": runner/progress.py reads it
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
                              vcpus=s.vcpus, cloud=s.cloud_type, data_centers=tuple(s.data_centers),
                              min_cuda=s.cuda_floor())
        self._placed = not s.network_volume        # with a volume, the shape's data center is the volume's
        self._offer: Offer | None = None
        self._manifest: shipping.Manifest | None = None

    # ---- driver side
    def offer(self) -> Offer:
        """RunPod's price and stock for this batch's pods (asked once)."""
        if self._offer is None:
            self.placement()
            with self.session.open().client() as c:
                try:
                    self._offer = offer(c, self.shape, self._money)
                except api.ApiError as e:
                    raise PgolfError(str(e)) from None
            vol = self.settings.network_volume
            if vol and not self._offer.data_centers:
                raise PgolfError(f"{self._offer.line}: network volume {vol} lives in {self.shape.data_centers[0]}, "
                                 f"which has no {self.shape} free now, and a pod elsewhere cannot mount it; try "
                                 f"later, another [runpod] gpu_type, or a volume in a data center with stock")
        return self._offer

    def placement(self) -> tuple[str, ...]:
        """The data centers pods may go to: with a network volume, the volume's only (RunPod mounts it on a
        pod of its own data center, and a pod asked elsewhere is refused in words that read like "no
        capacity"), else [runpod] data_centers (() is anywhere). Asked once, in the driver."""
        if not self._placed:
            with self.session.open().client() as c:
                self.shape = replace(self.shape, data_centers=volume_placement(
                    c, self.settings.network_volume, self.shape.data_centers))
            self._placed = True
        return self.shape.data_centers

    def price(self) -> float:
        return self.settings.price_per_hour or self.offer().price_per_hour

    def max_pods(self) -> int:
        return self.settings.pods_at_once(self.price())

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
        self.pod_env(self.sample_group(), "preflight", where)    # RunPod's env limits, before any pod
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

    def sample_group(self) -> list[AttemptSpec]:
        """A pod's worth of attempts as the driver will hand them over (`seeds_per_pod` seeds, the job's
        environment as the driver builds it), for checks before any pod."""
        env = {**secret_env(), **self.spec.job_env()}
        script = Path(self.spec.script)     # only its size and hash are in the job: any file does on a resume
        script = script if script.is_file() else shipping.BOOTSTRAP
        return [AttemptSpec(run_dir="", seed=s, attempt=1, attempt_dir="", script_path=str(script), env=env,
                            timeout_s=self.spec.limits.timeout())
                for s in (self.spec.seeds or [0] * self.settings.seeds_per_pod)[:self.settings.seeds_per_pod]]

    def estimate(self, n_seeds: int) -> str:
        """The cost line; PgolfError (numbers in the message) when the balance is under twice the batch
        estimate: seeds x (train + eval + setup) x the pod's price, or with K seeds per pod one set-up per
        pod, the pods made as the driver makes them (each launch, an adaptive batch's wave, split into
        ⌈wave/K⌉ pods: runner.plan.launches, priced as `pgolf plan` prices it). Without a balance (GraphQL
        retired) the line says so and the estimate is all there is to go by."""
        from runner.plan import launches
        s, limits = self.settings, self.spec.limits
        seed_h, setup_h = (limits.train_seconds + limits.eval_seconds) / 3600, s.setup_s / 3600
        price = self.price()
        pods = sum(math.ceil(w / s.seeds_per_pod) for w in launches(self.spec, n_seeds))
        estimate = price * (pods * setup_h + n_seeds * seed_h)
        with self.session.open().client() as c:
            try:
                balance = c.balance()
            except api.ApiError as e:
                raise PgolfError(str(e)) from None
        m = self._money
        if s.seeds_per_pod == 1:
            msg = f"RunPod: {n_seeds} seed(s) x {seed_h + setup_h:.2f} h x {m(price, '/h')} = {m(estimate)} estimated"
        else:
            msg = (f"RunPod: {n_seeds} seed(s), up to {s.seeds_per_pod} per pod: {pods} pod(s) x {setup_h:.2f} h "
                   f"set-up + {n_seeds} x {seed_h:.2f} h, x {m(price, '/h')} = {m(estimate)} estimated")
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

    def attempts_per_task(self) -> int:
        """[runpod] seeds_per_pod: the seeds one pod runs one after another after a single set-up."""
        return self.settings.seeds_per_pod

    def cluster(self, action: ClusterAction, runs_dir: Path, yes: bool) -> int:
        from runner.backends.runpod import cluster
        return cluster.run_verb(self, action, Path(runs_dir), yes)

    def create_request(self, name: str, attempts: list[AttemptSpec], token: str) -> api.CreatePod:
        """The pod for a group of attempts (one or more), run one after another (`run_group`)."""
        s = self.settings
        mounts = (api.Mounts(network=[api.NetworkMount(volume_id=s.network_volume, path=s.volume_path)])
                  if s.network_volume else None)
        ports = [f"{SYMMETRIC_PORT}/tcp"] + ([] if self.rehearse else [f"{PROXY_PORT}/http"])
        return api.CreatePod(name=name, image=s.image, args=shipping.START_COMMAND,
                             env=self.pod_env(attempts, token), ports=ports,
                             disk=s.disk_gb(), cloud=s.cloud_type, data_center_ids=list(self.placement()) or None,
                             mounts=mounts, **self.shape.compute())

    def pod_env(self, attempts: list[AttemptSpec], token: str, where: str = "job spec") -> dict[str, str]:
        """The pod's environment (bootstrap + job), checked against RunPod's limits (`shipping.check_env`)."""
        job = self.job(*attempts)
        env = shipping.pod_env(job, token)
        shipping.check_env(env, job, where)
        return env

    def shipment(self, script_path: str) -> shipping.Manifest:
        """Every file the pod receives over its server: the script, then the job's local data."""
        return self.manifest().with_script(script_path)

    def job(self, *group: AttemptSpec) -> dict:
        """What the bootstrap does on the pod (JSON in the pod's environment): one run per attempt, one
        after another (`runs`), the backstop counting every run's deadline."""
        s, data = self.settings, self.spec.data
        return {"launcher": self.spec.launcher, "runs": [{"env": job_env(self.spec, a), "deadline_s": a.timeout_s}
                                                         for a in group],
                "nproc_per_node": self.spec.nproc_per_node, "gpu_type": None if s.cpu else s.gpu_type,
                "gpu_count": 0 if s.cpu else s.gpu_count,
                "backstop_s": s.setup_s + sum(a.timeout_s for a in group) + s.backstop_grace_s,
                "collect_grace_s": REHEARSAL_COLLECT_GRACE_S if self.rehearse else s.collect_grace_s,
                "setup_command": s.setup_command, "min_triton": s.min_triton, "rehearse": self.rehearse,
                "script_name": "train_gpt.py", "script": shipping.SCRIPT_PATH, "tcp_port": SYMMETRIC_PORT,
                "user_agent": api.USER_AGENT, "http_port": None if self.rehearse else PROXY_PORT,
                "uploads": self.shipment(group[0].script_path).for_pod(),
                "volume_path": s.volume_path if s.network_volume else None,
                "data": {"variant": data.variant if data.variant in OFFICIAL_VARIANTS else None,
                         "repo": s.data_repo, "remote_root": s.data_remote_root,
                         "train_shards": s.train_shards, "command": data.prepare}}

    def _answers(self, http: httpx.Client, base: str) -> bool:
        """Whether the pod's bootstrap answers /status at `base` (one short try: the pod may still start)."""
        try:
            r = http.get(f"{base}/status", timeout=ANSWER_TIMEOUT_S[self.rehearse])
            return r.status_code == 200 and "phase" in r.json()          # the bootstrap, not a proxy's page
        except (httpx.HTTPError, ValueError, TypeError):
            return False

    def _status(self, http: httpx.Client, base: str, client: api.RunPodClient, pod_id: str, since: float) -> dict:
        """The bootstrap's /status; while it does not answer, the pod must still exist (InfraFailure once it
        is gone) and must answer again within UNREACHABLE_S (counted only once it has answered: a pod still
        starting is `wait_ready`'s, timed by [runpod] start_timeout_s)."""
        while True:
            try:
                return http.get(f"{base}/status").json()
            except (httpx.HTTPError, ValueError):
                check_alive(client, pod_id)
                if time.time() - since > UNREACHABLE_S[self.rehearse]:
                    raise InfraFailure(f"pod {pod_id} stopped answering for {UNREACHABLE_S[self.rehearse]:.0f} s") from None
                time.sleep(self.timing.poll_s)

    @staticmethod
    def _download(http: httpx.Client, base: str, artifacts: list[dict], attempt_dir: str,
                  run: int | None = None) -> list[str]:
        """Every artifact of the run (of a shared pod: of its run `run`) into attempt_dir/artifacts/, each
        written atomically."""
        got = []
        root = Path(attempt_dir) / "artifacts"
        for a in artifacts:
            rel = a["path"]
            if rel.startswith(("/", "..")) or "/../" in rel:
                continue
            dest = Path(attempt_dir) / rel if rel.startswith("artifacts/") else root / rel
            params = {"path": rel} if run is None else {"path": rel, "run": run}
            r = http.get(f"{base}/artifact", params=params, timeout=600)
            r.raise_for_status()
            atomic_write(dest, r.content)
            got.append(str(dest.relative_to(attempt_dir)))
        return got

    # ---- the attempts of one pod (one, or several one after another), inside one Ray task
    def run_group(self, attempts: list[AttemptSpec], events: list[Events]) -> Iterator[tuple[int, AttemptResult]]:
        """The attempts one after another on one pod after one set-up; (index, result) as each ends."""
        first = attempts[0]
        group = _Group(attempts, events)
        client = self.session.client(first.env, notify=lambda m: group.line(f"pgolf-runpod: {m}"))
        name = pod_name(first.run_dir, first.seed, first.attempt)
        token = secrets.token_hex(16)
        pod: api.Pod | None = None
        try:
            events[0].meta(started=now_iso())   # the set-up is the first attempt's (the others start later)
            pod = create(client, self.create_request(name, attempts, token), self.timing, events[0].line)
            group.usd_per_hour = pod.cost
            for i, ev in enumerate(events):     # durable in every attempt's entry before the pod is used
                ev.meta(pod_id=pod.id, **group.shared(i), **({"node": f"runpod:{pod.id}"} if i == 0 else {}))
            events[0].line(f"pgolf-runpod: pod {pod.id} ({name}) created: {self.shape}, {self._money(pod.cost, '/h')}"
                           + (f"; it runs {group.names()} one after another" if group.k > 1 else ""))
            for i, ev in enumerate(events[1:], 1):
                ev.line(f"pgolf-runpod: queued on pod {pod.id}, after {group.names(upto=i)}")
            yield from self._drive(client, pod, token, group)
        finally:
            try:
                self._finish(client, pod, name, group)
            finally:
                client.close()

    def _drive(self, client: api.RunPodClient, pod: api.Pod, token: str,
               group: "_Group") -> Iterator[tuple[int, AttemptResult]]:
        """Wait until the pod's bootstrap answers (starting till then), send the script and data, then follow its runs: each one's start reaches its ledger entry,
        each one's end is yielded once its log and artifacts are here; a cancel asked for the running one
        is passed to the pod."""
        t, s = self.timing, self.settings
        attempts, events = group.attempts, group.events
        log = _LogFollower(self.session, attempts[0].env, pod, group, runs=len(attempts))   # from its creation
        with api.http_client({"Authorization": f"Bearer {token}"}, timeout=60) as http:
            try:
                said = _Starting(events[0], pod.id, t.time_scale)
                pod, base = wait_ready(client, pod, start_limit_s(s.start_timeout_s, t), t,
                                       lambda b: self._answers(http, b), log.serving.is_set, said)
                up_after = said.since(time.time() - (_epoch(pod.created_at) or time.time()))
                events[0].line(f"pgolf-runpod: pod {pod.id} up {up_after} after its creation (its bootstrap "
                               f"answered); its server at {base}")
                self._drop_twins(client, pod, group)
                self._status(http, base, client, pod.id, time.time())   # answering here too (the log may say first)
                shipping.upload(http, base, self.shipment(attempts[0].script_path), events[0].line)
                give_up = time.time() + s.setup_s + attempts[0].timeout_s + s.backstop_grace_s
                last_ok, polls, nxt = time.time(), 0, 0
                while nxt < len(attempts):
                    polls += 1
                    log.check()
                    status = self._status(http, base, client, pod.id, last_ok)
                    last_ok = time.time()
                    for i in group.seen(status.get("runs") or []):       # runs that began since the last look
                        if i > 0:
                            events[i].meta(started=now_iso(), node=f"runpod:{pod.id}")
                            give_up = time.time() + attempts[i].timeout_s + s.backstop_grace_s
                    now = group.running()
                    if group.k > 1 and now is not None and now not in group.cancelled and \
                            events[now].cancel_requested():     # (a pod of one is cancelled as a whole)
                        group.cancelled.add(now)
                        http.post(f"{base}/cancel", params={"run": now})
                    while nxt < len(attempts) and group.state(nxt) == "done":
                        yield nxt, self._collect(http, base, client, pod, group, nxt, log)
                        nxt += 1
                    if nxt == len(attempts):
                        break
                    if polls % POD_CHECK_EVERY == 0:
                        check_alive(client, pod.id)
                    if time.time() > give_up:
                        a = attempts[nxt]
                        yield nxt, AttemptResult(exit_code=124, error=f"attempt passed its deadline on pod {pod.id}",
                                                 node=f"runpod:{pod.id}", pod_id=pod.id)
                        if nxt + 1 < len(attempts):
                            raise InfraFailure(f"pod {pod.id} stopped with seed {a.seed} past its deadline; "
                                               f"the seeds after it did not run")
                        return
                    time.sleep(t.poll_s)
            finally:
                log.stop()

    def _collect(self, http: httpx.Client, base: str, client: api.RunPodClient, pod: api.Pod, group: "_Group",
                 i: int, log: "_LogFollower") -> AttemptResult:
        """Run i ended on the pod: its log to its DONE line, its artifacts down (a pod gone meanwhile is an
        InfraFailure), then the pod is told they are collected."""
        log.wait_done(i + 1, LOG_DRAIN_S[self.rehearse])
        info = group.runs[i]
        try:
            got = self._download(http, base, info.get("artifacts") or [], group.attempts[i].attempt_dir, run=i)
        except httpx.HTTPError:
            check_alive(client, pod.id)
            raise
        try:
            http.post(f"{base}/collected", params={"run": i})
        except httpx.HTTPError:
            pass                       # only said in the pod's log
        return AttemptResult(exit_code=info.get("exit_code"), error=info.get("error"), node=f"runpod:{pod.id}",
                             pod_id=pod.id, artifacts=got)

    def _finish(self, client: api.RunPodClient, pod: api.Pod | None, name: str, group: "_Group") -> None:
        """Terminate the pod (and any twin of it) and verify it gone, once for the group; its cost (billed,
        else estimated) split across its attempts (`split_cost`), each told through its own events; twins
        found (here or once the pod was up) go into the first attempt's ledger entry, whose name the pod
        has: their ids (`twin_pods`) and their cost (`twin_cost_usd`, counted in its `cost_usd` too: money
        spent for that attempt)."""
        end = self._end_pod(client, pod, name, group)
        if end is None:
            return
        gone, cost, source, estimate, lifetime = end
        twins = sorted(group.twins)
        twin_cost = self._twin_cost(client, group) if twins else 0.0
        shares = split_cost([r.get("seconds") or 0.0 for r in group.runs], lifetime)
        group.line(f"pgolf-runpod: pod {pod.id} " + ("terminated (verified gone)" if gone else
                   "NOT verified terminated: run `pgolf cluster gc`") +
                   f", cost {self._money(cost)} ({source}; estimate {self._money(estimate)})" +
                   (f" shared by {len(shares)} attempts" if group.k > 1 else "") +
                   (" [rehearsal: no money]" if self.rehearse else ""))
        for i, ev in enumerate(group.events):
            try:
                first_twins = twins and i == 0    # the twins carry the pod's name: the first attempt's
                ev.meta(pod_terminated=gone, cost_usd=round(cost * shares[i] + (twin_cost if first_twins else 0), 6),
                        cost_source=source, cost_estimate_usd=round(estimate * shares[i], 6),
                        **group.shared(i, round(cost, 6), round(shares[i], 4)),
                        **({"twin_pods": twins, "twin_cost_usd": round(twin_cost, 6)} if first_twins else {}))
            except NotRecorded:
                pass                   # the driver's disk refused: it knows, and stops what it can


    def _end_pod(self, client: api.RunPodClient, pod: api.Pod | None, name: str,
                 group: "_Group") -> tuple[bool, float, str, float, float] | None:
        """Terminate the pod and every live pod of its name (a twin a lost create answer left that
        `_drop_twins` did not see), and verify them gone; then (gone, cost, cost source, estimate, lifetime s)
        with the billed cost when RunPod's records have it. None when there was no pod of ours."""
        try:
            named = client.find_pods(name)
        except Exception:  # noqa: BLE001 - the API is down; gc will find them by name
            named = []
        twins = [p for p in named if pod is not None and p.id != pod.id]
        left = terminate_verified(client, list(dict.fromkeys(([pod.id] if pod else []) + [p.id for p in named])),
                                  self.timing)
        if twins:
            self._record_twins(group, twins, left, name)
        if pod is None:
            return None
        lifetime = time.time() - (_epoch(pod.created_at) or time.time())
        cost, source = pod_cost(client, pod, self.timing, usd_per_hour=self.price())
        return pod.id not in left, cost, source, estimated_cost(pod, self.price()), lifetime

    def _drop_twins(self, client: api.RunPodClient, pod: api.Pod, group: "_Group") -> None:
        """As soon as the pod is up, terminate any other live pod of its name: the twin a lost create answer
        left (the schema has no idempotency key, and a pod can be missing from the list when the retry
        looks). Minutes of image pull have passed by then, so the list shows it; caught here it bills those
        minutes, not the whole run. The pod's end looks again (`_end_pod`)."""
        try:
            twins = [p for p in client.find_pods(pod.name) if p.id != pod.id]
        except Exception:  # noqa: BLE001 - the API is down: the pod's end and gc look again
            return
        if twins:
            self._record_twins(group, twins, terminate_verified(client, [p.id for p in twins], self.timing),
                               pod.name)

    def _record_twins(self, group: "_Group", twins: list[api.Pod], left: list[str], name: str) -> None:
        """Say what became of the twins and keep them (with when they were verified gone) for the ledger."""
        for p in twins:
            group.twins[p.id] = (p, None if p.id in left else time.time())
        group.events[0].line(
            f"pgolf-runpod: twin pod(s) {', '.join(p.id for p in twins)} of {name} (a create answer lost, the "
            f"create retried) " + ("terminated (verified gone)" if not {p.id for p in twins} & set(left) else
                                   "NOT verified terminated: run `pgolf cluster gc`")
            + f"; its cost goes into seed {group.attempts[0].seed}'s")

    def _twin_cost(self, client: api.RunPodClient, group: "_Group") -> float:
        """What the twins cost (`pod_cost`: billed, else their price times their life until verified gone)."""
        return sum(pod_cost(client, twin, self.timing, ended, self.price())[0] for twin, ended in group.twins.values())

    def _money(self, usd: float, per: str = "") -> str:
        """Dollars, or a rehearsal's fake figure (never shown as money)."""
        return f"{usd:.4f}{per} fake" if self.rehearse else f"${usd:.2f}{per}"


def split_cost(run_seconds: list[float], lifetime_s: float) -> list[float]:
    """Each attempt's fraction of a shared pod's cost: the time its own run took on the pod, plus an equal
    share of the rest of the pod's life (set-up, waits, termination), which every attempt needed alike.
    An attempt the pod never ran pays its share of the set-up only; the fractions add up to 1."""
    own = [max(0.0, float(x)) for x in run_seconds]
    total = max(float(lifetime_s), sum(own))
    if total <= 0:
        return [1.0 / len(own)] * len(own)
    rest = (total - sum(own)) / len(own)
    return [(x + rest) / total for x in own]


class _Group:
    """A pod's attempts on the driver's side: their events, what the pod said of their runs, and the
    seed its log is on now (the bootstrap's `run I/N` line moves it; pgolf's own lines follow it)."""

    def __init__(self, attempts: list[AttemptSpec], events: list[Events]):
        self.attempts, self.events = attempts, events
        self.k = len(attempts)
        self.runs: list[dict] = [{} for _ in attempts]     # the pod's last /status of each run
        self.current = 0
        self.cancelled: set[int] = set()
        self.usd_per_hour: float | None = None
        self.twins: dict[str, tuple[api.Pod, float | None]] = {}   # twin id -> (pod, when verified gone)

    def names(self, upto: int | None = None) -> str:
        return ", ".join(f"seed {a.seed}" for a in self.attempts[:upto])

    def shared(self, i: int, pod_cost: float | None = None, share: float | None = None) -> dict:
        """The attempt's `shared_pod` ledger field (none for a pod of one): who shared the pod, its place,
        the pod's price and, once the pod is gone, its whole cost and this attempt's share of it."""
        if self.k == 1:
            return {}
        return {"shared_pod": {"attempts": [[a.seed, a.attempt] for a in self.attempts], "position": i + 1,
                               "usd_per_hour": self.usd_per_hour, "pod_cost_usd": pod_cost, "share": share}}

    def seen(self, runs: list[dict]) -> list[int]:
        """Take the pod's /status of the runs; the indices of runs that began since the last look."""
        began = [i for i, r in enumerate(runs[:len(self.runs)])
                 if r.get("state") in ("running", "done") and self.runs[i].get("state") in (None, "waiting")]
        for i, r in enumerate(runs[:len(self.runs)]):
            self.runs[i] = r
        return began

    def state(self, i: int) -> str | None:
        return self.runs[i].get("state")

    def running(self) -> int | None:
        return next((i for i, r in enumerate(self.runs) if r.get("state") == "running"), None)

    def line(self, text: str) -> None:
        """A line of the pod's log (or pgolf's own) to the attempt the pod is on now."""
        if text.startswith(RUN_PREFIX):
            try:
                self.current = min(len(self.events), int(text[len(RUN_PREFIX):].split("/")[0])) - 1
            except ValueError:
                pass
        self.events[self.current].line(text)


class _Starting:
    """What a starting pod is doing, said in its first attempt's log when it changes (`pulling image`,
    `container starting`, ...): the live view shows it with its clock (runner/progress.py)."""

    def __init__(self, events: Events, pod_id: str, time_scale: float):
        self.events, self.pod_id, self.scale = events, pod_id, time_scale
        self.label: str | None = None

    def __call__(self, label: str, waited: float) -> None:
        if label != self.label:
            self.label = label
            self.events.line(f"{STARTING_PREFIX}{self.pod_id} starting: {label} ({self.since(waited)} since its "
                             f"creation)")

    def since(self, waited: float) -> str:
        s = int(waited / self.scale)
        return f"{s // 60}:{s % 60:02d}" + ("" if self.scale == 1 else " (rehearsal time)")


class _LogFollower:
    """The pod's log, from RunPod's SSE stream into events.line, in a thread of its own (its own client):
    every line once, across reconnects, until the bootstrap's last DONE line (one per run: `runs` of them)
    or stop(). A failure of the API is said in the log (the status poll goes on); a failure of the driver's
    side (events.line) is kept in `failure` and raised in the attempt's own thread by `check()`, so the pod
    is terminated as usual. Lines go to the `_Group`, which routes each to its run's attempt; the
    bootstrap's "serving" line sets `serving` (one sign that the pod is up)."""

    def __init__(self, session: Session, env: dict[str, str], pod: api.Pod, events: "_Group", runs: int):
        self.pod, self.events, self.runs = pod, events, runs
        self.client = session.client(env, notify=lambda m: self._say(f"pgolf-runpod: {m}"))
        self.cursor = api.LogCursor()
        self.failure: BaseException | None = None
        self.done, self.stopped = threading.Event(), threading.Event()
        self.serving = threading.Event()                # the bootstrap said it serves (a sign the pod is up)
        self.dones = 0                                  # DONE lines seen: runs whose log is complete
        self.progress = threading.Condition()
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
                if entry.line.startswith(SERVING_PREFIX) and entry.line != SERVING_PREFIX + "[]":
                    self.serving.set()
                if entry.line.startswith(DONE_PREFIX):
                    with self.progress:
                        self.dones += 1
                        self.progress.notify_all()
                if self.stopped.is_set() or self.dones >= self.runs:
                    return
        except Exception as e:  # noqa: BLE001 - the log is not the result: say it, the status poll goes on
            self._say(f"pgolf-runpod: the pod log stopped: {e}")
        finally:
            self.done.set()
            with self.progress:
                self.progress.notify_all()
            self.client.close()

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def wait_done(self, n: int, timeout: float) -> None:
        """Wait (bounded) until the log has passed its n-th DONE line: run n's lines are all in."""
        with self.progress:
            if not self.progress.wait_for(lambda: self.dones >= n or self.done.is_set(), timeout):
                self._say(f"pgolf-runpod: the pod log did not reach the end of run {n} within {timeout:.0f} s")
        self.check()

    def stop(self) -> None:
        """No more lines to the attempt; the thread ends with the stream (the pod is terminated next)."""
        self.stopped.set()
