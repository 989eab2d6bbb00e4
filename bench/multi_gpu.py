"""The payload under torchrun on N GPUs for a short wall-clock budget, and what its log says about the
timed window: warm-up, the first timed step, the median step, the first step of each phase (QAT, SWA),
the in-window stall, evaluation and serialisation times, peak memory, artifact bytes.

    python bench/multi_gpu.py run --gpus 4 --seconds 90 [--name NAME] [ENV=VALUE ...]
    python bench/multi_gpu.py analyze LOG [LOG ...]        # any train.log: ours, or one from `pgolf run`
    python bench/multi_gpu.py compare BASE_LOG NEW_LOG [--name NAME]   # train loss at equal steps

`run` starts `torchrun --standalone --nproc_per_node=N model/train_gpt.py` with the record architecture
(every default of the payload) and `MAX_WALLCLOCK_SECONDS=--seconds`, `TRAIN_LOG_EVERY=10`, TTT off
(it is evaluation, not the timed window), plus any ENV=VALUE given (e.g. the data: `DATA_PATH=...
TOKENIZER_PATH=... VOCAB_SIZE=1024`); the global batch is 96 sequences x 1024 tokens per GPU, one
micro-step (`GRAD_ACCUM_STEPS=1`), as one rank of the 8-GPU record run. The log goes to
bench/results/multi_gpu_<name>.log and the analysis to bench/results/multi_gpu_<name>.json.

The analysis reads the payload's own `step_time` summary line (every step's wall time, max over ranks;
stall = the time by which steps slower than 1.5x the median exceed the median) when the log has one,
and otherwise estimates the same numbers from the logged cumulative train_time of consecutive step
lines, so it also reads logs of older payloads and of other scripts with `step:N/M ... train_time:Xms`.

`compare` puts two runs' logged train losses side by side at the steps both logged (the issue-21 rule: a
payload change must train to the same loss at equal steps) and says how far apart they are: mean signed and
largest relative difference, and the difference at the last common step. The payload's learning-rate
warm-down, QAT and SWA follow the larger of elapsed time / time budget and step / iterations, so two
wall-clock-capped runs at different speeds see different learning rates at the same step once the earlier
one's warm-down has begun; `compare` says so when it sees it. For a clean comparison give the faster payload
the slower run's step count as `ITERATIONS` and a wall-clock budget it does not reach.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, RESULTS, write_result  # noqa: E402  (bench/ is the script's folder)

_STEP = re.compile(r"^step:(\d+)/\d+ train_loss:\S+ train_time:(\d+)ms")
_LOSS = re.compile(r"^step:(\d+)/(\d+) train_loss:([\d.]+)")
_MS = r"([\d.]+)ms"


def _num(pattern: str, text: str, cast=float):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else None


def analyze_log(text: str) -> dict:
    """Timed-window numbers from a train.log (see the module docstring)."""
    steps = [(int(m.group(1)), float(m.group(2))) for m in map(_STEP.match, text.splitlines()) if m]
    out = {
        "world_size": _num(r"^world_size:(\d+)", text, int),
        "warmup_s": (_num(r"^warmup_time:(\d+)ms", text) or 0) / 1000 or None,
        "warmup_rank_spread_ms": _num(r"^warmup_rank_spread:(\d+)ms", text),
        "steps": _num(r"^train_time:\d+ms steps:(\d+)", text, int) or (steps[-1][0] if steps else None),
        "train_time_s": (_num(r"^train_time:(\d+)ms steps:", text) or 0) / 1000 or None,
        "qat_step": _num(r"^qat:enabled step:(\d+)", text, int),
        "grad_allreduce_ms": _num(r"^grad_allreduce_ms median:([\d.]+)", text),
        "peak_memory_mib": _num(r"^peak_memory_allocated:(\d+)MiB", text, int),
        "serialize_s": (_num(r"^Serialized model[^:]*: \d+ bytes \((\d+)ms\)", text) or 0) / 1000 or None,
        "artifact_bytes": _num(r"^Serialized model[^:]*: (\d+) bytes", text, int),
        "total_bytes": _num(r"^Total submission size[^:]*: (\d+) bytes", text, int),
        "quant_step_mult": _num(r"^quant_step_mult:([\d.]+)", text),
        "eval_s": {k: (v / 1000 if v is not None else None) for k, v in {
            "prequant": _num(r"^diagnostic_prequant .*eval_time:(\d+)ms", text),
            "roundtrip": _num(r"^roundtrip_eval_time:(\d+)ms", text),
            "sliding": _num(r"^sliding_eval_time:(\d+)ms", text),
            "ttt": _num(r"^legal_ttt_exact .*eval_time:(\d+)ms", text)}.items()},
    }
    out["eval_total_s"] = sum(v for v in out["eval_s"].values() if v) or None
    bpb = re.findall(r"^(final_int6_roundtrip_exact|final_int6_sliding_window_exact|legal_ttt_exact) "
                     r"val_loss:\S+ val_bpb:([\d.]+)", text, re.M)
    out["val_bpb"] = {k: float(v) for k, v in bpb}
    line = next((l for l in text.splitlines() if l.startswith("step_time median:")), None)
    if line:   # the payload measured every step
        out["source"] = "step_time line"
        out["median_step_ms"] = _num(r"median:" + _MS, line)
        for name in ("first", "qat", "swa"):
            m = re.search(rf"\b{name}:([\d.]+)ms@(\d+)", line)
            out[f"{name}_step_ms"], out[f"{name}_step"] = (float(m.group(1)), int(m.group(2))) if m else (None, None)
        out["stall_ms"] = _num(r"in_window_stall:(\d+)ms", line)
        out["slow_steps"] = _num(r"slow_steps:(\d+)", line, int)
    elif steps:   # estimate from the logged cumulative times
        out["source"] = "step lines (estimate)"
        prev_s, prev_t = 0, 0.0
        rates = []
        for s, t in steps:
            rates.append((s, s - prev_s, (t - prev_t) / (s - prev_s)))
            prev_s, prev_t = s, t
        med = statistics.median(r for _, n, r in rates if n == 1) if any(n == 1 for _, n, _ in rates[1:]) \
            else statistics.median(r for _, _, r in rates[1:] or rates)
        out["median_step_ms"] = med
        out["first_step_ms"], out["first_step"] = steps[0][1] if steps[0][0] == 1 else None, 1
        out["stall_ms"] = sum(n * (r - med) for _, n, r in rates if r > 1.5 * med)
        after = [(s, n, r) for s, n, r in rates if out["qat_step"] is not None and s > out["qat_step"]]
        out["qat_step_ms"], out["qat_step"] = (after[0][2], after[0][0]) if after else (None, out["qat_step"])
        out["swa_step_ms"] = out["swa_step"] = None
        out["slow_steps"] = None
    med = out.get("median_step_ms")
    for name in ("first", "qat", "swa"):
        v = out.get(f"{name}_step_ms")
        out[f"{name}_over_median"] = v / med if v is not None and med else None
    return out


def row(name: str, a: dict, card: str = "") -> list[str]:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    return [name, f(a.get("world_size"), "d"), f(a.get("warmup_s"), ".1f"), f(a.get("warmup_rank_spread_ms"), ".0f"),
            f(a.get("first_step_ms"), ".0f"), f(a.get("median_step_ms"), ".1f"), f(a.get("qat_step_ms"), ".0f"),
            f(a.get("swa_step_ms"), ".0f"), f(a.get("stall_ms"), ".0f"), f(a.get("eval_total_s"), ".1f"),
            f(a.get("serialize_s"), ".1f"), f(a.get("total_bytes"), ",d"), f(a.get("peak_memory_mib"), ",d"), card]


HEAD = ["run", "gpus", "warm-up s", "rank spread ms", "first step ms", "median ms", "QAT step ms", "SWA step ms",
        "stall ms", "eval s", "serialize s", "code+artifact B", "peak MiB", "card"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEAD] + rows) for i in range(len(HEAD))]
    for r in [HEAD] + rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def gpu_name() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        idx = [int(i) for i in visible.split(",")] if visible else range(len(names))
        return ", ".join(sorted({names[i].strip() for i in idx if i < len(names) and names[i].strip()}))
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"


def cmd_run(a) -> int:
    name = a.name or f"{a.gpus}gpu"
    env = {**os.environ, "MAX_WALLCLOCK_SECONDS": str(a.seconds), "TRAIN_LOG_EVERY": "10", "TTT_ENABLED": "0",
           "GRAD_ACCUM_STEPS": "1", "TRAIN_BATCH_TOKENS": str(96 * 1024 * a.gpus), "RUN_ID": name}
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    art = Path(env.get("ARTIFACT_DIR") or f"/tmp/multi_gpu_{name}")
    env["ARTIFACT_DIR"] = str(art)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"multi_gpu_{name}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.gpus}",
           str(ROOT / "model" / "train_gpt.py")]
    t = time.perf_counter()
    with open(log_path, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    text = (art / "train.log").read_text() if (art / "train.log").exists() else log_path.read_text()
    res = {"bench": "multi_gpu", "name": name, "gpus": a.gpus, "seconds": a.seconds, "exit_code": rc,
           "wall_s": wall, "card": gpu_name(), "env": {k: env[k] for k in sorted(env) if k.isupper() and (
               k in {e.partition("=")[0] for e in a.env} or k in ("MAX_WALLCLOCK_SECONDS", "TRAIN_BATCH_TOKENS"))},
           **analyze_log(text)}
    write_result(RESULTS / f"multi_gpu_{name}.json", res)
    print_table([row(name, res, res["card"])])
    return rc


def cmd_analyze(a) -> int:
    rows = []
    for p in a.logs:
        res = analyze_log(Path(p).read_text(errors="replace"))
        rows.append(row(Path(p).name, res))
        if a.json:
            print(json.dumps({"log": p, **res}, indent=2))
    print_table(rows)
    return 0


def train_losses(text: str) -> dict[int, float]:
    """Every logged step's train loss, by step."""
    return {int(m.group(1)): float(m.group(3)) for m in map(_LOSS.match, text.splitlines()) if m}


