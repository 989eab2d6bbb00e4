"""The pod-side program: receive local data, prepare data, check the machine, run the job under a deadline,
serve the results; for RunPod's REST API v2.

Shipped to the pod inside its environment (gzip+base64 chunks PGOLF_BOOT_000.., decoded by the pod's
start command), together with the job (PGOLF_JOB_..., JSON); the script comes over the pod's server once it
is up (PUT /upload, sha256-checked, at the job's `script` path), as the job's local data does. Standard
library only: it runs on whatever Python the image has, before anything is installed.

Its log is the container's stdout: RunPod keeps it and serves it as the pod log (Server-Sent Events,
resumable), so every line of the bootstrap and of the job reaches the driver through RunPod and nothing
here keeps a copy. The job's end is the line `pgolf-pod: done exit_code=N ...` (DONE_PREFIX).

The job lists its `runs`, one per seed attempt (one, or several with `[runpod] seeds_per_pod`): the pod
does its set-up once (uploads, set-up command, data, checks) and runs them one after another, each in a
folder of its own (runs/<i>/, where the set-up folder's (run/) entries, such as the data a prepare command
made, appear as links), with the compile caches (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR) in one folder
every run shares. Each run's log starts with `pgolf-pod: run I/N: seed S attempt A` (RUN_PREFIX) and ends
with its own DONE line. One path for any number of runs: a pod of one seed is a group of one.

It serves, behind a bearer token (PGOLF_POD_TOKEN), on the symmetrical TCP port RunPod assigned
(RUNPOD_TCP_PORT_<job tcp_port>, reached by the driver at the public ip:port of `runtime.ports`) and, when
the job names one, on an HTTP port behind RunPod's proxy (the fallback):
  GET /status             {"phase": upload|setup|data|checks|running|done, "exit_code", "error",
                           "uploads_missing", "runs": [{"state": waiting|running|done, "exit_code", "error",
                           "seconds", "artifacts"}]}   (the top-level exit_code/error: the last run that ended)
  GET /artifact?path=REL[&run=I]   one file of run I's folder (default: the first run)
  PUT /upload?path=REL    one of the job's local data files (header X-Sha256: its hash); stored atomically,
                          refused unless its size and hash match the job's manifest
  POST /cancel?run=I      stop run I (an early abort of one seed); the pod goes on with the next run
  POST /collected?run=I   the driver has run I's results (said in the log)
and never outlives its welcome: past the backstop deadline (or long after its last run ended with nobody
collecting) it terminates its own pod (DELETE /v2/pods/{RUNPOD_POD_ID} with the pod-scoped RUNPOD_API_KEY).

Paths: PGOLF_POD_ROOT stands for the pod's "/" (the rehearsal's pods are folders; unset on RunPod), so a
network volume mounted at /workspace is PGOLF_POD_ROOT/workspace; the work folder is $HOME/pgolf.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DONE_PREFIX = "pgolf-pod: done exit_code="
SERVING_PREFIX = "pgolf-pod: serving on port(s) "   # the bootstrap is up: one of the driver's signs of a ready pod
RUN_PREFIX = "pgolf-pod: run "         # "pgolf-pod: run 2/3: seed 1337 attempt 1": a shared pod's next run
CANCELLED = 137                        # exit code of a run the driver cancelled (128 + SIGKILL)
UPLOAD_WAIT_S = 1800.0                 # the driver has this long to deliver the local data
HF_BASE = "https://huggingface.co"     # HF_ENDPOINT overrides it, as for huggingface_hub (mirrors, tests)
DEFAULT_HF_REPO = "willdepueoai/parameter-golf"          # the official download's default
HF_REPO_BY_VARIANT = {"sp8192": "kevclark/parameter-golf"}  # where the records fetched sp8192 from
HF_ROOTS = ("matched_10B_docs2m_seed1337", "matched_100B_train30Btok_even_seed1337")   # export folders seen
TERMINATE_RETRY_S = 20.0
USER_AGENT = "pgolf"                   # main() sets "pgolf/<version>" from the job: pgolf is not installed here


def http_request(url: str, method: str = "GET", headers: dict | None = None) -> urllib.request.Request:
    """Every request the pod makes (RunPod's API, Hugging Face) says who it is: Cloudflare-fronted APIs
    refuse urllib's default User-Agent (403, error 1010), and the backstop's terminate must not be refused."""
    return urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})


def read_chunks(env: dict, prefix: str) -> bytes:
    """Join PREFIX000, PREFIX001, ... and undo base64 + gzip."""
    keys = sorted(k for k in env if k.startswith(prefix) and k[len(prefix):].isdigit())
    if not keys:
        raise SystemExit(f"pgolf-pod: no {prefix}* chunks in the environment")
    return gzip.decompress(base64.b64decode("".join(env[k] for k in keys)))


class Run:
    """One seed attempt's job on this pod, in its own folder."""

    def __init__(self, index: int, spec: dict, folder: str):
        self.index, self.folder = index, folder
        self.env = {k: str(v) for k, v in (spec.get("env") or {}).items()}
        self.deadline_s = float(spec.get("deadline_s") or 3600)
        self.label = f"seed {self.env.get('SEED', '?')} attempt {self.env.get('PGOLF_ATTEMPT', '?')}"
        self.state = "waiting"                 # waiting | running | done
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.cancel = False
        self.child: subprocess.Popen | None = None


class Pod:
    """State of this pod's runs (one, or several one after another), shared by the worker thread and the
    HTTP handler."""

    def __init__(self, env: dict):
        self.env = env
        self.job = json.loads(read_chunks(env, "PGOLF_JOB_"))
        self.script = b""                      # the job's `script` upload, read once it is here
        self.token = env.get("PGOLF_POD_TOKEN", "")
        self.work = os.path.abspath(env.get("PGOLF_WORKDIR") or os.path.join(env.get("HOME") or "/root", "pgolf"))
        self.run_dir = os.path.join(self.work, "run")          # the set-up's folder
        self.upload_dir = os.path.join(self.work, "uploads")
        volume = self.job.get("volume_path")
        self.data_dir = pod_path(env, volume, "pgolf-data") if volume else os.path.join(self.work, "data")
        os.makedirs(self.run_dir, exist_ok=True)
        self.runs = [Run(i, spec, os.path.join(self.work, "runs", str(i)))
                     for i, spec in enumerate(self.job["runs"])]
        self.derived: dict[str, str] = {}      # what the set-up found for every run (uploaded paths, data paths)
        self.uploads = {u["path"]: u for u in (self.job.get("uploads") or {}).get("files", [])}
        self.received: set[str] = set()
        self.lock = threading.Lock()
        self.phase = "setup"
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started = time.time()
        self.ended: float | None = None        # when the last run ended
        self.script_name = self.job.get("script_name") or "train_gpt.py"

    @property
    def child(self) -> subprocess.Popen | None:
        """The job process running now, if any."""
        return next((r.child for r in self.runs if r.state == "running" and r.child), None)

    # ---- logging: the container's stdout, shared with the job (flushed before any child writes to it)
    def log(self, msg: str) -> None:
        with self.lock:
            sys.stdout.write(f"pgolf-pod: {msg}\n")
            sys.stdout.flush()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.log(f"phase {phase}")

    def begin(self, run: Run) -> None:
        """A run starts; the pod says which one first (its log goes to that seed from here on)."""
        self.log(f"{RUN_PREFIX[len('pgolf-pod: '):]}{run.index + 1}/{len(self.runs)}: {run.label}")
        run.state, run.started = "running", time.time()

    def end(self, run: Run, code: int, error: str | None = None) -> None:
        run.exit_code, run.error, run.ended = code, error, time.time()
        run.state = "done"
        self.exit_code, self.error = code, error
        if all(r.state == "done" for r in self.runs):
            self.ended, self.phase = run.ended, "done"
        self.log(DONE_PREFIX[len("pgolf-pod: "):] + str(code) + (f" error={error}" if error else ""))

    def finish(self, code: int, error: str | None = None) -> None:
        """The set-up failed (or the bootstrap did): every run that has not ended ends with it."""
        for run in self.runs:
            if run.state == "waiting":
                self.begin(run)
            if run.state == "running":
                self.end(run, code, error)

    def artifacts(self, run: Run) -> list[dict]:
        out = []
        for root, _dirs, files in os.walk(run.folder):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, run.folder)
                if rel == self.script_name or os.path.islink(path):
                    continue
                out.append({"path": rel, "size": os.path.getsize(path)})
        return sorted(out, key=lambda a: a["path"])

    def status(self) -> dict:
        runs = [{"state": r.state, "exit_code": r.exit_code, "error": r.error,
                 "seconds": round(((r.ended or time.time()) - r.started) if r.started else 0.0, 3),
                 "artifacts": self.artifacts(r) if r.state == "done" else []} for r in self.runs]
        return {"phase": self.phase, "exit_code": self.exit_code, "error": self.error,
                "uptime_s": round(time.time() - self.started, 1),
                "uploads_missing": sorted(set(self.uploads) - self.received), "runs": runs}

    def run_at(self, index: str | None) -> Run | None:
        try:
            return self.runs[int(index or 0)]
        except (ValueError, IndexError):
            return None

    def cancel(self, run: Run) -> None:
        """Stop one run (the driver aborts that seed early); the pod goes on with the next."""
        with self.lock:                     # torchrun() starts its child under the same lock
            run.cancel = True
            child = run.child if run.state == "running" else None
        if child is not None:
            self.log(f"the driver cancels {run.label}")
            kill_group(child.pid)

    # ---- local data, pushed by the driver before the job starts
    def receive(self, rel: str, size: int, digest: str, body) -> str | None:
        """Store one upload (streamed to a temp file, hashed on the way); an error text, or None when kept."""
        want = self.uploads.get(rel)
        if want is None:
            return f"{rel} is not in the job's upload manifest"
        if size != int(want["size"]) or digest != want["sha256"]:
            return f"{rel}: size/hash {size}/{digest[:12]} do not match the manifest"
        dest = os.path.join(self.upload_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.{threading.get_ident()}.part"
        h = hashlib.sha256()
        left = size
        with open(tmp, "wb") as f:
            while left:
                buf = body.read(min(left, 1 << 20))
                if not buf:
                    break
                h.update(buf)
                f.write(buf)
                left -= len(buf)
        if left or h.hexdigest() != digest:
            os.unlink(tmp)
            return f"{rel}: received data does not match its sha256 (incomplete upload?)"
        os.replace(tmp, dest)
        with self.lock:
            self.received.add(rel)
        return None

    def wait_for_uploads(self, env: dict) -> bool:
        if not self.uploads:
            return True
        self.set_phase("upload")
        self.log(f"waiting for {len(self.uploads)} file(s) from the driver (the script, local data)")
        deadline = time.time() + float((self.job.get("uploads") or {}).get("timeout_s") or UPLOAD_WAIT_S)
        while set(self.uploads) - self.received:
            if time.time() > deadline:
                self.finish(94, f"local data not delivered: {sorted(set(self.uploads) - self.received)[:3]}")
                return False
            time.sleep(0.2)
        for key, rel in ((self.job.get("uploads") or {}).get("env") or {}).items():
            self.derived[key] = env[key] = os.path.join(self.upload_dir, rel)
        self.log(f"files received: the script and {len(self.uploads) - 1} local data file(s), sha256 checked")
        return True

    # ---- the set-up once, then every run
    def run(self) -> None:
        marker = os.path.join(self.work, "started")
        if os.path.exists(marker):          # the container restarted: never train twice on one pod
            self.finish(98, "container restarted after the job had started; not running it twice")
            return
        open(marker, "w").close()
        try:
            env = dict(os.environ)
            env.update(self.runs[0].env)     # the set-up sees the job's environment, as a lone run does
            for k in ("PGOLF_POD_TOKEN", "RUNPOD_API_KEY"):
                env.pop(k, None)
            for k in [k for k in env if k.startswith(("PGOLF_BOOT_", "PGOLF_JOB_"))]:
                del env[k]
            for key, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
                env.setdefault(key, os.path.join(self.work, "cache", sub))   # warm for the pod's next run
            if not self.wait_for_uploads(env):
                return
            with open(os.path.join(self.upload_dir, self.job["script"]), "rb") as f:
                self.script = f.read()
            with open(os.path.join(self.run_dir, self.script_name), "wb") as f:
                f.write(self.script)
            if self.job.get("setup_command"):
                self.set_phase("setup")
                if self.shell(self.job["setup_command"], env) != 0:
                    return self.finish(96, "setup command failed")
            self.set_phase("data")
            if not self.prepare_data(env):
                return
            self.set_phase("checks")
            problem = self.check_machine(env)
            if problem:
                return self.finish(97, f"pod check failed: {problem}")
            for run in self.runs:
                self.run_one(run, env)
        except Exception as e:  # noqa: BLE001 - anything unexpected still ends the job visibly
            self.finish(99, f"bootstrap error: {type(e).__name__}: {e}")

    def run_one(self, run: Run, setup_env: dict) -> None:
        self.begin(run)
        if run.cancel:
            return self.end(run, CANCELLED, "cancelled by the driver before it ran")
        env = {**setup_env, **run.env, **self.derived, "ARTIFACT_DIR": os.path.join(run.folder, "artifacts")}
        os.makedirs(env["ARTIFACT_DIR"], exist_ok=True)
        self.link_setup(run)
        self.set_phase("running")
        code = self.torchrun(run, env)
        if run.cancel and code != 0:
            code, error = CANCELLED, "cancelled by the driver"
        else:
            error = None if code == 0 else ("deadline" if code == 124 else f"torchrun exit {code}")
        self.end(run, code, error)

    def link_setup(self, run: Run) -> None:
        """A run works in its own folder; what the set-up made in its folder (the data of a
        prepare command at its relative path, the script) appears there as links."""
        for name in os.listdir(self.run_dir):
            dest = os.path.join(run.folder, name)
            if name != self.script_name and not os.path.lexists(dest):
                os.symlink(os.path.join(self.run_dir, name), dest)
        with open(os.path.join(run.folder, self.script_name), "wb") as f:    # the script: a file of its own
            f.write(self.script)

    def shell(self, command: str, env: dict, cwd: str | None = None) -> int:
        self.log(f"$ {command}")
        return subprocess.call(["bash", "-c", command], cwd=cwd or self.work, env=env, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)

    def prepare_data(self, env: dict) -> bool:
        data = self.job.get("data") or {}
        if data.get("command"):
            if self.shell(data["command"], env, cwd=self.run_dir) != 0:
                self.finish(95, "data command failed")
                return False
            return True
        if data.get("variant"):
            try:
                found = download_official(data, self.data_dir, env.get("HF_TOKEN"), self.log)
            except Exception as e:  # noqa: BLE001
                self.finish(95, f"dataset download failed: {type(e).__name__}: {e}")
                return False
            env.update(found)
            self.derived.update(found)
        return True

    def check_machine(self, env: dict) -> str | None:
        want_n, want_type = int(self.job.get("gpu_count") or 0), self.job.get("gpu_type") or ""
        if self.job.get("rehearse") and want_n:
            self.log("rehearsal: skipping the GPU count/type and fla/Triton checks")
            return None
        if not want_n:
            self.log(f"CPU pod: {os.cpu_count()} CPUs, no GPU checks")
            return None
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=60).stdout.split("\n")
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"nvidia-smi failed: {e}"
        names = [n.strip() for n in names if n.strip()]
        self.log(f"gpus: {len(names)} x {sorted(set(names))}")
        if want_n and len(names) != want_n:
            return f"{len(names)} GPUs, the job needs {want_n}"
        if want_type and any(n != want_type for n in names):
            return f"GPU type {sorted(set(names))}, the job needs {want_type}"
        probe = ("import importlib.metadata as m, json\nv = {}\n"
                 "for d in ('torch', 'triton', 'flash-linear-attention'):\n"
                 "    try: v[d] = m.version(d)\n    except Exception: v[d] = None\nprint(json.dumps(v))")
        try:
            vers = json.loads(subprocess.run(["python3", "-c", probe], capture_output=True, text=True,
                                             env=env, timeout=120).stdout.strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001
            return f"could not read torch/triton/fla versions: {e}"
        self.log(f"versions: {json.dumps(vers)}")
        min_triton = self.job.get("min_triton")
        if vers.get("flash-linear-attention") and min_triton and vers.get("triton"):
            if version_tuple(vers["triton"]) < version_tuple(min_triton):
                return (f"fla {vers['flash-linear-attention']} with Triton {vers['triton']} < {min_triton} "
                        "miscompiles the GatedDeltaNet backward on Hopper (fla #640); use an image with "
                        f"Triton >= {min_triton}")
        return None

    def torchrun(self, run: Run, env: dict) -> int:
        nproc = int(self.job.get("nproc_per_node") or 1)
        cmd = ["python3", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               self.script_name]
        if self.job.get("launcher") == "python":
            cmd = ["python3", "-u", self.script_name]
        deadline = run.deadline_s
        self.log(f"$ {' '.join(cmd)}  (hard deadline {deadline:.0f} s)")
        with self.lock:                     # a cancel comes from the HTTP thread: never a half-made child
            if run.cancel:
                return CANCELLED
            run.child = subprocess.Popen(cmd, cwd=run.folder, env=env, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return run.child.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.log(f"hard deadline {deadline:.0f} s passed: killing torchrun")
            kill_group(run.child.pid)
            run.child.wait()
            return 124

    # ---- the backstop: never bill past the deadline
    def watchdog(self) -> None:
        backstop = float(self.job.get("backstop_s") or 7200)
        grace = float(self.job.get("collect_grace_s") or 1800)
        while True:
            now = time.time()
            late = now - self.started > backstop
            forgotten = self.ended is not None and now - self.ended > grace
            if late or forgotten:
                self.log("backstop: " + ("deadline passed" if late else "nobody collected the results")
                         + ": terminating this pod")
                if self.child and self.child.poll() is None:
                    kill_group(self.child.pid)
                self_terminate(self.env, self.log)
                time.sleep(TERMINATE_RETRY_S)
            else:
                time.sleep(1.0)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def pod_path(env: dict, path: str, *more: str) -> str:
    """A path of the pod's filesystem (e.g. a volume's mount path) on this machine: under PGOLF_POD_ROOT."""
    return os.path.join(env.get("PGOLF_POD_ROOT") or "/", path.lstrip("/"), *more)


def self_terminate(env: dict, log) -> bool:
    """DELETE /v2/pods/{id} for this pod, with the pod-scoped key RunPod put in the pod (404: already gone)."""
    pod_id, key = env.get("RUNPOD_POD_ID"), env.get("RUNPOD_API_KEY")
    if not pod_id or not key:
        log("backstop: RUNPOD_POD_ID/RUNPOD_API_KEY missing; cannot terminate this pod")
        return False
    base = (env.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io").rstrip("/")
    req = http_request(f"{base}/v2/pods/{urllib.parse.quote(pod_id)}", method="DELETE",
                       headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            ok = r.status in (200, 204)
    except urllib.error.HTTPError as e:
        ok = e.code == 404
        if not ok:
            log(f"backstop: terminate refused (HTTP {e.code}); retrying")
            return False
    except Exception as e:  # noqa: BLE001
        log(f"backstop: terminate call failed ({type(e).__name__}); retrying")
        return False
    log("backstop: terminate requested")
    return ok


def hf_get(repo: str, path: str, dest: str, token: str | None) -> None:
    """One file of a Hugging Face dataset repo, written atomically (the official download, stdlib only)."""
    if os.path.exists(dest):
        return
    base = (os.environ.get("HF_ENDPOINT") or HF_BASE).rstrip("/")
    url = f"{base}/datasets/{repo}/resolve/main/{urllib.parse.quote(path)}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = f"{dest}.{os.getpid()}.{threading.get_ident()}.part"   # pods sharing a volume never mix parts
    for attempt in range(4):
        try:
            with urllib.request.urlopen(http_request(url, headers=headers), timeout=120) as r, \
                    open(part, "wb") as f:
                while True:
                    buf = r.read(1 << 22)
                    if not buf:
                        break
                    f.write(buf)
            os.replace(part, dest)
            return
        except Exception as e:  # noqa: BLE001
            if attempt == 3 or getattr(e, "code", None) in (401, 403, 404):
                raise
            time.sleep(5 * (attempt + 1))


def download_official(data: dict, root: str, token: str | None, log) -> dict:
    """The challenge's dataset variant (as data/cached_challenge_fineweb.py lays it out): manifest, val
    shards, the first N train shards, the tokenizer. Returns DATA_PATH/TOKENIZER_PATH for the job."""
    variant = data["variant"]
    repo = data.get("repo") or HF_REPO_BY_VARIANT.get(variant, DEFAULT_HF_REPO)
    dataset_dir = f"fineweb10B_{variant}"
    n_train = int(data.get("train_shards") or 80)
    manifest_path = os.path.join(root, "manifest.json")
    prefix, manifest = None, {}
    for cand in ([data["remote_root"]] if data.get("remote_root") else list(HF_ROOTS)):
        try:
            hf_get(repo, f"{cand}/manifest.json", manifest_path, token)
            prefix, manifest = cand, json.load(open(manifest_path))
            break
        except Exception as e:  # noqa: BLE001 - try the next known export folder
            log(f"no manifest at {repo}/{cand} ({type(e).__name__})")
    if prefix is None:
        raise ValueError(f"no manifest.json in {repo} under {data.get('remote_root') or HF_ROOTS}; "
                         "set [runpod] data_repo / data_remote_root")
    ds = next((d for d in manifest.get("datasets", []) if d.get("name") == dataset_dir), None)
    if ds is None:
        raise ValueError(f"{dataset_dir} is not in {repo}/{prefix}/manifest.json")
    stats = ds.get("stats") or {}
    n_val, n_max = int(stats.get("files_val") or 1), int(stats.get("files_train") or n_train)
    n_train = min(n_train, n_max)
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == ds.get("tokenizer_name")), {})
    tok_files = [tok[k] for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    if not tok_files and variant.startswith("sp"):
        tok_files = [f"tokenizers/fineweb_{variant[2:]}_bpe.model"]
    files = [f"datasets/{dataset_dir}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    files += [f"datasets/{dataset_dir}/fineweb_train_{i:06d}.bin" for i in range(n_train)]
    files += tok_files
    log(f"downloading {len(files)} files of {variant} from {repo} ({n_train} train shards)")
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda rel: hf_get(repo, f"{prefix}/{rel}", os.path.join(root, rel), token), files))
    log(f"dataset ready in {time.time() - t0:.0f} s")
    out = {"DATA_PATH": os.path.join(root, "datasets", dataset_dir)}
    model = next((f for f in tok_files if f.endswith(".model")), None)
    if model:
        out["TOKENIZER_PATH"] = os.path.join(root, model)
    return out


def make_handler(pod: Pod):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the pod log is for the job
            pass

        def send(self, code: int, body: bytes, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def allowed(self) -> bool:
            if pod.token and self.headers.get("Authorization") != f"Bearer {pod.token}":
                self.send(403, b'{"error": "forbidden"}')
                return False
            return True

        def do_GET(self):
            if not self.allowed():
                return
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            if url.path == "/status":
                return self.send(200, json.dumps(pod.status()).encode())
            if url.path == "/artifact":
                rel = (q.get("path") or [""])[0]
                run = pod.run_at((q.get("run") or ["0"])[0])
                folder = os.path.realpath(run.folder) if run else ""
                path = os.path.realpath(os.path.join(folder, rel))
                if not run or not path.startswith(folder + os.sep) or not os.path.isfile(path):
                    return self.send(404, b'{"error": "no such artifact"}')
                with open(path, "rb") as f:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
                    self.end_headers()
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
                return
            return self.send(404, b'{"error": "not found"}')

        def do_POST(self):
            if not self.allowed():
                return
            url = urllib.parse.urlparse(self.path)
            run = pod.run_at((urllib.parse.parse_qs(url.query).get("run") or [""])[0])
            if url.path not in ("/cancel", "/collected"):
                return self.send(404, b'{"error": "not found"}')
            if run is None:
                return self.send(404, b'{"error": "no such run"}')
            if url.path == "/cancel":
                pod.cancel(run)
            else:
                pod.log(f"results of {run.label} collected by the driver")
            return self.send(200, json.dumps({"state": run.state}).encode())

        def do_PUT(self):
            if not self.allowed():
                return
            url = urllib.parse.urlparse(self.path)
            rel = (urllib.parse.parse_qs(url.query).get("path") or [""])[0]
            if url.path != "/upload":
                return self.send(404, b'{"error": "not found"}')
            problem = pod.receive(rel, int(self.headers.get("Content-Length") or 0),
                                  self.headers.get("X-Sha256") or "", self.rfile)
            if problem:
                self.close_connection = True       # the body may be partly unread
                return self.send(400, json.dumps({"error": problem}).encode())
            return self.send(200, b'{"stored": true}')

    return Handler


def listen_ports(env: dict, job: dict) -> list[int]:
    """The symmetrical TCP port RunPod assigned (RUNPOD_TCP_PORT_<n>), and the proxied HTTP port if any."""
    ports = []
    if job.get("tcp_port") and env.get(f"RUNPOD_TCP_PORT_{job['tcp_port']}"):
        ports.append(int(env[f"RUNPOD_TCP_PORT_{job['tcp_port']}"]))
    if job.get("http_port"):
        ports.append(int(job["http_port"]))
    return ports


def main() -> int:
    global USER_AGENT
    pod = Pod(dict(os.environ))
    USER_AGENT = pod.job.get("user_agent") or USER_AGENT
    pod.log(f"bootstrap up (pod {os.environ.get('RUNPOD_POD_ID', '?')}, python {sys.version.split()[0]})")
    ports = listen_ports(pod.env, pod.job)
    if not ports:
        pod.log(f"no port to serve on: RUNPOD_TCP_PORT_{pod.job.get('tcp_port')} is unset and the job names "
                "no http_port")
    serving = []
    for port in ports:
        try:
            server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(pod))
        except OSError as e:          # one port taken still leaves the other way in
            pod.log(f"cannot serve on port {port}: {e}")
            continue
        threading.Thread(target=server.serve_forever, daemon=True).start()
        serving.append(port)
    pod.log(f"{SERVING_PREFIX[len('pgolf-pod: '):]}{serving}")
    threading.Thread(target=pod.watchdog, daemon=True).start()
    pod.run()
    while True:   # keep serving until the driver (or the backstop) terminates the pod
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
