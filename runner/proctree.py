"""Every process of one job, found and killed: ranks in sessions of their own and daemons included.

A job's processes are found three ways, because each alone misses some:
- the sessions of its root's descendants, remembered across scans: torchrun starts every rank in a
  session of its own, and a rank whose parent died is no longer anyone's descendant;
- an environment marker that every process of the job inherits (`PGOLF_ATTEMPT_ID=<run dir>:<seed>:<k>`):
  the only trace of a daemon (fork, setsid, fork) whose parents exited before a scan saw it. It is read
  from /proc/PID/environ, the environment the process started with, so a job cannot lose it by editing
  os.environ; a process that execs with an environment stripped of it escapes (a cgroup per attempt
  would catch that too; pgolf does not require one, CI machines rarely delegate cgroups);
- the root itself (its Popen).
Killing: SIGTERM to the root (torchrun stops its ranks), a grace period, then rounds of SIGSTOP (nothing
forks while we look) and SIGKILL over everything found, until a scan finds nothing.

Standard library only, Linux (/proc): the job guard (ray_node) and the rehearsal's fake pods
(runner/backends/runpod/fake_container.py) use it too.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

MARKER = "PGOLF_ATTEMPT_ID"
TERM_GRACE_S = 10.0          # SIGTERM -> SIGKILL for the job's processes
KILL_ROUNDS = 50             # STOP+KILL sweeps before giving up on a process that keeps coming back


def attempt_marker(run_dir: str, seed: int, attempt: int) -> str:
    """The marker value of one attempt: `<absolute run dir>:<seed>:<attempt>`."""
    return f"{os.path.abspath(run_dir)}:{seed}:{attempt}"


def batch_markers(run_dir: str) -> re.Pattern:
    """Every attempt marker of one batch (and of no other, even one whose folder name has a colon)."""
    return re.compile(re.escape(os.path.abspath(run_dir)) + r":\d+:\d+")


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every live (non-zombie) process, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            out[int(d)] = (int(fields[1]), int(fields[3]))
    return out


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """Every live process below `root` (walking parent links)."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _ancestors_and_self(table: dict[int, tuple[int, int]]) -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        pid = table.get(pid, (0, 0))[0]
    return out


def marked(value: str | re.Pattern, name: str = MARKER,
           table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """Live processes started with `name=value` in their environment (`value` a pattern: a value it fully
    matches), never this process or its ancestors. Processes of other users are not readable: skipped."""
    table = proc_table() if table is None else table
    key = f"{name}=".encode()
    if isinstance(value, str):
        wanted = lambda v: v == value.encode()     # noqa: E731
    else:
        wanted = lambda v: value.fullmatch(v.decode("utf-8", "replace")) is not None   # noqa: E731
    mine = _ancestors_and_self(table)
    out = set()
    for pid in table:
        if pid in mine:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(key) and wanted(e[len(key):]) for e in env):
            out.add(pid)
    return out


def sweep(find) -> None:
    """SIGSTOP then SIGKILL whatever `find()` returns, until it returns nothing."""
    for _ in range(KILL_ROUNDS):
        left = find()
        if not left:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        time.sleep(0.05)


def kill_marked(value: str | re.Pattern, name: str = MARKER) -> int:
    """Kill every process carrying the marker (see `marked`); returns how many there were at first."""
    first = marked(value, name)
    if first:
        sweep(lambda: marked(value, name))
    return len(first)


class JobProcesses:
    """The processes of one job: its root's sessions (remembered as `scan` sees them) and, with `marker`,
    every process whose environment carries MARKER=marker."""

    def __init__(self, root_pid: int, popen: subprocess.Popen | None = None, session: int | None = None,
                 marker: str | None = None):
        """`root_pid` leads its own session (started with start_new_session), unless `session` says which
        session it lives in; never the caller's (that would take the caller's terminal down with it)."""
        self.pid, self.popen, self.marker = root_pid, popen, marker
        self.sessions = {root_pid if session is None else session}

    def scan(self) -> None:
        """Remember the sessions of the root's descendants (ranks that started sessions of their own)."""
        table = proc_table()
        self.sessions |= {table[c][1] for c in descendants(self.pid, table)}

    def in_sessions(self, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
        table = proc_table() if table is None else table
        me = os.getpid()
        return {pid for pid, (_pp, sid) in table.items() if sid in self.sessions and pid != me}

    def alive(self) -> set[int]:
        """Every live process of the job (sessions and marker)."""
        table = proc_table()
        out = self.in_sessions(table)
        if self.marker:
            out |= marked(self.marker, table=table)
        return out

    def root_running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid in proc_table()

    def kill(self, grace_s: float = TERM_GRACE_S) -> None:
        """SIGTERM the root (guard or torchrun: it stops its ranks) and give its sessions `grace_s` to end,
        then SIGKILL everything of the job that is left, daemons included."""
        if self.root_running():
            self.scan()
            try:
                os.kill(self.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            t_end = time.monotonic() + grace_s
            while time.monotonic() < t_end and self.in_sessions():
                time.sleep(0.2)
        sweep(self.alive)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
