"""`pgolf plan`: how many seeds a claim needs, and what they cost, before a single pod exists (issue 12).

The statistics are results/power.py's (`power.plan`: the power of the policy's test for 1..N candidate
seeds, exact or integrated, with its method and error). This module adds what the spec knows: the price and
hours of the seeds on the spec's backend, the trade-off of running K seeds one after another on one pod
(`power.cost`), and for an adaptive spec the planned looks, their boundaries, what stopping at each costs
and how likely the success boundary is crossed there.

Cost model (stated in the output). One seed occupies its machine for the spec's training + evaluation
budgets ([limits] train_seconds + eval_seconds); on RunPod each pod also pays its set-up once
([runpod] setup_s: pod start, data, compile caches), so K seeds per pod pay ⌈n/K⌉ set-ups instead of n,
and take K times as long. K is the spec's [runpod] seeds_per_pod unless --seeds-per-pod says otherwise. Only
seeds launched together share a pod (runner/driver.py groups each launch): an adaptive batch's waves are
priced one after another, each on pods of its own (`launches`). The price is the spec's [runpod] price_per_hour, else a documented default:
RunPod's list price for the H100 SXM on SECURE cloud at the time of writing, $2.69 per GPU-hour (8 GPUs:
$21.52/h); the output says which. On the Ray backend there is no price: hours only (node-hours, and the
wall-clock when every seed runs at once).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from results.errors import PgolfError

H100_SXM = "NVIDIA H100 80GB HBM3"
H100_SXM_SECURE_USD_PER_GPU_HOUR = 2.69       # RunPod list price, SECURE cloud, at the time of writing
SIMULATION_DRAWS = 20_000                     # adaptive: batches simulated for the chance to cross each look


def price(spec) -> tuple[float, str]:
    """($ per pod-hour, where it comes from) for a RunPod spec."""
    s = spec.runpod
    if s.price_per_hour is not None:
        return float(s.price_per_hour), "the spec's [runpod] price_per_hour"
    if s.gpu_type == H100_SXM:
        usd = H100_SXM_SECURE_USD_PER_GPU_HOUR * s.gpu_count
        return usd, (f"default: RunPod's list price for {s.gpu_count} × H100 SXM on SECURE cloud at the time of "
                     f"writing (${H100_SXM_SECURE_USD_PER_GPU_HOUR}/GPU-h); set [runpod] price_per_hour to yours")
    raise PgolfError(f"[runpod] gpu_type {s.gpu_type!r}: pgolf plan knows no default price for it; set "
                     f"[runpod] price_per_hour")


def costing(spec, seeds_per_pod: int) -> dict[str, Any]:
    """How one seed is priced on the spec's backend (the parts `seed_cost` needs, and what to print)."""
    seed_h = (spec.limits.train_seconds + spec.limits.eval_seconds) / 3600.0
    if spec.backend == "runpod":
        usd, source = price(spec)
        return {"backend": "runpod", "usd_per_hour": usd, "price_source": source, "hours_per_seed": seed_h,
                "setup_hours": spec.runpod.setup_s / 3600.0, "seeds_per_pod": seeds_per_pod,
                "hours_meaning": "pod-hours billed (set-up included); wall_hours: every pod at once"}
    return {"backend": spec.backend, "usd_per_hour": None, "price_source": "no price on the Ray backend",
            "hours_per_seed": seed_h, "setup_hours": 0.0, "seeds_per_pod": 1,
            "hours_meaning": "node-hours (train + eval budget per seed); wall_hours: every seed at once"}


def launches(spec, n: int) -> list[int]:
    """How the batch's last `n` seeds are launched: their counts per launch, in order. An adaptive batch
    launches wave by wave (looks 3, 5, 8: waves of 3, 2, 3), the first wave cut to what is left of it (a
    resumed batch's unfinished seeds), and a wave starts once the one before has ended; any other batch
    launches all its seeds at once."""
    if spec is None or spec.adaptive is None:
        return [n] if n > 0 else []
    looks = spec.adaptive.looks()
    waves = [b - a for a, b in zip((0,) + looks, looks)]
    out: list[int] = []
    for size in reversed(waves):
        if n <= 0:
            break
        out.insert(0, min(size, n))
        n -= size
    return out


