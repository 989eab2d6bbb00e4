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


def test_an_attempts_result_json_is_on_disk_before_the_ledger_closes_it(tmp_path):
    """issue 20: the driver killed between result.json and the ledger (here: in the midst of writing
    result.json, after its temp file was made) leaves the attempt open, never `succeeded` without its
    result; resume's close_dangling writes the result again and removes what the killed write left."""
    led = Ledger.create(tmp_path, [1])
    led.start_attempt(1, "ray")
    folder = led.attempt_dir(1, 1)
    folder.mkdir(parents=True)
    seen = {}

    def killed():
        seen["memory"] = led.state(1)
        seen["disk"] = Ledger.load(tmp_path).state(1)
        (folder / ".result.json.x1y2.tmp").write_text('{"state": "succ')     # a write cut short
        raise KeyboardInterrupt("driver killed")
    with pytest.raises(KeyboardInterrupt):
        led.end_attempt(1, 1, "succeeded", exit_code=0, before_save=killed)
    assert seen == {"memory": "succeeded", "disk": "running"}            # the hook runs before the disk write
    again = Ledger.load(tmp_path)
    assert again.state(1) == "running" and again.attempts(1)[0]["ended"] is None
    assert again.close_dangling("driver lost") == [1]
    assert not list(folder.glob(".result.json.*.tmp"))
    result = json.loads((folder / "result.json").read_text())
    assert result["state"] == "pending" and result["error"] == "driver lost" and result["seed"] == 1
    assert Ledger.load(tmp_path).state(1) == "pending"


def test_write_result_says_what_memory_holds_scrubbed(tmp_path):
    from results.secrets import Scrubber
    led = Ledger.create(tmp_path, [1])
    led.start_attempt(1, "runpod")
    scrub = Scrubber({"HF_TOKEN": "hf_s3cr3tvalue0123456789"})
    led.end_attempt(1, 1, "failed", exit_code=1, error="bad token hf_s3cr3tvalue0123456789",
                    before_save=lambda: led.write_result(1, 1, ["artifacts/x"], scrub=scrub))
    text = (led.attempt_dir(1, 1) / "result.json").read_text()
    result = json.loads(text)
    assert result["state"] == "failed" and result["ended"] and result["artifacts"] == ["artifacts/x"]
    assert "s3cr3t" not in text


def _ledger_file(tmp_path, seeds: dict, batch_seeds=None) -> None:
    (tmp_path / "ledger.json").write_text(json.dumps({"seeds": seeds}))
    if batch_seeds is not None:
        (tmp_path / "batch.json").write_text(json.dumps({"spec": {"seeds": batch_seeds}, "script": {}}))


def _att(k=1, **kw):
    return {**{key: None for key in ATTEMPT_KEYS}, "attempt": k, "started": "t", "ended": "t", **kw}


@pytest.mark.parametrize("seeds, needle", [
    ({"42": {"state": "pending", "attempts": "x"}}, "seeds.42.attempts: Input should be a valid list, got 'x'"),
    ({"42": {"state": "failed", "attempts": [_att("1", exit_code=1)]}}, "seeds.42.attempts.0.attempt: "
                                                                        "Input should be a valid integer, got '1'"),
    ({"42": {"state": "banana", "attempts": []}}, "seeds.42.state: Input should be 'pending', 'running'"),
    ({"x": {"state": "pending", "attempts": []}}, "seeds.x.[key]: String should match pattern"),
    ({"42": {"state": "failed", "attempts": [_att(exit_code="1")]}}, "seeds.42.attempts.0.exit_code"),
    ({"42": {"state": "pending", "attempts": [_att(1), _att(1)]}}, "seed 42: attempt numbers repeat"),
])
def test_ledger_contents_are_typed_and_wrong_ones_are_one_line(tmp_path, seeds, needle):
    """Issue 20: `attempts: "x"` or a string attempt number were internal errors (rc 3); "banana" passed."""
    _ledger_file(tmp_path, seeds)
    with pytest.raises(PgolfError) as e:
        Ledger.load(tmp_path)
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "ledger.json")) and needle in msg and "\n" not in msg, msg


def test_a_succeeded_seed_needs_a_succeeded_attempt(tmp_path):
    """A seed marked succeeded whose only attempt was interrupted was trusted (the batch ended "succeeded,
    audit: pass" with no score for it)."""
    _ledger_file(tmp_path, {"1": {"state": "succeeded", "attempts": [_att(error="interrupted: driver lost")]}})
    with pytest.raises(PgolfError, match=r"seed 1 is \"succeeded\" but its last attempt ended 'interrupted: "
                                         r"driver lost'; its result cannot be trusted"):
        Ledger.load(tmp_path)
    for attempts in ([], [_att(exit_code=1, error="exit code 1")], [_att(exit_code=0, ended=None)]):
        _ledger_file(tmp_path, {"1": {"state": "succeeded", "attempts": attempts}})
        with pytest.raises(PgolfError, match="cannot be trusted"):
            Ledger.load(tmp_path)
    _ledger_file(tmp_path, {"1": {"state": "succeeded", "attempts": [_att(1, exit_code=1, error="exit code 1"),
                                                                      _att(2, exit_code=0, cost_usd=1)]}})
    assert Ledger.load(tmp_path).state(1) == "succeeded"


def test_the_ledger_and_batch_json_agree_on_the_seeds(tmp_path, capsys):
    """A seed deleted from the ledger was dropped without a word although batch.json lists it."""
    from runner.cli import main
    _ledger_file(tmp_path, {"1": {"state": "pending", "attempts": []}}, batch_seeds=[1, 2])
    with pytest.raises(PgolfError, match=r"ledger.json: batch.json's seed\(s\) \[2\] are missing from it"):
        Ledger.load(tmp_path)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[2] are missing" in err[0]
    _ledger_file(tmp_path, {"1": {"state": "pending", "attempts": []}, "3": {"state": "pending", "attempts": []}},
                 batch_seeds=[1])
    with pytest.raises(PgolfError, match=r"seed\(s\) \[3\] are not batch.json's"):
        Ledger.load(tmp_path)
    _ledger_file(tmp_path, {"2": {"state": "pending", "attempts": []}, "1": {"state": "pending", "attempts": []}},
                 batch_seeds=[1, 2])
    assert Ledger.load(tmp_path).seeds() == [2, 1]
