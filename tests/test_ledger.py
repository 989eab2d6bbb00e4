"""ledger.json shape (docs/ARCHITECTURE.md, "The run directory"), atomic writes, batch.json with the frozen script."""
import json
import os

import pytest

from results.errors import PgolfError

from results.files import atomic_write_json, sha256_file
from runner.ledger import ATTEMPT_KEYS, Ledger, create_batch, load_batch


def test_ledger_shape_and_transitions(tmp_path):
    led = Ledger.create(tmp_path, [42, 7])
    data = json.loads((tmp_path / "ledger.json").read_text())
    assert data == {"seeds": {"42": {"state": "pending", "attempts": []}, "7": {"state": "pending", "attempts": []}}}
    a = led.start_attempt(42, "ray")
    assert a["attempt"] == 1 and set(a) == set(ATTEMPT_KEYS) and a["ended"] is None
    led.update_attempt(42, 1, node="n1", pod_id="p1", bogus="ignored")
    led.end_attempt(42, 1, "pending", exit_code=3, error="exit code 3")
    led.start_attempt(42, "ray")
    led.end_attempt(42, 2, "succeeded", exit_code=0)
    on_disk = Ledger.load(tmp_path)
    atts = on_disk.attempts(42)
    assert [x["attempt"] for x in atts] == [1, 2] and on_disk.state(42) == "succeeded"
    assert atts[0]["node"] == "n1" and atts[0]["pod_id"] == "p1" and "bogus" not in atts[0]
    assert atts[0]["ended"] and atts[1]["exit_code"] == 0
    assert on_disk.unfinished() == [7] and on_disk.next_attempt_number(42) == 3
    assert [(s, a["attempt"]) for s, a in on_disk.all_attempts()] == [(42, 1), (42, 2)]
    assert not on_disk.has_open_attempt()
    on_disk.start_attempt(7, "ray")
    assert on_disk.has_open_attempt()


def test_close_dangling(tmp_path):
    led = Ledger.create(tmp_path, [1, 2])
    led.start_attempt(1, "ray")
    led.start_attempt(2, "ray")
    led.end_attempt(2, 1, "succeeded", exit_code=0)
    assert led.close_dangling("driver lost") == [1]
    again = Ledger.load(tmp_path)
    assert again.state(1) == "pending" and again.attempts(1)[0]["error"] == "driver lost"
    assert again.attempts(1)[0]["ended"] and again.state(2) == "succeeded"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    for i in range(5):
        atomic_write_json(tmp_path / "x.json", {"i": i})
    assert json.loads((tmp_path / "x.json").read_text()) == {"i": 4}
    assert os.listdir(tmp_path) == ["x.json"]


def test_batch_freezes_script(tmp_path):
    src = tmp_path / "src" / "train.py"
    src.parent.mkdir()
    src.write_text("print('hi')\n")
    run = tmp_path / "run"
    b = create_batch(run, {"name": "t", "env": {"A_TOKEN": "***"}}, src)
    assert (run / "train.py").read_text() == "print('hi')\n"
    assert b["script"] == {"file": "train.py", "sha256": sha256_file(src), "source": str(src)}
    assert load_batch(run)["script_sha256"] == sha256_file(src)
    for k in ("pgolf_version", "git_commit", "created_at", "spec"):
        assert k in load_batch(run)


def test_bad_run_directory_files_are_one_line_errors(tmp_path):
    for name, text, needle in (("ledger.json", "{", "not valid JSON"), ("ledger.json", "[]", 'no "seeds" object'),
                               ("batch.json", '{"spec": {}}', 'no "spec" and "script" object')):
        (tmp_path / name).write_text(text)
        with pytest.raises(PgolfError) as e:
            Ledger.load(tmp_path) if name == "ledger.json" else load_batch(tmp_path)
        assert str(e.value).startswith(str(tmp_path / name)) and needle in str(e.value) and "\n" not in str(e.value)
