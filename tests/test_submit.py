"""pgolf submit: a run directory (built here) becomes a record folder that loads and audits as pass;
failing runs are refused and leave nothing behind; secrets never reach the written files."""
import hashlib
import json
import math
from pathlib import Path

import pytest

from results.errors import PgolfError
from runner.cli import main

BPT_SP8192 = 3.72663
SCRIPT = '"""tiny stand-in for train_gpt.py"""\nimport os\nprint("seed:" + os.environ.get("SEED", "0"))\n'
SECRET = "hf_abcdefghijklmnop1234"


def log_text(seed: int, bpb: float, sha: str, *, total_bytes: int = 15_900_000, train_ms: int = 590_000,
             eval_ms: int = 400_000, extra: str = "", head: tuple[str, ...] = ()) -> str:
    """A train.log in our payload's line format (docs/CHALLENGE.md, "Log lines")."""
    loss = bpb * math.log(2) * BPT_SP8192
    steps = [f"step:{s}/1000 train_loss:{9.0 - 5.0 * s / 1000 + seed % 7 * 0.01:.4f} "
             f"train_time:{s * train_ms // 1000}ms step_avg:{train_ms / 1000:.2f}ms" for s in range(100, 1001, 100)]
    return "\n".join([
        f"seed:{seed}",
        f"script_sha256:{sha}",
        *head,
        "tokenizer_path:./data/tokenizers/fineweb_8192_bpe.model",
        "val_tokens:40540160",
        f"val_bytes_per_token:{BPT_SP8192}",
        *steps,
        f"stopping_early: wallclock_cap train_time:{train_ms}ms step:1000/1000",
        "Code size: 50000 bytes",
        f"Total submission size int6+brotli: {total_bytes} bytes",
        f"final_int6_roundtrip_exact val_loss:{loss + 0.02:.8f} val_bpb:{(loss + 0.02) / math.log(2) / BPT_SP8192:.8f}",
        f"final_int6_sliding_window_exact val_loss:{loss + 0.01:.8f} val_bpb:{(loss + 0.01) / math.log(2) / BPT_SP8192:.8f}",
        f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f} eval_time:{eval_ms}ms",
        extra,
    ]) + "\n"


def make_run_dir(root: Path, scores: dict[int, float] | None = None, *, baseline=None, policy="rule",
                 name: str = "demo", script: str = SCRIPT, track: str = "10min_16mb", **log_kw) -> Path:
    """A finished run directory: batch.json, ledger.json (seed 42 needed a second attempt), logs, script."""
    scores = scores or {42: 1.0800, 1337: 1.0810, 2025: 1.0805}
    d = root / name
    d.mkdir(parents=True)
    (d / "train_gpt.py").write_text(script)
    sha = hashlib.sha256(script.encode()).hexdigest()
    spec = {"name": name, "script": "/somewhere/train_gpt.py", "seeds": list(scores), "nproc_per_node": 8,
            "launcher": "torchrun", "env": {"ITERATIONS": 1000, "HF_TOKEN": SECRET},
            "data": {"variant": "sp8192", "paths": {"DATA_PATH": "./data/datasets/fineweb10B_sp8192"}},
            "baseline": {"ref": baseline, "policy": policy},
            "submission": {"author": "Ada", "github_id": "ada", "name": "Demo record", "track": track}}
    batch = {"spec": spec, "script": {"file": "train_gpt.py", "sha256": sha}, "pgolf_version": "0.1.0",
             "git_commit": "deadbeef", "created_at": "2026-11-22T00:00:00Z"}
    (d / "batch.json").write_text(json.dumps(batch))
    ledger = {"seeds": {}}
    for seed, bpb in scores.items():
        attempts = []
        if seed == 42:      # a failed first attempt: its log must not be shipped
            a1 = d / "seeds" / str(seed) / "attempt-1"
            a1.mkdir(parents=True)
            (a1 / "train.log").write_text(f"seed:{seed}\nTraceback: CUDA error\n")
            attempts.append({"attempt": 1, "backend": "ray", "node": None, "pod_id": None, "started": "t",
                             "ended": "t", "exit_code": 1, "error": "exit 1", "cost_usd": None,
                             "pod_terminated": None})
        k = len(attempts) + 1
        a = d / "seeds" / str(seed) / f"attempt-{k}"
        a.mkdir(parents=True)
        extra = f"env: HF_TOKEN={SECRET} WANDB_API_KEY=wk_0123456789abcdef TRAIN_BATCH_TOKENS=786432"
        (a / "train.log").write_text(log_text(seed, bpb, sha, extra=extra, **log_kw))
        attempts.append({"attempt": k, "backend": "ray", "node": "n1", "pod_id": None, "started": "t",
                         "ended": "t", "exit_code": 0, "error": None, "cost_usd": None, "pod_terminated": None})
        ledger["seeds"][str(seed)] = {"state": "succeeded", "attempts": attempts}
    (d / "ledger.json").write_text(json.dumps(ledger))
    return d


