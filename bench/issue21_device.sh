#!/usr/bin/env bash
# Issue 21's measurements on one lent GPU (after bench/device_install.sh has installed everything), in
# stages that each fit one 10-minute device call; results land in bench/results/ and, tarred, in $OUT.
#   bash bench/issue21_device.sh bench    # before/after model_step (+ in-process profile), path checks
#   bash bench/issue21_device.sh loss     # before vs after on real data, same init and batches, N steps
#   (the 300 s pgolf run is bench/record_run.sh 1 300)
# BEFORE: the old payload file (default .devcarry/train_gpt_before.py, made here with
# `git show 18633b5:model/train_gpt.py`: main before issue 21). BENCH_DATA + STEPS=196: real batches, so the
# before/after runs also give the equal-step loss comparison (docs/GPU.md). AFTER_ENV: extra
# payload variables for the "after" runs (e.g. "GATE_IN_KERNEL=0"). VARIANTS: more "name:ENV=V,ENV=V"
# after-runs in the bench stage. LOSS_STEPS (200).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BEFORE=${BEFORE:-.devcarry/train_gpt_before.py}
R=bench/results
stage=${1:?stage: bench | loss}
run() {  # name limit env... -- runs bench/model_step.py with BENCH_OUT=$R/model_step_<name>.json
    local name=$1 limit=$2; shift 2
    echo "== $name ($*)"
    env "$@" BENCH_OUT=$R/model_step_$name.json timeout --kill-after=10 "$limit" $PY bench/model_step.py 2>&1 \
        | grep -v "^USDT" | tee $R/model_step_$name.log | grep -E "versions|checks|ms/step \(|fwd\+bwd|optimizer|MFU|first step|loss first|^\| |peak|target|Error|error" 
}
if [ "$stage" = bench ]; then
    run before 290 BENCH_PAYLOAD=$BEFORE BENCH_WARMUP=4 BENCH_STEPS=${STEPS:-15} BENCH_PROFILE=3
    run after 290 ${AFTER_ENV:-} BENCH_CHECK=1 BENCH_WARMUP=4 BENCH_STEPS=${STEPS:-15} BENCH_PROFILE=3
    for v in ${VARIANTS:-}; do run "${v%%:*}" 200 $(echo "${v#*:}" | tr , ' ') BENCH_WARMUP=4 BENCH_STEPS=${STEPS:-15}; done
elif [ "$stage" = loss ]; then
    D=${DATA:-/tmp/pgolf_sp8192}
    n=${LOSS_STEPS:-200}
    run loss_before 240 BENCH_PAYLOAD=$BEFORE BENCH_DATA=$D BENCH_WARMUP=1 BENCH_STEPS=$((n - 1))
    run loss_after 240 ${AFTER_ENV:-} BENCH_DATA=$D BENCH_WARMUP=1 BENCH_STEPS=$((n - 1))
fi
echo "== summary ($stage)"
$PY - "$stage" <<'PY'
import glob, json, sys
for f in sorted(glob.glob("bench/results/model_step_*.json")):
    if "v1024" in f: continue
    d = json.load(open(f)); m = d["ms_per_step"]; L = d.get("losses") or []
    tail = sum(L[-20:]) / max(1, len(L[-20:]))
    print(f"{f.split('/')[-1]:<32} {m['median']:7.1f} ms (f+b {m['fwd_bwd_median']:.1f}, opt {m['opt_ema_median']:.1f}) "
          f"MFU800 {100*d['mfu']['measured_800']:.1f}% peak {d['peak_memory_allocated_gib'] or 0:.1f} GiB "
          f"first {d['first_step_s']:.0f}s steps {len(L)} mean-loss-last20 {tail:.4f} {d['versions'].get('gpu','')}")
PY
[ -n "${OUT:-}" ] && tar cf "$OUT/issue21_$stage.tar" $R/model_step_*.json $R/model_step_*.log $R/profile_step_* 2>/dev/null
exit 0
