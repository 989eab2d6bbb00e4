#!/usr/bin/env bash
# Issue 13's measurements on a lent 4-GPU machine in one call (after bench/device_install.sh), on
# disjoint GPUs at once: GPU 0 the payload on 1 GPU, GPUs 1-2 on 2 GPUs (bench/multi_gpu.py, 60 s budgets,
# the bundled tiny data at vocab 1024 like the measurements before this work), GPU 3 bench/model_step.py
# at the same vocabulary and then bench/serialize.py. Meanwhile the CPU builds the sp8192 data of
# bench/record_run.sh. With RECORD=1 it then starts bench/record_run.sh on all 4 GPUs in the background
# (setsid: it outlives the call while the machine stays warm; /tmp/record.rc holds its exit code at the
# end, its results land in bench/results/record_run/). Results: bench/results/, copied to $OUT.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SEC=${BENCH_SECONDS:-60}
R=bench/results
T=model/data/tiny
D=(DATA_PATH=$T TOKENIZER_PATH=$T/tokenizer.model VOCAB_SIZE=1024 VAL_MAX_TOKENS=65536 SWA_EVERY=10)
mkdir -p "$R"
[ -f /tmp/prepare.rc ] || (setsid bash -c 'PREPARE_ONLY=1 OUT= bash bench/record_run.sh; echo $? > /tmp/prepare.rc' \
    > /tmp/prepare.log 2>&1 &)
CUDA_VISIBLE_DEVICES=0 timeout 480 python3 bench/multi_gpu.py run --gpus 1 --seconds "$SEC" --name 1gpu "${D[@]}" &
CUDA_VISIBLE_DEVICES=1,2 timeout 480 python3 bench/multi_gpu.py run --gpus 2 --seconds "$SEC" --name 2gpu "${D[@]}" &
(export CUDA_VISIBLE_DEVICES=3
 VOCAB_SIZE=1024 BENCH_STEPS=30 BENCH_OUT=$R/model_step_v1024.json timeout 400 python3 bench/model_step.py \
     > $R/model_step_v1024.log 2>&1
 SER_OUT=$R/serialize_gpu.json timeout 200 python3 bench/serialize.py > $R/serialize_gpu.log 2>&1) &
wait
tail -4 $R/model_step_v1024.log; tail -16 $R/serialize_gpu.log
python3 bench/multi_gpu.py analyze $R/multi_gpu_1gpu.log $R/multi_gpu_2gpu.log
if [ "${RECORD:-0}" = 1 ]; then
    rm -f /tmp/record.rc
    (setsid bash -c 'while [ ! -f /tmp/prepare.rc ]; do sleep 5; done; OUT= RECORD_DEST=/tmp/record_run bash bench/record_run.sh 4 '"${RECORD_SECONDS:-600}"'; \
        echo $? > /tmp/record.rc' > /tmp/record.log 2>&1 &)
    echo "record run started in the background (log /tmp/record.log)"
fi
[ -n "${OUT:-}" ] && cp $R/multi_gpu_[12]gpu.* $R/model_step_v1024.* $R/serialize_gpu.* "$OUT"/ 2>/dev/null
cat /tmp/prepare.log 2>/dev/null | tail -3
