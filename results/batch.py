"""What a run directory's batch.json says: the resolved job spec, its baseline, how to run it again, its cost.

`pgolf run` writes batch.json (the spec as pydantic dumped it, the frozen script's sha256, the pgolf version,
the git commit) and ledger.json (every attempt, with its pod cost). report and submit read them here.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from results.files import read_json_object
from results.secrets import scrub
from results.types import RunSet


def read_batch(runset: RunSet) -> dict | None:
    """batch.json of a run directory (already parsed by load when it could), else None."""
    if runset.batch:
        return runset.batch
    path = Path(runset.dir) / "batch.json"
    return read_json_object(path) if path.is_file() else None


def spec_of(batch: dict | None) -> dict:
    """The resolved job spec inside batch.json (stored either under "spec" or at the top level)."""
    if not batch:
        return {}
    spec = batch.get("spec")
    return spec if isinstance(spec, dict) else batch


def default_baseline(runset: RunSet) -> tuple[object, str | None]:
    """(ref, policy) from batch.json's "baseline" section; (None, None) when absent."""
    base = spec_of(read_batch(runset)).get("baseline")
    if not isinstance(base, dict) or base.get("ref") in (None, ""):
        return None, None
    ref = base["ref"]
    if isinstance(ref, str) and not Path(ref).expanduser().is_absolute():
        local = Path(runset.dir) / ref
        if local.exists() and not Path(ref).exists():
            ref = str(local)
    return ref, base.get("policy")


def reproduction_command(batch: dict | None) -> str | None:
    """A shell loop over the batch's seeds: `ENV=... SEED=$SEED torchrun ... train_gpt.py`, secrets masked."""
    spec = spec_of(batch)
    if not spec.get("script"):
        return None
    env = {k: v for k, v in (spec.get("env") or {}).items()}
    for k, v in ((spec.get("data") or {}).get("paths") or {}).items():
        env.setdefault(k, v)
    parts = [f"{k}={shlex.quote(str(v))}" for k, v in env.items() if k != "SEED"] + ["SEED=$SEED"]
    script = Path(str(spec["script"])).name
    if spec.get("launcher") == "python":
        parts.append(f"python {script}")
    else:
        parts.append(f"torchrun --standalone --nproc_per_node={spec.get('nproc_per_node', 8)} {script}")
    seeds = " ".join(str(x) for x in spec.get("seeds") or []) or "42"
    return scrub(f"for SEED in {seeds}; do\n  " + " \\\n  ".join(parts) + "\ndone")


def batch_cost(runset: RunSet) -> dict | None:
    """What the batch's pods cost: the sum of every attempt's cost_usd in ledger.json (retries included,
    since they were paid for too). None for record folders and for batches that recorded no cost."""
    if runset.kind != "run":
        return None
    try:
        seeds = json.loads((Path(runset.dir) / "ledger.json").read_text()).get("seeds") or {}
    except (OSError, ValueError, AttributeError):
        return None
    per_seed, n = {}, 0
    for seed, entry in seeds.items():
        costs = [a.get("cost_usd") for a in (entry or {}).get("attempts") or [] if isinstance(a, dict)]
        costs = [float(c) for c in costs if isinstance(c, (int, float)) and math.isfinite(c)]
        if costs:
            per_seed[str(seed)] = round(sum(costs), 4)
            n += len(costs)
    if not per_seed:
        return None
    return {"total_usd": round(sum(per_seed.values()), 4), "attempts": n, "per_seed_usd": per_seed}
