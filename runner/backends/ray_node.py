"""Backend `ray`: run each seed attempt (a group of one per task) as torchrun on the Ray node that holds its resources.

Each job runs under a small guard process (`guard` below) that leads a session of its own: a Ctrl-C in
the driver's terminal never reaches the job directly, and on cancel, timeout or the death of the Ray worker
above it (PR_SET_PDEATHSIG) the guard kills the whole job. torchrun starts every rank in a session of its
own and a job may daemonize, so jobs are killed by session and by the attempt's environment marker
(`runner.proctree`), not by process group; ray_node keeps the same bookkeeping as a second line in case the
guard itself is SIGKILLed (Ray does that to a dead worker's direct children).
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
from typing import TYPE_CHECKING, Any, Iterator

from results.errors import PgolfError
from runner.backends.base import AttemptResult, AttemptSpec, ClusterAction, Events
from runner.ledger import now_iso
from runner.proctree import MARKER, TERM_GRACE_S, JobProcesses, attempt_marker

if TYPE_CHECKING:   # the guard (`python -m runner.backends.ray_node --guard`) starts fast without pydantic
    from runner.spec import JobSpec

# A custom resource of the embedded local cluster, one per core, that Ray never lends out: Ray frees a
# task's CPUs while it blocks in ray.get (the durable Events.meta does), which would let more CPU jobs
# run at once than the machine has cores. CPU attempts hold one slot per process.
CPU_SLOT = "pgolf_cpu_slot"
FLA_CHECK_TIMEOUT_S = 300
SCAN_S = 0.5                 # how often the job's process tree is scanned for new sessions (first minute)
SCAN_LATE_S = 5.0            # ... and afterwards
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the launching thread's process dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def node_name() -> str:
    """hostname:ray-node-id (the id tells fake nodes of one machine apart)."""
    try:
        import ray
        nid = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None   # never starts Ray
    except Exception:
        nid = None
    host = socket.gethostname()
    return f"{host}:{nid}" if nid else host


class RayNodeBackend:
    name = "ray"

    def __init__(self, spec: "JobSpec"):
        self.spec = spec

    # --- driver side -------------------------------------------------------------------------
    def local_resources(self, cpus: int) -> dict[str, float]:
        return {CPU_SLOT: float(cpus)}

    def ray_options(self) -> dict[str, Any]:
        """Whole GPUs per seed on a GPU cluster; on the 0-GPU embedded default, one CPU per process."""
        import ray
        gpus = self.spec.gpus_per_seed
        if gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0:
            return {"num_gpus": gpus, "num_cpus": 1}
        n = self.spec.nproc_per_node
        opts: dict[str, Any] = {"num_gpus": 0, "num_cpus": n}
        if ray.cluster_resources().get(CPU_SLOT):   # the embedded cluster: slots are never lent out
            opts["resources"] = {CPU_SLOT: n}
        return opts

    def preflight(self, n_seeds: int, where: str) -> list[str]:
        """On a GPU cluster, the fla/Triton check of the payload on one GPU node."""
        note = check_gpu_stack(self.ray_options(), where)
        return [f"pgolf: note: {note}"] if note else []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def attempts_per_task(self) -> int:
        """One attempt per task: a Ray node's set-up is the node itself, nothing to share."""
        return 1

    def kill_local(self, pids: list[int]) -> None:
        for pid in pids:
            JobProcesses(pid).kill(grace_s=5.0)

    def cluster(self, action: ClusterAction, runs_dir: Path, yes: bool) -> int:
        print(f"pgolf cluster {action}: {self.spec.name} uses the Ray backend: `pgolf run` starts a local Ray "
              f"cluster itself; for a multi-node one use `ray start --head` / `ray up`, then `--address`")
        return 0

    # --- inside the Ray task -----------------------------------------------------------------
    def command(self, attempt: AttemptSpec) -> list[str]:
        if self.spec.launcher == "python":
            job = [sys.executable, "-u", attempt.script_path]
        else:
            job = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={self.spec.nproc_per_node}", attempt.script_path]
        return [sys.executable, "-m", "runner.backends.ray_node", "--guard", *job]

    def run_group(self, attempts: list[AttemptSpec], events: list[Events]) -> Iterator[tuple[int, AttemptResult]]:
        """The attempts one after another on this node (a group of one: `attempts_per_task` is 1)."""
        for i, (attempt, ev) in enumerate(zip(attempts, events)):
            yield i, self._run_one(attempt, ev)

    def _run_one(self, attempt: AttemptSpec, events: Events) -> AttemptResult:
        node = node_name()
        events.meta(node=node, started=now_iso())   # started = when it really starts, not when queued
        adir = Path(attempt.attempt_dir)
        art = adir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(attempt.env)
        env.update(SEED=str(attempt.seed), RUN_ID=f"seed{attempt.seed}_attempt{attempt.attempt}",
                   ARTIFACT_DIR=str(art), PGOLF_ATTEMPT=str(attempt.attempt), PYTHONUNBUFFERED="1")
        env[MARKER] = attempt_marker(attempt.run_dir, attempt.seed, attempt.attempt)   # every job process inherits it
        deadline = time.monotonic() + attempt.timeout_s

        prepare = self.spec.data.prepare
        if prepare:
            code, err = self._run(["bash", "-c", prepare], adir, env, events, deadline, "data prepare")
            if code != 0:
                return AttemptResult(exit_code=code, error=err or f"data prepare exited {code}", node=node,
                                     artifacts=_list(adir, art), timed_out=code is None)
        code, err = self._run(self.command(attempt), adir, env, events, deadline, "job")
        if code != 0 and err is None:
            err = f"exit code {code}"
        return AttemptResult(exit_code=code, error=err, node=node, artifacts=_list(adir, art),
                             timed_out=code is None)

    def _run(self, cmd: list[str], cwd: Path, env: dict[str, str], events: Events, deadline: float,
             what: str) -> tuple[int | None, str | None]:
        """Run `cmd` in its own process group, stream its output, kill the group on timeout or cancel."""
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        events.process(socket.gethostname(), proc.pid)
        reader = threading.Thread(target=_pump, args=(proc, events), daemon=True)
        reader.start()
        job = JobProcesses(proc.pid, proc, marker=env.get(MARKER))
        t_start = time.monotonic()
        error = None
        try:
            while proc.poll() is None:           # poll so that we learn the ranks' sessions as they start
                left = deadline - time.monotonic()
                if left <= 0:
                    error = f"timeout: {what} still running at the attempt deadline, its processes were killed"
                    break
                try:   # ranks start early: scan often at first, then rarely
                    proc.wait(timeout=min(SCAN_S if time.monotonic() - t_start < 60 else SCAN_LATE_S, left))
                except subprocess.TimeoutExpired:
                    job.scan()
        finally:                                 # normal end, timeout, or cancel (KeyboardInterrupt)
            job.kill(grace_s=TERM_GRACE_S + 5 if proc.poll() is None else 0)   # the guard gets TERM_GRACE_S
            reader.join(timeout=10)
        return (None if error else proc.returncode), error


