"""One GPU's training step of the payload at the record config, timed: is it faster than the published code?

What one rank does per step in an 8-GPU record run: 96 sequences x 1024 tokens (786,432 / 8) forward +
backward under bf16 autocast (torch.compile'd model, fla GDN kernel), then Muon + AdamW and the fp32 EMA
update. Same model, optimizers and compile settings as model/train_gpt.py (imported from it); the step
body mirrors its `train_step` minus the gradient all-reduce (one GPU). Random tokens: the speed does not
depend on the text.

Prints ms/step (wall clock, synchronised each step as the training loop does) split into fwd+bwd and
optimizer+EMA (CUDA events), tokens/s, peak memory, and an MFU estimate: FLOPs/token = 6 x the weights
used in matmuls (shared K/V counted per use, tied output head included) + the chunked gated delta rule
(per layer and head, forward ~ 4CK + C(K+V) + 6KV + 2CV with chunk C=64, backward ~ 2x forward); peaks
989 TFLOP/s (H100 SXM bf16 dense spec) and 800 TFLOP/s (measured matmul, docs/GPU.md).
The published K_KVShare_Wider step on the same H100 stack: 304 ms (196 fwd+bwd + 108 optimizer/EMA).

Env: BENCH_SEQS (96), BENCH_ACCUM (1 micro-batch), BENCH_WARMUP (5 steps, compile included),
BENCH_STEPS (20), BENCH_QAT (0; 1 times the late-QAT phase), BENCH_OUT (bench/results/model_step.json),
BENCH_PAYLOAD (another payload file, e.g. the "before" of a change), BENCH_DATA (a dataset folder: real
batches, every step's loss in the JSON), BENCH_CHECK (1: the fused paths against the plain ones on this
device first), BENCH_PROFILE (N: profile N more steps in-process, bench/profile_step.py's table),
plus any train_gpt.py variable (NUM_LAYERS, MODEL_DIM, TRAIN_SEQ_LEN, VOCAB_SIZE, COMPILE, FUSED_CE, ...).
CPU smoke: BENCH_SEQS=2 BENCH_STEPS=2 BENCH_WARMUP=1 NUM_LAYERS=2 MODEL_DIM=128 NUM_HEADS=2 TRAIN_SEQ_LEN=128
VOCAB_SIZE=1024 BIGRAM_VOCAB_SIZE=512 BIGRAM_DIM=32 python bench/model_step.py
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from benchlib import ROOT, load_payload, write_result  # noqa: E402  (bench/ is the script's folder)
PUBLISHED_MS = {"step": 304.0, "fwd_bwd": 196.0, "opt_ema": 108.0, "tokens_per_s": 324_000}
TARGET_MS, GOAL_MS, ISSUE21_MS = 200.0, 150.0, 120.0
PEAKS = {"spec_989": 989e12, "measured_800": 800e12}
GDN_CHUNK = 64


def flops_per_token(tg, model, args) -> dict:
    """Training FLOPs per token: 6 x matmul weights (per use) + the gated delta rule op (fwd + 2x bwd)."""
    linear = sum(m.weight.numel() for _, m in model.named_modules(remove_duplicate=False)
                 if isinstance(m, torch.nn.Linear))
    head = args.vocab_size * args.model_dim                       # tied output projection
    C, K, V, H = GDN_CHUNK, args.head_dim, args.head_dim, args.num_heads
    gdn_fwd = H * (4 * C * K + C * (K + V) + 6 * K * V + 2 * C * V)
    gdn = 3 * gdn_fwd * args.num_layers
    return {"matmul_params_per_use": linear + head, "matmul": 6 * (linear + head), "gdn_op": gdn,
            "total": 6 * (linear + head) + gdn}


class Bench:
    """One GPU's (or CPU's) training step of the payload, built once: `step()` runs one step and returns
    (wall ms, fwd+bwd ms, optimizer+EMA ms, loss). BENCH_PAYLOAD picks the payload file (default
    model/train_gpt.py: an older copy times the "before"); BENCH_DATA (a dataset folder with
    fineweb_train_*.bin) feeds real batches through the payload's own loader instead of random tokens, so
    two payloads with the same seed see the same init and batches and their losses compare step by step."""


def make_bench() -> Bench:
    payload = os.environ.get("BENCH_PAYLOAD")
    tg = load_payload(Path(payload)) if payload else load_payload()
    args = tg.Hyperparameters()
    seqs = int(os.environ.get("BENCH_SEQS", 96))
    accum = int(os.environ.get("BENCH_ACCUM", 1))
    qat = os.environ.get("BENCH_QAT", "0") == "1"
    data = os.environ.get("BENCH_DATA")
    if seqs % accum:
        raise SystemExit(f"BENCH_SEQS={seqs} must be a multiple of BENCH_ACCUM={accum}")
    T = args.train_seq_len
    device = tg.resolve_device(args, 0)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)

    versions = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if cuda:
        versions["gpu"] = torch.cuda.get_device_name()
        for name in ("triton", "fla"):
            try:
                versions[name] = __import__(name).__version__
            except Exception as e:  # noqa: BLE001
                versions[name] = f"unavailable: {type(e).__name__}"
    print("versions: " + " ".join(f"{k}={v}" for k, v in versions.items()), flush=True)

    if cuda and hasattr(tg, "load_cuda_ops"):
        tg.load_cuda_ops()   # the payload's custom ops, registered before torch.compile traces the model
    base = tg.GPT(args, bos_id=1).to(device)
    base.set_qat(qat)
    if hasattr(tg, "_compile_enabled"):
        use_compile = tg._compile_enabled(args, device)
    else:  # same rule as the payload: COMPILE=auto means on for CUDA
        use_compile = cuda if os.environ.get("COMPILE", "auto") == "auto" else os.environ["COMPILE"] not in ("0", "")
    model = torch.compile(base, dynamic=False) if use_compile else base
    if use_compile:
        torch._dynamo.config.cache_size_limit = 64
    optimizers = tg.build_optimizers(args, base, device)
    params = list(base.parameters())
    ema = [p.detach().clone().float() for p in params]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    micro = seqs // accum
    if data:
        loader = tg.DistributedTokenLoader(os.path.join(data, "fineweb_train_*.bin"), 0, 1, device)
        next_batch = lambda: loader.next_batch(micro * T, T)
    else:
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        pool = [torch.randint(0, args.vocab_size, (micro, T + 1), generator=gen).to(device) for _ in range(2 * accum)]
        turn = iter(range(1 << 62))
        next_batch = lambda: (lambda b: (b[:, :-1], b[:, 1:]))(pool[next(turn) % len(pool)])

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def step():
        """One training step; returns (wall ms, fwd+bwd ms, optimizer+EMA ms, loss)."""
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
        t0 = now()
        if cuda:
            ev[0].record()
        loss_sum = torch.zeros((), device=device)
        for _ in range(accum):
            x, y = next_batch()
            with autocast:
                loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        if cuda:
            ev[1].record()
        else:
            t1 = time.perf_counter()
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"]
                if "momentum" in g:
                    g["momentum"] = args.muon_momentum
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - args.ema_decay)
        if cuda:
            ev[2].record()
        t2 = now()
        wall, lv = 1000 * (t2 - t0), float(loss_sum) / accum
        if cuda:
            return wall, ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), lv
        return wall, 1000 * (t1 - t0), 1000 * (t2 - t1), lv

    b = Bench()
    b.tg, b.args, b.base, b.step, b.now, b.cuda, b.versions = tg, args, base, step, now, cuda, versions
    b.seqs, b.accum, b.qat, b.T, b.use_compile, b.data = seqs, accum, qat, T, use_compile, data
    b.warmup = max(1, int(os.environ.get("BENCH_WARMUP", 5)))
    b.n_params = sum(p.numel() for p in params)
    b.describe = (f"layers={args.num_layers} dim={args.model_dim} heads={args.num_heads}x{args.head_dim} "
                  f"vocab={args.vocab_size} params={b.n_params:,} seq_len={T} seqs/step={seqs} micro_batches={accum} "
                  f"compile={int(use_compile)} qat={int(qat)} data={'real' if data else 'random'}")
    b.config = {"num_layers": args.num_layers, "model_dim": args.model_dim, "num_heads": args.num_heads,
                "head_dim": args.head_dim, "vocab_size": args.vocab_size, "seq_len": T, "seqs_per_step": seqs,
                "micro_batches": accum, "compile": use_compile, "qat": qat, "params": b.n_params,
                "payload": payload or "model/train_gpt.py", "data": data,
                "switches": {k: getattr(args, k) for k in ("fused_ce", "gate_in_kernel", "bf16_residual",
                                                           "fused_conv", "gdn_in_graph", "ce_chunk_tokens")
                             if hasattr(args, k)}}
    return b


def main() -> int:
    bench = make_bench()
    tg, args, step, now, cuda = bench.tg, bench.args, bench.step, bench.now, bench.cuda
    versions, seqs, T, warmup = bench.versions, bench.seqs, bench.T, bench.warmup
    steps = max(1, int(os.environ.get("BENCH_STEPS", 20)))
    out_path = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "results" / "model_step.json"))
    flops = flops_per_token(tg, bench.base, args)
    print(f"config: {bench.describe}", flush=True)
    checks = check_paths(bench) if os.environ.get("BENCH_CHECK", "0") == "1" else None
    losses = []
    t = now()
    first = step()
    first_ms = first[0]
    losses.append(first[3])
    print(f"first step (compile + autotune): {first_ms / 1000:.1f} s", flush=True)
    for _ in range(warmup - 1):
        losses.append(step()[3])
    warmup_s = now() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = [step() for _ in range(steps)]
    losses += [s[3] for s in samples]
    wall = [s[0] for s in samples]
    fb = [s[1] for s in samples]
    oe = [s[2] for s in samples]
    ms = statistics.median(wall)
    tokens = seqs * T
    tok_s = tokens / (ms / 1000)
    peak_alloc = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    peak_res = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    mfu = {k: flops["total"] * tok_s / v for k, v in PEAKS.items()}

    print()
    print(f"{'metric':<34}{'ours':>14}{'published':>12}")
    rows = [
        ("ms/step (median wall)", f"{ms:.1f}", f"{PUBLISHED_MS['step']:.0f}"),
        ("  fwd+bwd ms (CUDA events)" if cuda else "  fwd+bwd ms", f"{statistics.median(fb):.1f}",
         f"{PUBLISHED_MS['fwd_bwd']:.0f}"),
        ("  optimizer+EMA ms", f"{statistics.median(oe):.1f}", f"{PUBLISHED_MS['opt_ema']:.0f}"),
        ("ms/step min / mean / max", f"{min(wall):.0f}/{statistics.mean(wall):.0f}/{max(wall):.0f}", ""),
        ("tokens/s", f"{tok_s:,.0f}", f"{PUBLISHED_MS['tokens_per_s']:,}"),
        ("peak memory allocated GiB", f"{peak_alloc:.1f}" if cuda else "-", "40"),
        ("FLOPs/token (6N matmul + GDN)", f"{flops['total'] / 1e6:.0f}M", ""),
        ("  of which GDN op", f"{flops['gdn_op'] / 1e6:.1f}M", ""),
        ("MFU @ 989 TFLOP/s (spec)", f"{100 * mfu['spec_989']:.1f}%", ""),
        ("MFU @ 800 TFLOP/s (measured)", f"{100 * mfu['measured_800']:.1f}%", ""),
        ("first step (compile) s", f"{first_ms / 1000:.1f}", "157"),
        ("speed-up vs published", f"{PUBLISHED_MS['step'] / ms:.2f}x", ""),
    ]
    for name, a, b in rows:
        print(f"{name:<34}{a:>14}{b:>12}")
    verdict = "issue 21 target met (<=120 ms)" if ms <= ISSUE21_MS else "goal met (<=150 ms)" if ms <= GOAL_MS else "target met (<=200 ms)" if ms <= TARGET_MS else \
        "target NOT met (>200 ms)"
    print(f"\n{verdict}" + ("" if cuda else "  [CPU smoke: numbers mean nothing]"))

    result = {
        "bench": "model_step", "versions": versions,
        "config": {**bench.config, "warmup_steps": warmup, "timed_steps": steps},
        "losses": losses, "checks": checks,
        "ms_per_step": {"median": ms, "mean": statistics.mean(wall), "min": min(wall), "max": max(wall),
                        "fwd_bwd_median": statistics.median(fb), "opt_ema_median": statistics.median(oe),
                        "samples": wall},
        "tokens_per_step": tokens, "tokens_per_s": tok_s,
        "first_step_s": first_ms / 1000, "warmup_s": warmup_s,
        "peak_memory_allocated_gib": peak_alloc, "peak_memory_reserved_gib": peak_res,
        "flops_per_token": flops, "peak_flops": PEAKS, "mfu": mfu,
        "published": PUBLISHED_MS, "target_ms": TARGET_MS, "goal_ms": GOAL_MS,
        "speedup_vs_published": PUBLISHED_MS["step"] / ms, "verdict": verdict,
    }
    write_result(out_path, result)
    n_prof = int(os.environ.get("BENCH_PROFILE", 0))
    if n_prof > 0:   # the profile of the same warm step, in the same process (no second compile)
        import profile_step
        profile_step.write_profile(bench, profile_step.profile_bench(bench, n_prof), n_prof,
                                   os.environ.get("PROFILE_TAG", out_path.stem.replace("model_step", "").strip("_")))
    print(f"loss first/last: {losses[0]:.4f} / {losses[-1]:.4f} over {len(losses)} steps")
    return 0


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_paths(bench) -> dict:
    """On this device, at the record shapes: the fused loss against full logits (loss and both gradients),
    and the GDN layer with each fused path (gate inside fla's kernel; fla as a custom op; that with our conv
    kernels) against the plain one (output and every gradient), relative L2 differences."""
    tg, args, cuda = bench.tg, bench.args, bench.cuda
    dev = next(bench.base.parameters()).device
    out = {}
    if hasattr(tg, "softcap_cross_entropy"):
        g = torch.Generator(device="cpu").manual_seed(0)
        n = bench.seqs * bench.T
        x = torch.randn(n, args.model_dim, generator=g).to(dev).requires_grad_()
        w = (torch.randn(args.vocab_size, args.model_dim, generator=g) * 0.05).to(dev).requires_grad_()
        y = torch.randint(0, args.vocab_size, (n,), generator=g).to(dev)
        ac = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        res = {}
        for name, chunk in (("full", 0), ("fused", args.ce_chunk_tokens)):
            with ac:
                loss = tg.softcap_cross_entropy(x, w, y, args.logit_softcap, "mean", chunk)
            res[name] = (loss.detach(), *torch.autograd.grad(loss, (x, w)))
        out["fused_ce"] = {"loss_rel": _rel(res["fused"][0], res["full"][0]), "dx_rel": _rel(res["fused"][1], res["full"][1]),
                           "dw_rel": _rel(res["fused"][2], res["full"][2]), "loss": float(res["full"][0])}
    if cuda and hasattr(tg, "gdn_gates"):
        torch.manual_seed(0)
        layer = tg.GatedDeltaNet(args.model_dim, args.num_heads, args.head_dim, args.conv_size,
                                 args.gdn_output_gate).to(dev)
        x = torch.randn(8, bench.T, args.model_dim, device=dev)
        res = {}
        # the plain path (gate outside, torch conv, fla's public op), then each fused path switched on in turn
        variants = {"plain": {}, "gate_in_kernel": {"gate_in_kernel": True}}
        if hasattr(tg, "load_cuda_ops"):   # (the fused conv runs only with the in-graph op: the payload's rule)
            variants["gdn_in_graph"] = {"gate_in_kernel": True, "in_graph": True}
            variants["both"] = {"gate_in_kernel": True, "fused_conv": True, "in_graph": True}
        for name, flags in variants.items():
            for attr in ("gate_in_kernel", "fused_conv", "in_graph"):
                setattr(layer, attr, flags.get(attr, False))
            layer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                o = layer(x)
            (o.float() * torch.linspace(-1, 1, o.numel(), device=dev).view_as(o)).sum().backward()
            res[name] = (o.detach(), {n: p.grad.detach().clone() for n, p in layer.named_parameters()})
        ref = res["plain"]
        for name in list(variants)[1:]:
            got = res[name]
            out[name] = {"out_rel": _rel(got[0], ref[0]),
                         **{f"d{n}_rel": _rel(got[1][n], ref[1][n]) for n in ("A_log", "dt_bias", "conv_q")},
                         "max_grad_rel": max(_rel(got[1][n], ref[1][n]) for n in ref[1]),
                         "worst_grad": max(ref[1], key=lambda n: _rel(got[1][n], ref[1][n]))}
    print("checks: " + json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
