"""GatedDeltaNet "K_KVShare_Wider" for the Parameter Golf challenge: one self-contained training script.

Run:  torchrun --standalone --nproc_per_node=8 model/train_gpt.py     (CUDA + NCCL, needs fla on CUDA)
      torchrun --standalone --nproc_per_node=2 model/train_gpt.py     (DEVICE=cpu: pure PyTorch + gloo)
Everything is configured by environment variables (class Hyperparameters); the defaults are the record
config. The file reads top to bottom in the order data flows: hyperparameters -> optimizer -> bpb
evaluation -> quantization -> data -> model -> main. Importable: nothing runs unless __main__.

TINY smoke config (CPU, 1 process, ~30-60 s per seed on model/data/tiny; jobs/smoke.toml uses it):
  DEVICE=cpu DATA_PATH=model/data/tiny TOKENIZER_PATH=model/data/tiny/tokenizer.model VOCAB_SIZE=1024
  NUM_LAYERS=2 MODEL_DIM=128 NUM_HEADS=2 HEAD_DIM=64 MLP_MULT=2 BIGRAM_VOCAB_SIZE=512 BIGRAM_DIM=32
  TRAIN_SEQ_LEN=256 EVAL_SEQ_LEN=256 EVAL_STRIDE=128 TRAIN_BATCH_TOKENS=4096 GRAD_ACCUM_STEPS=1
  ITERATIONS=60 MAX_WALLCLOCK_SECONDS=25 WARMUP_STEPS=2 TRAIN_LOG_EVERY=10 VAL_MAX_TOKENS=16384
  EVAL_BATCH_SEQS=16 TTT_CHUNK_TOKENS=4096 TTT_EPOCHS=1 TTT_BATCH_SEQS=8 TTT_FREEZE_BLOCKS=1
  SWA_EVERY=5 COMPRESSOR=auto
"""
from __future__ import annotations

import gc
import glob
import hashlib
import importlib
import json
import math
import os
import re
import struct
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# -----------------------------------------------------------------------------
# Hyperparameters (environment variables; defaults = the record config)
# -----------------------------------------------------------------------------

_HPARAMS = [
    # data / run
    ("data_path", str, "./data/datasets/fineweb10B_sp8192"),
    ("tokenizer_path", str, "./data/tokenizers/fineweb_8192_bpe.model"),
    ("vocab_size", int, 8192),
    ("seed", int, 1337),
    ("run_id", str, "run"),
    ("artifact_dir", str, "."),
    ("device", str, "auto"),            # auto|cuda|cpu
    ("compile", str, "auto"),           # auto (on for CUDA, off on CPU)|1|0
    # schedule
    ("iterations", int, 20000),
    ("max_wallclock_seconds", float, 600.0),
    ("warmup_steps", int, 20),          # compile/autotune steps before the timer, weights restored
    ("train_batch_tokens", int, 786432),
    ("train_seq_len", int, 1024),
    ("grad_accum_steps", int, 0),       # 0 = auto: max(1, 8 // world_size)
    ("train_log_every", int, 100),
    ("warmdown_frac", float, 0.6),      # fraction of the (time or step) budget spent decaying the LR
    ("min_lr_mult", float, 0.0),
    ("qat_start_frac", float, 0.85),    # int6 fake-quant from this fraction of the budget
    ("swa_enabled", int, 1),
    ("swa_start_frac", float, 0.9),     # average EMA snapshots from this fraction of the budget
    ("swa_every", int, 50),
    ("ema_decay", float, 0.997),
    # model
    ("num_layers", int, 10),
    ("model_dim", int, 544),
    ("num_heads", int, 8),
    ("head_dim", int, 64),
    ("mlp_mult", int, 3),
    ("kv_share_stride", int, 2),
    ("conv_size", int, 4),
    ("gdn_output_gate", int, 1),
    ("bigram_vocab_size", int, 3072),
    ("bigram_dim", int, 112),
    ("logit_softcap", float, 30.0),
    ("tied_embed_init_std", float, 0.005),
    ("smear_init", float, -2.0),
    # optimizer
    ("matrix_lr", float, 0.025),
    ("scalar_lr", float, 0.025),
    ("embed_lr", float, 0.035),
    ("muon_momentum", float, 0.95),
    ("muon_momentum_warmup_start", float, 0.85),
    ("muon_momentum_warmup_steps", int, 500),
    ("muon_backend_steps", int, 5),
    ("muon_wd", float, 0.04),
    ("adam_wd", float, 0.02),
    ("beta1", float, 0.9),
    ("beta2", float, 0.95),
    ("adam_eps", float, 1e-8),
    ("grad_clip_norm", float, 0.0),
    # evaluation
    ("eval_seq_len", int, 1024),
    ("eval_stride", int, 64),
    ("eval_batch_seqs", int, 32),
    ("val_max_tokens", int, 0),         # 0 = the full validation split
    ("val_loss_every", int, 0),
    ("prequant_eval", int, 1),          # also evaluate the final weights before quantization (diagnostic)
    ("ttt_enabled", int, 1),
    ("ttt_epochs", int, 3),
    ("ttt_lr", float, 0.005),
    ("ttt_momentum", float, 0.9),
    ("ttt_chunk_tokens", int, 32768),
    ("ttt_freeze_blocks", int, 2),
    ("ttt_batch_seqs", int, 32),
    ("ttt_grad_clip", float, 1.0),
    # artifact
    ("compressor", str, "auto"),        # auto|zstd|brotli
    ("embed_bits", int, 8),
    ("matrix_bits", int, 6),
    ("artifact_target_bytes", int, 16_000_000),   # code + artifact cap; the grid coarsens to fit (0 = off)
    ("fla_triton_check", int, 1),       # 0 = run despite a known-bad fla/Triton pair (benchmarks only)
    # speed paths (issue 21; each switchable so one benchmark can measure it on and off)
    ("fused_ce", int, 1),               # training loss: chunked linear + softcap + CE, no [tokens, vocab] logits
    ("ce_chunk_tokens", int, 8192),     # tokens per chunk of the fused loss
    ("gate_in_kernel", int, 1),         # CUDA: fla computes the GDN decay and beta from the raw projections
    ("bf16_residual", int, 1),          # CUDA: the residual stream in bf16 instead of fp32
    ("fused_conv", int, 1),             # CUDA, with gdn_in_graph: q/k/v conv + SiLU + q/k L2 norm in our kernels
    ("gdn_in_graph", int, 1),           # CUDA, with gate_in_kernel: fla's GDN as a custom op inside the graph
]


class Hyperparameters:
    """Reads every setting from the environment at construction time (tests set env vars first)."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        for name, typ, default in _HPARAMS:
            raw = env.get(name.upper())
            setattr(self, name, default if raw in (None, "") else typ(raw))
        if self.compressor not in ("auto", "zstd", "brotli"):
            raise ValueError(f"COMPRESSOR={self.compressor!r}: expected auto, zstd or brotli")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"DEVICE={self.device!r}: expected auto, cuda or cpu")

    def items(self):
        return [(name, getattr(self, name)) for name, _, _ in _HPARAMS]


# -----------------------------------------------------------------------------
# Optimizer: Muon (batched Newton-Schulz orthogonalisation, sharded over ranks)
# -----------------------------------------------------------------------------

def zeropower_via_newtonschulz5(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise a batch of matrices [n, r, c] (quintic Newton-Schulz)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if transposed else X


class Muon(torch.optim.Optimizer):
    """Momentum + Nesterov, then orthogonalised updates. Same-shape matrices are stacked and
    orthogonalised in one batched call; with several ranks each rank does a slice and all-gathers."""

    def __init__(self, params, lr, momentum, backend_steps=5, weight_decay=0.0, ns_dtype=torch.float32,
                 ns_fn=None):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.backend_steps, self.ns_dtype = backend_steps, ns_dtype
        self.ns_fn = ns_fn or zeropower_via_newtonschulz5

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized()
        ws = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(st["momentum_buffer"])
            torch._foreach_lerp_(bufs, grads, 1.0 - mom)
            nesterov = torch._foreach_lerp(grads, bufs, mom)
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for shape, idx in by_shape.items():
                n = len(idx)
                per = -(-n // ws)
                G = torch.stack([nesterov[i] for i in idx]).to(self.ns_dtype)
                if per * ws > n:
                    G = torch.cat([G, G.new_zeros((per * ws - n, *shape))])
                U = self.ns_fn(G[rank * per:(rank + 1) * per].contiguous(), self.backend_steps)
                if ws > 1:
                    full = torch.empty((per * ws, *shape), dtype=U.dtype, device=U.device)
                    dist.all_gather(list(full.chunk(ws)), U)
                    U = full
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                ps = [params[i] for i in idx]
                if wd > 0:
                    torch._foreach_mul_(ps, 1.0 - lr * wd)
                torch._foreach_add_(ps, list(U[:n].to(ps[0].dtype).unbind(0)), alpha=-lr * scale)


def lr_multiplier(progress: float, warmdown_frac: float, min_mult: float = 0.0) -> float:
    """1.0 until the last `warmdown_frac` of the budget, then linear to `min_mult`. `progress` is the
    larger of elapsed-train-time/time-budget and step/iterations, so warmdown follows the wall clock."""
    if warmdown_frac <= 0 or progress <= 1.0 - warmdown_frac:
        return 1.0
    return max(min_mult, (1.0 - progress) / warmdown_frac)


# -----------------------------------------------------------------------------
# bpb evaluation: canonical byte tables, sliding windows, score-first TTT
# -----------------------------------------------------------------------------

def build_byte_luts(sp, vocab_size: int) -> dict[str, Tensor]:
    """Canonical sentencepiece byte tables. control/unknown/unused: boundary, 0 bytes; byte-fallback:
    1 byte; '\u2581' pieces: stripped, UTF-8 length as base bytes, has_space=True. The +1 for the space
    is applied at count time, only when the previous token is not a boundary (never inside the table)."""
    base = torch.zeros(vocab_size, dtype=torch.int32)
    has_space = torch.zeros(vocab_size, dtype=torch.bool)
    boundary = torch.ones(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, sp.get_piece_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            has_space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return {"base": base, "has_space": has_space, "boundary": boundary}


def target_bytes(prev: Tensor, tgt: Tensor, luts: dict[str, Tensor]) -> Tensor:
    """Bytes of each target token given the token before it (elementwise, any shape)."""
    extra = luts["has_space"][tgt] & ~luts["boundary"][prev]
    return luts["base"][tgt].to(torch.int64) + extra.to(torch.int64)


def count_bytes(tokens, luts: dict[str, Tensor]) -> int:
    """Total canonical bytes of tokens[1:] (each with its predecessor as context)."""
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.int64)
    return int(target_bytes(t[:-1], t[1:], luts).sum())


def window_plan(a: int, b: int, seq_len: int, stride: int, total: int) -> list[tuple[int, int, int]]:
    """Windows scoring targets [a, b) of a stream with `total` targets (target t = token t+1).
    Returns (window_start, score_start, score_end); every window has length min(seq_len, total)."""
    L = min(seq_len, total)
    plan, s = [], a
    if s < L:
        e = min(L, b)
        plan.append((0, s, e))
        s = e
    while s < b:
        e = min(s + stride, b)
        plan.append((e - L, s, e))
        s = e
    return plan


def score_windows(model, tokens: Tensor, plan, L: int, batch_seqs: int, luts, device, autocast) -> Tensor:
    """Sum of NLL, target count and byte count over `plan` (local to this rank); float64 [3] tensor."""
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    pos = torch.arange(L, device=device)
    for i in range(0, len(plan), batch_seqs):
        chunk = plan[i:i + batch_seqs]
        pad = batch_seqs - len(chunk)
        chunk = chunk + [chunk[-1]] * pad          # fixed shapes for compiled graphs
        starts = torch.tensor([w for w, _, _ in chunk], dtype=torch.int64)
        idx = starts[:, None] + torch.arange(L + 1)[None, :]
        seqs = tokens[idx].to(device, non_blocking=True)
        x, y = seqs[:, :-1], seqs[:, 1:]
        lo = torch.tensor([s - w for w, s, _ in chunk], device=device)
        hi = torch.tensor([e - w for w, _, e in chunk], device=device)
        mask = (pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None])
        if pad:
            mask[len(chunk) - pad:] = False
        with autocast:
            nll = model(x, y, reduction="none")
        nb = target_bytes(x, y, luts)
        acc[0] += (nll.double() * mask).sum()
        acc[1] += mask.sum()
        acc[2] += (nb * mask).sum()
    return acc


def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _bpb(acc: Tensor) -> tuple[float, float]:
    loss = float(acc[0] / acc[1])
    return loss, loss / math.log(2.0) * float(acc[1] / acc[2])


def eval_stream(model, tokens: Tensor, seq_len: int, stride: int, batch_seqs: int, luts, device,
                autocast, rank=0, world=1) -> tuple[float, float]:
    """(val_loss, val_bpb) over the whole stream; stride == seq_len gives plain non-overlapping eval."""
    total = tokens.numel() - 1
    plan = window_plan(0, total, seq_len, stride, total)
    L = min(seq_len, total)
    with torch.inference_mode():
        acc = score_windows(model, tokens, plan[rank::world], L, batch_seqs, luts, device, autocast)
    return _bpb(_all_reduce_sum(acc))


def _flat_all_reduce_grads(params, divide_by: float = 1.0):
    """All-reduce every grad through one flat buffer (one collective, works for NCCL and gloo)."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if divide_by != 1.0:
        flat.div_(divide_by)
    torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(flat.split([g.numel() for g in grads]), grads)])


