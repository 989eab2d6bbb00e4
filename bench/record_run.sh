#!/usr/bin/env bash
# Issue 14: one record-config seed through pgolf, as a user would run it, on the local GPUs of a lent
# machine: data -> spec -> `pgolf run` (local Ray, torchrun with N ranks) -> `pgolf audit` -> `pgolf report`.
# Run from the repository root after `bash bench/device_install.sh` has installed everything:
#
#   bash bench/record_run.sh [GPUS (all)] [TRAIN_SECONDS (600)]
#
# - Data: no FineWeb there, so `pgolf data prepare` builds an sp8192 dataset (vocab 8192, the record's
#   tokenizer size) from the docstrings of the Python standard library and of large packages of the image
#   (torch, transformers, scipy, sympy), 2% of the documents for validation; the tokenizer trains on
#   the first 20M characters. Built once per machine in /tmp/pgolf_sp8192 (`PREPARE_ONLY=1` stops there).
# - Spec: the record config (the payload's defaults), backend "ray", one seed, nproc_per_node =
#   gpus_per_seed = GPUS, train_seconds = TRAIN_SECONDS, eval_seconds = 600.
# - pgolf runs as `python3 -m runner.cli` with PYTHONPATH=/tmp/site:$PWD (no pip install of pgolf).
# - Results: the run directory's train.log, report.md, report.json, ledger.json (+ audit.json and this
#   script's own log) are copied to $OUT/record_run/ when OUT is set, else to $RECORD_DEST
#   (default bench/results/record_run/).
# - RECORD_ENV="K=V ..." adds payload variables to the spec's [env] (e.g. "GATE_IN_KERNEL=0").
# - BASE_LOG=path/to/train.log: at the end, `bench/multi_gpu.py compare` of that run and this one (train loss
#   at equal steps; results in $DEST/compare.json). For a like-for-like comparison of a faster payload, give
#   it the other run's step count: RECORD_ENV="ITERATIONS=2378" and a TRAIN_SECONDS it will not reach.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-$(nvidia-smi -L 2>/dev/null | wc -l)}
TRAIN=${2:-600}
PY=${PYTHON:-python3}
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache} RAY_AUTH_MODE=disabled
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DATA=/tmp/pgolf_sp8192
DEST=${OUT:+$OUT/record_run}
DEST=${DEST:-${RECORD_DEST:-bench/results/record_run}}
mkdir -p "$DEST"

if [ ! -f "$DATA/manifest.json" ]; then
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    stdlib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
    dirs=("$stdlib")
    for p in torch transformers scipy sympy; do [ -d "$site/$p" ] && dirs+=("$site/$p"); done
    t=$SECONDS
    "$PY" -m runner.cli data prepare --out "$DATA" --vocab-size 8192 --val-fraction 0.02 \
        --tokenizer-max-chars 20000000 --python-src "${dirs[@]}" || { echo "data prepare failed"; exit 1; }
    echo "data prepare: $((SECONDS - t)) s from ${dirs[*]}"
fi
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0

SPEC=/tmp/record_${N}gpu.toml
cat > "$SPEC" <<TOML
# written by bench/record_run.sh: the record config of model/train_gpt.py on this machine's $N GPUs
name = "record_${N}gpu"
script = "$PWD/model/train_gpt.py"
seeds = [1337]
backend = "ray"
nproc_per_node = $N
gpus_per_seed = $N

[env]
VOCAB_SIZE = 8192
TRAIN_BATCH_TOKENS = $((98304 * N))
GRAD_ACCUM_STEPS = 1
$(for kv in ${RECORD_ENV:-}; do echo "${kv%%=*} = ${kv#*=}"; done)

[limits]
train_seconds = $TRAIN
eval_seconds = 600
attempt_timeout_s = $((TRAIN + 1500))
retries = 0
infra_retries = 0

[data]
variant = "sp8192 (Python docstrings, built by pgolf data prepare)"
paths = { DATA_PATH = "$DATA", TOKENIZER_PATH = "$DATA/tokenizer.model" }
TOML
# TRAIN_BATCH_TOKENS: 96 sequences x 1024 tokens per GPU per step, what one rank does in the 8-GPU record
# run (786,432 / 8); on 8 GPUs this is the record's own global batch.

t=$SECONDS
"$PY" -m runner.cli run "$SPEC" --runs-dir /tmp/pgolf_runs --name "record_${N}gpu" 2>&1 | tee "$DEST/pgolf_run.log"
echo "pgolf run: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s" | tee -a "$DEST/pgolf_run.log"
RUN=$(ls -d /tmp/pgolf_runs/record_${N}gpu* 2>/dev/null | tail -1)
[ -n "$RUN" ] || { echo "no run directory"; exit 1; }
"$PY" -m runner.cli audit "$RUN" --json > "$DEST/audit.json"; echo "pgolf audit: exit $?"
"$PY" -m runner.cli audit "$RUN" | tail -20
"$PY" -m runner.cli report "$RUN" > "$DEST/report_stdout.txt" 2>&1; echo "pgolf report: exit $?"
cp "$RUN"/ledger.json "$RUN"/report.md "$RUN"/report.json "$DEST"/ 2>/dev/null
cp "$(ls "$RUN"/seeds/*/attempt-*/train.log | tail -1)" "$DEST/train.log" 2>/dev/null
cp "$DATA/manifest.json" "$DEST/data_manifest.json"
"$PY" bench/multi_gpu.py analyze "$DEST/train.log"
if [ -n "${BASE_LOG:-}" ]; then
    "$PY" bench/multi_gpu.py compare "$BASE_LOG" "$DEST/train.log" --name record_run_compare | tail -12
    mv bench/results/compare_record_run_compare.json "$DEST/compare.json" 2>/dev/null
fi
ls -la "$DEST"
