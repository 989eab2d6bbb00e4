"""Smallest proof that fla's GatedDeltaNet op runs forward+backward on this GPU with this Triton.

Prints versions, the capability, finiteness of every gradient and the op's fwd+bwd time at the record's
head shape. Exits non-zero when anything is off. Run on the GPU machine after bench/device_install.sh.
"""
import sys
import time

import torch


def main() -> int:
    import triton
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    cap = torch.cuda.get_device_capability()
    print(f"torch {torch.__version__} triton {triton.__version__} fla {fla.__version__} "
          f"gpu {torch.cuda.get_device_name()} capability {cap}")
    B, T, H, K = 96, 1024, 8, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    def rnd(*s):
        return torch.randn(*s, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, K)
    gl = (-torch.rand(B, T, H, device="cuda", generator=g) * 0.1).to(torch.bfloat16).requires_grad_()
    beta = torch.rand(B, T, H, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    def step():
        o, _ = chunk_gated_delta_rule(q, k, v, gl, beta, use_qk_l2norm_in_kernel=True)
        o.float().square().mean().backward()
        return o
    t0 = time.time(); step(); torch.cuda.synchronize(); first = time.time() - t0
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    n = 10
    t0 = time.time()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    ms = (time.time() - t0) / n * 1e3
    ok = all(torch.isfinite(t.grad).all().item() for t in (q, k, v, gl, beta))
    print(f"first call (compile/autotune) {first:.1f} s; fwd+bwd {ms:.2f} ms for {B}x{T} tokens, H={H} K={K}; grads finite: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
