"""Serialisation of the record-config model: where the time goes and how many bytes come out.

Builds `model/train_gpt.py`'s GPT at the record config (33.9M parameters, sp8192) with trained-like
weights (no trained checkpoint ships with the repository: heavy-tailed Student-t rows, df=4, with
log-normal row and column scales, which need a grid coarsening of about 1.8x to fit 16 MB, as real
10-minute runs need 2.3-4x), then runs the payload's `save_artifact` with the real budget (16,000,000
bytes minus the script) and times its phases: the size model (MSE-best row clips + entropy bisection),
quantization + packing, and compression. Then it loads the artifact back and checks the roundtrip.

With `SER_COMPARE_WHOLE=1` it also compresses the same serialised bytes the way the payload did before
(torch.save of the same quantized tensors, then one zstd-22 and one brotli-11 stream over the whole
blob, single-threaded, the smaller kept), to show
that the chunked artifact is no larger. Device: `SER_DEVICE` (cuda when available, else cpu): on a GPU
run the weights are on the GPU when the payload serialises. JSON: bench/results/serialize.json.
Env: SER_DEVICE, SER_COMPARE_WHOLE (0), SER_THREADS (all cores), SER_OUT.
"""
from __future__ import annotations

import io
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchlib import ROOT, load_payload, write_result  # noqa: E402  (bench/ is the script's folder)
CAP = 16_000_000


def trained_like(model, seed: int = 1) -> None:
    """Heavy-tailed weights with uneven row and column scales (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    t4 = torch.distributions.StudentT(4.0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                r, c = p.shape
                rs = torch.exp(torch.randn(r, 1, generator=g) * 0.3)
                cs = torch.exp(torch.randn(1, c, generator=g) * 0.3)
                p.copy_(t4.sample((r, c)) * rs * cs * c ** -0.5 * 0.5)


def main() -> int:
    tg = load_payload()
    if os.environ.get("SER_THREADS"):
        n = int(os.environ["SER_THREADS"])
        tg.cpu_threads = lambda: n
    device = torch.device(os.environ.get("SER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = tg.Hyperparameters({})
    torch.manual_seed(0)
    model = tg.GPT(args)
    trained_like(model)
    model.to(device)
    code = (ROOT / "model" / "train_gpt.py").read_bytes()
    budget = CAP - len(code)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"record config: {n_params:,} parameters on {device}; budget {budget:,} bytes; "
          f"{tg.cpu_threads()} threads", flush=True)

    path = ROOT / "bench" / "results" / "serialize_artifact.ptz.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = tg.save_artifact(model.state_dict(), path, args, budget)
    total_s = time.perf_counter() - t
    t = time.perf_counter()
    sd = tg.load_artifact(path)
    load_s = time.perf_counter() - t
    size_model = tg.SizeModel(model.state_dict(), args)
    ref = tg.dequantize_state_dict(tg.quantize_state_dict(model.state_dict(), args, info["step_mult"],
                                                          size_model.scales))
    roundtrip_ok = all(torch.equal(sd[k], ref[k]) for k in ref) and set(sd) == set(ref)
    path.unlink()

    whole = {}
    if os.environ.get("SER_COMPARE_WHOLE") == "1":
        buf = io.BytesIO()
        torch.save(tg.quantize_state_dict(model.state_dict(), args, info["step_mult"], size_model.scales), buf)
        raw = buf.getvalue()
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:   # the two codecs side by side, as the payload did
            z, b = pool.submit(tg._zstd, raw), pool.submit(tg._brotli, raw)
            whole = {"zstd22_bytes": len(z.result()), "brotli11_bytes": len(b.result())}
        whole["wall_s"] = time.perf_counter() - t
        whole["best_bytes"] = min(whole["zstd22_bytes"], whole["brotli11_bytes"])

    rows = [
        ("size model (row clips + bisection) s", f"{info['size_model_s']:.2f}"),
        ("quantize + pack s", f"{info['quantize_s']:.2f}"),
        ("compress s", f"{info['compress_s']:.2f}"),
        ("save_artifact total s", f"{total_s:.2f}"),
        ("load_artifact s", f"{load_s:.2f}"),
        ("grid coarsening (step_mult)", f"{info['step_mult']:.4f}"),
        ("raw bytes (packed)", f"{info['raw_bytes']:,}"),
        ("predicted bytes", f"{info['estimate']:,}"),
        ("artifact bytes (" + info["method"] + ")", f"{info['bytes']:,}"),
        ("code + artifact bytes", f"{len(code) + info['bytes']:,}"),
        ("roundtrip exact", str(roundtrip_ok)),
    ]
    if whole:
        rows += [("before: zstd-22 whole blob bytes", f"{whole['zstd22_bytes']:,}"),
                 ("before: brotli-11 whole blob bytes", f"{whole['brotli11_bytes']:,}"),
                 ("before: compress wall s (2 threads)", f"{whole['wall_s']:.1f}")]
    print()
    for name, val in rows:
        print(f"{name:<40}{val:>16}")
    ok = roundtrip_ok and len(code) + info["bytes"] <= CAP and total_s <= 30 and (
        not whole or info["bytes"] <= whole["best_bytes"])
    print("\n" + ("OK: <= 30 s, within the cap" + (", no larger than before" if whole else "") if ok else "NOT OK"))
    result = {"bench": "serialize", "device": str(device), "threads": tg.cpu_threads(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "params": n_params, "budget_bytes": budget, "code_bytes": len(code), "total_s": total_s,
              "load_s": load_s, "roundtrip_exact": roundtrip_ok, "whole_blob": whole, "ok": ok,
              **{k: v for k, v in info.items()}}
    out = Path(os.environ.get("SER_OUT", ROOT / "bench" / "results" / "serialize.json"))
    write_result(out, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
