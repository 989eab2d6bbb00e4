"""Where the public records live for the tests: ../shared/records, looked up from the checkout upwards
(a worktree sits one level deeper than the main checkout), or $PGOLF_RECORDS."""
import os
from pathlib import Path

import pytest


def _find() -> Path:
    env = os.environ.get("PGOLF_RECORDS")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "records").is_dir():
            return parent / "shared" / "records"
    return here.parents[2] / "shared" / "records"


RECORDS = _find()
TEN = RECORDS / "track_10min_16mb"
NON = RECORDS / "track_non_record_16mb"
FOLDERS = sorted(p for t in RECORDS.glob("track_*") for p in t.iterdir() if p.is_dir()) if RECORDS.is_dir() else []
needs_records = pytest.mark.skipif(not RECORDS.is_dir(), reason=f"{RECORDS} not present")
# the record to beat when these tests were written: three seeds, sp8192 (power, plans, adaptive batches, abort)
CURRENT_RECORD = TEN / "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
needs_current_record = pytest.mark.skipif(not CURRENT_RECORD.is_dir(), reason=f"{CURRENT_RECORD} not present")
