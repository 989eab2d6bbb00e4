"""Where the training step's GPU time goes: torch.profiler over a few steps of bench/model_step.py's step.

Builds exactly what model_step.py times (record config by default, any train_gpt.py variable from the
environment: FUSED_CE, GATE_IN_KERNEL, BF16_RESIDUAL, FUSED_CONV, GDN_IN_GRAPH, VOCAB_SIZE, ...), warms up
(compile + autotune), then profiles PROFILE_STEPS steps and sums the GPU kernel time (CUDA activity; on a CPU-only machine the
CPU self time of the aten ops, a smoke test whose numbers mean nothing) by kind:

  inductor pointwise / reduction  torch.compile's generated Triton kernels (triton_poi_/triton_red_/...)
  loss (log-softmax / CE)          kernels whose name says log_softmax, nll, cross_entropy, logsumexp
  matmul                           cuBLAS / CUTLASS / nvjet GEMMs
  q/k/v conv (ours)                the payload's conv + SiLU + L2-norm Triton kernels (FUSED_CONV=1)
  fla GatedDeltaNet                fla's Triton kernels (chunk_*, solve_tril, recompute_w_u, l2norm, ...)
  eager elementwise                ATen's own elementwise / reduction kernels (not compiled)
  optimizer foreach / fused        multi_tensor_apply / fused Adam kernels
  memset / memcpy                  copies and fills
  other

Prints one row per kind (ms/step, share of the kernel time, top kernels) and writes the table and a JSON
(`kinds`, `top_kernels`, the config and versions) to bench/results/profile_step[_TAG].{txt,json}.
Env: PROFILE_STEPS (3), PROFILE_TAG (""), plus model_step.py's (BENCH_SEQS, BENCH_WARMUP, BENCH_PAYLOAD, ...).
CPU smoke: PROFILE_STEPS=1 BENCH_SEQS=2 BENCH_WARMUP=1 NUM_LAYERS=2 MODEL_DIM=128 NUM_HEADS=2
TRAIN_SEQ_LEN=128 VOCAB_SIZE=1024 BIGRAM_VOCAB_SIZE=512 BIGRAM_DIM=32 python bench/profile_step.py
"""
from __future__ import annotations

import os
import re
import sys
from collections import defaultdict

import torch

from benchlib import RESULTS, write_result  # noqa: E402  (bench/ is the script's folder)
import model_step  # noqa: E402

KINDS = [
    ("loss (log-softmax / CE)", re.compile(r"log_softmax|softmax|nll_loss|cross_entropy|logsumexp", re.I)),
    ("inductor pointwise/reduction", re.compile(r"^triton_(poi|red|per|tem|for)_|^triton_", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|sm90_|wgmma|^aten::(mm|addmm|bmm|matmul|linear)$",
                          re.I)),
    ("q/k/v conv (ours)", re.compile(r"^conv_(fwd|bwd_du|bwd_dx)_kernel")),
    ("fla GatedDeltaNet", re.compile(r"chunk_|solve_tril|recompute_w_u|l2norm|prepare_wy|merge_16x16|"
                                     r"gdn_gate|fused_recurrent|wy_fast|cumsum_.*kernel", re.I)),
    ("optimizer foreach/fused", re.compile(r"multi_tensor_apply|foreach|fused_adam|adam", re.I)),
    ("memset/memcpy", re.compile(r"memset|memcpy|fill_kernel|^aten::(zero_|fill_|copy_|zeros|empty)", re.I)),
    ("eager elementwise", re.compile(r"elementwise_kernel|reduce_kernel|vectorized|unrolled|index_|scatter|"
                                     r"gather|^aten::", re.I)),
]


def classify(name: str) -> str:
    """The kind of one kernel (or, on CPU, one aten op) by its name; the first matching rule wins."""
    for kind, pat in KINDS:
        if pat.search(name):
            return kind
    return "other"


