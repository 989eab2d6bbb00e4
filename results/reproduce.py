"""`pgolf reproduce RECORD_DIR`: run a record folder again and say whether its claim reproduces.

The results engine holds both ends; the runner runs the spec in between (runner.run, wired by the CLI):
- `spec_from_record` turns a record folder into a job spec (the dict a jobs/*.toml file parses to): the
  folder's script, the hyperparameters its logs state (as the environment variables the script reads), its
  seeds, its track's limits and its data by variant name;
- `compare` / `compare_with_record` put the reproduced per-seed scores beside the claimed ones: paired
  differences, a one-sided paired t-test (scipy.stats.ttest_rel) and the verdict. The result
  goes into the report and its JSON under "reproduction".

The verdict (docs/CHALLENGE.md, "Reproducing a record"): "not reproduced" when the reproduced scores are
worse than the claimed ones by more than `tolerance` with p < `alpha`; otherwise the test cannot reject the
claim, which is not evidence for it: "consistent" when the mean difference is within the tolerance,
"inconclusive" when it is beyond it but too few seeds make it significant (2 seeds 0.0875 bpb worse, p =
0.08, is not a claim that stands). Runs of one seed on GPUs are not bitwise
repeatable: the reruns in the public record differ from their originals by up to 0.00045 bpb (2026-04-29,
seeds 42/314/1234), so the default tolerance is 0.001 bpb.
"""
from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as sps

from results.batch import portable_data_paths
from results.claims import claimed_seed_results, claimed_seeds
from results.errors import PgolfError
from results.load import load
from results.rules import RECORD, track_of
from results.summary import scored
from results.types import RunSet

TOLERANCE_BPB = 0.001
ALPHA = 0.05
_NOT_ENV = {"seed", "s", "run_id", "run_name", "logfile", "log_file", "rank", "local_rank", "world_size",
            "distributed", "is_main_process", "max_wallclock_seconds",
            "torch", "sp_pieces", "model_params", "local_batch_tokens"}     # facts the script prints, not settings
_BUNDLED_DATA = Path(__file__).resolve().parents[1] / "model" / "data"


def _script_names(source: str) -> set[str] | None:
    """Every string constant of the script (environment variable names among them); None if unparsable."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _env_value(v: str) -> str:
    return {"True": "1", "False": "0"}.get(v, v)


def _data(runs, data_paths: dict | None) -> dict:
    """The data by variant name: a canonical tokenizer's official variant, else the name of the logged data
    folder; pgolf's bundled data (model/data/<variant>) is found here, official data downloads by name."""
    variant = next((r.tokenizer for r in runs if r.tokenizer and r.tokenizer.startswith("sp")), None)
    if variant == "sp8192_caseops":
        variant = "sp8192_lossless_caps_caseops_v1_reserved"
    if variant is None:
        logged = next((r.hparams.get("data_path") or r.hints.get("dataset") for r in runs
                       if r.hparams.get("data_path") or r.hints.get("dataset")), None)
        variant = Path(logged).name.removeprefix("fineweb10B_") if logged else None
    data: dict = {"variant": variant} if variant else {}
    if data_paths:
        data["paths"] = dict(data_paths)
    elif variant and (_BUNDLED_DATA / variant).is_dir():
        folder = _BUNDLED_DATA / variant
        tok = next(iter(sorted(folder.glob("*.model"))), None)
        data["paths"] = {"DATA_PATH": str(folder), **({"TOKENIZER_PATH": str(tok)} if tok else {})}
    return data


