"""The tests find the public records (`records:...` references, tests/corpus.py) in the repository's own
snapshot, tests/data/records, unless PGOLF_RECORDS names another copy: no test needs the network or a
folder beside the checkout. Set here, before any test runs, so `pgolf` subprocesses inherit it too."""
import os
from pathlib import Path

os.environ.setdefault("PGOLF_RECORDS", str(Path(__file__).resolve().parent / "data" / "records"))
