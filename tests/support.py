"""What the runner and RunPod tests share: the fake payload and data, the test secrets, an in-memory
driver side for a backend's attempts, and the small waits on processes and rehearsal pods."""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from runner.backends.runpod.fake import FakeRunPod

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = ROOT / "tests" / "payloads" / "fake_train.py"
TINY = ROOT / "model" / "data" / "tiny"
SECRET = "sk-test-SECRETVALUE"
HF_SECRET = "hf_test_SECRETTOKEN"


class MemoryEvents:
    """One attempt's driver side (runner.backends.base.Events), in memory: lines and meta as they arrive.
    `fail_on` (a line) makes the driver side blow up there; `cancel_at` (a line) makes it ask for a cancel."""

    def __init__(self, fail_on: str | None = None, cancel_at: str | None = None):
        self.lines: list[str] = []
        self.metas: list[dict] = []
        self.fail_on, self.cancel_at = fail_on, cancel_at

    def line(self, text: str) -> None:
        self.lines.append(text)
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("driver side blew up")

    def meta(self, **fields) -> None:
        self.metas.append(fields)

    def process(self, host: str, pid: int) -> None:
        raise AssertionError("a RunPod attempt starts no local job process")

    def cancel_requested(self) -> bool:
        return self.cancel_at is not None and any(self.cancel_at in line for line in self.lines)

    def merged(self) -> dict:
        out: dict = {}
        for m in self.metas:
            out.update(m)
        return out


def first_to_exit(*procs: subprocess.Popen, timeout=60) -> subprocess.Popen:
    """The first of `procs` to end (for two commands raced against one lock)."""
    t_end = time.time() + timeout
    while time.time() < t_end:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.1)
    raise AssertionError("neither process ended")


def alive_pods(run: Path) -> list[str]:
    """The rehearsal pods of run directory `run` still running."""
    return FakeRunPod(run / "rehearsal").alive_pods() if (run / "rehearsal").exists() else []


def pods_created(run: Path) -> int:
    """How many pods the rehearsal of run directory `run` has created."""
    return json.loads((run / "rehearsal" / "state.json").read_text())["n_pods"]


@contextlib.contextmanager
def rehearsal_backends(run_dir: Path) -> Iterator[Callable]:
    """start(spec, faults) -> a started rehearsal RunPodBackend of run directory `run_dir`; afterwards every
    pod is terminated and the checks hold: no pod process left, no contract violation."""
    from runner.backends.runpod.backend import RunPodBackend
    made: list = []

    def start(spec, faults: str = ""):
        b = RunPodBackend(spec, rehearse=True, faults=faults, run_dir=run_dir)
        b.start()
        made.append(b)
        return b
    yield start
    for b in made:
        fake = b.session.open().fake            # (started again if the test stopped it)
        fake.terminate_all()
        b.stop()
        assert fake.alive_pods() == [] and fake.violations == []
