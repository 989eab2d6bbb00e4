"""pgolf's runner: job specs, the durable ledger, the Ray driver, the backends and the `pgolf` CLI.

The library API (runner/batch.py), loaded on first use so that `import runner.ledger` stays light:

    runner.run(spec, run_dir=..., backend=None, address=None, progress=True, rehearse=False, faults="") -> Batch
    runner.resume(run_dir, ...) -> Batch
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.batch import Batch, resume, run

__all__ = ["Batch", "run", "resume"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runner import batch
        return getattr(batch, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
