"""The one interface every backend implements, and what flows through it.

The driver (runner/driver.py) owns the ledger and Ray scheduling; a backend knows how to run one seed
attempt somewhere (a Ray node, a RunPod pod). A backend gets the typed job spec once, when the factory
(`runner.backends.make_backend`) builds it, and everything the driver and the CLI need from it is a
method of `Backend`: the Ray resources it needs, its own preflight checks, start/stop around the batch,
the attempt itself, clean-up of local processes after Ctrl-C, and the `pgolf cluster` verbs.

Inside the attempt's Ray task the backend reports through `Events`: each log line (`line`), facts that
must reach the ledger before anything else happens (`meta`: the node, a pod id; it returns only once the
ledger holding them is on disk), and job processes it started on this host (`process`), so the driver can
still kill them if the task itself is force-cancelled.

A task carries a group of attempts (of different seeds): one, or up to `attempts_per_task` when the backend
can share a machine (RunPod's `seeds_per_pod`). `run_group` is the one way to run them, whatever their
number: one after another on one machine after a single set-up, with one `Events` per attempt, yielding
each attempt's result as it ends, so that a machine lost later never takes the results it already produced
with it. A single attempt is a group of one.

Standard library only: the backends' contract must be importable without Ray, torch or pandas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

ClusterAction = Literal["up", "status", "down"]


class InfraFailure(Exception):
    """The machine under the attempt failed (node died, pod lost): retry elsewhere, not a seed failure."""


class NotRecorded(Exception):
    """`Events.meta` could not reach the disk (the run directory's disk refused the ledger write): the
    attempt must not go on, since a crashed driver could not find what it uses (e.g. a pod)."""


@dataclass
class AttemptSpec:
    """One attempt of one seed, as the driver hands it to `Backend.run_group`."""
    run_dir: str                 # absolute path of runs/NAME on the driver's machine
    seed: int
    attempt: int
    attempt_dir: str             # runs/NAME/seeds/SEED/attempt-K (absolute; a scratch copy on another node)
    script_path: str             # the batch's frozen copy of the script (sha256 in batch.json)
    env: dict[str, str]          # full environment for the job, secrets included; never persisted
    timeout_s: float             # hard deadline for the whole attempt (JobSpec.limits.timeout())


@dataclass
class AttemptResult:
    exit_code: int | None
    error: str | None = None
    infra_failure: bool = False
    node: str | None = None
    pod_id: str | None = None
    cost_usd: float | None = None
    cost_source: str | None = None             # "billed" (RunPod's billing records) or "estimate" (price x time)
    cost_estimate_usd: float | None = None     # price x lifetime, kept beside a billed cost
    pod_terminated: bool | None = None
    artifacts: list[str] = field(default_factory=list)   # paths relative to attempt_dir
    timed_out: bool = False      # the job was killed at the attempt's deadline (exit code 124 says the same)


class Events(Protocol):
    """What a backend tells the driver while an attempt runs (implemented by runner.driver.TaskEvents)."""

    def line(self, text: str) -> None:
        """One log line of the job, as it is written (no trailing newline)."""

    def meta(self, **fields: Any) -> None:
        """Facts for this attempt's ledger entry (node, pod_id, started, cost_usd, pod_terminated).

        Returns only once the ledger holding them is on disk: a pod id must be durable before the pod
        is used, so that a crashed driver can find it. Raises NotRecorded when the disk refused."""

    def process(self, host: str, pid: int) -> None:
        """A job process this attempt started on `host` (handed back to `Backend.kill_local` after Ctrl-C)."""

    def cancel_requested(self) -> bool:
        """The driver wants this attempt stopped while its task goes on with the other attempts it carries
        (an early abort of one seed on a machine shared by several; `run_group` asks it for the attempt it
        is running). A task carrying one attempt is cancelled as a whole instead (a group of one need not
        ask)."""


class Backend(Protocol):
    name: str        # recorded in every ledger attempt: "ray" | "runpod"

    def local_resources(self, cpus: int) -> dict[str, float]:
        """Custom Ray resources for the node of the embedded local cluster (`cpus` CPUs) that pgolf starts
        when no --address is given, e.g. {"runpod_pod": max_pods}."""

    def ray_options(self) -> dict[str, Any]:
        """Resources of one attempt's Ray task, e.g. {"num_gpus": 8} (called once Ray is connected)."""

    def preflight(self, n_seeds: int, where: str) -> list[str]:
        """Checks before any batch file or machine exists; raise PgolfError (one line, naming `where`).
        Returns notes for the user (e.g. the cost estimate)."""

    def start(self) -> None:
        """Driver-side set-up before the first attempt (e.g. the rehearsal's fake RunPod API)."""

    def stop(self) -> None:
        """Driver-side tear-down, always called, also after Ctrl-C."""

    def attempts_per_task(self) -> int:
        """How many attempts (of different seeds) one task may carry, run one after another on one machine
        after a single set-up; 1 for a backend that gives every attempt a machine of its own."""

    def run_group(self, attempts: list[AttemptSpec], events: list[Events]) -> Iterator[tuple[int, AttemptResult]]:
        """1..attempts_per_task() attempts (inside one Ray task): run them one after another on one machine
        after one set-up, each with its own `events`, and yield (index, result) as each one ends, its
        artifacts in its own attempt_dir. The machine id reaches every
        attempt's ledger entry (`meta`) before the machine is used. An exception ends the attempts not yet
        yielded (InfraFailure: the machine failed, they run again elsewhere); the ones yielded keep their
        results. Nothing may be left running on any path out, also when the caller closes the generator."""

    def kill_local(self, pids: list[int]) -> None:
        """After Ctrl-C: stop job processes (reported through Events.process on the driver's host) that
        their force-cancelled Ray task could not stop itself."""

    def cluster(self, action: ClusterAction, runs_dir: Path, yes: bool) -> int:
        """`pgolf cluster up|status|down SPEC` for this backend; returns the exit code."""
