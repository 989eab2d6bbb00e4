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


DEFAULT_TRAIN_SECONDS = 600          # the spec's [limits] train_seconds default (the challenge's budget)


def env_text(v) -> str:
    """An env value as the job saw it (the runner's spec rules: booleans 1/0, whole floats as integers)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def portable_data_paths(variant: str | None, paths: dict) -> dict[str, str]:
    """DATA_PATH / TOKENIZER_PATH by the variant's name instead of this machine's paths: the official layout
    (`./data/datasets/fineweb10B_<variant>`, `./data/tokenizers/fineweb_<N>_bpe.model`, as
    data/cached_challenge_fineweb.py writes it) for official variants, `./data/<variant>/...` otherwise."""
    out = {}
    for key, value in paths.items():
        name = Path(str(value)).name
        if key == "DATA_PATH":
            out[key] = f"./data/datasets/fineweb10B_{variant}" if _official(variant) else f"./data/{variant or name}"
        elif key == "TOKENIZER_PATH":
            out[key] = (f"./data/tokenizers/fineweb_{variant[2:]}_bpe.model" if _official(variant) and variant.startswith("sp")
                        else f"./data/{variant}/{name}" if variant else f"./data/{name}")
        else:
            out[key] = f"./data/{variant}/{name}" if variant else f"./data/{name}"
    if _official(variant):
        out.setdefault("DATA_PATH", f"./data/datasets/fineweb10B_{variant}")
        if variant.startswith("sp"):
            out.setdefault("TOKENIZER_PATH", f"./data/tokenizers/fineweb_{variant[2:]}_bpe.model")
    return out


def _official(variant: str | None) -> bool:
    return bool(variant) and (variant.startswith("sp") and variant[2:].isdigit() or variant.startswith("byte"))


def _local_path(value: str) -> bool:
    return value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/")


def run_env(spec: dict) -> tuple[dict[str, str], list[str]]:
    """Every variable the job ran with, fit to publish: the spec's env, the data by variant name, and
    MAX_WALLCLOCK_SECONDS from [limits] train_seconds (unless the env sets it). Returns (env, notes)."""
    notes = []
    env = {k: env_text(v) for k, v in (spec.get("env") or {}).items() if k != "SEED"}
    data = spec.get("data") or {}
    variant = data.get("variant")
    for k, v in portable_data_paths(variant, data.get("paths") or {}).items():
        env.setdefault(k, v)
    if variant:
        notes.append(f"data: variant {variant}" + (" (official layout under ./data, as data/cached_challenge_fineweb.py "
                                                   "writes it)" if _official(variant) else f" (put it under ./data/{variant})"))
    limits = spec.get("limits") or {}
    env.setdefault("MAX_WALLCLOCK_SECONDS", env_text(limits.get("train_seconds", DEFAULT_TRAIN_SECONDS)))
    for k, v in env.items():
        if _local_path(v):
            env[k] = f"./{Path(v).name}"
            notes.append(f"{k}: a path of the machine that ran it, shown as ./{Path(v).name}")
    return env, notes


def reproduction_command(batch: dict | None) -> str | None:
    """A shell loop over the batch's seeds that states every variable the run used:
    `ENV=... MAX_WALLCLOCK_SECONDS=600 SEED=$SEED torchrun ... train_gpt.py`; no path of this machine,
    secrets masked."""
    spec = spec_of(batch)
    if not spec.get("script"):
        return None
    env, notes = run_env(spec)
    parts = [f"{k}={shlex.quote(v)}" for k, v in env.items()] + ["SEED=$SEED"]
    script = Path(str(spec["script"])).name
    if spec.get("launcher") == "python":
        parts.append(f"python {script}")
    else:
        parts.append(f"torchrun --standalone --nproc_per_node={spec.get('nproc_per_node', 8)} {script}")
    seeds = " ".join(str(x) for x in spec.get("seeds") or []) or "42"
    head = "".join(f"# {n}\n" for n in notes)
    return scrub(head + f"for SEED in {seeds}; do\n  " + " \\\n  ".join(parts) + "\ndone")


def batch_cost(runset: RunSet) -> dict | None:
    """What the batch's pods cost: the sum of every attempt's cost_usd in ledger.json (retries included,
    since they were paid for too), with how many of those figures RunPod billed and how many are estimates
    (price x lifetime), and `rehearsal: true` when the batch ran on the fake RunPod (fake figures, no
    money). None for record folders and for batches that recorded no cost."""
    if runset.kind != "run":
        return None
    try:
        seeds = json.loads((Path(runset.dir) / "ledger.json").read_text()).get("seeds") or {}
    except (OSError, ValueError, AttributeError):
        return None
    per_seed, n, sources, shared = {}, 0, {"billed": 0, "estimate": 0}, {}
    for seed, entry in seeds.items():
        atts = [a for a in (entry or {}).get("attempts") or [] if isinstance(a, dict)
                and isinstance(a.get("cost_usd"), (int, float)) and math.isfinite(a["cost_usd"])]
        if atts:
            per_seed[str(seed)] = round(sum(float(a["cost_usd"]) for a in atts), 4)
            n += len(atts)
            for a in atts:
                sources["billed" if a.get("cost_source") == "billed" else "estimate"] += 1
                if isinstance(a.get("shared_pod"), dict) and a.get("pod_id"):
                    shared[a["pod_id"]] = a["shared_pod"].get("pod_cost_usd")
    if not per_seed:
        return None
    rehearsal = bool((read_batch(runset) or {}).get("rehearsal"))
    return {"total_usd": round(sum(per_seed.values()), 4), "attempts": n, "per_seed_usd": per_seed,
            "billed_attempts": sources["billed"], "estimated_attempts": sources["estimate"], "rehearsal": rehearsal,
            "shared_pods": shared}


def cost_sentence(cost: dict) -> str:
    """One line for report.md and the summary: money (billed or estimated), or a rehearsal's fake figure;
    pods that ran several seeds ([runpod] seeds_per_pod) are said, since their seeds' costs are shares."""
    pods = len(cost.get("shared_pods") or {})
    split = (f"; {pods} pod(s) shared by several seeds, each such pod's cost split across its seeds (each its "
             f"own run time plus an equal share of the set-up)") if pods else ""
    if cost.get("rehearsal"):
        return (f"rehearsal on the fake RunPod: {cost['attempts']} pod attempt(s), no money spent "
                f"(fake cost {cost['total_usd']:.4f}){split}")
    how = (f"{cost.get('billed_attempts', 0)} billed by RunPod, {cost.get('estimated_attempts', 0)} estimated "
           f"(price x pod lifetime)")
    return f"${cost['total_usd']:.2f} for {cost['attempts']} pod attempt(s): {how}{split}"


