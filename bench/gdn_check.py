"""Is fla's GatedDeltaNet kernel right on this GPU? Relative error of its output and of every gradient
against our pure-PyTorch chunked op in float64, at the record's head config.

On CUDA (fla importable): for T in GDN_T and input dtype in GDN_DTYPES, fla `chunk_gated_delta_rule`
(q/k L2-normalised in the kernel, g in log space as fp32, the way the model calls it) and our chunked op
computing in fp32 are both compared with our chunked op in float64 (the reference); our float64 chunked op
is itself checked against the step-by-step recurrence at the first T. A wrong-gradient stack (fla #640:
Triton 3.4-3.7.0 on Hopper) shows up as O(1) errors on dg/dbeta.
On CPU (no fla, never imported): ours fp32 and ours float64 against the recurrence, at tiny sizes.

Env: GDN_B (4), GDN_H (8), GDN_K (64, = V), GDN_T ("1024,2048"), GDN_DTYPES ("bf16,fp32"),
GDN_TIME_ITERS (10; 0 = skip timing), GDN_OUT (bench/results/gdn_check.json).
Exit 1 when an error is over its tolerance.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import ROOT, load_payload, write_result  # noqa: E402  (bench/ is the script's folder)
GRADS = ("q", "k", "v", "g", "beta")
# Tolerances on relative L2 error against the float64 reference: bf16 rounding alone gives ~5e-3, fla may
# use TF32 inside; the fla #640 miscompile gives O(1) errors on dg/dbeta, far above these.
TOL = {"bf16": 5e-2, "fp32": 1e-2, "fp64": 1e-9}


def make_inputs(B, T, H, K, device, seed=0):
    """Leaves in float64, with the model's gate parametrisation: g = -exp(A_log) softplus(a + dt_bias)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(3))
    A = torch.empty(H, dtype=torch.float64).uniform_(1.0, 16.0, generator=gen)
    dt = torch.exp(torch.empty(H, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    a = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    g = -A * F.softplus(a + dt_bias)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64))
    do = torch.randn(B, T, H, K, generator=gen, dtype=torch.float64)
    return {n: t.to(device) for n, t in zip(("q", "k", "v", "g", "beta", "do"), (q, k, v, g, beta, do))}


def run_op(fn, inp, dtype, g_dtype=None):
    """Output and gradients (as float64) of fn on the inputs cast to `dtype` (g to `g_dtype`)."""
    leaves = {n: inp[n].to(g_dtype if (n == "g" and g_dtype) else dtype).detach().requires_grad_()
              for n in GRADS}
    K = inp["q"].shape[-1]
    o = fn(leaves["q"], leaves["k"], leaves["v"], leaves["g"], leaves["beta"], K ** -0.5)
    (o.double() * inp["do"]).sum().backward()
    return {"o": o.detach().double(), **{f"d{n}": leaves[n].grad.detach().double() for n in GRADS}}


def rel_err(a, ref):
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def compare(name, got, ref, tol):
    errs = {key: rel_err(got[key], ref[key]) for key in ref}
    finite = all(bool(torch.isfinite(t).all()) for t in got.values())
    return {"method": name, "tol": tol, "finite": finite, "rel_err": errs,
            "ok": finite and max(errs.values()) <= tol}