def seed_cost(c: dict, n: int, seeds_per_pod: int | None = None, waves: list[int] | None = None
              ) -> dict[str, float | None]:
    """{cost_usd, hours, wall_hours} of n seeds under costing `c` (K seeds per pod: `seeds_per_pod`),
    launched all at once or in `waves` (counts adding up to n, one wave after another: seeds of different
    waves never share a pod, and the wall-clock adds up)."""
    from results.power import cost
    k = c["seeds_per_pod"] if seeds_per_pod is None else seeds_per_pod
    hours = wall = 0.0
    for size in waves or [n]:
        h, w = cost(size, c["hours_per_seed"], 1.0, k, c["setup_hours"])    # at $1/h the dollars are hours
        hours, wall = hours + h, wall + w
    usd = None if c["usd_per_hour"] is None else hours * c["usd_per_hour"]
    return {"cost_usd": None if usd is None else round(usd, 2), "hours": round(hours, 3),
            "wall_hours": round(wall, 3)}


def plan_batch(baseline, improvement: float, std: float | None = None, policy: str | None = None,
               max_seeds: int = 8, spec=None, seeds_per_pod: int | None = None) -> dict[str, Any]:
    """The `pgolf plan --json` dict: results.power.plan's keys, then cost_usd / hours for the seeds that
    reach 80% power (null when none within max_seeds or no spec), and a "cost" object per seed count; with
    an [adaptive] spec an "adaptive" object per look. `seeds_per_pod` None: the spec's own [runpod]
    seeds_per_pod, so that the cost shown is what the backend will run."""
    from results.power import plan
    if seeds_per_pod is None:
        seeds_per_pod = spec.runpod.seeds_per_pod if spec is not None else 1
    if isinstance(seeds_per_pod, bool) or not isinstance(seeds_per_pod, int) or seeds_per_pod < 1:
        raise PgolfError(f"--seeds-per-pod {seeds_per_pod!r}: must be a whole number >= 1")
    if baseline is None:
        if spec is None or spec.baseline.ref is None:
            raise PgolfError("give --baseline (a record folder, submission.json or bpb number), or a --spec "
                             "whose [baseline] names one")
        baseline = spec.baseline.ref
    policy = policy or (spec.baseline.policy if spec is not None else None) or "rule"
    out = plan(baseline, improvement, std, policy, max_seeds)
    out["cost_usd"] = out["hours"] = None
    if spec is None:
        return out
    c = costing(spec, seeds_per_pod)
    c["by_n"] = {str(n): seed_cost(c, n) for n in range(1, max_seeds + 1)}
    if c["backend"] == "runpod" and seeds_per_pod > 1:
        c["one_per_pod"] = {str(n): seed_cost(c, n, 1) for n in range(1, max_seeds + 1)}
    out["cost"] = c
    n80 = out["seeds_for_power"]["0.8"]
    if n80 is not None:
        out["cost_usd"], out["hours"] = c["by_n"][str(n80)]["cost_usd"], c["by_n"][str(n80)]["hours"]
    if spec.adaptive is not None:
        out["adaptive"] = adaptive_plan(spec, baseline, improvement, std, policy, c)
    return out


def adaptive_plan(spec, baseline, improvement: float, std: float | None, policy: str, c: dict) -> dict:
    """Per planned look of the spec's [adaptive] design: seeds, α spent, the nominal-p boundary, the
    chance that a candidate with the planned improvement first crosses it there (simulated with the very
    test the runner applies, futility ignored), and what stopping there costs. Futility can only stop a
    batch earlier, so the expected seeds and cost given are upper bounds."""
    from results.power import setting
    from results.sequential import Design, boundary_table
    a = spec.adaptive
    design = Design(a.looks(), policy=policy, spending=None if a.spending == "none" else a.spending,
                    futility=a.futility)
    table = boundary_table(design, baseline)
    s = setting(baseline, improvement, std, policy)
    rng = np.random.default_rng(12)
    values = rng.normal(s.mean, s.std, size=(SIMULATION_DRAWS, design.max_seeds))
    alive = np.ones(SIMULATION_DRAWS, dtype=bool)
    waves = launches(spec, design.max_seeds)            # one per look: the seeds it adds
    looks = []
    for row in table:
        n = row["n"]
        crossed = alive & (s.p_values(values[:, :n]) < row["p"]) if row["p"] > 0 else np.zeros_like(alive)
        stop_here = crossed if n < design.max_seeds else alive.copy()
        looks.append({**row, "p_first_cross": float(crossed.mean()), "p_stop_here": float(stop_here.mean()),
                      **seed_cost(c, n, waves=waves[:len(looks) + 1])})        # the waves up to this look
        alive &= ~crossed
    expected_n = sum(l["n"] * l["p_stop_here"] for l in looks)
    exp = {k: sum(l[k] * l["p_stop_here"] for l in looks) if looks[0][k] is not None else None
           for k in ("cost_usd", "hours")}
    return {"rule": design.rule(), "looks": looks, "p_success": float(sum(l["p_first_cross"] for l in looks)),
            "expected_seeds_at_most": round(expected_n, 2),
            "expected_cost_usd_at_most": None if exp["cost_usd"] is None else round(exp["cost_usd"], 2),
            "expected_hours_at_most": round(exp["hours"], 3),
            "method": f"{SIMULATION_DRAWS} simulated batches, the runner's test and boundaries, futility "
                      f"ignored (it only stops earlier): expected seeds and cost are upper bounds; Monte-Carlo "
                      f"standard error <= {math.sqrt(0.25 / SIMULATION_DRAWS):.4f}"}


