"""A fake pod's container as local processes: started like a container, logged like one, killed like one.

`launch` starts the pod's start command (its `args`) under a small init process of its own session, which
plays the container runtime's two roles:
- PID 1: it is a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process of the pod stays in its
  tree even when a parent dies or a child starts a session of its own (torchrun does); when the start
  command exits, the init kills what is left, as a container stops with its PID 1.
- the log driver: it reads the command's stdout+stderr and appends one JSON line per output line
  {"ts": RFC 3339 with microseconds, "line": text} to the container log, which the fake API serves as
  Server-Sent Events. Timestamps never go backwards; lines written in one burst may share one.

`kill_pod` finds every process of a pod twice over, as the descendants of its init (walking /proc parent
links) and as the processes whose environment carries the pod's marker variable (which catches a process
whose init is already gone), stops them all (SIGSTOP, so none forks while we look), kills them (SIGKILL)
and repeats until none is left. A terminated fake pod leaves no process behind, as a real one does.

Standard library only, Linux (/proc), plus runner.proctree (the one place that finds and kills a job's
processes; itself standard library only). The init runs this file as a script (`python fake_container.py
LOG EXIT -- ARGV`) and imports nothing else of pgolf, so a pod starts as fast as Python does.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time

from runner import proctree

MARK_ENV = "PGOLF_FAKE_POD_MARK"
PR_SET_CHILD_SUBREAPER = 36


def launch(argv: list[str], env: dict[str, str], cwd: str, log_path: str, exit_path: str, mark: str,
           python: str = sys.executable) -> subprocess.Popen:
    """Start the container (init + start command) in a session of its own; returns the init's Popen."""
    init = [python, os.path.abspath(__file__), log_path, exit_path, "--", *argv]
    return subprocess.Popen(init, env=dict(env, **{MARK_ENV: mark}), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def proc_start(pid: int) -> str | None:
    """The process's start time (/proc), so a recycled pid is never mistaken for a pod's."""
    stat = _stat(pid)
    return stat[19] if stat else None


def alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    stat = _stat(pid)
    return bool(stat) and stat[19] == start and stat[0] != "Z"


def pod_processes(mark: str, init_pid: int | None = None, init_start: str | None = None) -> set[int]:
    """Live (non-zombie) processes of one pod: its init's descendants plus every carrier of its marker."""
    table = proctree.proc_table()
    found = proctree.marked(mark, name=MARK_ENV, table=table)
    if init_pid and alive(init_pid, init_start):
        found |= {init_pid} | proctree.descendants(init_pid, table)
    return found - {os.getpid()}


def kill_pod(mark: str, init_pid: int | None = None, init_start: str | None = None) -> bool:
    """Stop and kill every process of the pod; True once none is left."""
    proctree.sweep(lambda: pod_processes(mark, init_pid, init_start))
    return not pod_processes(mark, init_pid, init_start)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def timestamp(now: float | None = None) -> str:
    t = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _LogDriver:
    """Lines of the container's output into the JSON-lines container log, each with its timestamp."""

    def __init__(self, path: str):
        self.out = open(path, "ab", buffering=0)
        self.last = ""

    def write(self, raw: bytes) -> None:
        ts = max(timestamp(), self.last)          # same format: string order is time order
        self.last = ts
        line = raw.decode("utf-8", "replace").removesuffix("\n")
        self.out.write((json.dumps({"ts": ts, "line": line}) + "\n").encode())

    def pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.write(raw)


def _init(log_path: str, exit_path: str, argv: list[str]) -> int:
    """PID 1 of a fake pod: subreaper, log driver, reaper; ends the pod's processes when argv exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    driver = _LogDriver(log_path)
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
        driver.write(f"container: cannot start {argv[:1]}: {e}\n".encode())
        _write_exit(exit_path, 127)
        return 127
    reader = threading.Thread(target=driver.pump, args=(child.stdout,), daemon=True)
    reader.start()
    code = None
    while code is None:                        # reap everything; orphans of the pod are re-parented here
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
    me = os.getpid()
    for pid in pod_processes(os.environ.get(MARK_ENV, "-")) - {me}:   # the container stops with its PID 1
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    reader.join(timeout=5)
    _write_exit(exit_path, code if code is not None else 255)
    return 0


def _write_exit(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        raise SystemExit("usage: python fake_container.py LOG EXIT -- ARGV...")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(_init(sys.argv[1], sys.argv[2], sys.argv[4:]))
