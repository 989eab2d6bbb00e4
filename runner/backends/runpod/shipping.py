"""What travels to a pod: the bootstrap and the job in its environment, the script and the job's local data
over the pod's own HTTP server once it is up.

A pod starts from a stock image, so pgolf ships its program in the pod's environment: gzip+base64 chunks
(PGOLF_BOOT_000.., PGOLF_JOB_..) that START_COMMAND joins back into bootstrap.py and runs. RunPod allows
"up to 50 environment variables per Pod" (docs: pods/templates/environment-variables.mdx) and states no
size limit; pgolf keeps each value under ENV_CHUNK characters (Linux refuses a single variable over 128 KiB
when it starts the container) and the whole environment under MAX_SHIPPED_CHARS. `check_env` refuses a
spec whose environment would break either, in one line naming the variables, before any pod is created
(the backend's preflight); the script, whatever its size, never counts: it is a file.

Files (the script, SCRIPT_PATH on the pod, and `[data] paths` that exist on the user's machine: a custom
tokenizer, a small dataset) go over the pod's own HTTP server once it is up, file by file, each with its
sha256, which the bootstrap checks before it keeps the file; the job starts only when every file is there. A path inside another one travels
once (TOKENIZER_PATH inside DATA_PATH). More than MAX_UPLOAD_BYTES is refused in one line before any pod is
created: that much data belongs in an official variant, a `prepare` command or a network volume.
"""
from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from results.errors import PgolfError
from results.files import sha256_file

ENV_CHUNK = 16_000                  # characters per env var: far under Linux's 128 KiB per variable
MAX_SHIPPED_CHARS = 600_000         # the whole environment: the create request stays small (RunPod echoes it)
MAX_ENV_VARS = 50                   # RunPod: "up to 50 environment variables per Pod"
SCRIPT_PATH = "script/train_gpt.py" # where the script lands on the pod, relative to the upload folder
MAX_UPLOAD_BYTES = 256 * 10 ** 6    # local data sent to a pod over its HTTP server
UPLOAD_TRIES = 3
BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
START_COMMAND = ("bash -c 'set -eo pipefail; W=${PGOLF_WORKDIR:-$HOME/pgolf}; mkdir -p $W; "
                 "for k in $(compgen -e PGOLF_BOOT_ | sort); do printf %s ${!k}; done "
                 "| base64 -d | gzip -dc > $W/bootstrap.py; exec python3 -u $W/bootstrap.py'")


def chunk_env(prefix: str, data: bytes) -> dict[str, str]:
    text = base64.b64encode(gzip.compress(data, 9)).decode()
    return {f"{prefix}{i // ENV_CHUNK:03d}": text[i:i + ENV_CHUNK] for i in range(0, len(text), ENV_CHUNK)}


def pod_env(job: dict, token: str, bootstrap: Path = BOOTSTRAP) -> dict[str, str]:
    """The pod's environment: its HTTP token and the two chunked payloads (bootstrap, job)."""
    env = {"PGOLF_POD_TOKEN": token}
    env.update(chunk_env("PGOLF_BOOT_", bootstrap.read_bytes()))
    env.update(chunk_env("PGOLF_JOB_", json.dumps(job).encode()))
    return env


def check_env(env: dict[str, str], job: dict, where: str) -> None:
    """PgolfError, in one line naming the variables, when the pod's environment would hold more than RunPod's
    MAX_ENV_VARS variables or more than MAX_SHIPPED_CHARS characters (the job's own [env] values travel in
    PGOLF_JOB_*: the largest of them are named as what to shrink)."""
    size = sum(len(k) + len(v) for k, v in env.items())
    if len(env) <= MAX_ENV_VARS and size <= MAX_SHIPPED_CHARS:
        return
    groups: dict[str, list[str]] = {}
    for k in sorted(env):
        groups.setdefault(k.rstrip("0123456789"), []).append(k)
    names = ", ".join(ks[0] if len(ks) == 1 else f"{ks[0]}..{ks[-1]}" for ks in groups.values())
    job_env = (job.get("runs") or [{}])[0].get("env") or {}
    big = sorted(job_env, key=lambda k: -len(job_env[k]))[:3]
    raise PgolfError(f"{where}: the pod's environment would be {len(env)} variables ({names}), {size} characters; "
                     f"RunPod allows {MAX_ENV_VARS} variables per pod and pgolf ships at most {MAX_SHIPPED_CHARS} "
                     f"characters: shrink the largest job variables ("
                     + ", ".join(f"{k}: {len(job_env[k])} characters" for k in big)
                     + ") or pass them as files ([data] paths)")