def _schedule(text: str) -> dict:
    """What the payload's schedule followed: the iterations and wall-clock budget it printed, and whether the
    wall clock stopped it."""
    return {"iterations": _num(r"^\s*iterations: (\d+)", text, int),
            "max_wallclock_seconds": _num(r"^\s*max_wallclock_seconds: ([\d.]+)", text),
            "stopped_by_wallclock": "stopping_early: wallclock_cap" in text}


def compare_logs(base: str, new: str) -> dict:
    """The two runs' train losses at their common logged steps (step 1's identity included), and a summary.
    Differences are relative to the base run, in percent."""
    a, b = train_losses(base), train_losses(new)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two logs have no logged step in common")
    rows = [{"step": s, "base": a[s], "new": b[s], "diff_pct": 100 * (b[s] / a[s] - 1)} for s in common if a[s]]
    if not rows:
        raise ValueError("the base log's train loss is 0 at every common step: no relative difference")
    diffs = [r["diff_pct"] for r in rows]
    sa, sb = _schedule(base), _schedule(new)
    out = {"steps": rows, "common_steps": len(rows), "last_common_step": rows[-1]["step"],
           "last_diff_pct": rows[-1]["diff_pct"], "mean_diff_pct": statistics.fmean(diffs),
           "mean_abs_diff_pct": statistics.fmean(abs(d) for d in diffs), "max_abs_diff_pct": max(map(abs, diffs)),
           "base_schedule": sa, "new_schedule": sb,
           "base_steps": max(a), "new_steps": max(b), "notes": []}
    if (sa["stopped_by_wallclock"] or sb["stopped_by_wallclock"]) and max(a) != max(b):
        out["notes"].append(
            "a wall-clock cap stopped a run and the step counts differ: the learning-rate warm-down, QAT and SWA "
            "follow the wall clock, so once the warm-down has begun equal steps are not equal learning rates "
            "(run the faster payload with ITERATIONS = the other's steps for a like-for-like comparison)")
    return out