def eval_ttt(args, model, base_model, tokens: Tensor, luts, device, autocast, rank=0, world=1,
             on_event=None) -> tuple[float, float]:
    """Score-first test-time training. The validation targets are cut into chunks of TTT_CHUNK_TOKENS;
    each chunk is first scored (sliding windows, torch.inference_mode), and only then, except for the
    last chunk, used for TTT_EPOCHS of SGD+momentum (cosine LR across chunks, first blocks frozen).
    `on_event(kind, chunk_index)` is called after each score and each update (tests check the order)."""
    total = tokens.numel() - 1
    L = min(args.eval_seq_len, total)
    n_chunks = max(1, -(-total // args.ttt_chunk_tokens))
    frozen = {id(p) for blk in base_model.blocks[:args.ttt_freeze_blocks] for p in blk.parameters()}
    params = [p for p in base_model.parameters() if id(p) not in frozen]
    opt = torch.optim.SGD(params, lr=args.ttt_lr, momentum=args.ttt_momentum)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    B = args.ttt_batch_seqs
    for ci in range(n_chunks):
        a, b = ci * args.ttt_chunk_tokens, min(total, (ci + 1) * args.ttt_chunk_tokens)
        plan = window_plan(a, b, args.eval_seq_len, args.eval_stride, total)
        with torch.inference_mode():
            acc += score_windows(model, tokens, plan[rank::world], L, args.eval_batch_seqs, luts, device,
                                 autocast)
        if on_event is not None:
            on_event("score", ci)
        if ci == n_chunks - 1:
            break
        lr = args.ttt_lr * 0.5 * (1.0 + math.cos(math.pi * ci / max(1, n_chunks - 1)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = list(range(a, b - L + 1, L)) or ([b - L] if b >= L else [])
        n_steps = -(-len(starts) // (B * world))
        for _ in range(args.ttt_epochs):
            for j in range(n_steps):
                # every rank runs a full batch of B sequences (one compiled shape, warmed up before the
                # timer); the padding rows weigh 0
                mine = starts[(j * world + rank) * B:(j * world + rank + 1) * B]
                n_global = min(len(starts), (j + 1) * world * B) - j * world * B
                opt.zero_grad(set_to_none=False)
                idx = torch.tensor((mine + starts[:1] * B)[:B])[:, None] + torch.arange(L + 1)[None, :]
                seqs = tokens[idx].to(device, non_blocking=True)
                weight = (torch.arange(B) < len(mine)).to(device, torch.float32)[:, None] / (n_global * L)
                with autocast:
                    loss = model(seqs[:, :-1], seqs[:, 1:], reduction="none")
                (loss.float() * weight).sum().backward()
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                _flat_all_reduce_grads(params)
                if args.ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.ttt_grad_clip)
                opt.step()
        for p in base_model.parameters():
            p.grad = None
        if on_event is not None:
            on_event("update", ci)
    return _bpb(_all_reduce_sum(acc))


# -----------------------------------------------------------------------------
# Quantization: per-row int6 (best clip percentile), fp16 small tensors, shared weights once
# -----------------------------------------------------------------------------

CLIP_PERCENTILES = (1.0, 0.99995, 0.9999, 0.9995, 0.999)
SMALL_NUMEL = 16384


def row_quantiles(a: Tensor, percentiles) -> Tensor:
    """torch.quantile(a, p, dim=1) (linear interpolation, same float32 ranks) for each p, from the few
    largest values of each row (topk) instead of a full sort: 50x faster on CPU. [len(percentiles), rows]."""
    n = a.size(1)
    pos = torch.tensor(percentiles, dtype=a.dtype) * (n - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    top = a.topk(n - int(lo.min()), dim=1).values          # top[:, j] = j-th largest = sorted[n - 1 - j]
    return torch.stack([torch.lerp(top[:, n - 1 - i], top[:, n - 1 - j], float(p - i))
                        for p, i, j in zip(pos, lo.tolist(), hi.tolist())])


def best_row_scales(w: Tensor, bits, percentiles=CLIP_PERCENTILES) -> Tensor:
    """Per-row fp32 scale: for each row the clip (a percentile of |w|) with the smallest reconstruction
    MSE (computed with the fp16-rounded scale that will be stored). `bits`: an int, or a [rows] tensor
    of qmax values (rows of several matrices with the same width, scaled in one pass)."""
    qmax = float(2 ** (bits - 1) - 1) if isinstance(bits, int) else bits[:, None]
    w = w.detach().float()
    best_s = best_err = None
    for clip in row_quantiles(w.abs(), percentiles):
        s = (clip[:, None] / qmax).clamp_min(1e-7).half().float()
        q = torch.clamp(torch.round(w / s), -qmax, qmax)
        err = ((q * s - w) ** 2).sum(dim=1)
        s = s[:, 0]
        if best_err is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s, best_err = torch.where(better, s, best_s), torch.where(better, err, best_err)
    return best_s


def quantize_rows(w: Tensor, bits: int, percentiles=CLIP_PERCENTILES, step_mult: float = 1.0,
                  scales: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantization to [-(2^(b-1)-1), 2^(b-1)-1] with an fp16 scale per row (the MSE-best
    clip, times `step_mult` >= 1 when the size budget asks for a coarser grid)."""
    qmax = 2 ** (bits - 1) - 1
    base = best_row_scales(w, bits, percentiles) if scales is None else scales
    s = (base * step_mult).clamp_min(1e-7).half()
    q = torch.clamp(torch.round(w.detach().float() / s.float()[:, None]), -qmax, qmax)
    return q.to(torch.int8), s


def fake_quant_rows(w: Tensor, bits: int, step_mult=1.0) -> Tensor:
    """QAT forward: per-row absmax int-b quantize-dequantize, the grid step times `step_mult` (the
    coarsening the size budget will ask for); callers pass the gradient straight through."""
    qmax = 2 ** (bits - 1) - 1
    s = (w.detach().abs().amax(dim=1, keepdim=True) / qmax * step_mult).clamp_min(1e-7)
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def stored_names(sd: dict[str, Tensor]) -> tuple[list[str], dict[str, str]]:
    """(names stored, {alias: stored name}): tensors that are the same storage and shape are stored once."""
    seen: dict[tuple, str] = {}
    names, alias = [], {}
    for name, t in sd.items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype, str(t.device))
        if t.numel() > 0 and key in seen:
            alias[name] = seen[key]
        else:
            seen[key] = name
            names.append(name)
    return names, alias


def is_int_matrix(t: Tensor) -> bool:
    """Stored as per-row integers (the rest is fp16 or raw)."""
    return t.is_floating_point() and t.ndim == 2 and t.numel() > SMALL_NUMEL


def matrix_bits(name: str, args) -> int:
    return args.embed_bits if name == "tok_emb" else args.matrix_bits


def quantize_state_dict(sd: dict[str, Tensor], args, step_mult=1.0, scales=None):
    """Quantize a state dict; aliases (shared weights) are stored once. Large 2-D tensors: per-row int6
    (int8 for the embedding); everything else fp16. `scales`: the MSE-best row scales, if known."""
    names, alias = stored_names(sd)
    out = {"q": {}, "s": {}, "f": {}, "alias": alias, "meta": {}, "bits": {}}
    for name in names:
        t = sd[name]
        out["meta"][name] = (str(t.dtype).replace("torch.", ""), tuple(t.shape))
        if is_int_matrix(t):
            bits = matrix_bits(name, args)
            q, s = quantize_rows(t, bits, step_mult=step_mult, scales=None if scales is None else scales[name])
            out["q"][name], out["s"][name], out["bits"][name] = q.cpu(), s.cpu(), bits
        elif t.is_floating_point():
            out["f"][name] = t.detach().to(torch.float16).cpu()
        else:
            out["f"][name] = t.detach().cpu()
    return out


class SizeModel:
    """The artifact's size at any grid coarsening m, predicted from the order-0 entropy of the quantized
    symbols (brotli and zstd land within a few percent of it on such data) plus the raw bytes of the rest.
    It runs inside the timed window at the QAT switch, so it is built for few kernel launches and host
    syncs on the weights' device: row clips are searched once per matrix width (rows of same-width
    matrices stacked), and all int-b matrices are flattened into one vector with each element's row, clamp
    bound and histogram bin offset, so that one prediction is a few whole-model kernels and one sync."""

    def __init__(self, sd: dict[str, Tensor], args):
        names, _ = stored_names(sd)
        mats = [n for n in names if is_int_matrix(sd[n])]
        self.n, n_rows = len(mats), sum(sd[n].shape[0] for n in mats)
        self.numel = sum(sd[n].numel() for n in mats)
        self.fixed = 4096 + 160 * len(names) + 2 * n_rows + sum(
            sd[n].numel() * (2 if sd[n].is_floating_point() else sd[n].element_size())
            for n in names if n not in mats)
        self.scales = {}
        if not mats:
            return
        dev = sd[mats[0]].device
        per_row = lambda ns, vals: torch.cat([torch.full((sd[n].shape[0],), v, device=dev) for n, v in zip(ns, vals)])
        qmax = {n: 2.0 ** (matrix_bits(n, args) - 1) - 1 for n in mats}
        for cols in sorted({sd[n].shape[1] for n in mats}):
            group = [n for n in mats if sd[n].shape[1] == cols]
            s = best_row_scales(torch.cat([sd[n].detach().float() for n in group]),
                                per_row(group, [qmax[n] for n in group]))
            self.scales.update(zip(group, s.split([sd[n].shape[0] for n in group])))
        self.w = torch.cat([sd[n].detach().float().reshape(-1) for n in mats])
        self.base = torch.cat([self.scales[n] for n in mats])
        self.row = torch.repeat_interleave(torch.arange(n_rows, device=dev),
                                           per_row(mats, [sd[n].shape[1] for n in mats]), output_size=self.numel)
        self.qmax = per_row(mats, [qmax[n] for n in mats])[self.row]
        self.offset = per_row(mats, [256 * i + 128 for i in range(self.n)])[self.row]
        self.calls = 0

    def bytes(self, step_mult: float) -> int:
        if self.n == 0:
            return self.fixed
        self.calls += 1
        s = (self.base * step_mult).clamp_min(1e-7).half().float()[self.row]
        q = torch.minimum(torch.maximum(torch.round(self.w / s), -self.qmax), self.qmax)
        counts = torch.bincount(q.long() + self.offset, minlength=256 * self.n).view(self.n, 256).double()
        bits = (counts * (counts.sum(1, keepdim=True).log2() - counts.clamp_min(1).log2())).sum()
        return self.fixed + int(float(bits) / 8)


def budget_step_mult(size_model: SizeModel, budget_bytes: int) -> float:
    """Smallest grid coarsening m >= 1 whose predicted artifact fits 98.5% of `budget_bytes` (to 2^-12 in m,
    or 0.01% of the target in bytes). Regula falsi (Illinois) on log2 m, where the prediction is close to
    linear (about one bit less per parameter for each doubling of the step): 4-6 predictions."""
    target = 0.985 * budget_bytes
    f = lambda x: size_model.bytes(2.0 ** x) - target
    if budget_bytes <= 0 or f(0.0) <= 0:
        return 1.0
    x_lo, f_lo = 0.0, f(0.0)
    x_hi = min(8.0, 1.05 * 8 * f_lo / max(1, size_model.numel))
    f_hi = f(x_hi)
    while f_hi > 0:                               # the first guess does not fit yet: move up
        if x_hi >= 8.0:
            return 256.0
        x_lo, f_lo, x_hi = x_hi, f_hi, min(8.0, x_hi + max(0.05, 2 * (x_hi - x_lo)))
        f_hi = f(x_hi)
    gap, side = -f_hi, 0                          # gap: bytes left under the target at x_hi
    for _ in range(40):
        if x_hi - x_lo < 2.0 ** -12 or gap < 1e-4 * target:
            break
        x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
        x = min(max(x, x_lo + 2.0 ** -14), x_hi - 2.0 ** -14)
        fx = f(x)
        if fx <= 0:
            x_hi, f_hi, gap = x, fx, -fx
            f_lo, side = (f_lo / 2 if side == 1 else f_lo), 1
        else:
            x_lo, f_lo = x, fx
            f_hi, side = (f_hi / 2 if side == -1 else f_hi), -1
    return 2.0 ** x_hi


def dequantize_state_dict(obj) -> dict[str, Tensor]:
    sd = {}
    for name, (dtype, shape) in obj["meta"].items():
        if name in obj["q"]:
            t = obj["q"][name].float() * obj["s"][name].float()[:, None]
        else:
            t = obj["f"][name]
        sd[name] = t.to(getattr(torch, dtype)).reshape(shape)
    for name, target in obj["alias"].items():
        sd[name] = sd[target]
    return sd


def pack_quantized(obj) -> bytes:
    """The quantized state dict as bytes: a JSON header (names, dtypes, shapes, bits, aliases), then every
    tensor's raw little-endian bytes, int8 rows first. No zip entries or pickle around each tensor (that
    framing cost ~20 kB after compression)."""
    order = [(g, n) for g in ("q", "s", "f") for n in obj[g]]
    head = json.dumps({"alias": obj["alias"], "meta": obj["meta"], "bits": obj["bits"],
                       "tensors": [[g, n, str(obj[g][n].dtype)[6:], list(obj[g][n].shape)] for g, n in order]})
    body = [obj[g][n].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for g, n in order]
    return struct.pack("<I", len(head)) + head.encode() + b"".join(body)


def unpack_quantized(raw: bytes) -> dict:
    (n,) = struct.unpack_from("<I", raw)
    head = json.loads(raw[4:4 + n])
    buf, pos = bytearray(raw), 4 + n
    obj = {"q": {}, "s": {}, "f": {}, "alias": head["alias"], "meta": head["meta"], "bits": head["bits"]}
    for group, name, dtype, shape in head["tensors"]:
        dt = getattr(torch, dtype)
        count = math.prod(shape)
        obj[group][name] = torch.frombuffer(buf, dtype=dt, count=count, offset=pos).reshape(shape) if count \
            else torch.empty(shape, dtype=dt)
        pos += count * dt.itemsize
    return obj


# The artifact: magic, chunk count, then per chunk (codec, length), then the chunks. Chunks of 2 MiB are
# compressed independently, all at once on every core (both libraries release the GIL), and each keeps
# the smaller of its codecs: the bytes do not depend on the number of threads, only on the input.
ARTIFACT_MAGIC, CHUNK_BYTES = b"PGZ\x01", 1 << 21
CODECS = {"zstd": 1, "brotli": 2}


def _zstd(raw: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=22).compress(raw)


def _brotli(raw: bytes) -> bytes:
    import brotli
    return brotli.compress(raw, quality=11, lgwin=24)


def _unzstd(blob: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdDecompressor().decompress(blob)


def _unbrotli(blob: bytes) -> bytes:
    import brotli
    return brotli.decompress(blob)


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compress_bytes(raw: bytes, method: str, threads: int | None = None) -> tuple[bytes, str]:
    """zstd-22 and/or brotli-11 per chunk (`auto`: both, a missing library skipped; each chunk keeps the
    smaller). Returns (artifact bytes, the codecs used joined by '+')."""
    from concurrent.futures import ThreadPoolExecutor
    fns = {"zstd": _zstd, "brotli": _brotli}
    names = []
    for name in (["zstd", "brotli"] if method == "auto" else [method]):
        try:
            __import__("zstandard" if name == "zstd" else name)
            names.append(name)
        except ImportError:
            if method != "auto":
                raise
    if not names:
        raise RuntimeError("neither zstandard nor brotli is installed: pip install zstandard brotli")
    chunks = [raw[i:i + CHUNK_BYTES] for i in range(0, len(raw), CHUNK_BYTES)] or [b""]
    with ThreadPoolExecutor(threads or cpu_threads()) as pool:
        jobs = [[(pool.submit(fns[n], c), n) for n in names] for c in chunks]
        best = [min(((f.result(), n) for f, n in js), key=lambda r: len(r[0])) for js in jobs]
    head = ARTIFACT_MAGIC + struct.pack("<I", len(best)) + b"".join(
        struct.pack("<BI", CODECS[n], len(b)) for b, n in best)
    return head + b"".join(b for b, _ in best), "+".join(sorted({n for _, n in best}))


def decompress_bytes(blob: bytes, threads: int | None = None) -> bytes:
    from concurrent.futures import ThreadPoolExecutor
    if blob[:4] != ARTIFACT_MAGIC:
        raise ValueError("not a pgolf artifact (bad magic)")
    (n,) = struct.unpack_from("<I", blob, 4)
    table = [struct.unpack_from("<BI", blob, 8 + 5 * i) for i in range(n)]
    fns = {CODECS["zstd"]: _unzstd, CODECS["brotli"]: _unbrotli}
    pos, parts = 8 + 5 * n, []
    for codec, size in table:
        parts.append((fns[codec], blob[pos:pos + size]))
        pos += size
    with ThreadPoolExecutor(threads or cpu_threads()) as pool:
        return b"".join(pool.map(lambda p: p[0](p[1]), parts))


def save_artifact(sd, path, args, budget_bytes: int = 0) -> dict:
    """Quantize, serialise, compress, write atomically. With a budget (bytes allowed for the artifact),
    the quantization grid is made uniformly coarser (step_mult > 1, found by bisection on the entropy
    prediction) until the compressed file fits; the MSE-best per-row clips are the starting point.
    Returns sizes, the codec and each phase's seconds."""
    t0 = time.perf_counter()
    size_model = SizeModel(sd, args)
    mult = budget_step_mult(size_model, budget_bytes)
    t1 = time.perf_counter()
    t_quant = t_comp = 0.0
    for _ in range(6):
        t2 = time.perf_counter()
        raw = pack_quantized(quantize_state_dict(sd, args, mult, size_model.scales))
        t3 = time.perf_counter()
        blob, method = compress_bytes(raw, args.compressor)
        t_quant, t_comp = t_quant + t3 - t2, t_comp + time.perf_counter() - t3
        if budget_bytes <= 0 or len(blob) <= budget_bytes:
            break
        mult *= 1.0 + 1.5 * (len(blob) / budget_bytes - 1.0) + 0.01
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return {"bytes": len(blob), "method": method, "step_mult": mult, "estimate": size_model.bytes(mult),
            "raw_bytes": len(raw), "size_model_s": t1 - t0, "quantize_s": t_quant,
            "compress_s": t_comp, "threads": cpu_threads()}


def load_artifact(path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        return dequantize_state_dict(unpack_quantized(decompress_bytes(f.read())))


# -----------------------------------------------------------------------------
# Data: official shards (256 int32 header, magic 20240520, version 1; uint16 tokens from byte 1024)
# -----------------------------------------------------------------------------

SHARD_MAGIC, SHARD_VERSION, HEADER_BYTES = 20240520, 1, 1024


def shard_tokens(path) -> np.ndarray:
    """Memory-mapped uint16 tokens of one shard, after validating its header."""
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size != 256 or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: not an official shard (magic {SHARD_MAGIC}, version {SHARD_VERSION})")
    n = int(header[2])
    if os.path.getsize(path) != HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: size does not match the {n} tokens in its header")
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def load_validation_tokens(pattern: str, max_tokens: int = 0) -> Tensor:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no validation shards match {pattern}")
    toks = np.concatenate([np.asarray(shard_tokens(f)) for f in files])
    if max_tokens > 0:
        toks = toks[:max_tokens + 1]
    return torch.from_numpy(toks.astype(np.int64))


class DistributedTokenLoader:
    """Streams the train shards in order; every step all ranks advance by the same global span and
    each rank reads only its own slice (+1 token for the shifted targets)."""

    def __init__(self, pattern: str, rank: int, world: int, device):
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise FileNotFoundError(f"no training shards match {pattern}")
        self.rank, self.world, self.device = rank, world, device
        self.file_idx, self.pos = 0, 0
        self.tokens = shard_tokens(self.files[0])

    def _take(self, n: int, keep: tuple[int, int]) -> np.ndarray:
        """Advance by n tokens; return tokens [keep[0], keep[1]) of the advanced span (may cross shards)."""
        parts, got = [], 0
        while got < n:
            avail = self.tokens.size - self.pos
            if avail <= 0:
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = shard_tokens(self.files[self.file_idx]), 0
                continue
            k = min(avail, n - got)
            lo, hi = max(keep[0], got), min(keep[1], got + k)
            if lo < hi:
                parts.append(np.asarray(self.tokens[self.pos + lo - got:self.pos + hi - got]))
            self.pos += k
            got += k
        return np.concatenate(parts)

    def next_batch(self, local_tokens: int, seq_len: int) -> tuple[Tensor, Tensor]:
        span = local_tokens + 1
        buf = self._take(span * self.world, (self.rank * span, (self.rank + 1) * span))
        t = torch.from_numpy(buf.astype(np.int64))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:-1].view(-1, seq_len), t[1:].view(-1, seq_len)


# -----------------------------------------------------------------------------
# Model: gated delta rule (fla on CUDA, chunked PyTorch on CPU), GDN mixer, blocks, GPT
# -----------------------------------------------------------------------------

def _l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def recurrent_gated_delta_rule_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                   use_qk_l2norm_in_kernel=False):
    """Step-by-step reference. Layout [B,T,H,K] (q,k), [B,T,H,V] (v), [B,T,H] (g in log space, beta);
    state [B,H,K,V]:  S_t = e^{g_t} S_{t-1} + beta_t k_t (v_t - e^{g_t} S_{t-1}^T k_t)^T,  o_t = S_t^T q_t scale."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, g, beta = (x.to(cd) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cd)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - (k[:, t, :, :, None] * S).sum(-2))
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        outs.append(((q[:, t] * scale)[..., None] * S).sum(-2))
    return torch.stack(outs, 1), (S if output_final_state else None)


def chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                 use_qk_l2norm_in_kernel=False, chunk_size=64):
    """Chunked (WY/UT) gated delta rule in pure PyTorch, same API and layout as fla's op.
    Within a chunk with local cumulative log decays G_i: (I + A) U = beta*V - beta*e^G K S0 with
    A_ij = beta_i e^{G_i-G_j} k_i.k_j (j<i), solved by a unit-triangular solve; outputs and the next
    state use only e^{G_i-G_j} (j<=i), e^{G_i} and e^{G_C-G_j}, all <= 1, so it is stable."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    out_dtype = q.dtype
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    C = chunk_size
    pad = (-T) % C
    q, k, v = (x.to(cd).transpose(1, 2) for x in (q, k, v))          # [B,H,T,*]
    g, beta = (x.to(cd).transpose(1, 2) for x in (g, beta))          # [B,H,T]
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    N = (T + pad) // C
    q, k, v = (x.reshape(B, H, N, C, -1) for x in (q, k, v))
    g, beta = g.reshape(B, H, N, C), beta.reshape(B, H, N, C)
    q = q * scale
    G = g.cumsum(-1)
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~incl, float("-inf")).exp()   # e^{G_i-G_j}, j<=i
    A = (beta[..., None] * (k @ k.mT) * decay).tril(-1)
    rhs = torch.cat([beta[..., None] * v, (beta * G.exp())[..., None] * k], dim=-1)
    sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    u0, w = sol[..., :V], sol[..., V:]
    qk = (q @ k.mT) * decay
    q_dec = q * G.exp()[..., None]
    G_last = G[..., -1]
    k_dec = k * (G_last[..., None] - G).exp()[..., None]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cd)
    outs = []
    for n in range(N):
        u = u0[:, :, n] - w[:, :, n] @ S
        outs.append(q_dec[:, :, n] @ S + qk[:, :, n] @ u)
        S = S * G_last[:, :, n].exp()[..., None, None] + k_dec[:, :, n].mT @ u
    o = torch.stack(outs, 2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)


_FLA_OP = None


def gdn_gates(a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor) -> tuple[Tensor, Tensor]:
    """(log decay g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b)), both fp32."""
    return -A_log.float().exp() * F.softplus(a.float() + dt_bias), torch.sigmoid(b.float())


def gated_delta_rule(q, k, v, a, b, A_log, dt_bias, scale, gate_in_kernel=False, in_graph=False, qk_normed=False):
    """The gated delta rule on the raw gate projections a, b ([B, T, H]): fla's Triton kernels on CUDA
    (imported only there), our chunked PyTorch version elsewhere; q and k are L2-normalised here (on CUDA
    inside fla's kernel). `gate_in_kernel` (CUDA): fla computes the decay (fused with its chunk cumsum) and
    beta inside its kernels, gradients of A_log and dt_bias included. `in_graph` (CUDA, with gate_in_kernel):
    through our custom op, so torch.compile keeps the whole model in one graph (load_cuda_ops); there q and k
    may come `qk_normed` by the fused conv."""
    global _FLA_OP
    if q.is_cuda:
        dt = torch.bfloat16
        if in_graph and gate_in_kernel:
            if not qk_normed:
                q, k = _l2norm(q), _l2norm(k)
            return load_cuda_ops().gdn(q.to(dt), k.to(dt), v.to(dt), a.contiguous(), b.contiguous(), A_log,
                                       dt_bias, scale)[0]
        if _FLA_OP is None:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            _FLA_OP = chunk_gated_delta_rule
        if gate_in_kernel:
            o, _ = _FLA_OP(q.to(dt), k.to(dt), v.to(dt), a, b, scale=scale, use_qk_l2norm_in_kernel=True,
                           use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True)
            return o
        g, beta = gdn_gates(a, b, A_log, dt_bias)
        o, _ = _FLA_OP(q.to(dt), k.to(dt), v.to(dt), g, beta.to(dt), scale=scale, use_qk_l2norm_in_kernel=True)
        return o
    g, beta = gdn_gates(a, b, A_log, dt_bias)
    o, _ = chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True)
    return o


