"""The one small interface every backend implements (SkyPilot style: a few plain functions per cloud).

The driver (runner/driver.py) owns the ledger and Ray scheduling. For each seed attempt it calls
`backend.ray_options(spec)` to get the Ray task's resources, and runs `backend.run_attempt(...)` inside
that Ray task. The attempt streams each log line through `events.line(text)` and reports facts that must
reach the ledger at once (a pod id, the node) through `events.meta(**fields)`; both are forwarded to the
driver, which writes the ledger before doing anything else with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class InfraFailure(Exception):
    """The machine under the attempt failed (node died, pod lost): retry elsewhere, not a seed failure."""


@dataclass
class AttemptSpec:
    run_dir: str                 # absolute path of runs/NAME on the driver's machine
    seed: int
    attempt: int
    attempt_dir: str             # runs/NAME/seeds/SEED/attempt-K (absolute)
    script_path: str             # the batch's frozen copy of the script (sha256 in batch.json)
    env: dict[str, str]          # full environment for the job, secrets included; never persisted
    nproc_per_node: int
    gpus_per_seed: int
    timeout_s: float             # hard deadline for the whole attempt
    spec: dict[str, Any] = field(default_factory=dict)   # the resolved job spec (no secrets)


@dataclass
class AttemptResult:
    exit_code: int | None
    error: str | None = None
    infra_failure: bool = False
    node: str | None = None
    pod_id: str | None = None
    cost_usd: float | None = None
    pod_terminated: bool | None = None
    artifacts: list[str] = field(default_factory=list)   # paths relative to attempt_dir


class Events(Protocol):
    def line(self, text: str) -> None:
        """One log line of the job, as it is written (no trailing newline)."""

    def meta(self, **fields: Any) -> None:
        """Facts for this attempt's ledger entry (node, pod_id, cost_usd, pod_terminated, ...).

        Returns only once the ledger holding them is on disk: a pod id must be durable before the pod
        is used, so that a crashed driver can find it."""


class Backend(Protocol):
    name: str

    def ray_options(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Resources of one attempt's Ray task, e.g. {"num_gpus": 8} or {"resources": {"runpod_pod": 1}}."""

    def run_attempt(self, attempt: AttemptSpec, events: Events) -> AttemptResult:
        """Run one seed attempt to the end (inside a Ray task); raise InfraFailure when the machine failed."""

    def preflight(self, spec: dict[str, Any], n_seeds: int) -> None:
        """Checks before anything starts (raise PgolfError): e.g. RunPod balance vs the batch estimate."""

    def start(self) -> None:
        """Driver-side set-up before the first attempt (e.g. the rehearsal's fake RunPod API)."""

    def stop(self) -> None:
        """Driver-side tear-down, always called, also after Ctrl-C."""