def spec_from_record(record_dir, seeds: list[int] | None = None, *, data_paths: dict | None = None,
                     name: str | None = None) -> tuple[dict, list[str]]:
    """(job spec dict, notes) that runs RECORD_DIR's script again on its seeds (or `seeds`).

    The environment is what the logs state: every hyperparameter the seeds agree on whose name the script
    reads (its upper-case form or itself is a string in the script), paths and per-run keys aside. Limits are
    the track's (600 s + 600 s on the record track; the logged wall-clock cap on the non-record track).
    PgolfError (one line) when the folder cannot be reproduced."""
    d = Path(record_dir)
    rs = load(d)
    if rs.kind != "record":
        raise PgolfError(f"{d}: a run directory, not a record folder; `pgolf resume` or `pgolf report` it instead")
    script = d / "train_gpt.py"
    if not script.is_file():
        raise PgolfError(f"{d}: no train_gpt.py; a record folder needs its script to be run again")
    runs = scored(rs.runs)
    if not runs:
        raise PgolfError(f"{d}: no scored log; nothing says how the record was run")
    seeds = list(seeds) if seeds else claimed_seeds(rs.submission) or sorted({r.seed for r in runs if r.seed is not None})
    if not seeds:
        raise PgolfError(f"{d}: no seed in submission.json or the logs; pass --seeds")
    notes: list[str] = []
    known = _script_names(script.read_text(encoding="utf-8", errors="replace"))
    env: dict[str, str] = {}
    for key in sorted(set().union(*(r.hparams for r in runs))):
        values = {r.hparams.get(key) for r in runs}
        if key in _NOT_ENV or None in values or any("/" in v for v in values):
            continue
        if len(values) > 1:
            notes.append(f"{key}: the seeds logged different values {sorted(values)}; left to the script's default")
            continue
        if known is not None and key.upper() not in known and key not in known:
            continue
        env[key.upper()] = _env_value(values.pop())
    track = track_of(rs)
    first = runs[0].hparams
    limits = {"train_seconds": RECORD.train_limit_ms / 1000, "eval_seconds": RECORD.eval_limit_ms / 1000}
    if not track.is_record:
        cap = first.get("max_wallclock_seconds")
        if cap:
            limits["train_seconds"] = float(cap)
        notes.append(f"non-record track: training capped at {limits['train_seconds']:g} s as the logs state")
    world = int(first.get("world_size") or 8) if str(first.get("world_size", "8")).isdigit() else 8
    cpu = env.get("DEVICE") == "cpu"
    spec = {
        "name": name or re.sub(r"[^A-Za-z0-9_.-]+", "-", f"reproduce-{d.name}").strip("-")[:80],
        "script": str(script.resolve()),
        "seeds": seeds,
        "nproc_per_node": world,
        "gpus_per_seed": 0 if cpu else 8,
        "env": env,
        "limits": limits,
        "data": _data(runs, data_paths),
        "submission": {"name": f"reproduction of {d.name}", "track": track.folder.removeprefix("track_")},
    }
    if not spec["data"].get("paths") and spec["data"].get("variant"):
        shown = portable_data_paths(spec["data"]["variant"], {})
        notes.append(f"data: variant {spec['data']['variant']}; give its paths on a Ray cluster"
                     + (f" (official layout: {', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""))
    return spec, notes


# ---- the comparison ---------------------------------------------------------------------------------
def claimed_scores(rs: RunSet) -> dict[int, float]:
    """What a record claims per seed: submission.json's per-seed val_bpb, else its logs' scores."""
    per = {s: float(v["val_bpb"]) for s, v in claimed_seed_results(rs.submission).items()
           if isinstance(v.get("val_bpb"), (int, float)) and not isinstance(v.get("val_bpb"), bool)}
    return per or {r.seed: r.val_bpb for r in scored(rs.runs) if r.seed is not None}


def compare(claimed: dict[int, float], reproduced: dict[int, float] | RunSet, *,
            tolerance: float = TOLERANCE_BPB, alpha: float = ALPHA) -> dict:
    """The "reproduction" object of a report: per-seed claimed and reproduced val_bpb, their paired
    differences (reproduced - claimed), a one-sided paired t-test of H0 "worse by at most `tolerance`",
    and the verdict: "not reproduced" (H0 rejected at `alpha`), "consistent" (not rejected, mean difference
    within the tolerance) or "inconclusive" (not rejected, mean beyond the tolerance). "stands" is true for
    "consistent" only."""
    if isinstance(reproduced, RunSet):
        reproduced = {r.seed: r.val_bpb for r in scored(reproduced.runs) if r.seed is not None}
    seeds = [s for s in claimed if s in reproduced]
    missing = [s for s in claimed if s not in reproduced]
    diffs = np.asarray([reproduced[s] - claimed[s] for s in seeds], dtype=float)
    out = {"metric": "val_bpb", "n": len(seeds), "seeds": seeds,
           "claimed": {str(s): claimed[s] for s in seeds}, "reproduced": {str(s): reproduced[s] for s in seeds},
           "differences": {str(s): float(d) for s, d in zip(seeds, diffs)},
           "mean_difference": float(diffs.mean()) if len(diffs) else None,
           "std_difference": float(diffs.std(ddof=1)) if len(diffs) > 1 else None,
           "test": "none", "tolerance": tolerance, "alpha": alpha, "t": None, "df": None, "p": None,
           "stands": False, "verdict": "inconclusive", "missing": missing, "notes": []}
    notes = out["notes"]
    if missing:
        notes.append(f"claimed seed(s) {missing} were not reproduced")
    if not seeds:
        notes.append("no claimed seed was reproduced: nothing to compare")
        return out
    mean = out["mean_difference"]
    if len(seeds) < 2:
        out["verdict"] = "consistent" if mean <= tolerance else "inconclusive"
        out["stands"] = out["verdict"] == "consistent"
        notes.append(f"one seed: no test; consistent with the claim when the reproduction is at most "
                     f"{tolerance:g} bpb worse, inconclusive otherwise")
        return out
    excess = diffs - tolerance
    out.update(test="paired t (one-sided)", df=len(seeds) - 1)
    if np.ptp(diffs) == 0:
        out["p"] = 0.0 if excess[0] > 0 else 1.0
        notes.append("identical differences (zero variance): decided by their sign against the tolerance")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_1samp(excess, 0.0, alternative="greater")
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    rejected = out["p"] < alpha
    out["verdict"] = "not reproduced" if rejected else "consistent" if mean <= tolerance else "inconclusive"
    out["stands"] = out["verdict"] == "consistent"
    if out["verdict"] == "inconclusive":
        notes.append(f"mean difference {mean:+.6f} bpb is above the tolerance but not significant with "
                     f"{len(seeds)} seeds: the test cannot reject the claim, which does not confirm it; run "
                     "more seeds to settle it")
    return out


def compare_with_record(record_dir, reproduced: RunSet | dict[int, float], **kw) -> dict:
    """compare() against what RECORD_DIR claims per seed; adds "record" (the folder) to the result."""
    rs = load(Path(record_dir))
    claimed = claimed_scores(rs)
    if not claimed:
        raise PgolfError(f"{record_dir}: claims no per-seed score and has no scored log to compare with")
    out = compare(claimed, reproduced, **kw)
    out["record"] = str(record_dir)
    return out


def sentence(rep: dict | None) -> str:
    """One line for humans: the reproduction check's verdict and its evidence."""
    if not rep:
        return ""
    if rep["n"] == 0:
        return "Reproduction: no claimed seed was reproduced."
    head = (f"Reproduction of {Path(rep.get('record', 'the record')).name}: {rep['n']} seed(s), mean difference "
            f"{rep['mean_difference']:+.6f} bpb (reproduced − claimed)")
    if rep["test"] == "none":
        test = f"one seed, tolerance {rep['tolerance']:g} bpb"
    else:
        t = "n/a" if rep["t"] is None else f"{rep['t']:.2f}"
        test = (f"one-sided paired t-test against +{rep['tolerance']:g} bpb: t = {t}, df = {rep['df']}, "
                f"p = {rep['p']:.3g}, α = {rep['alpha']}")
    verdict = {"consistent": "consistent with the claim (cannot reject it; within the tolerance on average)",
               "inconclusive": "inconclusive: cannot reject the claim, but the reproduction is worse than it "
                               "by more than the tolerance on average; more seeds would settle it",
               "not reproduced": "the claim does NOT stand (significantly worse than claimed beyond the "
                                 "tolerance)"}[verdict_of(rep)]
    return f"{head}; {test} → {verdict}."


def verdict_of(rep: dict) -> str:
    """The verdict of a reproduction object (one written before "verdict" existed: from "stands")."""
    return rep.get("verdict") or ("consistent" if rep["stands"] else "not reproduced")