ANNOTATION = re.compile(r"^(Optimizer\.|ProfilerStep|## )")   # GPU-side ranges that span kernels, not kernels


def kernel_times(prof, cuda: bool) -> dict[str, float]:
    """Total time in microseconds per kernel name: GPU activity on CUDA (annotation ranges such as
    `Optimizer.step#Muon.step` left out: they span kernels already counted), CPU self time of ops on CPU."""
    times: dict[str, float] = defaultdict(float)
    if cuda:
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA and not ANNOTATION.search(e.name):
                times[e.name] += e.time_range.elapsed_us()
    else:
        for e in prof.key_averages():
            if e.key.startswith("aten::"):
                times[e.key] += e.self_cpu_time_total
    return dict(times)


def summarize(times_us: dict[str, float], steps: int, top: int = 3) -> dict:
    """Kinds sorted by time: ms/step, share, and the `top` kernels of each (ms/step)."""
    by_kind: dict[str, dict[str, float]] = defaultdict(dict)
    for name, us in times_us.items():
        by_kind[classify(name)][name] = us / 1000.0 / steps
    total = sum(sum(k.values()) for k in by_kind.values()) or 1.0
    kinds = []
    for kind, names in by_kind.items():
        ms = sum(names.values())
        best = sorted(names.items(), key=lambda kv: -kv[1])[:top]
        kinds.append({"kind": kind, "ms_per_step": ms, "share": ms / total, "kernels": len(names),
                      "top": [{"name": n[:120], "ms_per_step": t} for n, t in best]})
    kinds.sort(key=lambda k: -k["ms_per_step"])
    return {"total_ms_per_step": total, "kinds": kinds,
            "top_kernels": [{"name": n[:160], "kind": classify(n), "ms_per_step": us / 1000.0 / steps}
                            for n, us in sorted(times_us.items(), key=lambda kv: -kv[1])[:25]]}


def table(summary: dict, title: str) -> str:
    lines = [title, "| kind | ms/step | share | kernels | top kernels (ms/step) |", "|---|---|---|---|---|"]
    for k in summary["kinds"]:
        tops = "; ".join(f"{t['name'][:60]} {t['ms_per_step']:.2f}" for t in k["top"])
        lines.append(f"| {k['kind']} | {k['ms_per_step']:.1f} | {100 * k['share']:.0f}% | {k['kernels']} | {tops} |")
    lines.append(f"| total kernel time | {summary['total_ms_per_step']:.1f} | 100% | | |")
    return "\n".join(lines)


def profile_bench(bench, steps: int) -> dict:
    """Profile `steps` calls of bench.step (already warm) and summarise them."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if bench.cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            bench.step()
    return summarize(kernel_times(prof, bench.cuda), steps)


def write_profile(bench, summary: dict, steps: int, tag: str) -> str:
    suffix = f"_{tag}" if tag else ""
    env = {k: os.environ[k] for k in ("FUSED_CE", "GATE_IN_KERNEL", "BF16_RESIDUAL", "CE_CHUNK_TOKENS",
                                       "BENCH_PAYLOAD") if k in os.environ}
    title = (f"profile_step{suffix}: {bench.versions.get('gpu', bench.versions['device'])}, {bench.describe}, "
             f"{steps} profiled steps, env {env or 'defaults'}")
    text = table(summary, title)
    print(text, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile_step{suffix}.txt").write_text(text + "\n")
    write_result(RESULTS / f"profile_step{suffix}.json",
                 {"bench": "profile_step", "versions": bench.versions, "config": bench.config, "env": env,
                  "profiled_steps": steps, **summary})
    return text


def main() -> int:
    steps = max(1, int(os.environ.get("PROFILE_STEPS", 3)))
    bench = model_step.make_bench()
    for _ in range(bench.warmup):
        bench.step()
    summary = profile_bench(bench, steps)
    write_profile(bench, summary, steps, os.environ.get("PROFILE_TAG", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
