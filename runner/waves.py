"""Adaptive batches (issue 12): seeds run in waves, and after each wave the batch continues or stops.

The statistics are results/sequential.py's (read its docstring for what is and is not claimed): after each
wave the runner calls `sequential.decide` on every scored seed so far, against the spec's [baseline], with
the design the spec's [adaptive] section states. The batch then runs the next wave, or stops for futility
(conditional power under the current estimate below the threshold), for success (only across the stated
alpha-spending boundary) or at the maximum.

Which seeds. The planned looks are cumulative seed counts (`Adaptive.looks()`: min, min + wave, ..., max);
wave k launches the seeds that bring the batch to look k, drawn from the spec's deterministic sequence
(`JobSpec.seed_sequence`). A seed that fails for good or is aborted (runner/abort.py) scores nothing: the
look then tests fewer seeds than planned, which `decide` accounts for (the looks it is given are the scored
counts, so the boundaries already used never move). A wave that adds no scored seed, or a look with fewer
than two, tests nothing and the batch goes on (or, at the maximum, stops untested). The conditional power
behind a futility stop assumes the remaining planned looks at their planned seed counts; after failed or
aborted seeds the batch will test fewer, so it is then slightly optimistic (it stops a little less often).

Durable state. ledger.json's "adaptive" section holds the design, every wave (its seeds, then its look) and
the outcome; a wave is written before its seeds are added to the ledger, so a driver that dies at any
instant leaves a state `pgolf resume` can finish: a wave without a look runs its unfinished seeds, then
looks; a batch with an outcome runs nothing more. Seeds of earlier waves are never rerun (their looks are
spent).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from results.errors import PgolfError
from runner.ledger import Ledger, now_iso
from runner.spec import JobSpec

SECTION = "adaptive"


class Waves:
    def __init__(self, spec: JobSpec, design, baseline):
        self.spec, self.design, self.baseline = spec, design, baseline

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "Waves | None":
        """None for a fixed batch; PgolfError when the design or the baseline is unusable (before anything
        is written or started)."""
        if spec.adaptive is None:
            return None
        from results.sequential import Design
        from results.stats import baseline_sample
        a = spec.adaptive
        design = Design(a.looks(), policy=spec.baseline.policy,
                        spending=None if a.spending == "none" else a.spending, futility=a.futility)
        try:
            baseline = baseline_sample(spec.baseline.ref)
        except PgolfError as e:
            raise PgolfError(f"[adaptive] needs a usable [baseline]: {e}") from None
        return cls(spec, design, baseline)

    # --- durable state --------------------------------------------------------------------------
    def state(self, ledger: Ledger) -> dict[str, Any]:
        st = ledger.data.get(SECTION)
        if st is None:
            a = self.spec.adaptive
            st = {"looks": list(self.design.looks), "policy": self.design.policy, "spending": a.spending,
                  "futility": a.futility, "rule": self.design.rule(), "baseline": str(self.spec.baseline.ref),
                  "waves": [], "outcome": None}
        return st

    @staticmethod
    def launched(st: dict) -> list[int]:
        return [s for w in st["waves"] for s in w["seeds"]]

    def remaining_seeds(self, ledger: Ledger) -> int:
        """Seeds this batch may still run (for the cost estimate before a resume)."""
        st = self.state(ledger)
        if st["outcome"] is not None:
            return 0
        return len([s for s in ledger.unfinished() if s in self.open_seeds(st)]) + \
            self.design.max_seeds - len(self.launched(st))

    @staticmethod
    def open_seeds(st: dict) -> list[int]:
        return st["waves"][-1]["seeds"] if st["waves"] and st["waves"][-1]["look"] is None else []

    # --- the loop --------------------------------------------------------------------------------
    def run(self, driver, ledger: Ledger, run_dir: Path, progress) -> dict:
        """Waves until the design stops the batch; returns the outcome (also in ledger.json)."""
        st = self.state(ledger)
        ledger.set_section(SECTION, st)
        if st["outcome"] is None and not st["waves"]:
            progress.say(f"pgolf: adaptive batch: {st['rule']}")
        while st["outcome"] is None:
            wave = st["waves"][-1] if self.open_seeds(st) else self.next_wave(st, ledger)
            ledger.add_seeds(wave["seeds"])            # again on resume: idempotent
            progress.add_seeds(wave["seeds"])
            progress.say(f"pgolf: wave {wave['wave']}: seeds {wave['seeds']}")
            driver.run(wave["seeds"])
            if driver.storage_error is not None:   # the disk refused a write: no look, `pgolf resume` goes on
                break
            self.look(st, wave, ledger, run_dir, progress)
        return st["outcome"]

    def next_wave(self, st: dict, ledger: Ledger) -> dict:
        done = len(self.launched(st))
        target = next(n for n in self.design.looks if n > done)
        wave = {"wave": len(st["waves"]) + 1, "seeds": self.spec.seed_sequence(target)[done:],
                "started": now_iso(), "look": None}
        st["waves"].append(wave)
        ledger.set_section(SECTION, st)               # the wave first: a crash then leaves it open
        return wave

    def scored(self, run_dir: Path, seeds: list[int]) -> list:
        """The scored runs of these seeds, in the order the seeds were drawn."""
        from results.load import load
        runs = {r.seed: r for r in load(run_dir).runs if r.val_bpb is not None}
        return [runs[s] for s in seeds if s in runs]

    def look(self, st: dict, wave: dict, ledger: Ledger, run_dir: Path, progress) -> None:
        launched = self.launched(st)
        final = len(launched) >= self.design.max_seeds
        runs = self.scored(run_dir, launched)
        n = len(runs)
        earlier = [w["look"]["n"] for w in st["waves"][:-1] if w["look"] and w["look"].get("tested")]
        if n < 2 or (earlier and n <= earlier[-1]):
            why = (f"{n} scored seed(s): a t-test needs two" if n < 2
                   else f"no new scored seed since the last look ({n})")
            action = "stop_max" if final else "continue"
            look = {"n": n, "tested": False, "action": action, "final": final, "p_adjusted": None,
                    "p_report": "no p-value: the batch ended before any test" if final else
                    "no p-value yet: the batch continues",
                    "sentence": f"Wave {wave['wave']}: {why}; " + ("no seeds left, the batch stops untested."
                                                                   if final else "next wave.")}
        else:
            from results.sequential import decide
            from results.stats import as_sample
            d = decide(as_sample(runs, "candidate"), self.baseline, self.design, looks=tuple(earlier) + (n,),
                       final=final)
            look = {"tested": True, "looks": list(earlier) + [n], "seeds": [r.seed for r in runs],
                    **_json_safe(d.to_dict())}
        look["at"] = now_iso()
        wave["look"] = look
        if look["action"] != "continue":
            st["outcome"] = {"action": look["action"], "wave": wave["wave"], "n": n,
                             "seeds_run": len(launched), "max_seeds": self.design.max_seeds,
                             "p_adjusted": look.get("p_adjusted"), "p_report": look["p_report"],
                             "sentence": look["sentence"]}
        ledger.set_section(SECTION, st)
        progress.say(f"pgolf: look after wave {wave['wave']}: {look['action']} — {look['sentence']}")


def _json_safe(obj):
    """Decision dicts hold floats that may be inf or NaN (a crossed boundary's z): JSON has neither."""
    import math
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):      # numpy scalars
        return _json_safe(obj.item())
    return obj