# ---------------------------------------------------------------- the command

def cmd_plan(args) -> int:
    spec = None
    if args.spec:
        from runner.spec import load_spec
        spec = load_spec(args.spec)
    out = plan_batch(args.baseline, args.improvement, args.std, args.policy, args.max_seeds, spec,
                     args.seeds_per_pod)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    from rich.console import Console
    render(out, Console())
    return 0


def _usd(v) -> str:
    return "–" if v is None else f"${v:,.2f}"


def render(out: dict, console) -> None:
    from rich.table import Table
    c = out.get("cost")
    k = c["seeds_per_pod"] if c else 1
    t = Table(title=f"power of the {out['policy']} policy's {out['test']} test against {Path(out['baseline']).name} "
                    f"(improvement {out['improvement_bpb']:g} bpb, seed std {out['std_bpb']:.6g} bpb)")
    t.add_column("seeds", justify="right")
    t.add_column("power", justify="right")
    if c:
        t.add_column("cost" if c["usd_per_hour"] is not None else "node-hours", justify="right")
        t.add_column("wall-clock", justify="right")
        if "one_per_pod" in c:
            t.add_column("cost, 1 seed/pod", justify="right")
            t.add_column("wall, 1 seed/pod", justify="right")
    for n, p in out["power"].items():
        row = [n, f"{p:.3f}"]
        if c:
            b = c["by_n"][n]
            row += [_usd(b["cost_usd"]) if c["usd_per_hour"] is not None else f"{b['hours']:.2f} h",
                    f"{b['wall_hours']:.2f} h"]
            if "one_per_pod" in c:
                o = c["one_per_pod"][n]
                row += [_usd(o["cost_usd"]), f"{o['wall_hours']:.2f} h"]
        style = "bold green" if any(int(n) == m for m in out["seeds_for_power"].values() if m) else None
        t.add_row(*row, style=style)
    console.print(t)
    for p, n in out["seeds_for_power"].items():
        console.print(f"seeds for {float(p):.0%} power: " + (f"{n}" if n else f"not reached within "
                                                                             f"{out['max_seeds']} seeds"),
                      highlight=False)
    if c:
        if c["usd_per_hour"] is not None:
            console.print(f"price: ${c['usd_per_hour']:.2f}/h ({c['price_source']}); per seed "
                          f"{c['hours_per_seed']:.3f} h of train + eval budget, set-up {c['setup_hours']:.3f} h "
                          f"per pod, {k} seed(s) per pod", highlight=False, markup=False)
        else:
            console.print(f"{c['backend']} backend: no price, hours only ({c['hours_meaning']})",
                          highlight=False, markup=False)
        if out["cost_usd"] is not None:
            console.print(f"for 80% power: {_usd(out['cost_usd'])}, {out['hours']:.2f} h", highlight=False)
    a = out.get("adaptive")
    if a:
        t = Table(title=f"adaptive: {a['rule']}")
        for col in ("look", "seeds", "α spent", "boundary p <", "first crosses here", "stop here", "cost"):
            t.add_column(col, justify="right")
        for l in a["looks"]:
            t.add_row(str(l["look"]), str(l["n"]), f"{l['alpha_spent']:.4g}", f"{l['p']:.3g}",
                      f"{l['p_first_cross']:.1%}", f"{l['p_stop_here']:.1%}",
                      _usd(l["cost_usd"]) if l["cost_usd"] is not None else f"{l['hours']:.2f} h")
        console.print(t)
        console.print(f"success chance {a['p_success']:.1%}; expected seeds ≤ {a['expected_seeds_at_most']}, "
                      f"cost ≤ {_usd(a['expected_cost_usd_at_most'])} ({a['method']})", highlight=False,
                      markup=False)
    console.print(f"method: {out['method']}", style="dim", highlight=False, markup=False)
    for note in out["notes"]:
        console.print(f"note: {note}", style="dim", highlight=False, markup=False)