@dataclass
class UploadFile:
    path: str            # where it lands on the pod, relative to the bootstrap's upload folder
    size: int
    sha256: str
    local: str           # where it is on this machine (never shipped)


@dataclass
class Manifest:
    """The local data of a job: its files, and the env values the job gets on the pod instead of its paths."""
    files: list[UploadFile] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)       # env name -> path relative to the upload folder

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def with_script(self, script: str | Path) -> "Manifest":
        """This manifest and the script, which the pod receives as a checksummed upload like the data."""
        p = Path(script)
        return Manifest([UploadFile(SCRIPT_PATH, p.stat().st_size, sha256_file(p), str(p)), *self.files],
                        dict(self.env))

    def for_pod(self, timeout_s: float | None = None) -> dict:
        """The job's `uploads` entry: what the bootstrap waits for and checks (no local paths)."""
        out: dict = {"files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
                     "env": dict(self.env)}
        if timeout_s:
            out["timeout_s"] = timeout_s
        return out


def local_data(paths: dict[str, str], limit: int = MAX_UPLOAD_BYTES, where: str = "[data] paths") -> Manifest:
    """The manifest of the `paths` (env name -> local path) that exist here; a path inside another one is
    sent once. Paths that do not exist here are the pod's own and stay as they are (not in the manifest).
    PgolfError, before any pod, when the total is over `limit`."""
    man = Manifest()
    roots: list[tuple[Path, str]] = []                  # (local root, its name on the pod)
    for name, raw in sorted(paths.items(), key=lambda kv: len(str(Path(kv[1]).resolve()))):
        p = Path(raw).expanduser().resolve()
        if not p.exists():
            continue
        inside = next(((root, pod) for root, pod in roots if p == root or root in p.parents), None)
        if inside:
            root, pod = inside
            man.env[name] = str(Path(pod) / p.relative_to(root)) if p != root else pod
            continue
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        total = man.size + sum(f.stat().st_size for f in files)
        if total > limit:
            raise PgolfError(f"{where}: {name} makes {total / 1e6:.0f} MB of local data, over the "
                             f"{limit / 1e6:.0f} MB pgolf uploads to a pod; use an official [data] variant, "
                             f"a [data] prepare command or a [runpod] network_volume")
        pod_root = name if p.is_dir() else f"{name}/{p.name}"
        for f in files:
            rel = pod_root if f == p else f"{name}/{f.relative_to(p).as_posix()}"
            man.files.append(UploadFile(rel, f.stat().st_size, sha256_file(f), str(f)))
        roots.append((p, pod_root))
        man.env[name] = pod_root
    return man


def upload(http: httpx.Client, base_url: str, manifest: Manifest, say: Callable[[str], None]) -> None:
    """PUT every file of the manifest to the pod's /upload (the bootstrap keeps it only if its sha256
    matches); each file is tried UPLOAD_TRIES times before the error surfaces."""
    if not manifest.files:
        return
    for f in manifest.files:
        for attempt in Retrying(retry=retry_if_exception_type(httpx.TransportError), reraise=True,
                                stop=stop_after_attempt(UPLOAD_TRIES), wait=wait_exponential(multiplier=0.5, max=5)):
            with attempt, open(f.local, "rb") as fh:
                r = http.put(f"{base_url}/upload", params={"path": f.path}, content=fh,
                             headers={"X-Sha256": f.sha256, "Content-Length": str(f.size)})
                if r.status_code != 200:
                    raise PgolfError(f"upload of {f.local} refused by the pod: {r.text[:200]}")
    data = [f for f in manifest.files if f.path != SCRIPT_PATH]
    sent = ("the script" if len(data) < len(manifest.files) else "") + (" and " if data and len(data) < len(
        manifest.files) else "") + (f"{len(data)} local data file(s)" if data else "")
    say(f"pgolf-runpod: uploaded {sent}, {manifest.size / 1e6:.1f} MB, sha256 checked on the pod")