_CUDA_OPS = None


def load_cuda_ops():
    """The mixer's CUDA kernels as torch custom ops, registered once per process (CUDA only; issue 21).
    `qkv_conv`: the short causal conv + SiLU of q, k, v, with q and k L2-normalised per head, in one Triton
    kernel forward and two backward (the gradient at the conv output, recomputing the conv from its input,
    with the conv-weight sums; then the shifted sum for the input gradient), where torch.compile made five
    kernels plus a concatenation of it and fla normalised q and k in kernels of its own.
    `gdn`: fla's chunked gated delta rule (gate and beta computed in its kernels) called through its
    forward and backward functions; as a custom op it sits inside the compiled graph, where fla's own entry
    point (`torch.compiler.disable`) broke the graph at every layer and left the gradient glue around it to
    eager kernels."""
    global _CUDA_OPS
    if _CUDA_OPS is None and hasattr(torch.ops.pgolf, "gdn"):   # registered by another copy of this file
        _CUDA_OPS = torch.ops.pgolf
    if _CUDA_OPS is not None:
        return _CUDA_OPS
    import fla
    if not fla.__version__.startswith("0.6."):   # the gdn op calls fla's internal functions, as of 0.6
        raise RuntimeError(f"FUSED_CONV/GDN_IN_GRAPH call fla 0.6's internal functions; fla {fla.__version__} is "
                           "installed: pip install flash-linear-attention==0.6.0, or FUSED_CONV=0 GDN_IN_GRAPH=0")
    import triton
    import triton.language as tl
    from fla.ops.common.gate import fused_beta_sigmoid_bwd, fused_beta_sigmoid_fwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd, chunk_gated_delta_rule_fwd

    # tiles of 32 time steps x one head; warps autotuned on the GPU (before the timer, in the warm-up); one
    # config under TRITON_INTERPRET=1 (the CPU interpreter, for checking the kernels without a GPU)
    configs = [triton.Config({}, num_warps=w) for w in ((4,) if os.environ.get("TRITON_INTERPRET") == "1"
                                                        else (4, 8))]

    global _conv_tile   # a module global: Triton finds the jit functions a kernel calls in its globals

    @triton.jit
    def _conv_tile(xb, w, t, c, T, C, sxt, K: tl.constexpr, D: tl.constexpr, BT: tl.constexpr):
        # the causal conv's output at rows t, channels c, in fp32: sum_i w[i] x[t - (K-1) + i], x = 0 before 0
        u = tl.zeros((BT, D), dtype=tl.float32)
        for i in tl.static_range(K):
            ts = t - (K - 1) + i
            xv = tl.load(xb + ts[:, None] * sxt + c[None, :], mask=((ts >= 0) & (ts < T))[:, None], other=0.0)
            u += xv.to(tl.float32) * tl.load(w + i * C + c).to(tl.float32)[None, :]
        return u

    @triton.autotune(configs=configs, key=["T", "C", "NORM"])
    @triton.jit
    def conv_fwd_kernel(x, w, out, T, C, sxb, sxt, K: tl.constexpr, D: tl.constexpr, NORM: tl.constexpr,
                        BT: tl.constexpr):
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * D + tl.arange(0, D)
        u = _conv_tile(x + tl.program_id(2).to(tl.int64) * sxb, w, t, c, T, C, sxt, K, D, BT)
        y = u * tl.sigmoid(u)
        if NORM:
            y = y / tl.sqrt(tl.sum(y * y, 1) + 1e-6)[:, None]
        ob = out + tl.program_id(2).to(tl.int64) * T * C
        tl.store(ob + t[:, None] * C + c[None, :], y.to(out.dtype.element_ty), mask=(t < T)[:, None])

    @triton.autotune(configs=configs, key=["T", "C", "NORM"])
    @triton.jit
    def conv_bwd_du_kernel(x, w, dout, du, dw, T, C, NT, sxb, sxt, K: tl.constexpr, D: tl.constexpr,
                           NORM: tl.constexpr, BT: tl.constexpr):
        # the gradient at the conv's output (through SiLU and the L2 norm), and this block's conv-weight sums
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * D + tl.arange(0, D)
        xb = x + tl.program_id(2).to(tl.int64) * sxb
        u = _conv_tile(xb, w, t, c, T, C, sxt, K, D, BT)
        off = tl.program_id(2).to(tl.int64) * T * C + t[:, None] * C + c[None, :]
        g = tl.load(dout + off, mask=(t < T)[:, None], other=0.0).to(tl.float32)
        s = tl.sigmoid(u)
        if NORM:
            y = u * s
            r = 1.0 / tl.sqrt(tl.sum(y * y, 1) + 1e-6)
            yn = y * r[:, None]
            g = (g - yn * tl.sum(g * yn, 1)[:, None]) * r[:, None]
        d = g * s * (1.0 + u * (1.0 - s))
        tl.store(du + off, d.to(du.dtype.element_ty), mask=(t < T)[:, None])
        row = (tl.program_id(2) * NT + tl.program_id(0)) * K
        for i in range(K):   # not unrolled: one reduction at a time (half the registers at 8 warps)
            ts = t - (K - 1) + i
            xv = tl.load(xb + ts[:, None] * sxt + c[None, :], mask=((ts >= 0) & (ts < T))[:, None], other=0.0)
            tl.store(dw + (row + i) * C + c, tl.sum(d * xv.to(tl.float32), 0))

    @triton.autotune(configs=configs, key=["T", "C"])
    @triton.jit
    def conv_bwd_dx_kernel(du, w, dx, T, C, sdb, sdt, K: tl.constexpr, D: tl.constexpr, BT: tl.constexpr):
        # dx[t] = sum_j w[K-1-j] du[t+j]
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * D + tl.arange(0, D)
        db = du + tl.program_id(2).to(tl.int64) * T * C
        acc = tl.zeros((BT, D), dtype=tl.float32)
        for j in tl.static_range(K):
            tj = t + j
            g = tl.load(db + tj[:, None] * C + c[None, :], mask=(tj < T)[:, None], other=0.0)
            acc += g.to(tl.float32) * tl.load(w + (K - 1 - j) * C + c).to(tl.float32)[None, :]
        dxb = dx + tl.program_id(2).to(tl.int64) * sdb
        tl.store(dxb + t[:, None] * sdt + c[None, :], acc.to(dx.dtype.element_ty), mask=(t < T)[:, None])

    BT = 32

    @torch.library.custom_op("pgolf::qkv_conv", mutates_args=())
    def qkv_conv(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C3 = x.shape
        C = C3 // 3
        x = x if x.stride(-1) == 1 else x.contiguous()
        outs = []
        for p, w in enumerate((wq, wk, wv)):
            o = x.new_empty(B, T, C)
            conv_fwd_kernel[(triton.cdiv(T, BT), C // head_dim, B)](
                x[..., p * C:(p + 1) * C], w.contiguous(), o, T, C, x.stride(0), x.stride(1),
                K=w.size(0), D=head_dim, NORM=p < 2, BT=BT)
            outs.append(o)
        return tuple(outs)

    @qkv_conv.register_fake
    def _(x, wq, wk, wv, head_dim):
        B, T, C3 = x.shape
        return tuple(x.new_empty(B, T, C3 // 3) for _ in range(3))

    @torch.library.custom_op("pgolf::qkv_conv_bwd", mutates_args=())
    def qkv_conv_bwd(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
                     head_dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, T, C3 = x.shape
        C, NT = C3 // 3, triton.cdiv(T, BT)
        x = x if x.stride(-1) == 1 else x.contiguous()
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        dws = []
        for p, (w, g) in enumerate(((wq, dq), (wk, dk), (wv, dv))):
            xp, w = x[..., p * C:(p + 1) * C], w.contiguous()
            du = torch.empty_like(g, memory_format=torch.contiguous_format)
            part = x.new_empty(B * NT, w.size(0), C, dtype=torch.float32)
            grid = (NT, C // head_dim, B)
            conv_bwd_du_kernel[grid](xp, w, g.contiguous(), du, part, T, C, NT, x.stride(0), x.stride(1),
                                     K=w.size(0), D=head_dim, NORM=p < 2, BT=BT)
            dxp = dx[..., p * C:(p + 1) * C]
            conv_bwd_dx_kernel[grid](du, w, dxp, T, C, dx.stride(0), dx.stride(1), K=w.size(0), D=head_dim, BT=BT)
            dws.append(part.sum(0).to(w.dtype))
        return dx, *dws

    @qkv_conv_bwd.register_fake
    def _(x, wq, wk, wv, dq, dk, dv, head_dim):
        return torch.empty_like(x), torch.empty_like(wq), torch.empty_like(wk), torch.empty_like(wv)

    def qkv_conv_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:4])
        ctx.head_dim = inputs[4]

    def qkv_conv_backward(ctx, dq, dk, dv):
        return *torch.ops.pgolf.qkv_conv_bwd(*ctx.saved_tensors, dq, dk, dv, ctx.head_dim), None

    qkv_conv.register_autograd(qkv_conv_backward, setup_context=qkv_conv_setup)

    @torch.library.custom_op("pgolf::gdn", mutates_args=())
    def gdn(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor,
            scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        beta = fused_beta_sigmoid_fwd(b)
        g, o, A, *_ = chunk_gated_delta_rule_fwd(q=q, k=k, v=v, g=a, beta=beta, scale=scale, initial_state=None,
                                                 output_final_state=False, use_gate_in_kernel=True, A_log=A_log,
                                                 dt_bias=dt_bias)
        return o, g, beta, A

    @gdn.register_fake
    def _(q, k, v, a, b, A_log, dt_bias, scale):
        B, T, H, _ = q.shape
        return (torch.empty_like(v), a.new_empty(B, T, H, dtype=torch.float32),
                b.new_empty(B, T, H, dtype=torch.float32), k.new_empty(B, T, H, 64))

    @torch.library.custom_op("pgolf::gdn_bwd", mutates_args=())
    def gdn_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, A_log: Tensor,
                dt_bias: Tensor, g: Tensor, beta: Tensor, A: Tensor,
                scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        dq, dk, dv, dbeta, da, _, dA_log, ddt_bias = chunk_gated_delta_rule_bwd(
            q=q, k=k, v=v, g=g, beta=beta, A=A, scale=scale, initial_state=None, do=do.contiguous(), dht=None,
            use_gate_in_kernel=True, g_input=a, A_log=A_log, dt_bias=dt_bias)
        db = fused_beta_sigmoid_bwd(b, dbeta)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype),
                dA_log.to(A_log.dtype), ddt_bias.to(dt_bias.dtype))

    @gdn_bwd.register_fake
    def _(do, q, k, v, a, b, A_log, dt_bias, g, beta, A, scale):
        return tuple(torch.empty_like(t) for t in (q, k, v, a, b, A_log, dt_bias))

    def gdn_setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[:7], *output[1:])
        ctx.scale = inputs[7]

    def gdn_backward(ctx, do, *_):
        return *torch.ops.pgolf.gdn_bwd(do, *ctx.saved_tensors, ctx.scale), None

    gdn.register_autograd(gdn_backward, setup_context=gdn_setup)
    _CUDA_OPS = torch.ops.pgolf
    return _CUDA_OPS


class CastedLinear(nn.Linear):
    """fp32 master weight, computed in the autocast dtype; int-b fake quantization (STE) blended in by
    the `qat` buffer (0 or 1), so switching QAT on changes no graph and needs no recompile."""

    def __init__(self, in_f, out_f, bits=6, zero_init=False, std=None):
        super().__init__(in_f, out_f, bias=False)
        self.bits = bits
        self.register_buffer("qat", torch.zeros(()), persistent=False)
        self.register_buffer("qat_mult", torch.ones(()), persistent=False)
        with torch.no_grad():
            if zero_init:
                self.weight.zero_()
            else:
                self.weight.normal_(0.0, std if std is not None else in_f ** -0.5)

    def effective_weight(self) -> Tensor:
        w = self.weight
        return w + self.qat * (fake_quant_rows(w, self.bits, self.qat_mult) - w).detach()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight().to(x.dtype))


class SoftcapLinearCrossEntropy(torch.autograd.Function):
    """mean CE(softcap * tanh(x @ w.T / softcap), y) over the rows of x, chunked over rows, with the
    gradients computed in the forward pass chunk by chunk (the loss is the graph's last node, so its
    upstream gradient is a scalar that only rescales them). No [rows, vocab] tensor outlives its chunk:
    the unfused loss writes the full fp32 logits (98,304 x 8,192 x 4 B = 3.2 GB at the record config) and
    reads them back several times. Matmuls run in `dtype` (bf16 under autocast); softcap, log-sum-exp and
    the softmax gradient in fp32; dW accumulates in fp32 over chunks."""

    @staticmethod
    def forward(ctx, x, w, y, softcap: float, chunk: int, dtype):
        n = x.size(0)
        xd, wd = x.to(dtype), w.to(dtype)
        loss, dxs, dw = x.new_zeros((), dtype=torch.float32), [], None
        for s in range(0, n, chunk):
            xc, yc = xd[s:s + chunk], y[s:s + chunk]
            z = (xc @ wd.t()).float()
            t = torch.tanh(z / softcap) if softcap > 0 else None
            if t is not None:
                z = softcap * t
            lse = torch.logsumexp(z, dim=-1)
            loss = loss + (lse - z.gather(1, yc[:, None]).squeeze(1)).sum()
            onehot = torch.arange(z.size(1), device=z.device)[None, :] == yc[:, None]
            g = torch.exp(z - lse[:, None]) - onehot.float()
            if t is not None:
                g = g * (1.0 - t * t)
            g = (g / n).to(dtype)
            dxs.append(g @ wd)
            dwc = (g.t() @ xc).float()
            dw = dwc if dw is None else dw + dwc
        ctx.save_for_backward(torch.cat(dxs).to(x.dtype), dw.to(w.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad):
        dx, dw = ctx.saved_tensors
        return dx * grad.to(dx.dtype), dw * grad.to(dw.dtype), None, None, None, None


def softcap_cross_entropy(x: Tensor, w: Tensor, y: Tensor, softcap: float, reduction: str = "mean",
                          chunk: int = 0) -> Tensor:
    """The loss of logits = softcap * tanh(x @ w.T / softcap) against y (x [..., D], w [V, D], y [...]).
    `chunk` > 0 with reduction "mean": the fused chunked path above; otherwise full logits (evaluation and
    TTT need per-token losses). Matmuls in the autocast dtype when autocast is on."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    if chunk > 0 and reduction == "mean":
        return SoftcapLinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), w, y.reshape(-1), softcap, chunk, dtype)
    logits = F.linear(x.to(dtype), w.to(dtype)).float()
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction=reduction)
    return loss.view(y.shape) if reduction == "none" else loss


def rms_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def causal_depthwise_conv(x: Tensor, w: Tensor) -> Tensor:
    """Short causal depthwise conv over time as a sum of shifted products. x [B,T,C], w [K,C]."""
    K = w.size(0)
    xp = F.pad(x, (0, 0, K - 1, 0))
    T = x.size(1)
    y = xp[:, 0:T] * w[0].to(x.dtype)
    for i in range(1, K):
        y = y + xp[:, i:i + T] * w[i].to(x.dtype)
    return y


class GatedDeltaNet(nn.Module):
    """GDN mixer with our own projections (so QAT and int6 cover all of them): q,k,v -> short conv ->
    SiLU, L2-normalised q/k, beta = sigmoid(b), log decay g = -exp(A_log) * softplus(a + dt_bias),
    gated RMSNorm on the output, o_proj. k_proj/v_proj may be module objects shared with another layer."""

    def __init__(self, dim, num_heads, head_dim, conv_size, output_gate, kv=None, gate_in_kernel=False,
                 fused_conv=False, in_graph=False):
        super().__init__()
        self.h, self.d, self.gate_in_kernel = num_heads, head_dim, bool(gate_in_kernel)
        # the fused conv normalises whole heads inside one Triton tile (a power-of-two head dim), and runs only
        # with the in-graph GDN op: compiled with fla's own entry point (a graph break right after our op), a
        # run of the record config died with SIGSEGV on the H100 (torch 2.11; eager was right)
        self.in_graph = bool(in_graph) and self.gate_in_kernel
        self.fused_conv = bool(fused_conv) and self.in_graph and head_dim & (head_dim - 1) == 0 and head_dim <= 256
        inner = num_heads * head_dim
        self.q_proj = CastedLinear(dim, inner)
        if kv is None:
            kv = (CastedLinear(dim, inner), CastedLinear(dim, inner))
        self.k_proj, self.v_proj = kv
        self.a_proj = CastedLinear(dim, num_heads, std=0.02)
        self.b_proj = CastedLinear(dim, num_heads, std=0.02)
        self.g_proj = CastedLinear(dim, inner) if output_gate else None
        self.o_proj = CastedLinear(inner, dim, zero_init=True)
        bound = conv_size ** -0.5
        self.conv_q = nn.Parameter(torch.empty(conv_size, inner).uniform_(-bound, bound))
        self.conv_k = nn.Parameter(torch.empty(conv_size, inner).uniform_(-bound, bound))
        self.conv_v = nn.Parameter(torch.empty(conv_size, inner).uniform_(-bound, bound))
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty(num_heads).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        self.norm_weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        # two GEMMs: q|k|v, which the conv reads whole (its gradient needs no concatenation with the others'),
        # and a|b|g (separate parameters, so sharing, QAT and int6 are unchanged)
        qkv = F.linear(x, torch.cat([p.effective_weight() for p in (self.q_proj, self.k_proj, self.v_proj)])
                       .to(x.dtype))
        rest = [self.a_proj, self.b_proj] + ([self.g_proj] if self.g_proj is not None else [])
        y = F.linear(x, torch.cat([p.effective_weight() for p in rest]).to(x.dtype))
        a, b = y[..., :self.h], y[..., self.h:2 * self.h]
        if self.fused_conv and x.is_cuda:
            q, k, v = load_cuda_ops().qkv_conv(qkv, self.conv_q, self.conv_k, self.conv_v, self.d)
        else:
            q, k, v = (F.silu(causal_depthwise_conv(t, w)) for t, w in
                       zip(qkv.split(self.h * self.d, -1), (self.conv_q, self.conv_k, self.conv_v)))
        q, k, v = (t.view(B, T, self.h, self.d) for t in (q, k, v))
        o = gated_delta_rule(q, k, v, a, b, self.A_log, self.dt_bias, self.d ** -0.5, self.gate_in_kernel,
                             self.in_graph, qk_normed=self.fused_conv and x.is_cuda)
        o = rms_norm(o.float()) * self.norm_weight
        if self.g_proj is not None:
            o = o * F.silu(y[..., 2 * self.h:].float().view(B, T, self.h, self.d))
        return self.o_proj(o.reshape(B, T, -1).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.fc = CastedLinear(dim, dim * mult)
        self.proj = CastedLinear(dim * mult, dim, zero_init=True)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, args, kv=None):
        super().__init__()
        self.mixer = GatedDeltaNet(args.model_dim, args.num_heads, args.head_dim, args.conv_size,
                                   args.gdn_output_gate, kv, args.gate_in_kernel, args.fused_conv,
                                   args.gdn_in_graph)
        self.mlp = MLP(args.model_dim, args.mlp_mult)
        self.mix_scale = nn.Parameter(torch.ones(args.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(args.model_dim))

    def forward(self, x):
        x = x + self.mix_scale.to(x.dtype) * self.mixer(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class BigramHash(nn.Module):
    """Hashed bigram + trigram embeddings (one shared table), projected to the model width."""

    def __init__(self, vocab, dim, model_dim, bits=6):
        super().__init__()
        self.vocab = vocab
        self.table = nn.Parameter(torch.randn(vocab, dim) * 0.02)
        self.proj = CastedLinear(dim, model_dim, zero_init=True)
        self.bits = bits
        self.register_buffer("qat", torch.zeros(()), persistent=False)
        self.register_buffer("qat_mult", torch.ones(()), persistent=False)

    def indices(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        p1 = F.pad(ids, (1, 0))[:, :-1]
        p2 = F.pad(ids, (2, 0))[:, :-2]
        m = self.vocab - 1
        bi = 1 + torch.bitwise_xor(p1 * 92821, ids * 31337) % m
        tri = 1 + torch.bitwise_xor(torch.bitwise_xor(p2 * 1000003, p1 * 92821), ids * 31337) % m
        pos = torch.arange(ids.size(1), device=ids.device)[None, :]
        return bi.masked_fill(pos < 1, 0), tri.masked_fill(pos < 2, 0)

    def forward(self, ids: Tensor) -> Tensor:
        w = self.table
        w = w + self.qat * (fake_quant_rows(w, self.bits, self.qat_mult) - w).detach()
        bi, tri = self.indices(ids)
        return self.proj(F.embedding(bi, w) + F.embedding(tri, w))


class GPT(nn.Module):
    def __init__(self, args, bos_id: int = 1):
        super().__init__()
        self.softcap, self.bos_id = args.logit_softcap, bos_id
        self.ce_chunk = args.ce_chunk_tokens if args.fused_ce else 0
        self.bf16_residual = bool(args.bf16_residual)
        self.tok_emb = nn.Parameter(torch.randn(args.vocab_size, args.model_dim) * args.tied_embed_init_std)
        self.embed_bits = args.embed_bits
        self.register_buffer("qat", torch.zeros(()), persistent=False)
        self.register_buffer("qat_mult", torch.ones(()), persistent=False)
        self.bigram = BigramHash(args.bigram_vocab_size, args.bigram_dim, args.model_dim, args.matrix_bits) \
            if args.bigram_vocab_size > 0 else None
        self.smear = nn.Parameter(torch.full((args.model_dim,), args.smear_init))
        blocks = []
        for i in range(args.num_layers):
            share = args.kv_share_stride > 1 and i % args.kv_share_stride != 0
            kv = (blocks[-1].mixer.k_proj, blocks[-1].mixer.v_proj) if share else None
            blocks.append(Block(args, kv))
        self.blocks = nn.ModuleList(blocks)

    def set_qat(self, on: bool, step_mult: float = 1.0) -> None:
        for m in self.modules():
            if "qat" in m._buffers:
                m.qat.fill_(1.0 if on else 0.0)
                m.qat_mult.fill_(step_mult)

    def forward(self, ids: Tensor, targets: Tensor | None = None, reduction: str = "mean") -> Tensor:
        emb = self.tok_emb
        emb = emb + self.qat * (fake_quant_rows(emb, self.embed_bits, self.qat_mult) - emb).detach()
        x = F.embedding(ids, emb)
        if self.bigram is not None:
            x = x + self.bigram(ids)
        # SmearGate: blend in the previous token's embedding, never across a document start (BOS)
        gate = torch.sigmoid(self.smear) * (ids != self.bos_id)[..., None]
        x = x + gate * (F.pad(x, (0, 0, 1, 0))[:, :-1] - x)
        x = rms_norm(x)
        if self.bf16_residual and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))   # half the residual stream's memory traffic
        for blk in self.blocks:
            x = blk(x)
        x = rms_norm(x)
        if targets is None:
            logits = F.linear(x, emb.to(x.dtype)).float()
            return self.softcap * torch.tanh(logits / self.softcap)
        return softcap_cross_entropy(x, emb, targets, self.softcap, reduction, self.ce_chunk)


def split_params(model: GPT):
    """(muon matrices, adam embeddings, adam scalars/gates/small matrices), each parameter once."""
    muon, embed, scalar = [], [], []
    for name, p in model.named_parameters():   # named_parameters() yields a shared parameter once
        if name == "tok_emb" or name.endswith("bigram.table"):
            embed.append(p)
        elif p.ndim == 2 and min(p.shape) >= 64 and "conv_" not in name:
            muon.append(p)
        else:
            scalar.append(p)
    return muon, embed, scalar


def build_optimizers(args, model: GPT, device):
    muon_p, embed_p, scalar_p = split_params(model)
    cuda = device.type == "cuda"
    ns_fn = None
    if cuda and _compile_enabled(args, device):
        ns_fn = torch.compile(zeropower_via_newtonschulz5)
    muon = Muon(muon_p, lr=args.matrix_lr, momentum=args.muon_momentum, backend_steps=args.muon_backend_steps,
                weight_decay=args.muon_wd, ns_dtype=torch.bfloat16 if cuda else torch.float32, ns_fn=ns_fn)
    adam = torch.optim.AdamW(
        [dict(params=embed_p, lr=args.embed_lr, weight_decay=args.adam_wd, base_lr=args.embed_lr),
         dict(params=scalar_p, lr=args.scalar_lr, weight_decay=0.0, base_lr=args.scalar_lr)],
        betas=(args.beta1, args.beta2), eps=args.adam_eps, fused=cuda, foreach=None if cuda else True)
    for g in muon.param_groups:
        g["base_lr"] = args.matrix_lr
    return [muon, adam]


# -----------------------------------------------------------------------------
# Preflight, distributed setup, logging, main
# -----------------------------------------------------------------------------

def _version_tuple(s: str) -> tuple[int, int, int]:
    nums = []
    for part in re.split(r"[.+\-]", s.strip()):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
        if len(nums) == 3:
            break
    return tuple(nums + [0] * (3 - len(nums)))


def check_fla_triton(capability, fla_version, triton_version):
    """Error message when fla >= 0.5 meets Triton in [3.4, 3.7.1) on Hopper (sm_90): that Triton
    miscompiles fla's chunk_bwd_dqkwg (fla #640) and training gets wrong g/beta gradients; else None."""
    if capability is None or capability[0] != 9 or not fla_version or not triton_version:
        return None
    fv, tv = _version_tuple(fla_version), _version_tuple(triton_version)
    if fv >= (0, 5, 0) and (3, 4, 0) <= tv < (3, 7, 1):
        return (f"refusing to train: flash-linear-attention {fla_version} with Triton {triton_version} on "
                f"Hopper (sm_{capability[0]}{capability[1]}) computes wrong GatedDeltaNet gradients "
                f"(fla issue #640); install triton>=3.7.1 (or use fla<0.5)")
    return None


def _installed_version(dist_name: str):
    try:
        from importlib.metadata import version
        return version(dist_name)
    except Exception:
        return None


def _compile_enabled(args, device) -> bool:
    if args.compile == "auto":
        return device.type == "cuda"
    return args.compile not in ("0", "false", "False", "")


def resolve_device(args, local_rank: int) -> torch.device:
    want = args.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train_step(model, params, optimizers, next_batch, accum: int, world: int, lr_mult: float, momentum: float,
               autocast=nullcontext(), grad_clip: float = 0.0, comm_events=None) -> Tensor:
    """One optimizer step over `accum` micro-batches. Gradients accumulate locally and are all-reduced once,
    after the last micro-batch, through one flat buffer: no collective on the other micro-steps (what
    DDP's no_sync gives) and no DDP bucket state to build in the first timed step. Returns the mean loss."""
    loss_acc = torch.zeros((), device=params[0].device)
    for _ in range(accum):
        x, y = next_batch()
        with autocast:
            loss = model(x, y)
        (loss / accum).backward()
        loss_acc += loss.detach()
    if world > 1:
        if comm_events:
            comm_events[0].record()
        _flat_all_reduce_grads(params, divide_by=world)
        if comm_events:
            comm_events[1].record()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_mult
            if "momentum" in g:
                g["momentum"] = momentum
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_acc / accum


def reset_optimizer_state(optimizers) -> None:
    """Zero every state tensor in place (Muon momenta, Adam moments and step counts): the next step is a
    fresh optimizer's first step, computed on the tensors the warm-up already created."""
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    v.zero_()


def step_time_summary(step_ms: list[float], switches: dict[str, int]) -> str:
    """One log line: median step, the first step and the first step of each phase (QAT, SWA) against it,
    and the in-window stall = the time by which steps slower than 1.5x the median exceed the median."""
    if not step_ms:
        return "step_time median:0.00ms"
    med = float(np.median(step_ms))
    slow = [(i + 1, d) for i, d in enumerate(step_ms) if d > 1.5 * med]
    parts = [f"step_time median:{med:.2f}ms"]
    parts += [f"{name}:{step_ms[s - 1]:.2f}ms@{s}" for name, s in switches.items() if 0 < s <= len(step_ms)]
    parts.append(f"in_window_stall:{sum(d - med for _, d in slow):.0f}ms slow_steps:{len(slow)}")
    parts += [f"{s}:{d:.0f}ms" for s, d in sorted(slow, key=lambda x: -x[1])[:5]]
    return " ".join(parts)


_LOG_PATH = None


def log0(msg: str, console: bool = True) -> None:
    """The one logging function: rank 0 writes stdout and ARTIFACT_DIR/train.log."""
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    if console:
        print(msg, flush=True)
    if _LOG_PATH is not None:
        with open(_LOG_PATH, "a", encoding="utf-8") as f:
            f.write(msg + "\n")


def main() -> None:
    global _LOG_PATH
    args = Hyperparameters()
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(args, local_rank)
    cuda = device.type == "cuda"
    if cuda:
        msg = check_fla_triton(torch.cuda.get_device_capability(device),
                               _installed_version("flash-linear-attention") or _installed_version("fla-core"),
                               _installed_version("triton"))
        if msg and args.fla_triton_check:
            sys.exit(msg)
        if msg:
            print(f"WARNING (FLA_TRITON_CHECK=0): {msg}", file=sys.stderr)
        try:
            importlib.import_module("fla.ops.gated_delta_rule")  # fail before any work, with a clear message
        except ImportError as e:
            sys.exit(f"CUDA run needs flash-linear-attention: pip install flash-linear-attention==0.6.0 ({e})")
        if args.fused_conv or args.gdn_in_graph:
            try:
                load_cuda_ops()   # registered before torch.compile traces the model
            except RuntimeError as e:
                sys.exit(str(e))
    if distributed:
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    os.makedirs(args.artifact_dir, exist_ok=True)
    if rank == 0:
        _LOG_PATH = os.path.join(args.artifact_dir, "train.log")
        open(_LOG_PATH, "w").close()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    code = Path(__file__).read_bytes()
    log0(f"seed:{args.seed}")
    log0(f"script_sha256:{hashlib.sha256(code).hexdigest()}")
    log0("Hyperparameters:")
    for k, v in args.items():
        log0(f"  {k}: {v}")
    log0(f"world_size:{world} device:{device} torch:{torch.__version__}")

    # tokenizer, byte tables, validation tokens
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer_path)
    if sp.get_piece_size() > args.vocab_size:
        raise ValueError(f"tokenizer has {sp.get_piece_size()} pieces > VOCAB_SIZE={args.vocab_size}")
    log0(f"tokenizer_path:{args.tokenizer_path} vocab_size:{args.vocab_size} sp_pieces:{sp.get_piece_size()}")
    luts_cpu = build_byte_luts(sp, args.vocab_size)
    luts = {k: v.to(device) for k, v in luts_cpu.items()}
    val_tokens = load_validation_tokens(os.path.join(args.data_path, "fineweb_val_*.bin"), args.val_max_tokens)
    val_bytes = count_bytes(val_tokens.numpy(), luts_cpu)
    log0(f"val_tokens:{val_tokens.numel() - 1}")
    log0(f"val_bytes:{val_bytes}")
    log0(f"val_bytes_per_token:{val_bytes / (val_tokens.numel() - 1):.6f}")

    # model and optimizers
    base_model = GPT(args, bos_id=sp.bos_id() if sp.bos_id() >= 0 else -1).to(device)
    n_params = sum(p.numel() for p in base_model.parameters())
    log0(f"model_params:{n_params}")
    use_compile = _compile_enabled(args, device)
    if use_compile:
        torch._dynamo.config.cache_size_limit = 64
        model = torch.compile(base_model, dynamic=False)
    else:
        model = base_model
    log0(f"compile:{int(use_compile)}")
    optimizers = build_optimizers(args, base_model, device)
    params = list(base_model.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    accum = args.grad_accum_steps or max(1, 8 // world)
    local_tokens = args.train_batch_tokens // (world * accum)
    if local_tokens * world * accum != args.train_batch_tokens or local_tokens % args.train_seq_len:
        raise ValueError(f"TRAIN_BATCH_TOKENS={args.train_batch_tokens} must split into {world} ranks x {accum} "
                         f"micro-steps of whole TRAIN_SEQ_LEN={args.train_seq_len} sequences")
    log0(f"grad_accum_steps:{accum} local_batch_tokens:{local_tokens}")
    train_pattern = os.path.join(args.data_path, "fineweb_train_*.bin")
    budget = args.artifact_target_bytes - len(code) if args.artifact_target_bytes > 0 else 0
    ema = [p.detach().clone().float() for p in params]
    swa = [torch.zeros_like(e) for e in ema] if args.swa_enabled else None
    sync = torch.zeros(1, dtype=torch.float64, device=device)
    comm = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda and world > 1 else None

    def step(loader, lr_mult: float, momentum: float, step_no: int, swa_add: bool) -> Tensor:
        """Train step, then EMA (and an SWA snapshot): the same calls in the warm-up and the timed loop."""
        loss = train_step(model, params, optimizers, lambda: loader.next_batch(local_tokens, args.train_seq_len),
                          accum, world, lr_mult, momentum, autocast, args.grad_clip_norm, comm)
        with torch.no_grad():
            decay = min(args.ema_decay, (1.0 + step_no) / (10.0 + step_no))   # EMA warm-up for short runs
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
            if swa_add:
                torch._foreach_add_(swa, ema)
        return loss

    def max_elapsed_ms(t_start: float) -> float:
        """The one host sync per step: every rank takes the max elapsed time -> same schedule and stop."""
        if cuda:
            torch.cuda.synchronize()
        sync.fill_(1000.0 * (time.perf_counter() - t_start))
        if world > 1:
            dist.all_reduce(sync, op=dist.ReduceOp.MAX)
        return float(sync.item())

    def qat_step_mult() -> float:
        """The grid the size budget will ask for, predicted from the current weights (rank 0's value)."""
        with torch.no_grad():
            k = torch.tensor([budget_step_mult(SizeModel(base_model.state_dict(), args), budget)], device=device)
        if world > 1:
            dist.broadcast(k, 0)
        return float(k)

    # warm-up outside the timer: every call of the timed loop runs here first (train steps without and
    # with QAT, EMA, an SWA snapshot, the QAT grid prediction and its broadcast, the timing all-reduce) and
    # the evaluation and TTT shapes; then weights, optimizer state, EMA, SWA and QAT flags are reset in
    # place (same tensors: no compiled graph, allocation or collective in the timed window is new), and
    # an all-reduce makes every rank finish the warm-up before any rank starts the clock.
    t_w = time.perf_counter()
    if args.warmup_steps > 0:
        init_model = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
        loader = DistributedTokenLoader(train_pattern, rank, world, device)
        for i in range(args.warmup_steps):
            base_model.set_qat(i >= args.warmup_steps // 2, 1.5)
            step(loader, 1.0, args.muon_momentum_warmup_start, i + 1, swa is not None)
            max_elapsed_ms(t_w)
            if i + 1 in (1, 2, args.warmup_steps) or (i + 1) % 10 == 0:
                log0(f"warmup_step:{i + 1}/{args.warmup_steps}")
        if args.qat_start_frac < 1.0:
            qat_step_mult()
        if use_compile:   # eval and TTT calls too (same shapes and strides: x, y are views of [B, L+1])
            Lw = min(args.eval_seq_len, val_tokens.numel() - 1)
            with torch.inference_mode(), autocast:   # inputs made inside: inference tensors, as in eval
                sw = torch.zeros(args.eval_batch_seqs, Lw + 1, dtype=torch.int64, device=device)
                model(sw[:, :-1], sw[:, 1:], reduction="none")
            sw = torch.zeros(args.ttt_batch_seqs, Lw + 1, dtype=torch.int64, device=device)
            with autocast:
                model(sw[:, :-1], sw[:, 1:], reduction="none").sum().backward()
        with torch.no_grad():
            base_model.set_qat(False)
            base_model.load_state_dict(init_model, strict=True)   # copies into the same tensors
            reset_optimizer_state(optimizers)
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            torch._foreach_copy_(ema, [p.detach().float() for p in params])
            if swa is not None:
                torch._foreach_zero_(swa)
        del init_model
    # compilation leaves millions of long-lived Python objects; a full GC pass over them stalls a rank for
    # ~0.5 s at random steps (and the others wait in the all-reduce): collect once, then freeze them
    gc.collect()
    gc.freeze()
    warm = torch.tensor([1000.0 * (time.perf_counter() - t_w)] * 2, dtype=torch.float64, device=device)
    warm[1].neg_()
    if world > 1:
        dist.all_reduce(warm, op=dist.ReduceOp.MAX)
    log0(f"warmup_time:{float(warm[0]):.0f}ms")
    log0(f"warmup_rank_spread:{float(warm[0] + warm[1]):.0f}ms")

    # training: wall-clock-aware schedule, EMA every step, late QAT, SWA over the end of the warmdown
    torch.manual_seed(args.seed)
    loader = DistributedTokenLoader(train_pattern, rank, world, device)
    swa_count, budget_ms = 0, 1000.0 * args.max_wallclock_seconds
    elapsed_ms, step_no, qat_on = 0.0, 0, False
    step_ms, comm_ms, switches = [], [], {"first": 1}
    t0 = time.perf_counter()
    while True:
        progress = step_no / max(1, args.iterations)
        if budget_ms > 0:
            progress = max(progress, elapsed_ms / budget_ms)
        mult = lr_multiplier(progress, args.warmdown_frac, args.min_lr_mult)
        if not qat_on and args.qat_start_frac < 1.0 and progress >= args.qat_start_frac:
            k = qat_step_mult()   # train on the grid the size budget will ask for
            base_model.set_qat(True, k)
            qat_on, switches["qat"] = True, step_no + 1
            log0(f"qat:enabled step:{step_no} train_time:{elapsed_ms:.0f}ms step_mult:{k:.4f}")
        frac = min(1.0, step_no / max(1, args.muon_momentum_warmup_steps))
        momentum = (1 - frac) * args.muon_momentum_warmup_start + frac * args.muon_momentum
        swa_add = (swa is not None and progress >= args.swa_start_frac
                   and (step_no + 1) % max(1, args.swa_every) == 0)
        loss = step(loader, mult, momentum, step_no + 1, swa_add)
        step_no += 1
        if swa_add:
            swa_count += 1
            if swa_count == 1:
                switches["swa"] = step_no
        prev, elapsed_ms = elapsed_ms, max_elapsed_ms(t0)
        step_ms.append(elapsed_ms - prev)
        if comm is not None:
            comm_ms.append(comm[0].elapsed_time(comm[1]))
        step_avg = elapsed_ms / step_no
        over_time = budget_ms > 0 and elapsed_ms + step_avg >= budget_ms
        last = step_no >= args.iterations or over_time
        if step_no <= 5 or step_no % args.train_log_every == 0 or last or step_no in switches.values():
            log0(f"step:{step_no}/{args.iterations} train_loss:{loss.item():.4f} train_time:{elapsed_ms:.0f}ms "
                 f"step_avg:{step_avg:.2f}ms")
        if args.val_loss_every > 0 and step_no % args.val_loss_every == 0 and not last:
            vl, vb = eval_stream(model, val_tokens, args.eval_seq_len, args.eval_seq_len, args.eval_batch_seqs,
                                 luts, device, autocast, rank, world)
            log0(f"step:{step_no}/{args.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f}")
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter() - elapsed_ms / 1000.0   # validation is not training time
        if last:
            if over_time and step_no < args.iterations:
                log0(f"stopping_early: wallclock_cap train_time:{elapsed_ms:.0f}ms "
                     f"step:{step_no}/{args.iterations}")
            break
    log0(f"train_time:{elapsed_ms:.0f}ms steps:{step_no} step_avg:{elapsed_ms / max(1, step_no):.2f}ms")
    log0(step_time_summary(step_ms, switches))
    if comm_ms:
        log0(f"grad_allreduce_ms median:{float(np.median(comm_ms)):.2f} max:{max(comm_ms):.2f}")
    if cuda:
        log0(f"peak_memory_allocated:{torch.cuda.max_memory_allocated() // 2**20}MiB")

    # final weights: SWA average of EMA snapshots when there are any, else the EMA
    base_model.set_qat(False)
    with torch.no_grad():
        if swa_count > 0:
            torch._foreach_copy_(params, [s / swa_count for s in swa])
            log0(f"final_weights:swa snapshots:{swa_count}")
        else:
            torch._foreach_copy_(params, ema)
            log0("final_weights:ema")
    ema = swa = None   # free them (the step closure is not called again)
    # (the model has no dropout or batch norm: train/eval mode changes nothing, so it is never switched,
    # which keeps the compiled graphs' guards the same as in the warm-up)
    if args.prequant_eval:   # the quantization penalty = roundtrip minus this (label is a diagnostic)
        t_e = time.perf_counter()
        vl, vb = eval_stream(model, val_tokens, args.eval_seq_len, args.eval_seq_len, args.eval_batch_seqs, luts,
                             device, autocast, rank, world)
        log0(f"diagnostic_prequant val_loss:{vl:.8f} val_bpb:{vb:.8f} "
             f"eval_time:{1000 * (time.perf_counter() - t_e):.0f}ms")

    # artifact: int6 + compression; total = code bytes + artifact bytes
    artifact = os.path.join(args.artifact_dir, "final_model.int6.ptz")
    if rank == 0:
        t_q = time.perf_counter()
        info = save_artifact(base_model.state_dict(), artifact, args, budget)
        method = info["method"]
        log0(f"quant_step_mult:{info['step_mult']:.4f} estimated_bytes:{info['estimate']} budget_bytes:{budget}")
        log0(f"Serialized model int6+{method}: {info['bytes']} bytes ({1000 * (time.perf_counter() - t_q):.0f}ms)")
        log0(f"serialize_phases size_model:{1000 * info['size_model_s']:.0f}ms quantize:{1000 * info['quantize_s']:.0f}ms "
             f"compress:{1000 * info['compress_s']:.0f}ms raw_bytes:{info['raw_bytes']} threads:{info['threads']}")
        log0(f"Code size: {len(code)} bytes")
        log0(f"Total submission size int6+{method}: {len(code) + os.path.getsize(artifact)} bytes")
    if distributed:
        dist.barrier()

    # roundtrip: strict load of the dequantized artifact, then plain, sliding and TTT evaluation
    base_model.load_state_dict(load_artifact(artifact), strict=True)
    t_e = time.perf_counter()
    vl, vb = eval_stream(model, val_tokens, args.eval_seq_len, args.eval_seq_len, args.eval_batch_seqs, luts,
                         device, autocast, rank, world)
    log0(f"final_int6_roundtrip_exact val_loss:{vl:.8f} val_bpb:{vb:.8f}")
    log0(f"roundtrip_eval_time:{1000 * (time.perf_counter() - t_e):.0f}ms")
    t_e = time.perf_counter()
    vl, vb = eval_stream(model, val_tokens, args.eval_seq_len, args.eval_stride, args.eval_batch_seqs, luts,
                         device, autocast, rank, world)
    log0(f"final_int6_sliding_window_exact val_loss:{vl:.8f} val_bpb:{vb:.8f}")
    log0(f"sliding_eval_time:{1000 * (time.perf_counter() - t_e):.0f}ms")
    if args.ttt_enabled:
        t_e = time.perf_counter()
        vl, vb = eval_ttt(args, model, base_model, val_tokens, luts, device, autocast, rank, world)
        if cuda:
            torch.cuda.synchronize()
        log0(f"legal_ttt_exact val_loss:{vl:.8f} val_bpb:{vb:.8f} "
             f"eval_time:{1000 * (time.perf_counter() - t_e):.0f}ms")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is written and the process group destroyed. Skip the interpreter's teardown: there
        # gloo's worker threads can still be destroyed while joinable and abort a rank that has finished
        # its work ("terminate called without an active exception", SIGABRT; seen once in CI on a 2-rank
        # CPU run), and torchrun would then call a finished seed failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
