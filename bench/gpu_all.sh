#!/usr/bin/env bash
# Every GPU bench in one call on the lent GPU machine (after bench/device_install.sh has put Triton + fla in
# /tmp/site): versions, bench/gdn_check.py, bench/model_step.py, then a short summary table.
# Each step has its own time limit and a failure never stops the next one. Results: bench/results/*.json and
# *.log, copied to $OUT when it is set (the device runner brings $OUT back).
# Usage: bash bench/gpu_all.sh [gdn] [step]      (no argument: both)
# Env: PYTHON (python3), GDN_TIMEOUT (200 s), STEP_TIMEOUT (360 s), plus each bench's own variables.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
PY=${PYTHON:-python3}
RES=bench/results
mkdir -p "$RES" "$TRITON_CACHE_DIR"
STEPS=${*:-gdn step}
declare -A RC

echo "== versions"
[ -f /tmp/site/.done ] || echo "note: /tmp/site/.done missing: run bench/device_install.sh first (Triton 3.7.1 + fla)"
$PY - <<'EOF' 2>&1 | tee "$RES/versions.log"
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "fla", "numpy", "sentencepiece", "zstandard", "brotli"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
try:
    import torch
    print("cuda", torch.version.cuda, "gpus", torch.cuda.device_count(),
          "|", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
except Exception as e:
    print("gpu: unavailable:", type(e).__name__, e)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true

run_step() {  # name timeout script
    local name=$1 limit=$2 script=$3 t0=$SECONDS
    echo
    echo "== $name ($script, limit ${limit}s)"
    timeout --kill-after=10 "$limit" $PY "$script" 2>&1 | tee "$RES/$name.log"
    RC[$name]=${PIPESTATUS[0]}
    echo "== $name: exit ${RC[$name]} after $((SECONDS - t0))s"
}

for s in $STEPS; do
    case $s in
        gdn)  run_step gdn_check "${GDN_TIMEOUT:-200}" bench/gdn_check.py ;;
        step) run_step model_step "${STEP_TIMEOUT:-360}" bench/model_step.py ;;
        *)    echo "unknown step '$s' (use gdn, step)"; RC[$s]=2 ;;
    esac
done

echo
echo "== summary"
for k in "${!RC[@]}"; do echo "$k exit ${RC[$k]}"; done
$PY - <<'EOF' || echo "(summary failed)"
import json, os
res = "bench/results"
def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except Exception as e:
        print(f"{name}: not available ({type(e).__name__})")
        return None
g = load("gdn_check.json")
if g:
    print(f"gdn_check: all_ok={g['all_ok']}  fla={g['versions'].get('fla')} triton={g['versions'].get('triton')}")
    print(f"  {'T':>5} {'dtype':>5} {'method':<34} {'max rel err':>12} {'worst':>6} {'ms f+b':>8}")
    for r in g["rows"]:
        e = r.get("rel_err") or {}
        worst = max(e, key=e.get) if e else "-"
        print(f"  {r['T']:>5} {r['dtype']:>5} {r['method']:<34} {e.get(worst, float('nan')):>12.2e} {worst:>6} "
              f"{r.get('fwd_bwd_ms', float('nan')):>8.2f}" + ("" if r["ok"] else "  NOT OK " + r.get("error", "")))
m = load("model_step.json")
if m:
    s = m["ms_per_step"]
    print(f"model_step: {s['median']:.1f} ms/step (fwd+bwd {s['fwd_bwd_median']:.1f}, opt+EMA {s['opt_ema_median']:.1f}) "
          f"vs published {m['published']['step']:.0f} ms -> {m['speedup_vs_published']:.2f}x; "
          f"{m['tokens_per_s']:,.0f} tok/s; MFU {100*m['mfu']['spec_989']:.1f}% (989) / "
          f"{100*m['mfu']['measured_800']:.1f}% (800); peak {m['peak_memory_allocated_gib'] or 0:.1f} GiB; "
          f"first step {m['first_step_s']:.0f} s; {m['verdict']}")
EOF
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/bench_results" && cp -f "$RES"/*.json "$RES"/*.log "$OUT/bench_results/" 2>/dev/null
    echo "copied results to \$OUT/bench_results"
fi
