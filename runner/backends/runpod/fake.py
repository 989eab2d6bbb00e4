"""A fake RunPod on 127.0.0.1 that speaks REST API v2 (and the one GraphQL balance query), for rehearsals and tests.

Every request it receives and every response it sends is checked against RunPod's OpenAPI document
(contract.py): a request the schema rejects gets RunPod's 422 problem answer and is recorded in
`violations` (tests assert that list is empty), and a response that would break the schema is recorded and
turned into a 500, so the fake can never teach pgolf a shape RunPod does not serve.

Pods are local processes (fake_container.py): the pod's `args` run as its start command (the fake image has
no entrypoint, like runpod/pytorch whose start script is only its CMD) with the pod's env plus what RunPod
injects: RUNPOD_POD_ID, a pod-scoped RUNPOD_API_KEY (enough to read and terminate that one pod),
RUNPOD_PUBLIC_IP, RUNPOD_TCP_PORT_<n> for each symmetrical port (`"70000/tcp"`: a port above 70000 gets one
number used inside and out; `runtime.ports` shows it with ip 127.0.0.1), RUNPOD_GPU_COUNT or
RUNPOD_CPU_COUNT. RUNPOD_API_BASE_URL points the pod back at this fake, and PGOLF_POD_ROOT names the
folder that stands for the pod's "/" (network volumes appear under it at their mount path).
Pod life, as RunPod documents and answers it: PROVISIONING -> RUNNING with `runtime: null` while the host
pulls the image (`slow_pull`; the container, and so the bootstrap, has not started: RunPod's "Running ...
may not be ready to use") -> RUNNING with its runtime once the container started -> EXITED when the start
command ends. DELETE kills the whole process tree at once (none survives, whatever sessions it made); the
pod then answers TERMINATED, no longer listed, for TERMINATED_S, and 404 after that.

Everything lives under one state directory: state.json (pods, volumes, billing; no env, no keys: pod
keys are kept as hashes) and volumes/<id>/; each pod's disk (its root folder, container log, exit code) is
kept outside it, in a private temp folder named by it (`pods_root`), since it holds secrets in plain text.
Pods outlive the API process, and several fakes may serve one state directory at once (every change is a
read-modify-write under a file lock), so a fake started after a driver crash still lists and terminates
them: that is how `cluster gc --rehearse` works. Each rehearsal keeps its own state directory.

The pod log (`GET /v2/pods/{id}/logs`) is Server-Sent Events from the container log: `id:` is the line's
timestamp and `data:` is {"source", "line", "ts"}. `Last-Event-ID` (or `since`) resumes from that instant
INCLUSIVELY: events carrying that very timestamp are sent again and the client drops the ones it has (the
schema does not say which way RunPod rounds; inclusive is the side that loses nothing). Without either,
`tail` lines (default 100) are backfilled. The stream ends cleanly once the container has exited and every
line was sent, and ends when the pod goes away.

Like RunPod's Cloudflare front, it answers 403 "error code: 1010" (plain text, before any API rule) to a
request with no User-Agent or a library's default one (Python-urllib/..., python-httpx/...); pgolf sends
pgolf/<version> from the driver and the pod alike. `user_agents` keeps every agent seen, for tests.

Faults (`--rehearse-faults`, KEY=N, comma-separated):
  capacity=K      the first K creates answer 400 "no instances available" (RunPod's capacity answer)
  5xx=K           K answers are 503 problems (every other request until K are spent)
  429=K           the next K requests in a row answer 429 with Retry-After (a rate-limit storm)
  quota_day=K     the next K requests answer 429 with the daily window used up (RateLimit "day";r=0;t=45000)
  lost_create=K   K creates make their pod but the connection drops before the answer
  slow_start=K    the first K pods take SLOW_START_S to provision
  slow_pull=S     every pod's image pull takes S seconds of rehearsal time (x TIME_SCALE here): RUNNING with
                  `runtime: null`, its bootstrap silent, until then
  twin=K          K creates make their pod, lose the answer, and the pod shows in the list only once the
                  next create of that name has come, or TWIN_LAG_S later (list lag): the client's retry
                  makes a same-name twin (the schema has no idempotency key); the pod's end finds it by name
  stuck=K         the first K pods stay PROVISIONING for good (billed all the same, as users report)
  preempt=K       the first K pods are lost once their log shows the job running
  preempt_mid=K   K pods that run several seeds are lost once the driver collected their first seed's
                  results (their second seed is running then): only the seeds not finished run again
  sse_drop=K      K log streams drop mid-stream (each after sending SSE_DROP_AFTER events)
  sse_drop_shared=K  event ids are whole seconds (as in the schema's example), so a burst of lines shares
                  one id, and K streams drop right after the second line sharing an id (amid the burst)
  sse_heartbeat=1 every log event comes after a comment and a `heartbeat` event (not log lines)
  balance=X       the account balance in dollars (GraphQL clientBalance; a create needs one hour of credit)
  spend_limit=X   the account's spend limit in $/h (default 80, RunPod's default)
  graphql_gone=1  GraphQL answers 410 Gone (it is being retired)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import http_sf

from results.errors import PgolfError
from runner.backends.runpod import fake_container as container
from runner.backends.runpod.contract import Operation, contract
from runner.backends.runpod.fake_instant import InstantRoutes
from runner.backends.runpod.instances import REHEARSAL

GPUS = [   # id, name, memory GB, $/GPU/h secure, community, max count per pod
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, 1.99, 8),
    ("NVIDIA H100 PCIe", "H100 PCIe", 80, 2.39, 1.99, 8),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, 8),
]
CPUS = [   # id, name, RAM GB per vCPU, $/vCPU/h secure, serverless, max vCPUs
    ("cpu3c", "Compute-Optimized", 2.0, 0.03, 0.05, 32),
    ("cpu3g", "General Purpose", 4.0, 0.04, 0.06, 32),
    ("cpu3m", "Memory-Optimized", 8.0, 0.05, 0.07, 16),
    ("cpu5c", "Compute-Optimized 5th gen", 2.0, 0.035, 0.055, 64),
]
DATA_CENTERS = [("US-KS-2", "United States (Kansas 2)", "NORTH_AMERICA"),
                ("EU-RO-1", "Europe (Romania 1)", "EUROPE")]
DISK_USD_PER_GB_H = 0.10 / 730       # container disk, $0.10 per GB-month
DEFAULT_DISK_GB = 80                 # container disk when the create names none (RunPod's default)
CPU_DISK_GB_PER_VCPU = {"cpu3c": 10, "cpu3g": 10, "cpu5c": 15}   # CPU pods' container disk caps (RunPod's docs)
HOST_CUDA = "12.8"                   # the CUDA every fake host reports
CAPACITY_DETAIL = ("There are no longer any instances available with the requested specifications. "
                   "Please refresh and try again.")
DEFAULT_BALANCE = 1000.0
DEFAULT_SPEND_LIMIT = 80.0
PROVISION_S = 0.2
MAX_ENV_VARS = 50                   # RunPod docs (environment-variables.mdx): "up to 50 environment variables per Pod"
SLOW_START_S = 2.0
TIME_SCALE = REHEARSAL.time_scale   # a rehearsal's seconds (slow_pull=600: 6 s here), as the client scales its waits
TERMINATED_S = 1.0                  # after DELETE: answered TERMINATED this long, then 404
LOST_TERMINATED_S = 5.0             # a lost pod (preempt): TERMINATED this long, so that a driver polling
                                    # on a loaded machine reads it, as RunPod's record stays for a while
PREEMPT_MARKER = "phase running"
PREEMPT_MID_MARKER = "collected by the driver"     # a shared pod's bootstrap says so after each seed
PREEMPT_AFTER_S = 0.5
RETRY_AFTER_S = 2
QUOTA_DAY_RESET_S = 45_000           # a used-up daily window: resets in 12.5 h
RATE_QUOTA_PER_MIN = 6000
SSE_DROP_AFTER = 3
SSE_POLL_S = 0.05
SSE_KEEPALIVE_S = 10.0
FAULT_KEYS = {"capacity", "5xx", "429", "quota_day", "lost_create", "slow_start", "slow_pull", "twin", "stuck",
              "preempt", "preempt_mid", "sse_drop", "sse_drop_shared", "sse_heartbeat", "balance", "spend_limit",
              "graphql_gone"}
ACTIONS = {"PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"],
           "RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
           "ERROR": ["start", "terminate"], "TERMINATED": []}
LIVE = ("PROVISIONING", "STARTING", "RUNNING")
LIBRARY_AGENTS = re.compile(r"(python-urllib|python-httpx|python-requests|aiohttp|go-http-client|okhttp|java)/",
                            re.I)     # what Cloudflare's browser-integrity check refuses (error 1010)
TWIN_LAG_S = 30.0                   # a lost create's pod is listed at its retry, else this long after


def parse_faults(text: str) -> dict[str, float]:
    """'preempt=1,capacity=2' -> {"preempt": 1.0, "capacity": 2.0}; a bad item is a PgolfError."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        key, _, val = item.partition("=")
        try:
            num = float(val)
        except ValueError:
            num = None
        if key not in FAULT_KEYS or num is None or num < 0:
            raise PgolfError(f"--rehearse-faults: bad item {item!r}; use KEY=N with KEY in "
                             f"{sorted(FAULT_KEYS)}, e.g. preempt=1,capacity=2")
        out[key] = num
    return out