def _ledger(runset: RunSet) -> dict:
    if runset.kind != "run":
        return {}
    try:
        data = json.loads((Path(runset.dir) / "ledger.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def adaptive_summary(runset: RunSet) -> dict | None:
    """An adaptive batch's design, waves and outcome from ledger.json's "adaptive" section (runner/waves.py),
    in the report's shape; None for a fixed batch. Per look: seeds, scored seeds, the success boundary
    (a nominal p threshold), whether it was crossed, the conditional power (the futility rule's statistic:
    later futility stops ignored), the chance of success from there with later futility stops included
    (None where the look stopped the batch, or a ledger from before it existed), the action."""
    st = _ledger(runset).get("adaptive")
    if not isinstance(st, dict):
        return None
    waves = []
    for w in st.get("waves") or []:
        look = w.get("look") or {}
        boundary = look.get("boundary") or {}
        waves.append({"wave": w.get("wave"), "seeds": w.get("seeds"), "scored": look.get("n"),
                      "tested": look.get("tested"), "boundary_p": boundary.get("p"),
                      "alpha_spent": boundary.get("alpha_spent"), "crossed": look.get("crossed"),
                      "conditional_power": look.get("conditional_power"),
                      "success_chance": look.get("success_chance"), "action": look.get("action")})
    return {key: st.get(key) for key in ("rule", "looks", "policy", "spending", "futility", "baseline", "outcome")} \
        | {"waves": waves}


def aborted_attempts(runset: RunSet) -> dict | None:
    """Seeds stopped by the early abort (runner/abort.py): per attempt, where it was stopped and what that saved
    (estimated), and the totals; None when nothing was aborted."""
    rows = []
    for seed, entry in (_ledger(runset).get("seeds") or {}).items():
        for a in (entry or {}).get("attempts") or []:
            ab = a.get("abort") if isinstance(a, dict) else None
            if isinstance(ab, dict):
                rows.append({"seed": seed, "attempt": a.get("attempt"), **ab})
    if not rows:
        return None
    usd = [r["saved_usd"] for r in rows if isinstance(r.get("saved_usd"), (int, float))]
    return {"attempts": rows, "saved_hours": round(sum(r.get("saved_hours") or 0 for r in rows), 4),
            "saved_usd": round(sum(usd), 2) if usd else None}


def unsuccessful_seeds(runset: RunSet) -> list[dict] | None:
    """Seeds of a run directory that did not succeed (failed, or still pending/running when the report was
    written), each with its state, attempt count and last attempt's error as the runner recorded it (a
    config error's exception line, a hang's silence and last line, an infrastructure failure); aborted
    seeds are reported apart. None when every seed succeeded."""
    rows = []
    for seed, entry in (_ledger(runset).get("seeds") or {}).items():
        state = (entry or {}).get("state")
        if state in ("succeeded", "aborted", None):
            continue
        atts = [a for a in (entry or {}).get("attempts") or [] if isinstance(a, dict)]
        rows.append({"seed": seed, "state": state, "attempts": len(atts),
                     "error": (atts[-1].get("error") if atts else None) or "no attempt ran"})
    return rows or None
