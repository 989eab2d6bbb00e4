"""The pod-side program: prepare data, check the machine, run torchrun under a deadline, serve the results.

Shipped to the pod inside its environment (gzip+base64 chunks PGOLF_BOOT_000.., decoded by the pod's
start command), together with the script (PGOLF_SCRIPT_...) and the job (PGOLF_JOB_..., JSON). Standard
library only: it runs on whatever Python the image has, before anything is installed.

It serves, on PGOLF_HTTP_PORT, behind a bearer token (PGOLF_POD_TOKEN):
  GET /status             {"phase": setup|data|checks|running|done, "exit_code", "error", "artifacts": [...]}
  GET /log?offset=N       the pod log from byte N (header X-Log-Size: its current size)
  GET /artifact?path=REL  one file of the run directory
and never outlives its welcome: past the backstop deadline (or long after the job ended with nobody
collecting) it terminates its own pod through RunPod's API with the pod's own RUNPOD_API_KEY/RUNPOD_POD_ID.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_CHUNK = 1 << 20                  # most bytes one /log answer carries
HF_BASE = "https://huggingface.co"     # HF_ENDPOINT overrides it, as for huggingface_hub (mirrors, tests)
DEFAULT_HF_REPO = "willdepueoai/parameter-golf"          # the official download's default
HF_REPO_BY_VARIANT = {"sp8192": "kevclark/parameter-golf"}  # where the records fetched sp8192 from
HF_ROOTS = ("matched_10B_docs2m_seed1337", "matched_100B_train30Btok_even_seed1337")   # export folders seen
TERMINATE_RETRY_S = 20.0


def read_chunks(env: dict, prefix: str) -> bytes:
    """Join PREFIX000, PREFIX001, ... and undo base64 + gzip."""
    keys = sorted(k for k in env if k.startswith(prefix) and k[len(prefix):].isdigit())
    if not keys:
        raise SystemExit(f"pgolf-pod: no {prefix}* chunks in the environment")
    return gzip.decompress(base64.b64decode("".join(env[k] for k in keys)))


class Pod:
    """State of this pod's one job, shared by the worker thread and the HTTP handler."""

    def __init__(self, env: dict):
        self.env = env
        self.job = json.loads(read_chunks(env, "PGOLF_JOB_"))
        self.script = read_chunks(env, "PGOLF_SCRIPT_")
        self.token = env.get("PGOLF_POD_TOKEN", "")
        self.work = os.path.abspath(env.get("PGOLF_WORKDIR") or "/root/pgolf")
        self.run_dir = os.path.join(self.work, "run")
        self.data_dir = os.path.join(self.work, "data")
        os.makedirs(self.run_dir, exist_ok=True)
        self.log_path = os.path.join(self.work, "pod.log")
        self.lock = threading.Lock()
        self.phase = "setup"
        self.exit_code: int | None = None
        self.error: str | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.child: subprocess.Popen | None = None
        self.script_name = self.job.get("script_name") or "train_gpt.py"

    # ---- logging: one file, appended by us and by the job; served by offset
    def log(self, msg: str) -> None:
        with self.lock, open(self.log_path, "ab") as f:
            f.write(f"pgolf-pod: {msg}\n".encode())

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.log(f"phase {phase}")

    def finish(self, code: int, error: str | None = None) -> None:
        self.exit_code, self.error, self.ended = code, error, time.time()
        self.phase = "done"
        self.log(f"done exit_code={code}" + (f" error={error}" if error else ""))

    def artifacts(self) -> list[dict]:
        out = []
        for root, _dirs, files in os.walk(self.run_dir):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self.run_dir)
                if rel == self.script_name or os.path.islink(path):
                    continue
                out.append({"path": rel, "size": os.path.getsize(path)})
        return sorted(out, key=lambda a: a["path"])

    def status(self) -> dict:
        return {"phase": self.phase, "exit_code": self.exit_code, "error": self.error,
                "uptime_s": round(time.time() - self.started, 1),
                "artifacts": self.artifacts() if self.phase == "done" else []}

    # ---- the job, start to end
    def run(self) -> None:
        marker = os.path.join(self.work, "started")
        if os.path.exists(marker):          # the container restarted: never train twice on one pod
            self.finish(98, "container restarted after the job had started; not running it twice")
            return
        open(marker, "w").close()
        try:
            env = dict(os.environ)
            env.update(self.job.get("env") or {})
            for k in ("PGOLF_POD_TOKEN", "RUNPOD_API_KEY"):
                env.pop(k, None)
            for k in [k for k in env if k.startswith(("PGOLF_BOOT_", "PGOLF_SCRIPT_", "PGOLF_JOB_"))]:
                del env[k]
            env["ARTIFACT_DIR"] = os.path.join(self.run_dir, "artifacts")
            os.makedirs(env["ARTIFACT_DIR"], exist_ok=True)
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
            self.set_phase("running")
            code = self.torchrun(env)
            self.finish(code, None if code == 0 else ("deadline" if code == 124 else f"torchrun exit {code}"))
        except Exception as e:  # noqa: BLE001 - anything unexpected still ends the job visibly
            self.finish(99, f"bootstrap error: {type(e).__name__}: {e}")

    def shell(self, command: str, env: dict, cwd: str | None = None) -> int:
        self.log(f"$ {command}")
        with open(self.log_path, "ab") as out:
            return subprocess.call(["bash", "-c", command], cwd=cwd or self.work, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)

    def prepare_data(self, env: dict) -> bool:
        data = self.job.get("data") or {}
        if data.get("command"):
            if self.shell(data["command"], env, cwd=self.run_dir) != 0:
                self.finish(95, "data command failed")
                return False
            return True
        if self.job.get("rehearse"):
            self.log(f"rehearsal: using the local data DATA_PATH={env.get('DATA_PATH', '(unset)')}")
            return True
        if data.get("variant"):
            try:
                env.update(download_official(data, self.data_dir, env.get("HF_TOKEN"), self.log))
            except Exception as e:  # noqa: BLE001
                self.finish(95, f"dataset download failed: {type(e).__name__}: {e}")
                return False
        return True

    def check_machine(self, env: dict) -> str | None:
        if self.job.get("rehearse"):
            self.log("rehearsal: skipping the GPU count/type and fla/Triton checks")
            return None
        want_n, want_type = int(self.job.get("gpu_count") or 0), self.job.get("gpu_type") or ""
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

    def torchrun(self, env: dict) -> int:
        nproc = int(self.job.get("nproc_per_node") or 1)
        cmd = ["python3", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               self.script_name]
        if self.job.get("launcher") == "python":
            cmd = ["python3", "-u", self.script_name]
        deadline = float(self.job.get("deadline_s") or 3600)
        self.log(f"$ {' '.join(cmd)}  (hard deadline {deadline:.0f} s)")
        with open(self.log_path, "ab") as out:
            self.child = subprocess.Popen(cmd, cwd=self.run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            try:
                return self.child.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.log(f"hard deadline {deadline:.0f} s passed: killing torchrun")
                kill_group(self.child.pid)
                self.child.wait()
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


def self_terminate(env: dict, log) -> bool:
    """podTerminate for this pod through RunPod's GraphQL API, with the key RunPod put in the pod."""
    pod_id, key = env.get("RUNPOD_POD_ID"), env.get("RUNPOD_API_KEY")
    if not pod_id or not key:
        log("backstop: RUNPOD_POD_ID/RUNPOD_API_KEY missing; cannot terminate this pod")
        return False
    base = env.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io"
    body = json.dumps({"query": 'mutation { podTerminate(input: {podId: "%s"}) }' % pod_id}).encode()
    req = urllib.request.Request(f"{base}/graphql", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            ok = r.status == 200 and "errors" not in json.loads(r.read() or b"{}")
    except Exception as e:  # noqa: BLE001
        log(f"backstop: terminate call failed ({type(e).__name__}); retrying")
        return False
    log("backstop: terminate requested" if ok else "backstop: terminate refused; retrying")
    return ok


def hf_get(repo: str, path: str, dest: str, token: str | None) -> None:
    """One file of a Hugging Face dataset repo, written atomically (the official download, stdlib only)."""
    if os.path.exists(dest):
        return
    base = (os.environ.get("HF_ENDPOINT") or HF_BASE).rstrip("/")
    url = f"{base}/datasets/{repo}/resolve/main/{urllib.parse.quote(path)}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    for attempt in range(4):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as r, \
                    open(dest + ".part", "wb") as f:
                while True:
                    buf = r.read(1 << 22)
                    if not buf:
                        break
                    f.write(buf)
            os.replace(dest + ".part", dest)
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

        def send(self, code: int, body: bytes, ctype="application/json", extra=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if pod.token and self.headers.get("Authorization") != f"Bearer {pod.token}":
                return self.send(403, b'{"error": "forbidden"}')
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            if url.path == "/status":
                return self.send(200, json.dumps(pod.status()).encode())
            if url.path == "/log":
                offset = int((q.get("offset") or ["0"])[0])
                size = os.path.getsize(pod.log_path) if os.path.exists(pod.log_path) else 0
                data = b""
                if offset < size:
                    with open(pod.log_path, "rb") as f:
                        f.seek(offset)
                        data = f.read(LOG_CHUNK)
                return self.send(200, data, "application/octet-stream", {"X-Log-Size": str(size)})
            if url.path == "/artifact":
                rel = (q.get("path") or [""])[0]
                path = os.path.realpath(os.path.join(pod.run_dir, rel))
                if not path.startswith(os.path.realpath(pod.run_dir) + os.sep) or not os.path.isfile(path):
                    return self.send(404, b'{"error": "no such artifact"}')
                with open(path, "rb") as f:
                    return self.send(200, f.read(), "application/octet-stream")
            return self.send(404, b'{"error": "not found"}')

    return Handler


def main() -> int:
    pod = Pod(dict(os.environ))
    pod.log(f"bootstrap up (pod {os.environ.get('RUNPOD_POD_ID', '?')}, python {sys.version.split()[0]})")
    port = int(os.environ.get("PGOLF_HTTP_PORT") or 8000)
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(pod))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=pod.watchdog, daemon=True).start()
    pod.run()
    while True:   # keep serving until the driver (or the backstop) terminates the pod
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