def pods_root(state_dir: Path) -> Path:
    """Where the pods of a state directory keep their disks: a private folder (0700) of the machine's temp
    folder, named by the state directory, so a fake started later on the same state (gc after a crash)
    finds them, and never inside it: a rehearsal's state directory is in its run directory, and a pod's
    environment, files and container log hold the job's secrets in plain text, as a real pod's do."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / "pgolf-fake-pods"
    base.mkdir(mode=0o700, exist_ok=True)
    return base / digest


def _cuda(version: str) -> tuple[int, ...]:
    """'12.11' -> (12, 11): CUDA versions compare numerically, not as decimals."""
    return tuple(int(x) for x in version.split("."))


def iso(t: float) -> str:
    return container.timestamp(t)


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _canonical(text: str) -> str:
    """Any RFC 3339 instant in the log's own format (so string order is time order)."""
    return iso(parse_time(text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def param(self, name: str, default: str | None = None) -> str | None:
        return (self.query.get(name) or [default])[-1]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int
    payload: Any = None                       # JSON body (None: no body)
    headers: dict[str, str] = field(default_factory=dict)
    ctype: str = "application/json"
    events: Iterator[tuple[str, str]] | None = None    # SSE: (id, data) pairs
    drop: bool = False                        # close the connection without answering
    drop_after: int | None = None             # SSE: drop the stream after this many events
    drop_shared: bool = False                 # SSE: drop after the second event sharing one id (a fault left)
    heartbeat: bool = False                   # SSE: a comment and a heartbeat event before each log event
    text: str | None = None                   # a plain-text body (Cloudflare's own answers are not JSON)


def problem(status: int, detail: str, errors: list[str] | None = None) -> Reply:
    titles = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
              404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
              422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
              503: "Service Unavailable"}
    body = {"title": titles.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Reply(status, body, ctype="application/problem+json")


class _State:
    """state.json under an exclusive file lock: every change is read-modify-write, so fakes can share it."""

    def __init__(self, root: Path):
        self.path, self.lock_path = root / "state.json", root / "state.lock"
        self._local = threading.Lock()

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict]:
        with self._local, open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            for key in ("pods", "volumes", "billing"):
                data.setdefault(key, {})
            data.setdefault("gone", [])
            data.setdefault("n_pods", 0)
            before = json.dumps(data, sort_keys=True)
            yield data
            after = json.dumps(data, sort_keys=True)
            if after != before:
                tmp = self.path.with_name(f".state.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps(data, indent=1))
                os.replace(tmp, self.path)

    def read(self) -> dict:
        with self.edit() as data:
            return json.loads(json.dumps(data))


class FakeRunPod(InstantRoutes):
    """The fake API server and its pods (and Instant Clusters of them: fake_instant.py). start() -> base origin for RUNPOD_API_BASE_URL."""

    def __init__(self, state_dir: str | Path, faults: str | dict = "", *, api_key: str | None = None,
                 retry_after_s: int = RETRY_AFTER_S, rate_quota_per_min: int = RATE_QUOTA_PER_MIN,
                 stock: dict[str, str] | None = None):
        self.root = Path(state_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "volumes").mkdir(exist_ok=True)
        self.pods_root = pods_root(self.root)
        self.state = _State(self.root)
        self.faults = parse_faults(faults) if isinstance(faults, str) else dict(faults)
        self.balance = float(self.faults.get("balance", DEFAULT_BALANCE))
        self.spend_limit = float(self.faults.get("spend_limit", DEFAULT_SPEND_LIMIT))
        self.api_key = api_key
        self.retry_after_s = int(retry_after_s)
        self.rate_quota = int(rate_quota_per_min)
        self.stock = {d[0]: (stock or {}).get(d[0], "HIGH") for d in DATA_CENTERS}   # per data center
        self.lock = threading.Lock()               # in-memory fault counters and bookkeeping
        self.used = {k: 0 for k in FAULT_KEYS}
        self.n_requests = 0
        self.window: tuple[int, int] = (0, 0)      # (minute, requests in it) for the RateLimit headers
        self.envs: dict[str, dict[str, str]] = {}  # pod id -> env as created (memory only: may hold secrets)
        self.keys: dict[str, str] = {}             # pod id -> its pod-scoped key (memory only)
        self.events: list[str] = []                # what the fake did (faults, terminations), for tests
        self.requests_seen: list[str] = []         # operation ids, in order
        self.user_agents: set[str] = set()         # every User-Agent seen, refused ones included (tests)
        self.violations: list[str] = []            # contract violations, requests and responses
        self.final_logs: dict[str, list[str]] = {}  # pod id -> its container log when it was terminated (tests)
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # ---- lifecycle of the server
    def start(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-runpod", daemon=True).start()
        return self.url

    def stop(self) -> None:
        """Stop answering; pods keep running (as cloud pods do when their driver goes away)."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def terminate_all(self) -> None:
        """Kill every pod of this state directory and forget it (tests' and gc's last resort)."""
        for pod_id in list(self.state.read()["pods"]):
            self._terminate(pod_id, wait=True)

    def pod_dir(self, pod_id: str) -> Path:
        """The pod's disk: its root folder, container log and exit code (outside the state directory)."""
        return self.pods_root / pod_id

    def alive_pods(self) -> list[str]:
        """Ids of pods that still have a process, whatever the API says about them."""
        pods = self.state.read()["pods"]
        return [i for i, p in pods.items() if p.get("mark") and container.pod_processes(p["mark"])]

    def pod_ids(self) -> list[str]:
        """Ids of the pods the API still lists."""
        return [i for i, p in self.state.read()["pods"].items() if not p.get("terminated")]

    def container_log(self, pod_id: str) -> list[str]:
        """The pod's container log lines, as the container wrote them (for tests)."""
        path = self.pod_dir(pod_id) / "container.log"
        return [json.loads(x)["line"] for x in path.read_text().splitlines()] if path.exists() else []

    # ---- one request, start to end
    def dispatch(self, req: Request) -> Reply:
        agent = (req.header("User-Agent") or "").strip()
        with self.lock:
            self.user_agents.add(agent)
        if not agent or LIBRARY_AGENTS.match(agent):
            return Reply(403, text="error code: 1010", ctype="text/plain; charset=UTF-8")   # before the API
        if req.path.rstrip("/") == "/graphql":
            return self._graphql(req)
        op, path_params, known = contract().match(req.method, req.path)
        if op is None:
            return problem(405 if known else 404, f"{req.method} {req.path} is not an API v2 operation")
        who = self._authorize(req, op, path_params)
        if isinstance(who, Reply):
            return who
        with self.lock:
            self.requests_seen.append(op.id)
            self.n_requests += 1
            if self.used["429"] < self.faults.get("429", 0):
                self.used["429"] += 1
                self.events.append("429")
                reply = problem(429, "rate limit exceeded for the minute window")
                reply.headers["Retry-After"] = str(self.retry_after_s)
                reply.headers["RateLimit"] = http_sf.ser([("minute", {"r": 0, "t": self.retry_after_s})])
                return self._checked(op, reply)
            if self._take("quota_day"):
                self.events.append("quota_day")
                reply = problem(429, "daily request quota exhausted")
                reply.headers["Retry-After"] = str(QUOTA_DAY_RESET_S)
                reply.headers["RateLimit"] = http_sf.ser([("minute", {"r": 100, "t": 30}),
                                                          ("day", {"r": 0, "t": QUOTA_DAY_RESET_S})])
                return self._checked(op, reply)
            minute, count = self.window
            now_min = int(time.time() // 60)
            count = count + 1 if minute == now_min else 1
            self.window = (now_min, count)
            if count > self.rate_quota:
                wait = 60 - int(time.time() % 60)
                reply = problem(429, "rate limit exceeded for the minute window")
                reply.headers["Retry-After"] = str(wait)
                return self._checked(op, reply)
            if self.used["5xx"] < self.faults.get("5xx", 0) and self.n_requests % 2 == 0:
                self.used["5xx"] += 1
                self.events.append("5xx")
                return self._checked(op, problem(503, "upstream unavailable, try again"))
        ctype = (req.header("Content-Type") or "").split(";")[0].strip()
        headers = {k.lower(): v for k, v in req.headers.items()}
        errors = contract().request_errors(op, req.query, headers, req.body or None, ctype)
        if errors:
            with self.lock:
                self.violations += [f"request {op.id}: {e}" for e in errors]
            return self._checked(op, problem(422, "Request validation failed.", errors))
        handler = getattr(self, f"_op_{op.id}", None)
        if handler is None:
            return self._checked(op, problem(404, f"the fake RunPod does not serve {op.id}"))
        return self._checked(op, handler(req, who=who, **path_params))

    def _authorize(self, req: Request, op: Operation, path_params: dict) -> str | Reply:
        """'user', or 'pod:<id>' for a pod-scoped key (only its own pod: get, logs, action, delete)."""
        auth = req.header("Authorization") or ""
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        if not token:
            return problem(401, "missing bearer token")
        digest = _hash(token)
        for pod_id, pod in self.state.read()["pods"].items():
            if pod.get("key_hash") == digest:
                allowed = {"getPod", "getPodLogs", "podAction", "deletePod"}
                if op.id in allowed and path_params.get("id") == pod_id:
                    return f"pod:{pod_id}"
                return problem(403, "a pod-scoped key can only manage its own pod")
        if self.api_key is not None and token != self.api_key:
            return problem(401, "invalid api key")
        return "user"

    def _checked(self, op: Operation, reply: Reply) -> Reply:
        """Add the RateLimit headers and check the answer against the contract (a violation becomes a 500)."""
        minute, count = self.window
        left = max(0, self.rate_quota - count) if reply.status != 429 else 0
        reply.headers.setdefault("RateLimit", http_sf.ser([("minute", {"r": left, "t": 60 - int(time.time() % 60)})]))
        reply.headers.setdefault("RateLimit-Policy", http_sf.ser([("minute", {"q": self.rate_quota, "w": 60})]))
        if reply.drop:
            return reply
        headers = dict(reply.headers)
        body = None
        if reply.events is not None:
            headers["Content-Type"] = "text/event-stream"
        elif reply.payload is not None:
            headers["Content-Type"] = reply.ctype
            body = json.dumps(reply.payload).encode()
        errors = contract().response_errors(op, reply.status, headers, body)
        if errors:
            with self.lock:
                self.violations += [f"response {op.id} {reply.status}: {e}" for e in errors]
            return problem(500, f"fake RunPod broke the contract: {errors[0]}")
        return reply

    # ---- GraphQL: only the balance, which v2 lacks
    def _graphql(self, req: Request) -> Reply:
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return Reply(401, {"errors": [{"message": "Unauthorized"}]})
        if self.faults.get("graphql_gone"):
            return Reply(410, {"errors": [{"message": "The GraphQL API has been retired; use REST API v2"}]})
        self.requests_seen.append("graphql")
        try:
            query = json.loads(req.body)["query"]
        except (ValueError, KeyError, TypeError):
            return Reply(400, {"errors": [{"message": "bad request"}]})
        if not re.search(r"\bmyself\s*\{[^}]*\bclientBalance\b", query):
            return Reply(200, {"errors": [{"message": "the fake RunPod answers only myself { clientBalance }"}]})
        return Reply(200, {"data": {"myself": {"clientBalance": self.balance}}})

    # ---- pods
    def _status(self, pod: dict) -> str:
        if pod.get("terminated"):
            return "TERMINATED"
        if pod.get("stopped"):
            return "EXITED"
        if not pod.get("pid"):        # RUNNING with no runtime while the image is pulled
            pulling = pod.get("provisioned") is not None and time.time() >= pod["provisioned"]
            return "RUNNING" if pulling else "PROVISIONING"
        if (self.pod_dir(pod["id"]) / "exit").exists():
            return "EXITED"
        if not container.alive(pod["pid"], pod.get("proc_start")):
            return "EXITED"
        return "RUNNING"

    def _view(self, pod: dict) -> dict:
        status = self._status(pod)
        runtime = None
        if status == "RUNNING" and pod.get("pid"):
            runtime = {"uptime": int(time.time() - pod["started"]), "ports": self._runtime_ports(pod)}
        out = {"id": pod["id"], "name": pod["name"], "image": pod["image"], "args": pod["args"],
               "disk": pod["disk"], "ports": pod["ports"], "env": self.envs.get(pod["id"], {}), "registry": None,
               "status": status, "actions": ACTIONS[status], "mounts": pod["mounts"], "cloud": pod["cloud"],
               "dataCenterId": pod["dataCenterId"], "cudaVersion": HOST_CUDA if pod.get("gpu") else None,
               "ssh": {"proxy": None, "direct": None}, "template": None,
               "cost": pod["costPerHr"] if status in LIVE else 0.0, "locked": False,
               "globalNetworking": {"enabled": False}, "runtime": runtime, "createdAt": iso(pod["created"]),
               "startedAt": iso(pod["started"]) if pod.get("started") else None}
        if pod.get("gpu"):
            out["gpu"] = pod["gpu"]
        else:
            out["cpu"] = pod["cpu"]
        return out

    @staticmethod
    def _runtime_ports(pod: dict) -> list[dict]:
        out = []
        for spec in pod["ports"]:
            num, proto = spec.split("/")
            if proto == "http":
                out.append({"private": int(num), "public": None, "type": "http", "ip": None})
            else:
                public = pod["tcp"][num]
                private = public if int(num) >= 70000 else int(num)
                out.append({"private": private, "public": public, "type": "tcp", "ip": "127.0.0.1"})
        return out

    def _op_listPods(self, req: Request, who: str) -> Reply:
        pods = self.state.read()["pods"].values()
        now = time.time()
        members = req.param("includeClusterPods") == "true"      # cluster members only when asked
        return Reply(200, {"pods": [self._member_view(p) if p.get("cluster") else self._view(p) for p in pods
                                    if not p.get("terminated") and now >= p.get("listed_from", 0)
                                    and (members or not p.get("cluster"))]})

    def _op_getPod(self, req: Request, who: str, id: str) -> Reply:
        pod = self.state.read()["pods"].get(id)
        if pod is None:
            return problem(404, f"pod {id} not found")
        return Reply(200, self._member_view(pod) if pod.get("cluster") else self._view(pod))

    def _op_createPod(self, req: Request, who: str) -> Reply:
        body = req.json()
        refusal = self._refuse(body)
        if refusal:
            return refusal
        with self.lock:
            if self._take("capacity"):
                self.events.append("capacity")
                return problem(400, CAPACITY_DETAIL)
        price = self._price(body)
        with self.state.edit() as st:
            dc = self._place(body, st)
            if isinstance(dc, Reply):
                return dc
            spend = sum(p["costPerHr"] for p in st["pods"].values() if self._status(p) in LIVE)
            if spend + price > self.spend_limit + 1e-9:
                return problem(400, f"Spend limit reached: this pod (${price:.2f}/hr) would bring your account "
                                    f"to ${spend + price:.2f}/hr, above your spend limit of "
                                    f"${self.spend_limit:.2f}/hr. Contact support to raise it.")
            if self.balance < price:
                return problem(402, f"Insufficient balance: deploying needs at least one hour of credit "
                                    f"(${price:.2f}); your balance is ${self.balance:.2f}.")
            for other in st["pods"].values():      # list lag, made deterministic: a lost create's pod is
                if other["name"] == body["name"]:   # listed once the retry of its create has come
                    other["listed_from"] = min(other.get("listed_from", 0), time.time())
            with self.lock:        # a twin is nobody's pod: the other faults go to the pods that serve
                flags = {"twin": self._take("twin")}
                flags.update({k: not flags["twin"] and self._take(k)
                              for k in ("stuck", "slow_start", "preempt", "lost_create")})
            st["n_pods"] += 1
            pod_id = f"fake{st['n_pods']:03d}{secrets.token_hex(4)}"
            now = time.time()
            ports = list(body.get("ports") or [])
            tcp = {s.split("/")[0]: _free_port() for s in ports if s.endswith("/tcp")}
            key = f"rpa_pod_{secrets.token_hex(16)}"
            pod = {"id": pod_id, "name": body["name"], "image": body.get("image") or "", "args": body.get("args") or "",
                   "disk": int(body.get("disk") or DEFAULT_DISK_GB), "ports": ports, "tcp": tcp,
                   "cloud": body.get("cloud", "SECURE"),
                   "dataCenterId": dc, "mounts": body.get("mounts") or {}, "costPerHr": price, "created": now,
                   "started": None, "pid": None, "proc_start": None, "mark": f"{pod_id}:{secrets.token_hex(8)}",
                   "key_hash": _hash(key), "stuck": flags["stuck"], "preempt": flags["preempt"],
                   "provisioned": None if flags["stuck"] else now + (SLOW_START_S if flags["slow_start"] else PROVISION_S),
                   "listed_from": now + TWIN_LAG_S if flags["twin"] else now}
            if body.get("gpu"):
                pod["gpu"] = {"id": body["gpu"]["id"], "count": int(body["gpu"].get("count", 1))}
            else:
                flavor = next(c for c in CPUS if c[0] == body["cpu"]["id"])
                n = int(body["cpu"]["vcpuCount"])
                pod["cpu"] = {"id": flavor[0], "vcpuCount": n, "memory": max(1, int(flavor[2] * n))}
            st["pods"][pod_id] = pod
            st["billing"][pod_id] = {"start": now, "end": None, "costPerHr": price, "disk": pod["disk"],
                                     "gpu": bool(pod.get("gpu"))}
        self.envs[pod_id] = dict(body.get("env") or {})
        self.keys[pod_id] = key
        (self.pod_dir(pod_id) / "rootfs" / "root").mkdir(parents=True, exist_ok=True)
        os.chmod(self.pod_dir(pod_id), 0o700)
        if flags["stuck"]:
            self.events.append(f"stuck {pod_id}")
        else:
            pull = self.faults.get("slow_pull", 0) * TIME_SCALE
            timer = threading.Timer(pod["provisioned"] - now + pull, self._boot, args=(pod_id,))
            timer.daemon = True
            timer.start()
        if flags["lost_create"] or flags["twin"]:
            self.events.append(f"{'twin' if flags['twin'] else 'lost_create'} {pod_id}")
            return Reply(201, drop=True)
        return Reply(201, self._view(pod))

    def _take(self, fault: str) -> bool:
        if self.used[fault] < self.faults.get(fault, 0):
            self.used[fault] += 1
            return True
        return False

    def _refuse(self, body: dict) -> Reply | None:
        """The handler-level rules (400) that the schema cannot say."""
        if bool(body.get("gpu")) == bool(body.get("cpu")):
            return problem(400, "exactly one of gpu or cpu must be set")
        if len(body.get("env") or {}) > MAX_ENV_VARS:
            return problem(400, f"env: at most {MAX_ENV_VARS} environment variables per pod "
                                f"({len(body['env'])} given)")
        cloud = body.get("cloud", "SECURE")
        if body.get("gpu"):
            gpu = next((g for g in GPUS if g[0] == body["gpu"]["id"]), None)
            if gpu is None:
                return problem(400, f"unknown GPU type {body['gpu']['id']!r}")
            if int(body["gpu"].get("count", 1)) > gpu[5]:
                return problem(400, f"{gpu[1]} pods have at most {gpu[5]} GPUs in {cloud} cloud")
            floor, allowed = body["gpu"].get("minCudaVersion"), body["gpu"].get("allowedCudaVersions") or []
            if floor and allowed:
                return problem(400, "gpu.minCudaVersion and a non-empty gpu.allowedCudaVersions are mutually exclusive")
            if (floor and _cuda(floor) > _cuda(HOST_CUDA)) or (allowed and HOST_CUDA not in allowed):
                return problem(400, CAPACITY_DETAIL)      # no host reports such a CUDA: RunPod's capacity answer
        else:
            flavor = next((c for c in CPUS if c[0] == body["cpu"]["id"]), None)
            n = int(body["cpu"]["vcpuCount"])
            if flavor is None:
                return problem(400, f"unknown CPU flavor {body['cpu']['id']!r}")
            if n & (n - 1) or n > flavor[5]:
                return problem(400, f"vcpuCount {n} is not a power of two between 2 and {flavor[5]} for {flavor[0]}")
            if cloud != "SECURE":
                return problem(400, "CPU pods run in SECURE cloud only")
            if (body.get("mounts") or {}).get("persistent"):
                return problem(400, "mounts.persistent is not allowed on CPU pods")
            per = CPU_DISK_GB_PER_VCPU.get(flavor[0])
            if per and int(body.get("disk") or DEFAULT_DISK_GB) > per * n:
                return problem(400, f"container disk {int(body.get('disk') or DEFAULT_DISK_GB)} GB is over the "
                                    f"{per * n} GB limit of a {flavor[0]} pod with {n} vCPUs ({per} GB per vCPU)")
        mounts = body.get("mounts") or {}
        if mounts.get("persistent") and mounts.get("network"):
            return problem(400, "mounts.persistent and mounts.network are mutually exclusive")
        for spec in body.get("ports") or []:
            if not re.fullmatch(r"\d{1,5}/(tcp|http)", spec):
                return problem(400, f"port {spec!r}: use NUMBER/tcp or NUMBER/http")
        known = {d[0] for d in DATA_CENTERS}
        for dc in body.get("dataCenterIds") or []:
            if dc not in known:
                return problem(400, f"unknown data center {dc!r}")
        return None

    def _place(self, body: dict, st: dict) -> str | Reply:
        """The data center, as RunPod places a pod: among dataCenterIds (none: any), only where a network
        volume lives (NetworkMount: "in the same data center as the pod"; a volume elsewhere is a 400), and
        only where the shape is in stock (else RunPod's capacity answer)."""
        allowed = list(body.get("dataCenterIds") or [d[0] for d in DATA_CENTERS])
        net = (body.get("mounts") or {}).get("network") or []
        if net:
            vol = st["volumes"].get(net[0]["volumeId"])
            if vol is None:
                return problem(400, f"network volume {net[0]['volumeId']} not found")
            if vol["dataCenter"] not in allowed:
                return problem(400, f"network volume {vol['id']} is in data center {vol['dataCenter']}, not among "
                                    f"the requested dataCenterIds {allowed}")
            allowed = [vol["dataCenter"]]
        placed = next((dc for dc in allowed if self.stock[dc] != "NONE"), None)
        return placed or problem(400, CAPACITY_DETAIL)

    @staticmethod
    def _price(body: dict) -> float:
        if body.get("gpu"):
            gpu = next(g for g in GPUS if g[0] == body["gpu"]["id"])
            per = gpu[4] if body.get("cloud") == "COMMUNITY" else gpu[3]
            return round(per * int(body["gpu"].get("count", 1)), 4)
        flavor = next(c for c in CPUS if c[0] == body["cpu"]["id"])
        return round(flavor[3] * int(body["cpu"]["vcpuCount"]), 4)

    def _boot(self, pod_id: str) -> None:
        """Start the container: the pod's args, its env plus RunPod's, its own root folder and session."""
        env_in = self.envs.get(pod_id)
        with self.state.edit() as st:
            pod = st["pods"].get(pod_id)
            if pod is None or env_in is None or pod.get("terminated") or pod.get("pid"):
                return
            pod_dir = self.pod_dir(pod_id)
            rootfs = pod_dir / "rootfs"
            home = rootfs / "root"
            (rootfs / "tmp").mkdir(parents=True, exist_ok=True)
            for m in (pod.get("mounts") or {}).get("network") or []:
                target = rootfs / m["path"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.symlink_to(self.root / "volumes" / m["volumeId"])
            (pod_dir / "exit").unlink(missing_ok=True)
            bin_dir = os.path.dirname(sys.executable)     # the image's python3 = this Python (torch inside)
            env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
                   "LANG": "C.UTF-8", "TMPDIR": str(rootfs / "tmp"), "PYTHONUNBUFFERED": "1"}
            env.update(env_in)
            env.update(pod.get("env_extra") or {})          # a cluster member's NODE_RANK, PRIMARY_ADDR, ...
            env.update({"RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": self.keys[pod_id],
                        "RUNPOD_API_BASE_URL": self.url, "RUNPOD_PUBLIC_IP": "127.0.0.1",
                        "RUNPOD_DC_ID": pod["dataCenterId"], "PGOLF_POD_ROOT": str(rootfs)})
            for num, port in pod["tcp"].items():
                if int(num) >= 70000:
                    env[f"RUNPOD_TCP_PORT_{num}"] = str(port)
            if pod.get("gpu"):
                env["RUNPOD_GPU_COUNT"] = str(pod["gpu"]["count"])
            else:
                env["RUNPOD_CPU_COUNT"] = str(pod["cpu"]["vcpuCount"])
            argv = shlex.split(pod["args"]) if pod["args"] else ["sleep", "infinity"]
            proc = container.launch(argv, env, str(home), str(pod_dir / "container.log"), str(pod_dir / "exit"),
                                    pod["mark"])
            pod.update(pid=proc.pid, proc_start=container.proc_start(proc.pid), started=time.time(), stopped=False)
        threading.Thread(target=proc.wait, daemon=True).start()      # reap the init when it ends
        if pod.get("preempt"):
            threading.Thread(target=self._lose_when, args=(pod_id, PREEMPT_MARKER, None), daemon=True).start()
        elif self.used["preempt_mid"] < self.faults.get("preempt_mid", 0):
            threading.Thread(target=self._lose_when, args=(pod_id, PREEMPT_MID_MARKER, "preempt_mid"),
                             daemon=True).start()

    def _lose_when(self, pod_id: str, marker: str, fault: str | None) -> None:
        """Lose the pod mid-run: once its log shows `marker` (and, with `fault`, one of those faults is
        left then), kill it; the API answers TERMINATED for LOST_TERMINATED_S, then 404."""
        log = self.pod_dir(pod_id) / "container.log"
        while True:
            pod = self.state.read()["pods"].get(pod_id)
            if pod is None or pod.get("terminated") or self._status(pod) == "EXITED":
                return
            if log.exists() and marker in log.read_text(errors="replace"):
                break
            time.sleep(0.05)
        if fault is not None:
            with self.lock:
                if not self._take(fault):
                    return
        time.sleep(PREEMPT_AFTER_S)
        self.events.append(f"{fault or 'preempt'} {pod_id}")
        self._terminate(pod_id, linger=LOST_TERMINATED_S)

    def _terminate(self, pod_id: str, wait: bool = False, linger: float = TERMINATED_S) -> bool:
        """DELETE: the pod's processes die and it shows TERMINATED at once (no longer listed); its disk goes
        and it answers 404 `linger` seconds later (`wait`: at once, for the tests' and gc's clean-up)."""
        with self.state.edit() as st:
            pod = st["pods"].get(pod_id)
            if pod is None:
                return False
            if pod.get("terminated") and not wait:
                return True                    # terminated already: it goes on its own
            pod["terminated"] = True
            bill = st["billing"].get(pod_id)
            if bill and bill["end"] is None:
                bill["end"] = self._ended_at(pod) or time.time()
        self.events.append(f"terminate {pod_id}")

        container.kill_pod(pod["mark"], pod.get("pid"), pod.get("proc_start"))   # before DELETE answers
        self.final_logs[pod_id] = self.container_log(pod_id)

        def finish():
            shutil.rmtree(self.pod_dir(pod_id), ignore_errors=True)   # its disk goes with it
            with contextlib.suppress(OSError):
                self.pods_root.rmdir()                                  # the last pod of this state dir
            if not wait:
                time.sleep(linger)
            with self.state.edit() as st:
                st["pods"].pop(pod_id, None)
                st["gone"] = (st["gone"] + [pod_id])[-1000:]
            self.envs.pop(pod_id, None)
            self.keys.pop(pod_id, None)
        if wait:
            finish()
        else:
            threading.Thread(target=finish, daemon=True).start()
        return True

    def _ended_at(self, pod: dict) -> float | None:
        exit_file = self.pod_dir(pod["id"]) / "exit"
        return exit_file.stat().st_mtime if exit_file.exists() else None

    def _op_deletePod(self, req: Request, who: str, id: str) -> Reply:
        if (self.state.read()["pods"].get(id) or {}).get("cluster"):
            return problem(400, f"pod {id} is a cluster member: delete its cluster (/v2/clusters/{{id}})")
        if not self._terminate(id):
            return problem(404, f"pod {id} not found")
        return Reply(204)

    def _op_podAction(self, req: Request, who: str, id: str) -> Reply:
        action = req.json()["action"]
        pod = self.state.read()["pods"].get(id)
        if pod is None:
            return problem(404, f"pod {id} not found")
        status = self._status(pod)
        if action not in ACTIONS[status]:
            return problem(409, f"cannot {action} a pod that is {status}")
        if action == "terminate":
            self._terminate(id)
            return Reply(204)
        if action in ("stop", "restart"):
            container.kill_pod(pod["mark"], pod.get("pid"), pod.get("proc_start"))
        with self.state.edit() as st:
            pod = st["pods"][id]
            pod.update(pid=None, proc_start=None, started=None, stopped=action == "stop")
            pod["stuck"] = False
        if action in ("start", "restart"):
            if id not in self.envs:
                return problem(400, "this fake did not create the pod and cannot start it again")
            self._boot(id)
        return Reply(200, self._view(self.state.read()["pods"][id]))

    # ---- logs (SSE)
    def _op_getPodLogs(self, req: Request, who: str, id: str) -> Reply:
        pod = self.state.read()["pods"].get(id)
        if pod is None or pod.get("terminated"):
            return problem(404, f"pod {id} not found")
        source = req.param("source")
        resume = req.header("Last-Event-ID") or req.param("since")
        start = _canonical(resume) if resume else None
        tail = int(req.param("tail", "100"))
        headers = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        coarse = bool(self.faults.get("sse_drop_shared"))
        return Reply(200, headers=headers, events=self._log_events(id, source, start, tail, coarse),
                     drop_after=SSE_DROP_AFTER if self.faults.get("sse_drop") else None,
                     drop_shared=coarse, heartbeat=bool(self.faults.get("sse_heartbeat")))

    def take_drop(self, fault: str = "sse_drop") -> bool:
        """A stream that has sent SSE_DROP_AFTER events (or, sse_drop_shared, a second event of one id)
        drops if such a fault is left (mid-stream, whenever that is: a stream that ends earlier spends none)."""
        with self.lock:
            return self._take(fault)

    def _log_events(self, pod_id: str, source: str | None, start: str | None, tail: int,
                    coarse: bool = False) -> Iterator[tuple[str, str]]:
        """(id, data) of the pod's log from `start` (inclusive) or its last `tail` lines, then live ones;
        `coarse`: ids (and ts) to the whole second, so lines of one second share an id."""
        def event(e: dict) -> tuple[str, str]:
            ts = e["ts"][:19] + "Z" if coarse else e["ts"]
            return ts, json.dumps({"source": "container", "line": e["line"], "ts": ts})

        path = self.pod_dir(pod_id) / "container.log"
        offset = 0
        backlog: list[dict] = []
        if source in (None, "container") and path.exists():
            with open(path, "rb") as f:
                data = f.read()
            whole = data[:data.rfind(b"\n") + 1]
            offset = len(whole)
            backlog = [json.loads(x) for x in whole.splitlines()]
            backlog = [e for e in backlog if e["ts"] >= start] if start else backlog[max(0, len(backlog) - tail):]
        elif source == "system":
            backlog = []            # the fake's host writes no system log lines
        for e in backlog:
            yield event(e)
        last_beat = time.time()
        while source in (None, "container"):
            pod = self.state.read()["pods"].get(pod_id)
            ended = pod is None or pod.get("terminated") or self._status(pod) == "EXITED"
            chunk = b""
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                chunk = chunk[:chunk.rfind(b"\n") + 1]
            offset += len(chunk)
            for raw in chunk.splitlines():
                yield event(json.loads(raw))
            if not chunk:
                if ended:            # gone, or exited with every line sent (the init writes `exit` last)
                    return
                if time.time() - last_beat > SSE_KEEPALIVE_S:
                    last_beat = time.time()
                    yield "", ""             # a keep-alive comment
                time.sleep(SSE_POLL_S)

    # ---- catalog
    def _op_listGpuTypes(self, req: Request, who: str) -> Reply:
        include = (req.param("include") or "").split(",")
        product = req.param("product")
        if ("AVAILABILITY" in include) != bool(product):
            return problem(400, "include=AVAILABILITY and product go together")
        count = int(req.param("count", "1"))
        floor = req.param("minCudaVersion")
        if floor and req.param("cudaVersions"):
            return problem(400, "minCudaVersion and cudaVersions are mutually exclusive")
        cuda_ok = not floor or _cuda(floor) <= _cuda(HOST_CUDA)[:len(_cuda(floor))]
        with self.lock:
            scarce = self.used["capacity"] < self.faults.get("capacity", 0)
        out = []
        for gid, name, mem, secure, community, most in GPUS:
            g = {"id": gid, "name": name, "pool": None, "manufacturer": "NVIDIA", "memory": mem, "secure": True,
                 "community": True, "price": {"secure": secure, "community": community},
                 "maxCount": {"secure": most, "community": most}}
            if product:
                fits = count <= most and cuda_ok
                dcs = [{"id": d, "name": n, "availability": self._level(d, scarce)} for d, n, _ in DATA_CENTERS
                       if fits and self._level(d, scarce) != "NONE"]
                g["availability"] = _best(dc["availability"] for dc in dcs)
                if dcs:
                    g["dataCenters"] = dcs
                if cuda_ok:
                    g["cudaVersions"] = [{"version": HOST_CUDA, "available": bool(dcs)}]
            out.append(g)
        return Reply(200, {"gpus": out})

    def _op_listCpuTypes(self, req: Request, who: str) -> Reply:
        include = (req.param("include") or "").split(",")
        product = req.param("product")
        if ("AVAILABILITY" in include) != bool(product):
            return problem(400, "include=AVAILABILITY and product go together")
        out = []
        for cid, name, ram, secure, serverless, most in CPUS:
            c = {"id": cid, "name": name, "group": cid[:4], "vcpu": {"min": 2, "max": most}, "ramGbPerVcpu": ram,
                 "price": {"securePerVcpu": secure, "serverlessPerVcpu": serverless}}
            if product:
                dcs = [{"id": d, "name": n, "availability": self.stock[d]} for d, n, _ in DATA_CENTERS
                       if self.stock[d] != "NONE"]
                c["availability"] = _best(dc["availability"] for dc in dcs)
                if dcs:
                    c["dataCenters"] = dcs
            out.append(c)
        return Reply(200, {"cpus": out})

    def _op_listDataCenters(self, req: Request, who: str) -> Reply:
        include = set(filter(None, (req.param("include") or "").split(",")))
        out = []
        for did, name, region in DATA_CENTERS:
            d = {"id": did, "name": name, "region": region, "networkVolumeTypes": ["STANDARD"],
                 "compliance": ["SOC_2_TYPE_2"], "globalNetwork": False}
            if "GPU_AVAILABILITY" in include:
                d["gpuAvailability"] = [{"id": g[0], "name": g[1], "availability": self.stock[did]} for g in GPUS]
            if "CPU_AVAILABILITY" in include:
                d["cpuAvailability"] = [{"id": c[0], "name": c[1], "availability": self.stock[did]} for c in CPUS]
            out.append(d)
        return Reply(200, {"dataCenters": out})

    def _level(self, dc: str, scarce: bool) -> str:
        """A data center's stock of GPUs: its own level, LOW while a capacity fault is pending."""
        return "LOW" if scarce and self.stock[dc] != "NONE" else self.stock[dc]

    # ---- billing
    def _op_listPodBilling(self, req: Request, who: str) -> Reply:
        size = req.param("bucketSize", "day")
        last_n = req.param("lastN")
        start_p, end_p = req.param("startTime"), req.param("endTime")
        if last_n and (start_p or end_p):
            return problem(400, "lastN is mutually exclusive with startTime/endTime")
        now = time.time()
        if last_n:
            end = _bucket_next(_bucket_start(now, size), size)
            start = _bucket_start(now, size)
            for _ in range(int(last_n) - 1):
                start = _bucket_start(start - 1, size)
        else:
            start = _bucket_start(parse_time(start_p) if start_p else now - 30 * 86400, size)
            end_raw = parse_time(end_p) if end_p else now
            end = end_raw if _bucket_start(end_raw, size) == end_raw else _bucket_next(_bucket_start(end_raw, size), size)
        pod_filter = req.param("podId")
        st = self.state.read()
        records = []
        for pod_id, bill in sorted(st["billing"].items()):
            if pod_filter and pod_id != pod_filter:
                continue
            pod = st["pods"].get(pod_id)
            until = bill["end"] or (pod and self._ended_at(pod)) or now
            t = start
            while t < end:
                nxt = _bucket_next(t, size)
                hours = max(0.0, min(nxt, until) - max(t, bill["start"])) / 3600
                if hours > 0:
                    compute = bill["costPerHr"] * hours
                    disk = bill["disk"] * DISK_USD_PER_GB_H * hours
                    records.append({"startTime": iso(t), "endTime": iso(nxt), "podId": pod_id,
                                    "gpuAmount": round(compute if bill["gpu"] else 0.0, 6),
                                    "cpuAmount": round(0.0 if bill["gpu"] else compute, 6),
                                    "diskAmount": round(disk, 6), "totalAmount": round(compute + disk, 6)})
                t = nxt
        totals = {k: round(sum(r[k] for r in records), 6) for k in ("totalAmount", "gpuAmount", "cpuAmount", "diskAmount")}
        meta = {"query": {"startTime": iso(start), "endTime": iso(end), "bucketSize": size, "podId": pod_filter},
                "recordCount": len(records), "uniquePodCount": len({r["podId"] for r in records}), "totals": totals}
        return Reply(200, {"records": records, "metadata": meta})

    # ---- network volumes
    def _op_listNetworkVolumes(self, req: Request, who: str) -> Reply:
        return Reply(200, {"networkVolumes": list(self.state.read()["volumes"].values())})

    def _op_getNetworkVolume(self, req: Request, who: str, id: str) -> Reply:
        vol = self.state.read()["volumes"].get(id)
        return Reply(200, vol) if vol else problem(404, f"network volume {id} not found")

    def _op_createNetworkVolume(self, req: Request, who: str) -> Reply:
        body = req.json()
        if body["dataCenter"] not in {d[0] for d in DATA_CENTERS}:
            return problem(400, f"unknown data center {body['dataCenter']!r}")
        if body.get("type", "STANDARD") != "STANDARD":
            return problem(400, f"{body['dataCenter']} offers STANDARD network volumes only")
        vol = {"id": f"vol{secrets.token_hex(5)}", "name": body["name"], "size": body["size"],
               "dataCenter": body["dataCenter"], "type": body.get("type", "STANDARD")}
        with self.state.edit() as st:
            st["volumes"][vol["id"]] = vol
        (self.root / "volumes" / vol["id"]).mkdir(parents=True, exist_ok=True)
        return Reply(201, vol)

    def _op_deleteNetworkVolume(self, req: Request, who: str, id: str) -> Reply:
        with self.state.edit() as st:
            if id not in st["volumes"]:
                return problem(404, f"network volume {id} not found")
            users = [p["id"] for p in st["pods"].values() if not p.get("terminated") and
                     any(m["volumeId"] == id for m in (p.get("mounts") or {}).get("network") or [])]
            if users:
                return problem(400, f"network volume {id} is attached to pod {users[0]}")
            del st["volumes"][id]
        shutil.rmtree(self.root / "volumes" / id, ignore_errors=True)
        return Reply(204)


def _best(levels) -> str:
    """The catalog's overall level: the best of its data centers' (NONE when none has any)."""
    order = ["NONE", "LOW", "MEDIUM", "HIGH"]
    return max(levels, key=order.index, default="NONE")


def _bucket_start(t: float, size: str) -> float:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    if size == "hour":
        d = d.replace(minute=0, second=0, microsecond=0)
    else:
        d = d.replace(hour=0, minute=0, second=0, microsecond=0)
        if size == "week":
            d -= dt.timedelta(days=d.weekday())
        elif size == "month":
            d = d.replace(day=1)
        elif size == "year":
            d = d.replace(month=1, day=1)
    return d.timestamp()


def _bucket_next(t: float, size: str) -> float:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    if size in ("hour", "day", "week"):
        return t + {"hour": 3600, "day": 86400, "week": 7 * 86400}[size]
    if size == "month":
        return (d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)).timestamp()
    return d.replace(year=d.year + 1).timestamp()


def _handler(fake: FakeRunPod):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _serve(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urllib.parse.urlsplit(self.path)
            req = Request(self.command, url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True),
                          dict(self.headers.items()), body)
            try:
                reply = fake.dispatch(req)
            except Exception as e:  # noqa: BLE001 - a fake bug answers 500, never hangs the client
                fake.violations.append(f"fake crashed on {req.method} {req.path}: {type(e).__name__}: {e}")
                reply = problem(500, "internal error in the fake RunPod")
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reply.events is not None:
                return self._stream(reply)
            raw = (reply.text.encode() if reply.text is not None else
                   json.dumps(reply.payload).encode() if reply.payload is not None else b"")
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if reply.payload is not None or reply.text is not None:
                self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _stream(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent, last_id = 0, None
            try:
                for event_id, data in reply.events:
                    if not event_id:
                        self._chunk(b": keep-alive\n\n")
                        continue
                    errors = contract().event_errors(event_id, data)
                    if errors:
                        fake.violations += [f"response getPodLogs event: {e}" for e in errors]
                    if reply.heartbeat:
                        self._chunk(b": ping\n\nevent: heartbeat\ndata: {\"alive\": true}\n\n")
                        fake.events.append("sse_heartbeat")
                    self._chunk(f"id: {event_id}\ndata: {data}\n\n".encode())
                    sent += 1
                    drop = "sse_drop" if reply.drop_after is not None and sent == reply.drop_after and \
                        fake.take_drop() else None
                    if drop is None and reply.drop_shared and event_id == last_id and fake.take_drop("sse_drop_shared"):
                        drop = "sse_drop_shared"
                    last_id = event_id
                    if drop:
                        fake.events.append(drop)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)     # no last chunk: the client sees a drop
                        return
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                reply.events.close()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.backends.runpod.fake --state-dir DIR [--faults SPEC]`: serve until Ctrl-C (point
    RUNPOD_API_BASE_URL at the printed origin to drive it with pgolf or any v2 client)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m runner.backends.runpod.fake")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--faults", default="")
    args = p.parse_args(argv)
    fake = FakeRunPod(args.state_dir, faults=args.faults)
    print(f"RUNPOD_API_BASE_URL={fake.start()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
