"""Where the public records live for the tests: the snapshot in tests/data/records (part of the
repository, MIT licensed, see its SOURCE.md), or $PGOLF_RECORDS to run the same tests on another copy."""
import os
from pathlib import Path


def _find() -> Path:
    env = os.environ.get("PGOLF_RECORDS")
    if env:                  # the folder holding the tracks, or a clone from `pgolf records fetch`
        return Path(env) / "records" if (Path(env) / "records").is_dir() else Path(env)
    return Path(__file__).resolve().parent / "data" / "records"


RECORDS = _find()
TEN = RECORDS / "track_10min_16mb"
NON = RECORDS / "track_non_record_16mb"
FOLDERS = sorted(p for t in RECORDS.glob("track_*") for p in t.iterdir() if p.is_dir()) if RECORDS.is_dir() else []
if not (TEN.is_dir() and NON.is_dir()):   # the data is part of the repository: its absence is an error, not a skip
    raise RuntimeError(f"{RECORDS}: no public records here (PGOLF_RECORDS={os.environ.get('PGOLF_RECORDS')!r}); "
                       f"unset it to use the repository's tests/data/records")


def needs_records(test):
    """Kept for the tests that name it: the records are always there (checked above), so nothing to skip."""
    return test


# the record to beat when these tests were written: three seeds, sp8192 (power, plans, adaptive batches, abort)
CURRENT_RECORD = TEN / "2026-04-29_SmearGateBOSFix_3Seed_1.06141"
needs_current_record = needs_records
