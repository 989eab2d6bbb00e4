"""The payload's mixer custom ops (`load_cuda_ops`) against its plain PyTorch path, without a GPU.

Runs where Triton and fla are importable: on a CPU machine under Triton's interpreter (TRITON_INTERPRET=1 is
set here unless given; `pip install --target DIR triton==3.7.1 einops` and `fla-core==0.6.0
flash-linear-attention==0.6.0 --no-deps`, then PYTHONPATH=DIR), or on a GPU.
- `qkv_conv`: our Triton kernels (conv + SiLU + q/k L2 norm, forward and both backward kernels) against
  `causal_depthwise_conv` + SiLU + `_l2norm`, output and the gradients of the input and of the three conv
  weights, in fp32 and in bf16, at a length that is not a multiple of the 32-step tile.
- `gdn` wiring: fla's kernels do not run in the interpreter, so fla's forward and backward functions are
  replaced by a PyTorch implementation of the same contract (`chunk_gated_delta_rule_torch`, gradients by
  autograd); what is checked is our op around them (fake shapes and strides, saved tensors, the gradient
  order, the backward op) eagerly and under torch.compile(fullgraph=True), against the plain path. On a GPU,
  bench/model_step.py's BENCH_CHECK=1 compares the op with fla's real kernels.
Prints relative L2 differences and writes bench/results/mixer_ops_check.json; exit 1 if one is off
(fp32: 1e-5; bf16: 2e-2, the rounding of bf16 storage).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchlib import RESULTS, load_payload, write_result  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_conv(tg, ops, dtype, dev) -> dict:
    torch.manual_seed(0)
    B, T, H, D, K = 2, 80, 2, 16, 4
    C = H * D
    x0 = (torch.randn(B, T, 3 * C) * 2).to(dev, dtype)
    w0 = [torch.randn(K, C).to(dev) * 0.5 for _ in range(3)]
    up = [torch.randn(B, T, C).to(dev, dtype) for _ in range(3)]

    def plain(x, ws):
        outs = []
        for p, w in enumerate(ws):
            y = F.silu(tg.causal_depthwise_conv(x[..., p * C:(p + 1) * C], w))
            outs.append(tg._l2norm(y.view(B, T, H, D)).view(B, T, C) if p < 2 else y)
        return outs

    res = {}
    for name, fn in (("plain", plain), ("op", lambda x, ws: ops.qkv_conv(x, *ws, D))):
        x, ws = x0.clone().requires_grad_(), [w.clone().requires_grad_() for w in w0]
        outs = fn(x, ws)
        sum((o.float() * u.float()).sum() for o, u in zip(outs, up)).backward()
        res[name] = ([o.detach() for o in outs], x.grad, [w.grad for w in ws])
    (po, pdx, pdw), (oo, odx, odw) = res["plain"], res["op"]
    return {**{f"out_{n}": rel(o, p) for n, o, p in zip("qkv", oo, po)}, "dx": rel(odx, pdx),
            **{f"dw_{n}": rel(o, p) for n, o, p in zip("qkv", odw, pdw)}}


def fla_stand_ins(tg):
    """fla's gated-delta-rule forward/backward and beta sigmoid, as PyTorch functions of the same contract."""
    import fla.ops.common.gate as gate
    import fla.ops.gated_delta_rule.chunk as chunk

    def decay(a, A_log, dt_bias):
        return -A_log.float().exp() * F.softplus(a.float() + dt_bias)

    def fwd(q, k, v, g, beta, scale, A_log, dt_bias, **_):
        o = tg.chunk_gated_delta_rule_torch(q, k, v, decay(g, A_log, dt_bias), beta, scale=scale)[0]
        B, T, H, _ = q.shape
        return decay(g, A_log, dt_bias), o.to(v.dtype).contiguous(), k.new_zeros(B, T, H, 64), None, None, g

    def grads(q, k, v, beta, A, scale, do, g_input, A_log, dt_bias, **_):
        with torch.enable_grad():
            ins = [t.detach().clone().requires_grad_() for t in (q, k, v, beta, g_input, A_log, dt_bias)]
            o = tg.chunk_gated_delta_rule_torch(*ins[:3], decay(*ins[4:]), ins[3], scale=scale)[0]
            dq, dk, dv, dbeta, da, dA_log, ddt = (t.contiguous() for t in torch.autograd.grad(o, ins, do))
        return dq, dk, dv, dbeta, da, None, dA_log, ddt

    def bwd(**kw):   # autograd in a fresh thread: a custom op's implementation runs below the autograd key
        return ThreadPoolExecutor(1).submit(grads, **kw).result()

    chunk.chunk_gated_delta_rule_fwd, chunk.chunk_gated_delta_rule_bwd = fwd, bwd
    gate.fused_beta_sigmoid_fwd = lambda b, scale=1.0: torch.sigmoid(b.float())
    gate.fused_beta_sigmoid_bwd = lambda b, dy, scale=1.0: (dy * torch.sigmoid(b.float())
                                                            * torch.sigmoid(-b.float())).to(b.dtype)


def check_gdn_wiring(tg, ops) -> dict:
    torch.manual_seed(0)
    B, T, H, D = 2, 96, 2, 16
    q, k = tg._l2norm(torch.randn(B, T, H, D)), tg._l2norm(torch.randn(B, T, H, D))
    v, a, b = torch.randn(B, T, H, D), torch.randn(B, T, H), torch.randn(B, T, H)
    A_log, dt_bias, up = torch.rand(H) + 0.5, torch.randn(H) * 0.1, torch.randn(B, T, H, D)

    def plain(q, k, v, a, b, A_log, dt_bias):
        g, beta = tg.gdn_gates(a, b, A_log, dt_bias)
        return tg.chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=D ** -0.5)[0]

    def run(fn):
        ins = [t.clone().requires_grad_() for t in (q, k, v, a, b, A_log, dt_bias)]
        o = fn(*ins)
        (o * up).sum().backward()
        return o.detach(), [t.grad for t in ins]

    ref_o, ref_g = run(plain)
    out = {}
    for name, fn in (("eager", lambda *t: ops.gdn(*t, D ** -0.5)[0]),
                     ("compiled", torch.compile(lambda *t: ops.gdn(*t, D ** -0.5)[0], fullgraph=True))):
        o, g = run(fn)
        out[f"{name}_out"] = rel(o, ref_o)
        out.update({f"{name}_d{n}": rel(x, y) for n, x, y in zip("q k v a b A_log dt_bias".split(), g, ref_g)})
    return out


def main() -> int:
    tg = load_payload()
    if os.environ["TRITON_INTERPRET"] == "1":
        fla_stand_ins(tg)
    ops = tg.load_cuda_ops()
    dev = "cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda"
    result = {"bench": "mixer_ops_check", "interpreter": dev == "cpu",
              "conv_fp32": check_conv(tg, ops, torch.float32, dev),
              "conv_bf16": check_conv(tg, ops, torch.bfloat16, dev)}
    if result["interpreter"]:
        result["gdn_wiring_fp32"] = check_gdn_wiring(tg, ops)
    bad = []
    for part, vals in result.items():
        if isinstance(vals, dict):
            tol = TOL[torch.bfloat16 if part.endswith("bf16") else torch.float32]
            print(f"{part:<16} " + " ".join(f"{k} {v:.1e}" for k, v in vals.items()))
            bad += [f"{part}.{k}" for k, v in vals.items() if not v <= tol]
    result["failed"] = bad
    write_result(RESULTS / "mixer_ops_check.json", result)
    print("FAILED: " + ", ".join(bad) if bad else "all within tolerance")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