def guard(cmd: list[str]) -> int:
    """`python -m runner.backends.ray_node --guard CMD...`: the session leader of one job.

    It runs CMD (torchrun) with the same stdout, remembers the sessions of everything CMD starts, and on
    SIGTERM/SIGINT/SIGHUP, or SIGTERM from the kernel when the Ray worker above it dies (PR_SET_PDEATHSIG,
    inherited from ray_node), kills the whole job. It writes nothing itself, so a reader that went away
    cannot break its clean-up (torchrun's own shutdown logs to that pipe and may die on it)."""
    stop: list[int] = []

    def on_signal(signum, frame):
        stop.append(signum)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    leader = os.getsid(0) == os.getpid()      # ray_node starts us as a session leader
    # Ray SIGKILLs a dead worker's direct children (us): PDEATHSIG lets torchrun still stop its ranks
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent, start_new_session=not leader)
    job = JobProcesses(child.pid, child, session=os.getpid() if leader else None, marker=os.environ.get(MARKER))
    t0, ticks = time.monotonic(), 0
    while child.poll() is None and not stop:
        try:
            child.wait(timeout=SCAN_S)       # returns at once when the job ends; signals are seen within SCAN_S
            break
        except subprocess.TimeoutExpired:
            pass
        ticks += 1
        if time.monotonic() - t0 < 60 or ticks % int(SCAN_LATE_S / SCAN_S) == 0:
            job.scan()
    if stop:
        job.kill(grace_s=TERM_GRACE_S)
        return 128 + stop[0]
    job.kill(grace_s=0)            # leftovers of a finished job
    rc = child.returncode
    return rc if rc >= 0 else 128 - rc


def _fla_probe() -> tuple[str | None, str | None]:
    """Inside a GPU task: (error, note). error is check_fla_triton's verdict; note explains a skip."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        import torch
    except ImportError:
        return None, "torch not importable on the GPU node"
    if not torch.cuda.is_available():
        return None, "no CUDA device visible on the GPU node; fla/Triton check skipped"
    try:
        from model.train_gpt import check_fla_triton
    except Exception as e:  # the payload module is missing or broken there
        return None, f"model.train_gpt not importable on the GPU node ({type(e).__name__}); fla/Triton check skipped"

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None
    cap = torch.cuda.get_device_capability()
    return check_fla_triton(cap, v("flash-linear-attention") or v("fla-core"), v("triton")), None


def check_gpu_stack(options: dict[str, Any], where: str) -> str | None:
    """On a GPU cluster, run the payload's fla/Triton compatibility check (fla on Hopper needs Triton >=
    3.7.1, fla #640) on a GPU node. Raises PgolfError when it fails; returns a note when it was skipped."""
    import ray
    if not options.get("num_gpus"):
        return None
    probe = ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(_fla_probe)
    try:
        err, note = ray.get(probe.remote(), timeout=FLA_CHECK_TIMEOUT_S)
    except Exception as e:
        return f"fla/Triton check could not run ({type(e).__name__})"
    if err:
        raise PgolfError(f"{where}: GPU node fails the fla/Triton check: {err}")
    return note


def _pump(proc: subprocess.Popen, events: Events) -> None:
    for raw in proc.stdout:
        events.line(raw.decode("utf-8", "replace").rstrip("\r\n"))


def _list(adir: Path, art: Path) -> list[str]:
    return sorted(str(p.relative_to(adir)) for p in art.rglob("*") if p.is_file())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--guard":
        sys.exit(guard(sys.argv[2:]))
    sys.exit("usage: python -m runner.backends.ray_node --guard CMD [ARGS...]")
