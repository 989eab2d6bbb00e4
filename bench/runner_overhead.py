"""Runner overhead: a batch of fake payloads of known length on fake 8-GPU nodes, wall time vs ideal.

6 seeds x a P-second payload on 3 nodes (one seed per node at a time) take ideally 2 waves x P. The
driver loop's wall time (first launch to last result, `Driver.run`) over that ideal is the runner's
overhead; per attempt it is (wall - ideal) / waves. Broken down from the ledger's millisecond timestamps:
cold start (loop start to the first attempt starting: Ray starting a worker process on each node, paid once
per batch), in-attempt overhead (ended - started - P: process start-up, result return, ledger writes), the
gap between one attempt's end and the next one's start on the same node, and the steady-state ratio
(wall minus cold start) / ideal. Measured twice: with launcher "python" (the payload
starts as a plain process: pgolf + Ray alone) and with "torchrun" (adds torchrun's own start-up, about
2-3 s of importing torch on a small machine, which a real payload pays anyway). The whole library call
(`runner.run`: connect, preflight, batch files, report) is shown too.

    .venv/bin/python bench/runner_overhead.py                 # 6 seeds x 20 s on 3 nodes
    .venv/bin/python bench/runner_overhead.py --seconds 5     # quick

The table is printed and written, with the raw numbers, to bench/results/runner_overhead.json (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def run_batch(address: str, launcher: str, seeds: int, seconds: float, tmp: Path) -> dict:
    import runner
    from runner import driver as drv
    job = tmp / f"bench-{launcher}.toml"
    job.write_text(f'name = "bench"\nscript = "{ROOT / "tests/payloads/fake_train.py"}"\n'
                   f"seeds = {list(range(1, seeds + 1))}\nnproc_per_node = 1\ngpus_per_seed = 8\n"
                   f'launcher = "{launcher}"\nenv = {{ FAKE_SECONDS = {seconds}, FAKE_STEPS = 10 }}\n')
    times = {}
    orig = drv.Driver.run

    def timed(self, *a, **kw):    # the driver loop alone, inside the whole library call
        times["t0"], times["wall0"] = time.perf_counter(), time.time()
        try:
            return orig(self, *a, **kw)
        finally:
            times["t1"] = time.perf_counter()
    drv.Driver.run = timed
    run_dir = tmp / f"runs-{launcher}"
    t0 = time.perf_counter()
    try:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            rc = runner.run(job, run_dir=run_dir, address=address, progress=False).exit_code
    finally:
        drv.Driver.run = orig
    total = time.perf_counter() - t0
    led = json.loads((run_dir / "ledger.json").read_text())["seeds"]
    atts = [a for e in led.values() for a in e["attempts"]]
    ts = lambda iso: datetime.fromisoformat(iso).timestamp()   # noqa: E731
    by_node: dict[str, list] = {}
    for a in atts:
        by_node.setdefault(a["node"], []).append((ts(a["started"]), ts(a["ended"])))
    gaps = [b[0] - a[1] for v in by_node.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    first = min(ts(a["started"]) for a in atts)
    return {"rc": rc, "loop": times["t1"] - times["t0"], "total": total, "nodes": len(by_node),
            "attempts": len(atts), "cold": first - times["wall0"],
            "attempt_overhead": sum(ts(a["ended"]) - ts(a["started"]) - seconds for a in atts) / len(atts),
            "gap": sum(gaps) / len(gaps) if gaps else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="payload length (default 20)")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--launcher", choices=["python", "torchrun", "both"], default="both")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "runner_overhead.json"),
                    help="where the numbers go as JSON")
    a = ap.parse_args()
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    for _ in range(a.nodes):
        c.add_node(num_cpus=1, num_gpus=8)
    c.wait_for_nodes()
    waves = math.ceil(a.seeds / a.nodes)
    ideal = waves * a.seconds
    t = Table(title=f"{a.seeds} seeds x {a.seconds:g} s payload on {a.nodes} fake 8-GPU nodes "
                    f"(ideal {waves} waves = {ideal:g} s), {os.cpu_count()} CPU cores")
    for col in ("launcher", "exit", "attempts", "nodes", "driver loop s", "loop / ideal",
                "overhead / attempt ms", "cold start s", "in-attempt overhead ms", "wave gap ms",
                "steady / ideal", "whole command s"):
        t.add_column(col, justify="right")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for launcher in (["python", "torchrun"] if a.launcher == "both" else [a.launcher]):
                r = run_batch(c.address, launcher, a.seeds, a.seconds, Path(tmp))
                rows.append(dict(r, launcher=launcher, loop_over_ideal=r["loop"] / ideal,
                                 overhead_per_attempt_s=(r["loop"] - ideal) / waves,
                                 steady_over_ideal=(r["loop"] - r["cold"]) / ideal))
                t.add_row(launcher, str(r["rc"]), str(r["attempts"]), str(r["nodes"]), f"{r['loop']:.2f}",
                          f"{r['loop'] / ideal:.4f}", f"{(r['loop'] - ideal) / waves * 1000:.0f}",
                          f"{r['cold']:.2f}", f"{r['attempt_overhead'] * 1000:.0f}", f"{r['gap'] * 1000:.0f}",
                          f"{(r['loop'] - r['cold']) / ideal:.4f}", f"{r['total']:.2f}")
    finally:
        c.shutdown()
    Console(width=200).print(t)
    from results.files import atomic_write_json
    atomic_write_json(a.out, {"seeds": a.seeds, "seconds": a.seconds, "nodes": a.nodes, "waves": waves,
                              "ideal_s": ideal, "cpu_cores": os.cpu_count(), "rows": rows})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
