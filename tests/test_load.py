"""Folder loading: the public record folders in tests/data/records, run directories built in tmp_path, bad input."""
import hashlib
import json
from pathlib import Path

import pytest

from results.errors import PgolfError
from corpus import TEN, needs_records
from results.claims import claimed_seed_results
from results.load import load
from results.summary import summarize

SCRIPT = "import os\nprint('train')\n"


def payload_log(seed: int, bpb: float, sha: str | None = None, bpt: float = 3.72663) -> str:
    """A log in our payload's format (docs/CHALLENGE.md, "Log lines")."""
    import math
    loss = bpb * math.log(2) * bpt
    lines = [f"seed:{seed}"]
    if sha:
        lines.append(f"script_sha256:{sha}")
    lines += ["val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./data/tokenizers/fineweb_8192_bpe.model",
              f"val_bytes_per_token:{bpt}",
              "step:1/100 train_loss:9.0 train_time:100ms step_avg:100ms",
              "step:100/100 train_loss:3.0 train_time:590000ms step_avg:5900ms",
              "Code size: 50000 bytes",
              "Total submission size int6+brotli: 15900000 bytes",
              f"final_int6_roundtrip_exact val_loss:{loss + 0.05:.8f} val_bpb:{bpb + 0.02:.8f}",
              f"final_int6_sliding_window_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}"]
    return "\n".join(lines) + "\n"


def make_run_dir(root: Path, seeds: dict[int, list[tuple[int | None, float | None]]], script: str = SCRIPT,
                 log_sha: str | None = "auto") -> Path:
    """seeds: seed -> list of attempts (exit_code, bpb or None = no log)."""
    d = root / "run1"
    d.mkdir()
    sha = hashlib.sha256(script.encode()).hexdigest()
    (d / "train_gpt.py").write_text(script)
    (d / "batch.json").write_text(json.dumps({"script": {"file": "train_gpt.py", "sha256": sha}, "pgolf_version": "0.1.0"}))
    ledger = {"seeds": {}}
    for seed, attempts in seeds.items():
        entry = {"state": "succeeded" if any(a[0] == 0 for a in attempts) else "failed", "attempts": []}
        for k, (code, bpb) in enumerate(attempts, 1):
            entry["attempts"].append({"attempt": k, "backend": "ray", "node": None, "pod_id": None,
                                      "started": "2026-11-22T00:00:00Z", "ended": "2026-11-22T00:10:00Z",
                                      "exit_code": code, "error": None, "cost_usd": None, "pod_terminated": None})
            if bpb is not None:
                p = d / "seeds" / str(seed) / f"attempt-{k}" / "train.log"
                p.parent.mkdir(parents=True)
                p.write_text(payload_log(seed, bpb, sha if log_sha == "auto" else log_sha))
        ledger["seeds"][str(seed)] = entry
    (d / "ledger.json").write_text(json.dumps(ledger))
    return d


def test_run_dir_uses_last_succeeded_attempt(tmp_path):
    d = make_run_dir(tmp_path, {42: [(1, 1.5), (0, 1.08)], 1337: [(0, 1.09)], 2025: [(0, 1.07), (0, 1.085)],
                                7: [(137, 1.2)]})
    rs = load(d)
    assert rs.kind == "run" and rs.script_path == d / "train_gpt.py"
    got = {r.seed: r.val_bpb for r in rs.runs}
    assert got == {42: pytest.approx(1.08), 1337: pytest.approx(1.09), 2025: pytest.approx(1.085)}
    assert {r.log for r in rs.runs} >= {"seeds/42/attempt-2/train.log", "seeds/2025/attempt-2/train.log"}
    assert any("seed 7" in w for w in rs.warnings)
    r = next(r for r in rs.runs if r.seed == 42)
    assert r.metric == "final_int6_sliding_window_exact" and r.artifact_bytes == 15900000
    assert r.filename_seed == 42 and r.tokenizer == "sp8192"


@pytest.mark.parametrize("ledger,msg", [
    (None, "ledger.json"),
    ("{not json", "malformed JSON"),
    (json.dumps({"seeds": []}), "seeds"),
])
def test_run_dir_missing_ledger_and_bad_json(tmp_path, ledger, msg):
    (tmp_path / "batch.json").write_text("{}")
    if ledger is not None:
        (tmp_path / "ledger.json").write_text(ledger)
    with pytest.raises(PgolfError, match=msg):
        load(tmp_path)


def test_missing_empty_and_file(tmp_path):
    with pytest.raises(PgolfError, match="no such folder"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PgolfError, match="empty"):
        load(tmp_path / "empty")
    (tmp_path / "f.log").write_text("x")
    with pytest.raises(PgolfError, match="not a folder"):
        load(tmp_path / "f.log")


@pytest.mark.parametrize("text,msg", [
    (json.dumps({"val_bpb": "1.1"}), "'val_bpb' must be a number"),
    ('{"val_bpb": NaN}', "finite"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"seed_results": {"1": {"val_bpb": "x"}}}), r"seed_results\[1\].val_bpb"),
])
def test_submission_type_errors(tmp_path, text, msg):
    (tmp_path / "submission.json").write_text(text)
    with pytest.raises(PgolfError, match=msg):
        load(tmp_path)


@needs_records
def test_record_duplicates_counted_once():
    rs = load(TEN / "2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248")
    assert sorted(r.seed for r in rs.runs) == [42, 1337, 2025]
    assert len(rs.extra_runs) == 1 and any("same run" in w for w in rs.warnings)


@needs_records
def test_record_reruns_keep_the_claimed_one():
    rs = load(TEN / "2026-04-29_SmearGateBOSFix_3Seed_1.06141")
    assert {r.seed: r.log for r in rs.runs} == {42: "train_seed42_pr1851_original.log",
                                                314: "train_seed314_original.log",
                                                1234: "train_seed1234_original.log"}
    assert len(rs.extra_runs) == 3


@needs_records
def test_claim_selects_the_matching_line():
    # seed 42 printed a broken TTT score (1.336); the submission claims its sliding-window score
    rs = load(TEN / "2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR")
    r = next(r for r in rs.runs if r.seed == 42)
    assert r.metric == "final_int6_sliding_window" and r.val_bpb == pytest.approx(1.08938974)


@needs_records
def test_submission_schemas():
    rs = load(TEN / "2026-04-06_SP8192_QK5_LegalTTT_1.0828")          # "seeds": {seed: {...}}
    assert set(claimed_seed_results(rs.submission)) == {0, 42, 1234}
    rs = load(TEN / "2026-04-14_MultiPhaseGlobalSGD_PhasedTTT")       # "seed_results": {seed: {...}}
    assert claimed_seed_results(rs.submission)[1234]["val_bpb"] == pytest.approx(1.07164)


@needs_records
def test_summary_sample_std():
    rs = load(TEN / "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072")
    s = summarize(rs.runs)
    assert s["n"] == 3
    assert s["mean_val_bpb"] == pytest.approx(1.11473509, abs=1e-8)
    assert s["std_val_bpb"] == pytest.approx(0.00035387, abs=1e-8)      # ddof=1, as the submission states
    assert s["mean_val_loss"] == pytest.approx(1.88217853, abs=1e-8)
