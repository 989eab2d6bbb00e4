"""The in-window cost of the late-QAT switch at the record config: the payload predicts, from the current
weights, the grid coarsening the 16 MB budget will need (`SizeModel` + `budget_step_mult`) before it turns
QAT on, inside the timed window. This times that on one device with trained-like weights (those of
bench/serialize.py), as the median of 5 runs after one warm-up run, with the number of size predictions.
`QAT_PREV=path/to/older/train_gpt.py` times an older payload's version beside it (same weights).
JSON: bench/results/qat_switch.json (`QAT_OUT`).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchlib import ROOT, load_payload, write_result  # noqa: E402  (bench/ is the script's folder)
from serialize import trained_like  # noqa: E402


def time_switch(tg, sd, args, budget: int, device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, calls, mult = [], 0, None
    for i in range(6):
        sync()
        t = time.perf_counter()
        sm = tg.SizeModel(sd, args)
        n0 = [0]
        real = sm.bytes
        sm.bytes = lambda m: (n0.__setitem__(0, n0[0] + 1), real(m))[1]
        mult = tg.budget_step_mult(sm, budget)
        sync()
        if i:
            times.append(1000 * (time.perf_counter() - t))
        calls = n0[0]
    return {"median_ms": statistics.median(times), "min_ms": min(times), "predictions": calls, "step_mult": mult}


def main() -> int:
    device = torch.device(os.environ.get("QAT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    versions = {"current": ROOT / "model" / "train_gpt.py"}
    if os.environ.get("QAT_PREV"):
        versions["previous"] = Path(os.environ["QAT_PREV"])
    mods = {k: load_payload(p, f"train_gpt_{k}") for k, p in versions.items()}
    tg = mods["current"]
    args = tg.Hyperparameters({})
    torch.manual_seed(0)
    model = tg.GPT(args)
    trained_like(model)
    model.to(device)
    sd = model.state_dict()
    budget = 16_000_000 - versions["current"].stat().st_size
    res = {k: time_switch(m, sd, args, budget, device) for k, m in mods.items()}
    print(f"QAT switch cost at the record config on {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})")
    for k, r in res.items():
        print(f"  {k:<9} {r['median_ms']:8.1f} ms (min {r['min_ms']:.1f})  {r['predictions']:2d} predictions  "
              f"step_mult {r['step_mult']:.5f}")
    out = Path(os.environ.get("QAT_OUT", ROOT / "bench" / "results" / "qat_switch.json"))
    write_result(out, {"bench": "qat_switch", "device": str(device), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