def time_fwd_bwd(fn, inp, dtype, g_dtype, iters):
    """Mean ms of one forward+backward (CUDA events), after one untimed call."""
    leaves = {n: inp[n].to(g_dtype if (n == "g" and g_dtype) else dtype).detach().requires_grad_() for n in GRADS}
    do = inp["do"].to(dtype)
    K = inp["q"].shape[-1]

    def once():
        o = fn(leaves["q"], leaves["k"], leaves["v"], leaves["g"], leaves["beta"], K ** -0.5)
        o.backward(do.to(o.dtype))

    once()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        once()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> int:
    tg = load_payload()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    B = int(os.environ.get("GDN_B", 4 if cuda else 1))
    H = int(os.environ.get("GDN_H", 8 if cuda else 2))
    K = int(os.environ.get("GDN_K", 64 if cuda else 16))
    Ts = [int(t) for t in os.environ.get("GDN_T", "1024,2048" if cuda else "96,160").split(",")]
    dtypes = os.environ.get("GDN_DTYPES", "bf16,fp32").split(",")
    iters = int(os.environ.get("GDN_TIME_ITERS", 10 if cuda else 0))
    out_path = Path(os.environ.get("GDN_OUT", ROOT / "bench" / "results" / "gdn_check.json"))
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}

    def ours(q, k, v, g, beta, scale):
        return tg.chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True)[0]

    def recurrent(q, k, v, g, beta, scale):
        return tg.recurrent_gated_delta_rule_ref(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True)[0]

    versions = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    fla_op = None
    if cuda:
        versions["gpu"] = torch.cuda.get_device_name()
        versions["capability"] = list(torch.cuda.get_device_capability())
        try:
            import triton
            versions["triton"] = triton.__version__
        except ImportError:
            versions["triton"] = None
        try:
            import fla
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            versions["fla"] = fla.__version__

            def fla_chunked(q, k, v, g, beta, scale):
                return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True)[0]
            fla_op = fla_chunked
        except Exception as e:  # noqa: BLE001  (report, then check ours only)
            versions["fla"] = f"unavailable: {type(e).__name__}: {e}"
    print("versions: " + " ".join(f"{k}={v}" for k, v in versions.items()), flush=True)
    print(f"config: B={B} H={H} K=V={K} T={Ts} dtypes={dtypes}", flush=True)

    rows = []
    for ti, T in enumerate(Ts):
        inp = make_inputs(B, T, H, K, device, seed=ti)
        t0 = time.perf_counter()
        ref = run_op(ours, inp, torch.float64)
        print(f"T={T}: float64 reference in {time.perf_counter() - t0:.1f}s", flush=True)
        if ti == 0:  # the reference itself against the plain recurrence (slow: T sequential steps)
            t0 = time.perf_counter()
            rec = run_op(recurrent, inp, torch.float64)
            r = compare("ours_chunk_fp64 vs recurrent_fp64", ref, rec, TOL["fp64"])
            rows.append({"T": T, "dtype": "fp64", **r})
            print(f"T={T}: recurrent float64 in {time.perf_counter() - t0:.1f}s", flush=True)
        for dt in dtypes:
            methods = [("ours_chunk", ours, torch.float32)]
            if fla_op is not None:
                methods.insert(0, ("fla_chunk", fla_op, torch.float32))
            for name, fn, g_dtype in methods:
                try:
                    t0 = time.perf_counter()
                    got = run_op(fn, inp, torch_dtype[dt], g_dtype)
                    first_s = time.perf_counter() - t0
                    r = compare(name, got, ref, TOL[dt])
                    r["first_call_s"] = round(first_s, 2)
                    if iters and cuda:
                        r["fwd_bwd_ms"] = round(time_fwd_bwd(fn, inp, torch_dtype[dt], g_dtype, iters), 3)
                except Exception as e:  # noqa: BLE001  (one failing kernel must not hide the others)
                    r = {"method": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
                rows.append({"T": T, "dtype": dt, **r})
                print(f"T={T} {dt} {name}: " + (f"max rel err {max(r['rel_err'].values()):.2e}"
                                                  if "rel_err" in r else r["error"]), flush=True)
        del inp, ref
        if cuda:
            torch.cuda.empty_cache()

    cols = ["o"] + [f"d{n}" for n in GRADS]
    print()
    print(f"{'T':>5} {'dtype':>5} {'method':<34}" + "".join(f"{c:>10}" for c in cols) + f"{'ms f+b':>9}  ok")
    for r in rows:
        errs = r.get("rel_err", {})
        cells = "".join(f"{errs[c]:>10.2e}" if c in errs else f"{'-':>10}" for c in cols)
        ms = f"{r['fwd_bwd_ms']:>9.2f}" if "fwd_bwd_ms" in r else f"{'-':>9}"
        print(f"{r['T']:>5} {r['dtype']:>5} {r['method']:<34}{cells}{ms}  {'yes' if r['ok'] else 'NO'}"
              + (f"  ({r['error']})" if "error" in r else ""))
    ok = all(r["ok"] for r in rows)
    print(f"\nrelative L2 error vs our float64 chunked op; tolerances {TOL}; all ok: {ok}")
    if cuda and fla_op is None:
        print("NOTE: fla was not importable, only our op was checked")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "gdn_check", "versions": versions,
              "config": {"B": B, "H": H, "K": K, "V": K, "T": Ts, "dtypes": dtypes,
                         "reference": "ours_chunk float64", "use_qk_l2norm_in_kernel": True},
              "tolerances": TOL, "rows": rows, "all_ok": ok}
    write_result(out_path, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
