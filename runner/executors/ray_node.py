"""Backend `ray`: run one seed attempt as torchrun on the Ray node that holds its resources.

The job runs in its own session (process group), so a Ctrl-C in the driver's terminal never reaches it
directly and a timeout or cancel can kill torchrun together with every rank it started. The group also
gets SIGTERM from the kernel if the Ray worker that launched it dies (PR_SET_PDEATHSIG), so a node or
driver lost in the middle leaves no orphaned training processes behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runner.executors.base import AttemptResult, AttemptSpec, Events

CPU_SLOT = "pgolf_cpu_slot"   # see runner.driver.connect
TERM_GRACE_S = 10.0          # SIGTERM -> SIGKILL for the job's process group
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the launching thread's process dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after `grace_s`."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(pgid):
            break
    try:
        os.killpg(pgid, signal.SIGKILL)   # stragglers (ranks that outlived torchrun)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def node_name() -> str:
    """hostname:ray-node-id (the id tells fake nodes of one machine apart)."""
    try:
        import ray
        nid = ray.get_runtime_context().get_node_id()
    except Exception:
        nid = None
    host = socket.gethostname()
    return f"{host}:{nid}" if nid else host


class RayNodeBackend:
    name = "ray"

    def __init__(self, spec: Any = None):
        self.spec = spec

    # --- driver side -------------------------------------------------------------------------
    def ray_options(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Whole GPUs per seed on a GPU cluster; on the 0-GPU embedded default, one CPU per process."""
        import ray
        gpus = int(spec.get("gpus_per_seed", 0))
        if gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0:
            return {"num_gpus": gpus, "num_cpus": 1}
        n = int(spec.get("nproc_per_node", 1))
        opts: dict[str, Any] = {"num_gpus": 0, "num_cpus": n}
        if ray.cluster_resources().get(CPU_SLOT):   # the embedded cluster: slots are never lent out
            opts["resources"] = {CPU_SLOT: n}
        return opts

    def preflight(self, spec: dict[str, Any], n_seeds: int) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    # --- inside the Ray task -----------------------------------------------------------------
    def command(self, attempt: AttemptSpec) -> list[str]:
        if attempt.spec.get("launcher") == "python":
            return [sys.executable, "-u", attempt.script_path]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={attempt.nproc_per_node}", attempt.script_path]

    def run_attempt(self, attempt: AttemptSpec, events: Events) -> AttemptResult:
        node = node_name()
        events.meta(node=node, started=_now())   # started = when it really starts, not when queued
        adir = Path(attempt.attempt_dir)
        art = adir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(attempt.env)
        env.update(SEED=str(attempt.seed), RUN_ID=f"seed{attempt.seed}_attempt{attempt.attempt}",
                   ARTIFACT_DIR=str(art), PGOLF_ATTEMPT=str(attempt.attempt), PYTHONUNBUFFERED="1")
        deadline = time.monotonic() + attempt.timeout_s

        prepare = (attempt.spec.get("data") or {}).get("prepare")
        if prepare:
            code, err = self._run(["bash", "-c", prepare], adir, env, events, deadline, "data prepare")
            if code != 0:
                return AttemptResult(exit_code=code, error=err or f"data prepare exited {code}", node=node,
                                     artifacts=_list(adir, art))
        code, err = self._run(self.command(attempt), adir, env, events, deadline, "job")
        if code != 0 and err is None:
            err = f"exit code {code}"
        return AttemptResult(exit_code=code, error=err, node=node, artifacts=_list(adir, art))

    def _run(self, cmd: list[str], cwd: Path, env: dict[str, str], events: Events, deadline: float,
             what: str) -> tuple[int | None, str | None]:
        """Run `cmd` in its own process group, stream its output, kill the group on timeout or cancel."""
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        notify = getattr(events, "process", None)
        if notify:
            notify(socket.gethostname(), proc.pid)
        reader = threading.Thread(target=_pump, args=(proc, events), daemon=True)
        reader.start()
        error = None
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            error = f"timeout: {what} still running at the attempt deadline, process group killed"
            kill_group(proc)
        finally:
            if proc.poll() is None:       # cancelled (KeyboardInterrupt from ray.cancel) or crashed
                kill_group(proc)
            else:
                kill_group(proc, grace_s=2.0)   # leftovers of a finished job in its group
            reader.join(timeout=10)
        return (None if error else proc.returncode), error


def _now() -> str:
    from runner.ledger import now_iso
    return now_iso()


def _pump(proc: subprocess.Popen, events: Events) -> None:
    for raw in proc.stdout:
        events.line(raw.decode("utf-8", "replace").rstrip("\r\n"))


def _list(adir: Path, art: Path) -> list[str]:
    return sorted(str(p.relative_to(adir)) for p in art.rglob("*") if p.is_file())
