"""A fake RunPod API on 127.0.0.1 that speaks the wire protocol of the `runpod` client, for free rehearsals.

It answers the GraphQL documents the real client sends (podFindAndDeployOnDemand, pod(input), myself{pods},
podTerminate, gpuTypes, myself{clientBalance}) with the shapes the client reads. Each "pod" is a local
process group started from the pod's own start command (dockerArgs) with the pod's environment, so the real
bootstrap runs exactly as it would on RunPod; like RunPod, the fake injects RUNPOD_POD_ID and a pod-scoped
RUNPOD_API_KEY, and maps the pod's private HTTP port to a free local port (runtime.ports). Terminate =
kill the process group, then the pod vanishes from the API.

Pods outlive the API process (own sessions), and the fake's state lives in a small JSON file (no env, no
secrets), so a fake started again on the same file after a driver crash still lists and can terminate them:
that is how `pgolf cluster gc --rehearse` works.

Faults (`--rehearse-faults`): capacity=K (first K creates answer "no instances available"), 5xx=K
(K answers are 502 pages, every other request), lost_create=K (K creates succeed but answer 502),
slow_start=K (first K pods take SLOW_START_S to get a runtime), preempt=K (first K pods are killed once their
job is running and vanish from the API), balance=X (account balance in dollars).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from results.errors import PgolfError
from runner.proctree import kill_marked

GPU_TYPES = [
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80, "manufacturer": "Nvidia",
     "maxGpuCount": 8, "cudaCores": 0, "secureCloud": True, "communityCloud": True, "securePrice": 2.69,
     "communityPrice": 1.99, "oneMonthPrice": None, "threeMonthPrice": None, "oneWeekPrice": None,
     "communitySpotPrice": 1.5, "secureSpotPrice": 1.75},
    {"id": "NVIDIA H100 PCIe", "displayName": "H100 PCIe", "memoryInGb": 80, "manufacturer": "Nvidia",
     "maxGpuCount": 8, "cudaCores": 0, "secureCloud": True, "communityCloud": True, "securePrice": 2.39,
     "communityPrice": 1.99, "oneMonthPrice": None, "threeMonthPrice": None, "oneWeekPrice": None,
     "communitySpotPrice": 1.25, "secureSpotPrice": 1.5},
]
CAPACITY_MESSAGE = ("There are no longer any instances available with the requested specifications. "
                    "Please refresh and try again.")
SLOW_START_S = 2.0
PREEMPT_AFTER_RUNNING_S = 0.5
FAULT_KEYS = {"capacity", "5xx", "lost_create", "slow_start", "preempt", "balance"}
POD_MARK = "PGOLF_FAKE_POD_MARK"   # every process of a fake pod inherits it: how terminate finds them all


def parse_faults(text: str) -> dict[str, float]:
    """'preempt=1,capacity=2' -> {"preempt": 1, "capacity": 2}; a bad item is a PgolfError."""
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


def default_state_path() -> str:
    """Where the rehearsal keeps its pods' state (PGOLF_REHEARSE_STATE overrides; tests use a tmp dir)."""
    return os.environ.get("PGOLF_REHEARSE_STATE") or os.path.join(
        tempfile.gettempdir(), f"pgolf-rehearse-{os.getuid()}", "fake_runpod.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_start(pid: int) -> str | None:
    """The process's start time (/proc), so a recycled pid is never mistaken for a pod."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_STR_FIELD = re.compile(r'(\w+): "((?:[^"\\]|\\.)*)"')
_BARE_FIELD = re.compile(r'(\w+): (true|false|null|-?[\d.]+|[A-Z_]+)\b')
_ENV_ITEM = re.compile(r'\{ key: "([^"]*)", value: "([^"]*)" \}')


def _parse_input(query: str) -> dict[str, Any]:
    body = query.split("input:", 1)[1] if "input:" in query else query
    body = re.sub(r"env: \[.*?\](?=[,\s}])", "", body, flags=re.S)
    out: dict[str, Any] = {k: v for k, v in _STR_FIELD.findall(body)}
    for k, v in _BARE_FIELD.findall(body):
        out.setdefault(k, {"true": True, "false": False, "null": None}.get(v, v))
    out["env"] = dict(_ENV_ITEM.findall(query))
    return out


class FakeRunPod:
    """The fake API server plus its pods. start() -> base URL for RUNPOD_API_BASE_URL."""

    def __init__(self, state_path: str | None = None, faults: str | dict = "", balance: float = 1000.0):
        self.state_path = state_path or default_state_path()
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        self.pods_root = os.path.join(os.path.dirname(self.state_path), "pods")
        self.faults = parse_faults(faults) if isinstance(faults, str) else dict(faults)
        self.balance = float(self.faults.get("balance", balance))
        self.lock = threading.RLock()
        self.pods: dict[str, dict[str, Any]] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.tokens: dict[str, str] = {}      # pod id -> its HTTP token (memory only)
        self.n_requests = self.n_creates = self.n_pods = 0
        self.used = {k: 0 for k in FAULT_KEYS}
        self.gone: set[str] = set()           # ids of pods terminated or lost (by this fake or another)
        self.mine: set[str] = set()           # ids this fake created or changed: its copy is the truth
        self._seen_mtime = None
        self.events: list[str] = []           # what the fake did to whom (faults, terminations)
        self.requests_seen: list[str] = []    # operation names, for tests
        self.server: ThreadingHTTPServer | None = None
        self.url = ""
        self._load()

    # ---- lifecycle
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
        for pod_id in list(self.pods):
            self._terminate(pod_id, wait=True)

    def alive_pods(self) -> list[str]:
        """Ids of pods whose process group still runs (for tests and gc verification)."""
        with self.lock:
            return [i for i, p in self.pods.items() if self._alive(p)]

    # ---- state file (no env, no tokens: nothing secret ever reaches the disk)
    def _load(self) -> None:
        try:
            with open(self.state_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        for pod in data.get("pods", []):
            if not self._alive(pod) and pod.get("desiredStatus") == "RUNNING":
                pod["desiredStatus"] = "EXITED"
            self.pods[pod["id"]] = pod
        self.n_pods = int(data.get("n_pods", len(self.pods)))
        self.gone = set(data.get("gone") or [])

    def _save(self) -> None:
        """Merge into the file under a lock: another rehearsal (or gc) may share it. Pods this fake does
        not know are kept; pods anyone removed stay removed (tombstones in "gone")."""
        with self.lock, open(self.state_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.state_path) as f:
                    disk = json.load(f)
            except (OSError, ValueError):
                disk = {}
            self.gone |= set(disk.get("gone") or [])
            for pod_id in [i for i in self.pods if i in self.gone]:
                del self.pods[pod_id]
            pods = {p["id"]: p for p in disk.get("pods") or [] if p["id"] not in self.gone}
            pods.update({i: p for i, p in self.pods.items() if i in self.mine or i not in pods})
            for i, p in pods.items():          # the other fakes' pods, as they last wrote them
                if i not in self.mine:
                    self.pods[i] = p
            data = {"pods": list(pods.values()), "n_pods": max(self.n_pods, int(disk.get("n_pods") or 0)),
                    "gone": sorted(self.gone)[-1000:]}
            tmp = f"{self.state_path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.state_path)

    @staticmethod
    def _alive(pod: dict) -> bool:
        pid = pod.get("pid")
        return bool(pid) and _proc_start(pid) is not None and _proc_start(pid) == pod.get("proc_start")

    def _sync(self) -> None:
        """Drop pods another fake on the same state file removed (gc --rehearse next to a rehearsal)."""
        try:
            mtime = os.stat(self.state_path).st_mtime_ns
            if mtime == self._seen_mtime:
                return
            self._seen_mtime = mtime
            with open(self.state_path) as f:
                gone = set(json.load(f).get("gone") or []) - self.gone
        except (OSError, ValueError):
            return
        for pod_id in gone & set(self.pods):
            self.pods.pop(pod_id, None)
            self.procs.pop(pod_id, None)
        self.gone |= gone

    # ---- GraphQL
    def handle(self, query: str) -> tuple[int, Any]:
        with self.lock:
            self._sync()
            self.n_requests += 1
            if self.used["5xx"] < self.faults.get("5xx", 0) and self.n_requests % 2 == 0:
                self.used["5xx"] += 1
                self.events.append("5xx")
                return 502, "<html><body>502 Bad Gateway</body></html>"
        if "podFindAndDeployOnDemand" in query:
            self.requests_seen.append("create")
            return self._create(_parse_input(query))
        if "podTerminate" in query:
            self.requests_seen.append("terminate")
            pod_id = _parse_input(query).get("podId", "")
            if pod_id not in self.pods:
                return 200, {"errors": [{"message": f"pod {pod_id} not found"}]}
            self._terminate(pod_id)
            return 200, {"data": {"podTerminate": None}}
        if re.search(r"\bpod\s*\(\s*input", query):
            self.requests_seen.append("get_pod")
            pod = self.pods.get(_parse_input(query).get("podId", ""))
            return 200, {"data": {"pod": self._view(pod) if pod else None}}
        if "gpuTypes" in query:
            self.requests_seen.append("gpu_types")
            m = re.search(r'gpuTypes\(input: \{id: "([^"]*)"\}', query)
            gpus = [g for g in GPU_TYPES if not m or g["id"] == m.group(1)]
            count = int((re.search(r"gpuCount: (\d+)", query) or [0, 1])[1])
            return 200, {"data": {"gpuTypes": [dict(g, lowestPrice={"minimumBidPrice": g["communitySpotPrice"],
                                                                      "uninterruptablePrice": g["securePrice"] * count})
                                               for g in gpus]}}
        if "myself" in query:
            self.requests_seen.append("pods" if "pods" in query else "myself")
            with self.lock:
                pods = [self._view(p) for p in self.pods.values()]
                spend = sum(p["costPerHr"] for p in self.pods.values() if p["desiredStatus"] == "RUNNING")
            return 200, {"data": {"myself": {"id": "user-rehearsal", "pubKey": "", "networkVolumes": [],
                                             "clientBalance": self.balance, "currentSpendPerHr": spend,
                                             "pods": pods}}}
        return 200, {"errors": [{"message": "fake RunPod: unsupported query"}]}

    def _create(self, inp: dict) -> tuple[int, Any]:
        with self.lock:
            self.n_creates += 1
            if self.used["capacity"] < self.faults.get("capacity", 0):
                self.used["capacity"] += 1
                self.events.append("capacity")
                return 200, {"errors": [{"message": CAPACITY_MESSAGE}]}
            gpu = next((g for g in GPU_TYPES if g["id"] == inp.get("gpuTypeId")), None)
            if gpu is None:
                return 200, {"errors": [{"message": f"unknown gpu type {inp.get('gpuTypeId')}"}]}
            self.n_pods += 1
            n = self.n_pods
            pod_id = f"fake{n:03d}{secrets.token_hex(3)}"
            count = int(inp.get("gpuCount") or 1)
            price = gpu["communityPrice"] if inp.get("cloudType") == "COMMUNITY" else gpu["securePrice"]
            ports = inp.get("ports") or ""
            private = int(ports.split("/")[0]) if ports[:1].isdigit() else 8000
            pod = {"id": pod_id, "name": inp.get("name", ""), "imageName": inp.get("imageName", ""),
                   "gpuTypeId": gpu["id"], "gpuCount": count, "cloudType": inp.get("cloudType", "ALL"),
                   "costPerHr": round(price * count, 4), "desiredStatus": "RUNNING", "created": time.time(),
                   "ports": ports, "private_port": private, "public_port": _free_port(), "pid": None,
                   "proc_start": None, "workdir": os.path.join(self.pods_root, pod_id),
                   "containerDiskInGb": int(inp.get("containerDiskInGb") or 0),
                   "volumeInGb": int(inp.get("volumeInGb") or 0), "preempt": False}
            if self.used["preempt"] < self.faults.get("preempt", 0):
                self.used["preempt"] += 1
                pod["preempt"] = True
            slow = self.used["slow_start"] < self.faults.get("slow_start", 0)
            if slow:
                self.used["slow_start"] += 1
            self.pods[pod_id] = pod
            self.mine.add(pod_id)
            self.tokens[pod_id] = inp["env"].get("PGOLF_POD_TOKEN", "")
            self._save()
            lost = self.used["lost_create"] < self.faults.get("lost_create", 0)
            if lost:
                self.used["lost_create"] += 1
                self.events.append(f"lost_create {pod_id}")
        threading.Thread(target=self._boot, args=(pod_id, inp, SLOW_START_S if slow else 0.0),
                         daemon=True).start()
        if lost:
            return 502, "<html><body>502 Bad Gateway</body></html>"
        return 200, {"data": {"podFindAndDeployOnDemand": {
            "id": pod_id, "imageName": pod["imageName"], "env": [f"{k}={v}" for k, v in inp["env"].items()],
            "machineId": f"machine-{n}", "machine": {"podHostId": f"{pod_id}-host"}}}}

    def _boot(self, pod_id: str, inp: dict, delay: float) -> None:
        """Start the 'container': the pod's start command, its env, a private workdir, its own session."""
        time.sleep(delay)
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod["desiredStatus"] != "RUNNING":
                return
            os.makedirs(pod["workdir"], exist_ok=True)
            venv_bin = os.path.dirname(sys.executable)   # the image's python3 = this Python (torch inside)
            env = {"PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": pod["workdir"],
                   "LANG": "C.UTF-8", "TMPDIR": pod["workdir"], "PYTHONUNBUFFERED": "1"}
            env.update(inp["env"])
            env.update({"RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": f"pod-key-{pod_id}", POD_MARK: pod_id,
                        "RUNPOD_API_BASE_URL": self.url, "RUNPOD_GPU_COUNT": str(pod["gpuCount"]),
                        "PGOLF_HTTP_PORT": str(pod["public_port"]),      # the fake's NAT: private -> local
                        "PGOLF_WORKDIR": os.path.join(pod["workdir"], "pgolf")})
            argv = shlex.split(inp.get("dockerArgs") or "sleep infinity")
            with open(os.path.join(pod["workdir"], "container.log"), "ab") as out:
                proc = subprocess.Popen(argv, env=env, cwd=pod["workdir"], stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            self.procs[pod_id] = proc
            pod.update(pid=proc.pid, proc_start=_proc_start(proc.pid), started=time.time())
            self._save()
        if pod.get("preempt"):
            threading.Thread(target=self._preempt_when_running, args=(pod_id,), daemon=True).start()
        proc.wait()   # reap; a container that exits on its own shows as EXITED
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is not None and pod["desiredStatus"] == "RUNNING":
                pod["desiredStatus"] = "EXITED"
                self._save()

    def _preempt_when_running(self, pod_id: str) -> None:
        """Lose the pod mid-run: once its job is running, kill it and drop it from the API."""
        pod = self.pods.get(pod_id)
        url = f"http://127.0.0.1:{pod['public_port']}/status"
        headers = {"Authorization": f"Bearer {self.tokens.get(pod_id, '')}"}
        while pod_id in self.pods:
            try:
                if requests.get(url, headers=headers, timeout=2).json().get("phase") in ("running", "done"):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        time.sleep(PREEMPT_AFTER_RUNNING_S)
        with self.lock:
            if pod_id not in self.pods:
                return
            self._kill(self.pods[pod_id])
            del self.pods[pod_id]
            self.gone.add(pod_id)
            self.events.append(f"preempt {pod_id}")
            self._save()

    def _kill(self, pod: dict) -> None:
        """Like a container's end: every process of the pod, daemons in other sessions included."""
        if self._alive(pod):
            try:
                os.killpg(pod["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill_marked(pod["id"], name=POD_MARK)
        proc = self.procs.pop(pod["id"], None)
        if proc is not None:
            proc.wait()
        shutil.rmtree(pod["workdir"], ignore_errors=True)   # a terminated pod's disk is gone too

    def _terminate(self, pod_id: str, wait: bool = False) -> None:
        """podTerminate: kill the group at once; the pod leaves the API a moment later (as on RunPod)."""
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None:
                return
            pod["desiredStatus"] = "TERMINATED"
            self.mine.add(pod_id)
            self.events.append(f"terminate {pod_id}")
            self._save()

        def finish():
            with self.lock:
                self._kill(pod)
                time.sleep(0.05)
                self.pods.pop(pod_id, None)
                self.gone.add(pod_id)
                self._save()
        if wait:
            finish()
        else:
            threading.Thread(target=finish, daemon=True).start()

    def _view(self, pod: dict) -> dict:
        """A pod as the client's pod/pods queries read it."""
        up = self._alive(pod) and pod["desiredStatus"] == "RUNNING"
        runtime = None
        if up:
            runtime = {"uptimeInSeconds": int(time.time() - pod.get("started", pod["created"])),
                       "ports": [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": pod["private_port"],
                                  "publicPort": pod["public_port"], "type": "http"}]}
        return {"id": pod["id"], "name": pod["name"], "imageName": pod["imageName"],
                "desiredStatus": pod["desiredStatus"], "costPerHr": pod["costPerHr"], "gpuCount": pod["gpuCount"],
                "containerDiskInGb": pod["containerDiskInGb"], "volumeInGb": pod["volumeInGb"],
                "dockerArgs": "", "dockerId": None, "env": [], "lastStatusChange": "", "machineId": "fake",
                "memoryInGb": 0, "podType": "RESERVED", "port": None, "ports": pod["ports"],
                "uptimeSeconds": int(time.time() - pod["created"]), "vcpuCount": 0,
                "volumeMountPath": "/workspace", "runtime": runtime,
                "machine": {"gpuDisplayName": "H100 SXM" if "H100 80GB" in pod["gpuTypeId"] else pod["gpuTypeId"]}}


def _handler(fake: FakeRunPod):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            auth = self.headers.get("Authorization", "")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
                return self._send(401, {"errors": [{"message": "Unauthorized"}]})
            if self.path.rstrip("/") != "/graphql":
                return self._send(404, {"errors": [{"message": "not found"}]})
            try:
                query = json.loads(body)["query"]
            except (ValueError, KeyError):
                return self._send(400, {"errors": [{"message": "bad request"}]})
            code, payload = fake.handle(query)
            self._send(code, payload)

        def _send(self, code: int, payload: Any) -> None:
            raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.backends.runpod.fake [--faults SPEC]`: serve the fake until Ctrl-C (point
    RUNPOD_API_BASE_URL at the printed URL to drive it with the real client, e.g. a non-rehearsal run)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m runner.backends.runpod.fake")
    p.add_argument("--faults", default="")
    p.add_argument("--state", default=None, help="state file (default: the rehearsal's)")
    args = p.parse_args(argv)
    fake = FakeRunPod(args.state, faults=args.faults)
    print(f"RUNPOD_API_BASE_URL={fake.start()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
