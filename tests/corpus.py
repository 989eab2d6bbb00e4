"""Where the public records live for the tests: the snapshot in tests/data/records (part of the
repository, MIT licensed, see its SOURCE.md), or $PGOLF_RECORDS to run the same tests on another copy."""
import os
from pathlib import Path

import pytest


def _find() -> Path:
    env = os.environ.get("PGOLF_RECORDS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "data" / "records"


RECORDS = _find()
TEN = RECORDS / "track_10min_16mb"
NON = RECORDS / "track_non_record_16mb"
FOLDERS = sorted(p for t in RECORDS.glob("track_*") for p in t.iterdir() if p.is_dir()) if RECORDS.is_dir() else []
needs_records = pytest.mark.skipif(not RECORDS.is_dir(), reason=f"{RECORDS} not present")
# the record to beat when these tests were written: three seeds, sp8192 (power, plans, adaptive batches, abort)
CURRENT_RECORD = TEN / "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
needs_current_record = pytest.mark.skipif(not CURRENT_RECORD.is_dir(), reason=f"{CURRENT_RECORD} not present")