def cmd_compare(a) -> int:
    texts = []
    for p in (a.base, a.new):
        try:
            texts.append(Path(p).read_text(errors="replace"))
        except OSError as e:
            print(f"{p}: cannot read ({e.strerror})", file=sys.stderr)
            return 2
    try:
        res = compare_logs(*texts)
    except ValueError as e:
        print(f"{a.base}, {a.new}: {e}", file=sys.stderr)
        return 2
    print(f"{'step':>6}  {'base loss':>9}  {'new loss':>9}  {'diff':>7}")
    for r in res["steps"]:
        print(f"{r['step']:>6}  {r['base']:>9.4f}  {r['new']:>9.4f}  {r['diff_pct']:>+6.2f}%")
    print(f"{res['common_steps']} common steps: mean {res['mean_diff_pct']:+.2f}%, mean |diff| "
          f"{res['mean_abs_diff_pct']:.2f}%, largest |diff| {res['max_abs_diff_pct']:.2f}%; at step "
          f"{res['last_common_step']} (base ran {res['base_steps']}, new {res['new_steps']}): "
          f"{res['last_diff_pct']:+.2f}%")
    for n in res["notes"]:
        print("note:", n)
    print_table([row(Path(p).name + (" (base)" if i == 0 else " (new)"), analyze_log(t))
                 for i, (p, t) in enumerate(zip((a.base, a.new), texts))])
    if a.name:
        res = {"bench": "multi_gpu compare", "base": a.base, "new": a.new,
               "base_run": analyze_log(texts[0]), "new_run": analyze_log(texts[1]), **res}
        write_result(RESULTS / f"compare_{a.name}.json", res)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--gpus", type=int, required=True)
    r.add_argument("--seconds", type=float, default=90)
    r.add_argument("--name")
    r.add_argument("env", nargs="*", metavar="ENV=VALUE")
    an = sub.add_parser("analyze")
    an.add_argument("logs", nargs="+")
    an.add_argument("--json", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("base")
    c.add_argument("new")
    c.add_argument("--name", help="also write bench/results/compare_NAME.json")
    a = p.parse_args(argv)
    return {"run": cmd_run, "analyze": cmd_analyze, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
