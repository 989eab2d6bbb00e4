"""The challenge's rules in numbers, per track (docs/CHALLENGE.md, "Rules in numbers" and "Tracks").

Every check asks `track_of(runset)` which rules apply: the record track has the 600 s budgets and wants
three seeds; the non-record track keeps the 16 MB cap and honest scoring, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from results.types import RunSet

ARTIFACT_CAP = 16_000_000            # code + compressed model, decimal bytes
TIME_GRACE_MS = 1_000                # the official script stops at the first step past the cap: one step over is normal


@dataclass(frozen=True)
class Track:
    name: str                        # "record" | "non_record"
    folder: str                      # the track's folder in the public repository
    train_limit_ms: float | None     # None: not enforced on this track
    eval_limit_ms: float | None
    seeds_wanted: int                # seeds a significance test usually needs on this track

    @property
    def is_record(self) -> bool:
        return self.name == "record"


RECORD = Track("record", "track_10min_16mb", 600_000, 600_000, 3)
NON_RECORD = Track("non_record", "track_non_record_16mb", None, None, 1)

RECORD_GPU = "H100"                  # the record track: 8xH100 SXM (an "H100 80GB HBM3" in nvidia-smi)
RECORD_GPUS = 8
NOT_SXM = ("PCIe", "NVL")            # H100 boards that are not the SXM part
# what a record folder must hold (the rules' "Submission" section): README, submission.json, a train log, the script
REQUIRED_FILES = ("README.md", "submission.json", "a training log", "train_gpt.py")
# checks whose warnings the strict policy (`pgolf audit --strict`) turns into failures: practices the written
# rules forbid but the maintainers accepted in public records
STRICT_CHECKS = ("train_data_after_timer",)


def _says_non_record(text: str) -> bool:
    t = text.lower().replace("-", "_")
    return "non_record" in t or "nonrecord" in t or "unlimited" in t


def track_of(rs: RunSet) -> Track:
    """The track a folder is judged by: submission.json's "track", else the track folder it sits in, else (a
    run directory) its spec's [submission] track; the record track when nothing says otherwise."""
    claimed = (rs.submission or {}).get("track")
    if isinstance(claimed, str) and claimed:
        return NON_RECORD if _says_non_record(claimed) else RECORD
    if any(_says_non_record(part) for part in rs.dir.resolve().parts[-3:]):
        return NON_RECORD
    spec = (rs.batch or {}).get("spec") if isinstance((rs.batch or {}).get("spec"), dict) else rs.batch or {}
    sub = spec.get("submission") if isinstance(spec.get("submission"), dict) else {}
    if isinstance(sub.get("track"), str) and _says_non_record(sub["track"]):
        return NON_RECORD
    return RECORD
