"""Every folder under ../shared/records loads and audits without an exception; every log yields runs."""
import json

import pytest

from corpus import FOLDERS
from results.audit import CHECK_IDS, audit
from results.load import find_logs, load
from results.parse import parse_log

pytestmark = pytest.mark.skipif(not FOLDERS, reason="../shared/records not present")


def test_corpus_is_complete():
    assert len(FOLDERS) >= 48
    assert sum(len(find_logs(f)) for f in FOLDERS) >= 95


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_audit_every_folder(folder):
    for log in find_logs(folder):
        runs = parse_log(log)
        assert runs, log
        assert any(r.metric for r in runs), f"{log}: no scored run"
    a = audit(load(folder))
    assert [c["id"] for c in a["checks"]] == list(CHECK_IDS)
    assert a["verdict"] in ("pass", "fail")
    assert all(c["detail"] for c in a["checks"])
    json.dumps(a, allow_nan=False)
    if find_logs(folder):
        assert a["runs"] and a["summary"]["n"] >= 1
    else:
        assert {c["id"]: c["status"] for c in a["checks"]}["logs_present"] == "fail"
