#!/usr/bin/env bash
# Issue 21's measurements on one lent GPU (after bench/device_install.sh has installed everything), in
# stages that each fit one 10-minute device call; results land in bench/results/ and in $OUT.
#   bash bench/issue21_device.sh check      # the custom ops on the GPU (mixer_ops_check.py) + the sp8192
#                                           # docstring dataset of record_run.sh (built once per machine)
#   bash bench/issue21_device.sh after      # this payload: BENCH_CHECK, 4 warm-up + STEPS real batches, profile
#   bash bench/issue21_device.sh before     # the BEFORE payload file, same batches: the equal-step loss A/B
#   bash bench/issue21_device.sh variants   # VARIANTS="name:ENV=V,ENV=V ...": this payload with switches off
# Results are bench/results/model_step_<TAG>.{json,log} (+ profile_step_<TAG>.*), TAG defaulting to the stage.
#   (the 300 s pgolf run is bench/record_run.sh 1 300)
# BEFORE: the payload to compare with (default .devcarry/train_gpt_before.py, made here with e.g.
# `git show 737a16d:model/train_gpt.py`). Both runs start from the same weights (same seed) and see the same
# batches with a constant learning rate, so their losses compare step by step (docs/GPU.md). STEPS (196).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
PY=${PYTHON:-python3}
BEFORE=${BEFORE:-.devcarry/train_gpt_before.py}
DATA=${DATA:-/tmp/pgolf_sp8192}   # the batches of the after/before runs (any dataset folder)
R=bench/results
stage=${1:?stage: check | after | before | variants}
run() {  # name limit env... -- bench/model_step.py on real batches, BENCH_OUT=$R/model_step_<name>.json
    local name=$1 limit=$2; shift 2
    echo "== $name ($*)"
    env BENCH_DATA=$DATA BENCH_WARMUP=4 BENCH_STEPS=${STEPS:-196} "$@" BENCH_OUT=$R/model_step_$name.json \
        timeout --kill-after=10 "$limit" $PY bench/model_step.py > $R/model_step_$name.log 2>&1
    echo "exit $?"
    grep -v "^USDT" $R/model_step_$name.log | grep -E "versions|checks|ms/step \(|fwd\+bwd|optimizer|MFU|first step|loss first|^\| |peak|target" \
        || tail -40 $R/model_step_$name.log
}
case $stage in
check)
    TRITON_INTERPRET=0 $PY bench/mixer_ops_check.py 2>&1 | tail -4
    mv $R/mixer_ops_check.json $R/mixer_ops_check_gpu.json
    PREPARE_ONLY=1 bash bench/record_run.sh 1 2>&1 | tail -2 ;;
after) run ${TAG:-after} 420 BENCH_CHECK=1 BENCH_PROFILE=3; names=${TAG:-after} ;;
before) run ${TAG:-before} 420 BENCH_PAYLOAD=$BEFORE; names=${TAG:-before} ;;
variants) names=""; for v in ${VARIANTS:?}; do run "${v%%:*}" 300 $(echo "${v#*:}" | tr , ' '); names="$names ${v%%:*}"; done ;;
esac
echo "== summary"
$PY - <<'PY'
import glob, json
for f in sorted(glob.glob("bench/results/model_step_*.json")):
    d = json.load(open(f)); m = d["ms_per_step"]; L = d.get("losses") or []
    if not L or "v1024" in f: continue
    tail = sum(L[-20:]) / len(L[-20:])
    print(f"{f.split('/')[-1]:<34} {m['median']:7.1f} ms (f+b {m['fwd_bwd_median']:.1f}, opt {m['opt_ema_median']:.1f}) "
          f"MFU800 {100*d['mfu']['measured_800']:.1f}% peak {d['peak_memory_allocated_gib'] or 0:.1f} GiB "
          f"steps {len(L)} mean-loss-last20 {tail:.4f} {d['versions'].get('gpu','')}")
PY
if [ -n "${OUT:-}" ]; then
    for n in ${names:-}; do cp $R/model_step_$n.json $R/model_step_$n.log $R/profile_step_$n.* "$OUT"/ 2>/dev/null; done
    cp $R/mixer_ops_check_gpu.json "$OUT"/ 2>/dev/null
fi
exit 0
