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
priced one after another, each on pods of its own (`launches`). At most [runpod] max_pods pods run at once
(unset: what the account's [runpod] spend_limit allows at the price, as the backend computes it; $80/h at
$21.52/h: 3), the rest queue, so the wall-clock of 10 one-seed pods is 4 rounds, not one. Two hour figures,
labelled apart: pod-hours (what is billed: set-ups and seeds, every pod) and the wall-clock (until the last
pod ends). The price is the spec's [runpod] price_per_hour, else a documented default: RunPod's list price
for the H100 SXM on SECURE cloud at the time of writing, $2.69 per GPU-hour (8 GPUs: $21.52/h); the output
says which. On the Ray backend there is no price: node-hours, and the wall-clock if the cluster holds every
seed at once (pgolf does not know its size).
With `[runpod] cluster = true` the seeds run on one Instant Cluster of N nodes, N = the batch's largest
launch (all its seeds, or an adaptive batch's largest wave) capped by max_pods (else the spend limit) and
RunPod's self-serve 8, as the backend sizes it (`instant.nodes_for`); every node is billed from the
cluster's set-up until its batch ends, idle ones too, so n seeds cost N x (set-up + ⌈n/N⌉ rounds of a seed),
an adaptive batch's waves running one after another on the same cluster. A batch that would get one node
runs on a pod and is priced as one.

An adaptive spec's success chance, and where the batch stops, are simulated with the whole procedure the
runner applies (`results.sequential.simulate`: the calibrated boundaries AND the futility stop, with the
runner's own conditional-power draws); their Monte-Carlo standard error is printed with them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from results.errors import PgolfError

H100_SXM = "NVIDIA H100 80GB HBM3"
H100_SXM_SECURE_USD_PER_GPU_HOUR = 2.69       # RunPod list price, SECURE cloud, at the time of writing
SIMULATION_BATCHES = 10_000                   # adaptive: batches simulated through the whole procedure
MAX_SEEDS = 100                              # --max-seeds above this: an error (records run 3-10 seeds)
SIGMA_FACTORS = (0.5, 2.0)                    # the sensitivity line: power if σ is half or twice the planned


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
        s = spec.runpod
        pods, why = ((s.max_pods, "[runpod] max_pods") if s.max_pods else
                     (s.pods_at_once(usd), f"what a ${s.spend_limit:g}/h spend limit allows at "
                                                         f"${usd:.2f}/h; set [runpod] max_pods to change it"))
        out = {"backend": "runpod", "usd_per_hour": usd, "price_source": source, "hours_per_seed": seed_h,
               "setup_hours": s.setup_s / 3600.0, "seeds_per_pod": seeds_per_pod, "max_pods": pods,
               "max_pods_source": why, "cluster": s.cluster,
               "hours_meaning": f"hours: pod-hours billed (set-ups included); wall_hours: until the last pod "
                                f"ends, at most {pods} pod(s) at once"}
        if s.cluster:
            from runner.backends import instant_cluster_nodes
            out["max_nodes"] = instant_cluster_nodes([MAX_SEEDS], pods) or 1
            out["hours_meaning"] = (f"hours: node-hours billed (every node of the Instant Cluster from its set-up "
                                    f"until the batch ends, idle ones too; at most {out['max_nodes']} nodes); "
                                    f"wall_hours: until the batch ends. A batch of one node runs on a pod")
        return out
    return {"backend": spec.backend, "usd_per_hour": None, "price_source": "no price on the Ray backend",
            "hours_per_seed": seed_h, "setup_hours": 0.0, "seeds_per_pod": 1, "max_pods": None,
            "max_pods_source": None, "cluster": False,
            "hours_meaning": "hours: node-hours (train + eval budget per seed); wall_hours: if the cluster "
                             "runs every seed at once (pgolf does not know its size)"}


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


def seed_cost(c: dict, n: int, seeds_per_pod: int | None = None, waves: list[int] | None = None,
              batch_waves: list[int] | None = None) -> dict[str, float | None]:
    """{cost_usd, hours, wall_hours} of n seeds under costing `c` (K seeds per pod: `seeds_per_pod`),
    launched all at once or in `waves` (counts adding up to n, one wave after another: seeds of different
    waves never share a pod, and the wall-clock adds up). On an Instant Cluster (`c["cluster"]`) the
    cluster is sized for the whole batch's launches (`batch_waves`, default `waves`) and bills every node
    for as long as it runs."""
    from results.power import cost
    k = c["seeds_per_pod"] if seeds_per_pod is None else seeds_per_pod
    ws = waves or [n]
    nodes = None
    if c.get("cluster"):     # the nodes the backend gives the batch (max_pods: the spend limit's cap, as it applies)
        from runner.backends import instant_cluster_nodes
        nodes = instant_cluster_nodes(batch_waves or ws, c["max_pods"])
    if nodes:
        wall = c["setup_hours"] + sum(math.ceil(w / nodes) for w in ws) * c["hours_per_seed"]
        hours = nodes * wall
        usd = None if c["usd_per_hour"] is None else hours * c["usd_per_hour"]
        return {"cost_usd": None if usd is None else round(usd, 2), "hours": round(hours, 3),
                "wall_hours": round(wall, 3), "nodes": nodes}
    hours = wall = 0.0
    for size in ws:
        h, w = cost(size, c["hours_per_seed"], 1.0, k, c["setup_hours"], c["max_pods"])  # $1/h: $ = hours
        hours, wall = hours + h, wall + w
    usd = None if c["usd_per_hour"] is None else hours * c["usd_per_hour"]
    return {"cost_usd": None if usd is None else round(usd, 2), "hours": round(hours, 3),
            "wall_hours": round(wall, 3)}


def plan_batch(baseline, improvement: float, std: float | None = None, policy: str | None = None,
               max_seeds: int = 8, spec=None, seeds_per_pod: int | None = None) -> dict[str, Any]:
    """The `pgolf plan --json` dict: results.power.plan's keys, then cost_usd / hours (pod- or node-hours) /
    wall_hours for the seeds that reach 80% power (null when none within max_seeds or no spec), and a "cost"
    object per seed count; with an [adaptive] spec an "adaptive" object per look. `seeds_per_pod` None: the
    spec's own [runpod] seeds_per_pod, so that the cost shown is what the backend will run; given without a
    spec it has nothing to price, and is an error rather than ignored."""
    from results.power import plan
    if seeds_per_pod is not None and spec is None:
        raise PgolfError("--seeds-per-pod prices seeds on a spec's backend: give --spec JOB.toml with it")
    if seeds_per_pod is not None and spec is not None and spec.backend == "runpod" and spec.runpod.cluster \
            and seeds_per_pod != 1:
        raise PgolfError(f"--seeds-per-pod {seeds_per_pod}: the spec runs on an Instant Cluster ([runpod] cluster = "
                         f"true), one seed per node")
    if seeds_per_pod is None:
        seeds_per_pod = spec.runpod.seeds_per_pod if spec is not None else 1
    if isinstance(seeds_per_pod, bool) or not isinstance(seeds_per_pod, int) or seeds_per_pod < 1:
        raise PgolfError(f"--seeds-per-pod {seeds_per_pod!r}: must be a whole number >= 1")
    if isinstance(max_seeds, int) and not isinstance(max_seeds, bool) and max_seeds > MAX_SEEDS:
        raise PgolfError(f"--max-seeds {max_seeds}: at most {MAX_SEEDS} (records claim with 3 to 10 seeds; "
                         "past that the table only grows)")
    try:
        positive = float(improvement) > 0
    except (TypeError, ValueError):
        positive = True                         # not a number: power.plan says so in its own words
    if not positive:
        raise PgolfError(f"--improvement {improvement!r}: must be above 0 bpb (the true improvement you "
                         "expect); at 0 or below every pass is a false positive, which the policy's α bounds")
    if baseline is None:
        if spec is None or spec.baseline.ref is None:
            raise PgolfError("give --baseline (a record folder, submission.json or bpb number), or a --spec "
                             "whose [baseline] names one")
        baseline = spec.baseline.ref
    policy = policy or (spec.baseline.policy if spec is not None else None) or "rule"
    out = plan(baseline, improvement, std, policy, max_seeds, sensitivity=SIGMA_FACTORS)
    out["cost_usd"] = out["hours"] = out["wall_hours"] = None
    if spec is None:
        return out
    c = costing(spec, seeds_per_pod)
    c["by_n"] = {str(n): seed_cost(c, n) for n in range(1, max_seeds + 1)}
    if c["backend"] == "runpod" and seeds_per_pod > 1:
        c["one_per_pod"] = {str(n): seed_cost(c, n, 1) for n in range(1, max_seeds + 1)}
    out["cost"] = c
    n80 = out["seeds_for_power"]["0.8"]
    if n80 is not None:
        b = c["by_n"][str(n80)]
        out["cost_usd"], out["hours"], out["wall_hours"] = b["cost_usd"], b["hours"], b["wall_hours"]
    if spec.adaptive is not None:
        out["adaptive"] = adaptive_plan(spec, baseline, improvement, std, policy, c)
    return out


def adaptive_plan(spec, baseline, improvement: float, std: float | None, policy: str, c: dict,
                  batches: int | None = None) -> dict:
    """Per planned look of the spec's [adaptive] design: seeds, α spent, the nominal-p boundary, the chance
    that a candidate with the planned improvement stops there for success and for futility (the whole
    procedure simulated as the runner runs it, `results.sequential.simulate`), and what stopping there
    costs; the success chance, and the expected seeds and cost, with their Monte-Carlo standard error."""
    from results.power import setting
    from results.sequential import Design, boundary_table, simulate
    a = spec.adaptive
    design = Design(a.looks(), policy=policy, spending=None if a.spending == "none" else a.spending,
                    futility=a.futility)
    table = boundary_table(design, baseline)
    s = setting(baseline, improvement, std, policy)
    batches = batches or SIMULATION_BATCHES
    sim = simulate(design, s.baseline - s.margin, s.test, s.mean, s.std, batches=batches)
    waves = launches(spec, design.max_seeds)            # one per look: the seeds it adds
    looks = []
    for k, (row, stop) in enumerate(zip(table, sim["looks"])):
        looks.append({**row, "p_success_here": stop["success"], "p_futility_here": stop["futility"],
                      "p_stop_here": stop["success"] + stop["futility"] + stop["max"],
                      **seed_cost(c, row["n"], waves=waves[:k + 1], batch_waves=waves)})   # waves up to this look
    expected = {k: sum(l[k] * l["p_stop_here"] for l in looks) if looks[0][k] is not None else None
                for k in ("n", "cost_usd", "hours", "wall_hours")}
    return {"rule": design.rule(), "looks": looks, "p_success": sim["p_success"], "se": sim["se"],
            "batches": batches, "expected_seeds": round(expected["n"], 2),
            "expected_cost_usd": None if expected["cost_usd"] is None else round(expected["cost_usd"], 2),
            "expected_hours": round(expected["hours"], 3), "expected_wall_hours": round(expected["wall_hours"], 3),
            "method": f"{batches:,} simulated batches through the whole procedure the runner applies (its "
                      f"test, its calibrated boundaries and its futility stop with the same conditional-power "
                      f"draws); Monte-Carlo standard error <= {sim['se']:.4f}"}


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


def _hours(v) -> str:
    return "–" if v is None else f"{v:.2f} h"


def render(out: dict, console) -> None:
    """The plan for a terminal. Titles and the long explanations are lines of their own above and below the
    tables (a table's title wraps to the table's width, which squeezes it at 80 columns)."""
    from rich.table import Table

    def say(text: str, **kw) -> None:
        console.print(text, highlight=False, markup=False, **kw)
    c = out.get("cost")
    priced = bool(c and c["usd_per_hour"] is not None)
    say(f"Power of the {out['policy']} policy's {out['test']} test against {Path(out['baseline']).name}: "
        f"improvement {out['improvement_bpb']:g} bpb, seed std {out['std_bpb']:.6g} bpb", style="bold")
    t = Table()
    t.add_column("seeds", justify="right")
    t.add_column("power", justify="right")
    if c:
        if priced:
            t.add_column("cost", justify="right")
        t.add_column("pod-hours" if c["backend"] == "runpod" else "node-hours", justify="right")
        t.add_column("wall-clock", justify="right")
        if "one_per_pod" in c:
            t.add_column("cost, 1/pod", justify="right")
            t.add_column("wall, 1/pod", justify="right")
    for n, p in out["power"].items():
        row = [n, f"{p:.3f}"]
        if c:
            b = c["by_n"][n]
            row += ([_usd(b["cost_usd"])] if priced else []) + [_hours(b["hours"]), _hours(b["wall_hours"])]
            if "one_per_pod" in c:
                o = c["one_per_pod"][n]
                row += [_usd(o["cost_usd"]), _hours(o["wall_hours"])]
        style = "bold green" if any(int(n) == m for m in out["seeds_for_power"].values() if m) else None
        t.add_row(*row, style=style)
    console.print(t)
    for p, n in out["seeds_for_power"].items():
        say(f"seeds for {float(p):.0%} power: " + (f"{n}" if n else f"not reached within {out['max_seeds']} seeds"))
    for sens in out.get("sensitivity") or []:
        n80 = sens["seeds_for_power"]["0.8"]
        shown = [n for n in ("3", out["seeds_for_power"]["0.8"] and str(out["seeds_for_power"]["0.8"]))
                 if n and n in sens["power"]]
        say(f"if the seed std is ×{sens['factor']:g} ({sens['std_bpb']:.6g} bpb): power "
            + ", ".join(f"{sens['power'][n]:.3f} at {n} seeds" for n in dict.fromkeys(shown))
            + "; 80% power " + (f"at {n80} seeds" if n80 else f"not within {out['max_seeds']} seeds"))
    if out.get("sensitivity"):
        say("(the power above treats the seed std as known; it is estimated, often from 3 seeds)", style="dim")
    if c:
        if priced and c.get("cluster"):
            say(f"price: ${c['usd_per_hour']:.2f}/h per node ({c['price_source']}); per seed "
                f"{c['hours_per_seed']:.3f} h of train + eval budget, set-up {c['setup_hours']:.3f} h per node, "
                f"one seed per node of an Instant Cluster")
        elif priced:
            say(f"price: ${c['usd_per_hour']:.2f}/h ({c['price_source']}); per seed {c['hours_per_seed']:.3f} h "
                f"of train + eval budget, set-up {c['setup_hours']:.3f} h per pod, {c['seeds_per_pod']} seed(s) "
                f"per pod")
        else:
            say(f"{c['backend']} backend: no price, hours only")
        if c.get("cluster"):
            say(f"at most {c['max_nodes']} node(s) per cluster ({c['max_pods_source']}, and RunPod's self-serve "
                f"size limit): more seeds run in rounds on the same nodes")
        elif c.get("max_pods"):
            say(f"at most {c['max_pods']} pod(s) at once ({c['max_pods_source']}): the others queue")
        say(c["hours_meaning"], style="dim")
        if out["hours"] is not None:
            say(f"for 80% power: {_usd(out['cost_usd']) + ', ' if priced else ''}{out['hours']:.2f} "
                f"{'pod' if c['backend'] == 'runpod' else 'node'}-hours, {out['wall_hours']:.2f} h wall-clock")
    a = out.get("adaptive")
    if a:
        say(f"Adaptive: {a['rule']}", style="bold")
        say("per look: the cumulative α spent, the success boundary on the nominal p, and the chance that the "
            "batch stops there for success, for futility, or at all; the cost and wall-clock of stopping there")
        from rich import box
        t = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))   # fits 80 columns
        for col in ("look", "seeds", "α spent", "p <", "success", "futility", "stop",
                    "cost" if priced else "pod-h" if c["backend"] == "runpod" else "node-h", "wall"):
            t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
        for l in a["looks"]:
            t.add_row(str(l["look"]), str(l["n"]), f"{l['alpha_spent']:.2g}", f"{l['p']:.2g}",
                      f"{l['p_success_here']:.1%}", f"{l['p_futility_here']:.1%}", f"{l['p_stop_here']:.1%}",
                      _usd(l["cost_usd"]) if priced else _hours(l["hours"]), _hours(l["wall_hours"]))
        console.print(t)
        cost = f"cost {_usd(a['expected_cost_usd'])}, " if priced else ""
        say(f"success chance {a['p_success']:.1%} ± {a['se']:.1%} (Monte-Carlo s.e.), futility stops included; "
            f"expected seeds {a['expected_seeds']}, {cost}wall-clock {a['expected_wall_hours']:.2f} h")
        say(f"adaptive method: {a['method']}", style="dim")
    say(f"method: {out['method']}", style="dim")
    for note in out["notes"]:
        say(f"note: {note}", style="dim")