def test_submit_writes_a_record_that_audits_as_pass(tmp_path):
    from results.audit import audit
    from results.load import load
    from results.submit import submit
    run = make_run_dir(tmp_path, baseline=1.2)
    out = tmp_path / "records" / "2026-11-22_Demo"
    rep = submit(run, out, author="Ada Lovelace")
    assert rep["verdict"] == "pass"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "submission.json", "train_gpt.py", "train_seed1337.log", "train_seed2025.log",
                     "train_seed42.log"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]     # no temp folder left
    sub = json.loads((out / "submission.json").read_text())
    assert sub["author"] == "Ada Lovelace" and sub["github_id"] == "ada" and sub["name"] == "Demo record"
    assert sub["track"] == "10min_16mb" and sub["seeds"] == [42, 1337, 2025]
    assert sub["val_bpb"] == pytest.approx((1.08 + 1.081 + 1.0805) / 3, abs=1e-8)
    assert sub["val_bpb_std"] == pytest.approx(0.0005, abs=1e-8)
    assert set(sub["seed_results"]["42"]) == {"val_loss", "val_bpb", "artifact_bytes", "steps", "train_time_ms",
                                              "eval_time_ms"}
    assert sub["seed_results"]["42"]["artifact_bytes"] == 15_900_000
    assert sub["significance"]["passes"] is True and sub["significance"]["baseline"] == "1.2 bpb"
    assert sub["compliance"]["artifact_under_16mb"] is True and sub["compliance"]["audit_passed"] is True
    assert (out / "train_gpt.py").read_text() == SCRIPT
    assert "CUDA error" not in (out / "train_seed42.log").read_text()       # the succeeded attempt's log
    readme = (out / "README.md").read_text()
    assert "# Demo record" in readme and "| 42 |" in readme and "PASSES" in readme
    assert "for SEED in 42 1337 2025; do" in readme and "torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme
    for p in out.iterdir():                                                 # no secret anywhere
        text = p.read_text()
        assert SECRET not in text and "wk_0123456789abcdef" not in text, p.name
    log42 = (out / "train_seed42.log").read_text()
    assert "TRAIN_BATCH_TOKENS=786432" in log42 and "val_bytes_per_token:3.72663" in log42   # not secrets
    again = audit(load(out))
    assert again["verdict"] == "pass" and again["summary"]["n"] == 3


def test_submit_takes_baseline_and_policy_like_report(tmp_path):
    from results.submit import submit
    run = make_run_dir(tmp_path)                           # no [baseline] in the spec
    rep = submit(run, tmp_path / "rec", baseline="1.2", policy="progression")
    sig = json.loads((tmp_path / "rec" / "submission.json").read_text())["significance"]
    assert rep["significance"] == sig and sig["policy"] == "progression" and sig["baseline"] == "1.2 bpb"
    assert "PASSES" in (tmp_path / "rec" / "README.md").read_text()
    assert "MAX_WALLCLOCK_SECONDS=600" in (tmp_path / "rec" / "README.md").read_text()


def test_submit_refuses_a_run_over_the_cap(tmp_path):
    from results.submit import submit
    run = make_run_dir(tmp_path, total_bytes=16_000_001)
    out = tmp_path / "rec"
    with pytest.raises(PgolfError, match="artifact_cap"):
        submit(run, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_submit_refuses_non_empty_out_and_changed_script(tmp_path):
    from results.submit import submit
    run = make_run_dir(tmp_path)
    out = tmp_path / "rec"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(PgolfError, match="not empty"):
        submit(run, out)
    (run / "train_gpt.py").write_text(SCRIPT + "# edited later\n")
    with pytest.raises(PgolfError, match="sha256"):
        submit(run, tmp_path / "rec2")


def test_cli_submit_and_refusal_exit_codes(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    out = tmp_path / "rec"
    assert main(["submit", str(run), "--out", str(out), "--name", "CLI record"]) == 0
    assert "--baseline" in capsys.readouterr().err      # the note says how to give one
    assert json.loads((out / "submission.json").read_text())["name"] == "CLI record"
    assert main(["submit", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert main(["submit", str(tmp_path / "nope"), "--out", str(tmp_path / "r3")]) == 2


def test_scrub_masks_secret_names_only():
    from results.secrets import scrub
    text = ("RUNPOD_API_KEY=rpa_XYZ123456 HF_TOKEN='abcd1234efgh' db_password: hunter2hunter "
            "TOKENIZER_PATH=/x/fineweb_8192_bpe.model TRAIN_BATCH_TOKENS=786432 bos_token: 1")
    out = scrub(text)
    assert "rpa_XYZ123456" not in out and "abcd1234efgh" not in out and "hunter2hunter" not in out
    assert "RUNPOD_API_KEY=***" in out and "HF_TOKEN='***'" in out
    assert "TOKENIZER_PATH=/x/fineweb_8192_bpe.model" in out and "TRAIN_BATCH_TOKENS=786432" in out
    assert "bos_token: 1" in out
    for keep in ("val_bytes_per_token:3.72663", "key = (t.data_ptr(), n)", "sorted(x, key=lambda v: v)",
                 'HF_TOKEN = os.environ.get("HF_TOKEN")', "api_key: short", "MAX_TOKENS=1024"):
        assert scrub(keep) == keep, keep
    assert scrub("hf_token: hf_0123456789abcdef") == "hf_token: ***"


def test_submit_refuses_a_script_holding_a_secret(tmp_path):
    from results.submit import submit
    run = make_run_dir(tmp_path)
    script = run / "train_gpt.py"
    script.write_text(SCRIPT + 'WANDB_API_KEY="wk_live_0123456789"\n')
    batch = json.loads((run / "batch.json").read_text())
    batch["script"]["sha256"] = hashlib.sha256(script.read_bytes()).hexdigest()
    (run / "batch.json").write_text(json.dumps(batch))
    with pytest.raises(PgolfError, match=r"train_gpt.py:4: looks like a secret"):
        submit(run, tmp_path / "rec")


def test_submit_refuses_a_run_whose_only_seed_failed_and_writes_nothing(tmp_path, capsys):
    """Issue 20: a run with no scored seed wrote a record (val_bpb null, audit_passed true), then TypeError rc 3."""
    run = make_run_dir(tmp_path, {42: 1.08})
    led = json.loads((run / "ledger.json").read_text())
    led["seeds"]["42"]["state"] = "failed"
    led["seeds"]["42"]["attempts"] = led["seeds"]["42"]["attempts"][:1]       # only the failed attempt
    (run / "ledger.json").write_text(json.dumps(led))
    import shutil
    shutil.rmtree(run / "seeds" / "42" / "attempt-2")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["submit", str(run), "--out", str(tmp_path / "rec")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no seed finished with a score" in err[0] and "nothing to submit" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before           # no record, no temporary folder
