"""Audit findings pinned on the real records, run directories, and the CLI's handling of bad input."""
import json
from pathlib import Path

import pytest

import sys

from results.audit import CHECK_IDS, audit
from results.load import load
from runner.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from corpus import NON, TEN, needs_records  # noqa: E402
from test_load import make_run_dir  # noqa: E402



def checks(path) -> tuple[dict, dict]:
    a = audit(load(path))
    return a, {c["id"]: c for c in a["checks"]}


def test_json_shape_and_check_ids(tmp_path):
    a, _ = checks(make_run_dir(tmp_path, {42: [(0, 1.08)], 1337: [(0, 1.09)], 2025: [(0, 1.085)]}))
    assert set(a) == {"dir", "kind", "track", "policy", "runs", "claimed", "summary", "checks", "verdict"}
    assert a["track"] == "record" and a["policy"] == "accepted"
    assert [c["id"] for c in a["checks"]] == list(CHECK_IDS)
    assert set(a["runs"][0]) == {"seed", "log", "metric", "val_loss", "val_bpb", "artifact_bytes", "code_bytes",
                                 "train_time_ms", "eval_time_ms", "steps", "tokenizer", "bytes_per_token"}
    assert set(a["claimed"]) == {"val_bpb", "val_loss", "seeds"}
    assert set(a["summary"]) == {"n", "mean_val_bpb", "std_val_bpb", "mean_val_loss", "std_val_loss"}
    assert a["kind"] == "run" and a["verdict"] == "pass"
    assert all(c["status"] in ("pass", "fail", "warn", "skip") for c in a["checks"])
    json.dumps(a, allow_nan=False)


def test_run_dir_provenance(tmp_path):
    (tmp_path / "a").mkdir()
    _, c = checks(make_run_dir(tmp_path / "a", {42: [(0, 1.08)]}))
    assert c["provenance"]["status"] == "pass" and "matches train_gpt.py" in c["provenance"]["detail"]
    assert c["bpb_consistency"]["status"] == "pass"
    (tmp_path / "b").mkdir()
    a, c = checks(make_run_dir(tmp_path / "b", {42: [(0, 1.08)]}, log_sha="cd" * 32))
    assert c["provenance"]["status"] == "fail" and "seeds/42/attempt-1/train.log:2" in c["provenance"]["detail"]
    assert a["verdict"] == "fail"


@needs_records
def test_cap_breaker_without_submission():
    folder = TEN / "2026-03-19_int6_STE QAT_ MLP_bigram _U_Net"
    assert not (folder / "submission.json").exists()
    a, c = checks(folder)
    assert c["artifact_cap"]["status"] == "fail"
    assert "16,186,500" in c["artifact_cap"]["detail"] and "train.log:1536" in c["artifact_cap"]["detail"]
    assert c["claim_matches_logs"]["status"] == "skip" and a["verdict"] == "fail"


@needs_records
@pytest.mark.parametrize("name,best_seed", [
    ("2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248", 2025),
    ("2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233", 1337),
    ("2026-03-19_Seq2048_FP16Emb_TunedLR", 3),
])
def test_best_seed_claimed_as_mean(name, best_seed):
    a, c = checks(TEN / name)
    assert c["mean_not_best"]["status"] in ("fail", "warn")
    assert f"best seed ({best_seed}" in c["mean_not_best"]["detail"]
    assert a["summary"]["n"] == 3 and a["summary"]["mean_val_bpb"] > a["claimed"]["val_bpb"]


@needs_records
def test_seed_label_disagrees_with_header():
    a, c = checks(TEN / "2026-04-18_PR1626_CaseOps_Taper")
    assert c["seed_labels"]["status"] == "fail"
    assert "train_seed0.log" in c["seed_labels"]["detail"] and "seed 1337" in c["seed_labels"]["detail"]
    assert "train_seed0.log:81" in c["seed_labels"]["detail"]


@needs_records
def test_baseline_scored_on_larger_validation_set():
    """OpenAI's baseline was scored on the first, larger sp1024 export: a warning with the evidence, not a fail."""
    a, c = checks(TEN / "2026-03-17_NaiveBaseline")
    d = c["bpb_consistency"]
    assert d["status"] == "warn" and "63,779,840" in d["detail"] and "train.log:49" in d["detail"]
    assert "not a byte-counting bug" in d["detail"] and "+0.262%" in d["detail"]
    assert a["runs"][0]["bytes_per_token"] == pytest.approx(2.4423, abs=1e-4)


@needs_records
@pytest.mark.parametrize("name,tok", [
    ("2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072", "sp1024"),
    ("2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR", "sp4096"),
    ("2026-04-08_SP8192_ParallelResid_ScoreFirstTTT", "sp8192"),
    ("2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611", "sp8192_caseops"),
])
def test_canonical_bytes_per_token_hold(name, tok):
    a, c = checks(TEN / name)
    assert c["bpb_consistency"]["status"] == "pass"
    assert {r["tokenizer"] for r in a["runs"]} == {tok}


@needs_records
def test_clean_record_passes():
    a, c = checks(TEN / "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072")
    assert a["verdict"] == "pass"
    assert c["claim_matches_logs"]["status"] == "pass" and c["mean_not_best"]["status"] == "pass"
    assert c["provenance"]["status"] == "skip"


# ---- CLI: one line on stderr, non-zero exit, no traceback ------------------------------------------
def run_cli(capsys, *argv):
    rc = main(["audit", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err):
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and err.startswith("pgolf audit: error:")


def test_cli_missing_and_empty(tmp_path, capsys):
    rc, _, err = run_cli(capsys, tmp_path / "missing")
    assert_one_line_error(rc, err)
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, tmp_path / "empty")
    assert_one_line_error(rc, err)


def test_cli_malformed_submission(tmp_path, capsys):
    (tmp_path / "submission.json").write_text('{"val_bpb": 1.1,')
    (tmp_path / "train_seed1.log").write_text("final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:1.1\n")
    rc, _, err = run_cli(capsys, tmp_path)
    assert_one_line_error(rc, err)
    assert "submission.json" in err and "malformed JSON" in err


def test_cli_contradictory_submission(tmp_path, capsys):
    (tmp_path / "submission.json").write_text(json.dumps(
        {"val_bpb": 1.05, "seed_results": {"1": {"val_bpb": 1.10}, "2": {"val_bpb": 1.12}}}))
    for s, v in ((1, 1.10), (2, 1.12)):
        (tmp_path / f"train_seed{s}.log").write_text(f"seed:{s}\nfinal_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:{v}\n")
    rc, out, err = run_cli(capsys, tmp_path, "--json")
    assert rc == 1 and err == ""
    c = {c["id"]: c for c in json.loads(out)["checks"]}
    assert c["claim_matches_logs"]["status"] == "fail" and "contradicts itself" in c["claim_matches_logs"]["detail"]


def test_cli_binary_junk_truncated_and_nan(tmp_path, capsys):
    (tmp_path / "train_seed1.log").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "train_seed2.log").write_text("seed:2\nstep:1/9 train_loss:9.0 train_time:5ms\nfinal_int8_zlib_roundtrip_exa")
    (tmp_path / "train_seed3.log").write_text("seed:3\nfinal_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan\n")
    rc, out, err = run_cli(capsys, tmp_path, "--json")
    assert rc == 1 and "Traceback" not in err
    a = json.loads(out)
    c = {c["id"]: c for c in a["checks"]}
    assert c["logs_present"]["status"] == "warn"
    assert c["seed_count"]["status"] == "fail"         # nothing scored
    assert a["summary"]["n"] == 0


def test_cli_text_output_and_exit_codes(tmp_path, capsys):
    d = make_run_dir(tmp_path, {42: [(0, 1.08)], 1337: [(0, 1.09)], 2025: [(0, 1.085)]})
    rc, out, err = run_cli(capsys, d)
    assert rc == 0 and "verdict: PASS" in out and "provenance" in out


def test_cli_folder_of_records(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "submission.json").write_text("{}")
    rc, _, err = run_cli(capsys, tmp_path)
    assert_one_line_error(rc, err)
    assert "audit one of them" in err


SOURCE = 'import torch\n"""payload"""\n' + "".join(f"x{i} = {i}\n" for i in range(30))


def _record_with_embedded_source(d: Path, shipped: str):
    d.mkdir()
    (d / "train_gpt.py").write_text(shipped)
    (d / "train_seed5.log").write_text(SOURCE + "=" * 100 + "\nseed:5\n"
                                       "step:10/10 train_loss:2.0 train_time:1000ms step_avg:100ms\n"
                                       "final_int8_zlib_roundtrip_exact val_loss:2.06 val_bpb:1.22\n")


def test_provenance_embedded_source(tmp_path):
    _record_with_embedded_source(tmp_path / "same", SOURCE)
    _, c = checks(tmp_path / "same")
    assert c["provenance"]["status"] == "pass" and "embedded source" in c["provenance"]["detail"]
    _record_with_embedded_source(tmp_path / "edited", SOURCE + "y = 1\n")
    a, c = checks(tmp_path / "edited")
    assert c["provenance"]["status"] == "fail" and "train_seed5.log:1" in c["provenance"]["detail"]


def _run_block(source: str, seed: int, bpb: float) -> str:
    return (source + "=" * 100 + f"\nseed:{seed}\nstep:10/10 train_loss:2.0 train_time:1000ms step_avg:100ms\n"
            f"final_int8_zlib_roundtrip_exact val_loss:2.06 val_bpb:{bpb}\n")


def test_provenance_of_every_run_of_a_concatenated_log(tmp_path):
    """#19's leftover: a log holding several runs, each opening with the source its script logged (as
    2026-03-19_MixedQuant_Int6Int8_SlidingWindow's train.log does), gave only its first run a source; the
    runs after it had no provenance at all. Each run now carries its own source, from its own line: the
    claimed third run that ran an edited script fails, naming that run's source line; when all three ran
    the shipped script it passes."""
    from results.parse import parse_log
    d = tmp_path / "rec"
    d.mkdir()
    (d / "train_gpt.py").write_text(SOURCE)
    (d / "submission.json").write_text('{"val_bpb": 1.203}')
    edited = SOURCE + "y = 1\n"
    (d / "train.log").write_text(_run_block(SOURCE, 1, 1.201) + _run_block(SOURCE, 2, 1.202)
                                 + _run_block(edited, 3, 1.203))
    runs = parse_log(d / "train.log")
    block = len(_run_block(SOURCE, 1, 1.201).splitlines())
    assert [r.header_seed for r in runs] == [1, 2, 3]
    assert [r.first_line for r in runs] == [1, block + 1, 2 * block + 1]
    assert [r.refs["source"] for r in runs] == [1, block + 1, 2 * block + 1]
    assert runs[0].source_text == runs[1].source_text == SOURCE.rstrip("\n") != runs[2].source_text
    _, c = checks(d)
    assert c["provenance"]["status"] == "fail", c["provenance"]
    assert f"train.log:{2 * block + 1} embedded source differs from every shipped script" in c["provenance"]["detail"]
    (d / "train.log").write_text(_run_block(SOURCE, 1, 1.201) + _run_block(SOURCE, 2, 1.202)
                                 + _run_block(SOURCE, 3, 1.203))
    _, c = checks(d)
    assert c["provenance"]["status"] == "pass" and f"train.log:{2 * block + 1} embedded source = train_gpt.py" \
        in c["provenance"]["detail"]


def test_artifact_from_model_bytes_plus_folder_code(tmp_path):
    (tmp_path / "submission.json").write_text(json.dumps({"val_bpb": 1.2, "bytes_code": 60000}))
    (tmp_path / "train_seed1.log").write_text("seed:1\nSerialized model int6+zstd: 15950000 bytes\n"
                                              "final_int6_roundtrip_exact val_loss:2.0 val_bpb:1.2\n")
    _, c = checks(tmp_path)
    assert c["artifact_cap"]["status"] == "fail"
    assert "16,010,000" in c["artifact_cap"]["detail"] and "bytes_code" in c["artifact_cap"]["detail"]


def test_frozen_script_changed_after_run(tmp_path):
    d = make_run_dir(tmp_path, {42: [(0, 1.08)]})
    (d / "train_gpt.py").write_text(SOURCE)
    _, c = checks(d)
    assert c["provenance"]["status"] == "fail" and "batch.json" in c["provenance"]["detail"]


# ---- issue 19: the claim's own precision, every shipped script, experiments apart, whitespace ------------
def test_provenance_names_the_shipped_script_that_ran_and_whitespace_is_a_warning(tmp_path):
    d = tmp_path / "two"
    _record_with_embedded_source(d, "print('the baseline')\n")
    (d / "train_gpt_variant.py").write_text(SOURCE)              # the log embeds this one, not train_gpt.py
    _, c = checks(d)
    assert c["provenance"]["status"] == "pass" and "= train_gpt_variant.py" in c["provenance"]["detail"]
    spaced = SOURCE.replace("x3 = 3", "x3  =   3")
    _record_with_embedded_source(tmp_path / "spaces", spaced)
    _, c = checks(tmp_path / "spaces")
    assert c["provenance"]["status"] == "warn" and "whitespace only" in c["provenance"]["detail"]
    assert "line 6" in c["provenance"]["detail"]


def test_a_claim_keeps_the_decimals_it_was_written_with(tmp_path):
    """submission.json writes "1.06400": the log at 1.06400 is seed 42's run, not the one at 1.06444 that a
    3-decimal reading of the float would also accept."""
    from results.claims import read, rounding_tol
    d = tmp_path / "rec"
    d.mkdir()
    (d / "submission.json").write_text('{"val_bpb": 1.06350, "seed_results": {"42": {"val_bpb": 1.06400}, '
                                       '"7": {"val_bpb": 1.06300}}}')
    sub = read(d / "submission.json")
    assert rounding_tol(sub["seed_results"]["42"]["val_bpb"]) == pytest.approx(5e-6, rel=1e-3)
    assert rounding_tol(1.064) == pytest.approx(5e-4, rel=1e-3)                  # a bare float: its repr
    (d / "train_seed42.log").write_text("seed:42\nfinal_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:1.06444\n")
    (d / "ttt").mkdir()
    (d / "ttt" / "seed_42.log").write_text("seed:42\nquantized_ttt_exact val_loss:2.0 val_bpb:1.06400\n")
    (d / "train_seed7.log").write_text("seed:7\nquantized_ttt_exact val_loss:2.0 val_bpb:1.06300\n")
    rs = load(d)
    assert sorted(r.log for r in rs.runs) == ["train_seed7.log", "ttt/seed_42.log"]
    _, c = checks(d)
    assert c["mean_not_best"]["status"] == "pass" and c["claim_matches_logs"]["status"] == "pass"


def test_runs_of_one_seed_from_another_experiment_are_told_apart(tmp_path):
    """Seed 42's 100k-step study is not a rerun of seed 42's 10-minute run: the configuration the other seeds
    share decides which one counts, and the warning names the difference."""
    def run(seed, bpb, iters):
        return (f"Hyperparameters:\n  seed: {seed}\n  iterations: {iters}\n  num_layers: 10\n"
                f"step:{iters}/{iters} train_loss:2.0 train_time:1000ms\n"
                f"final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:{bpb}\n")
    d = tmp_path / "rec"
    d.mkdir()
    (d / "log_100k_steps_study.txt").write_text(run(42, 1.50, 100000))
    for seed, bpb in ((42, 1.556), (1337, 1.565), (7, 1.580)):
        (d / f"log_10mins_seed-{seed}.txt").write_text(run(seed, bpb, 20000))
    rs = load(d)
    assert sorted(r.log for r in rs.runs) == [f"log_10mins_seed-{s}.txt" for s in (1337, 42, 7)]
    assert any("another experiment with seed 42 (iterations 100000 vs 20000)" in w for w in rs.warnings)
    _, c = checks(d)
    assert c["config_consistency"]["status"] == "pass"
    assert "1 other run(s)" in c["seed_count"]["detail"]


@needs_records
def test_public_folders_misread_before_are_read_right():
    """The false alarms of issue 19 on the real folders, each at its cause."""
    fused = TEN / "2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE"
    rs = load(fused)
    assert {r.log for r in rs.runs} == {"ttt_pr1767/seed_42.log", "ttt_pr1767/seed_0.log", "ttt_pr1767/seed_1234.log"}
    _, c = checks(fused)
    assert c["mean_not_best"]["status"] == "pass" and c["config_consistency"]["status"] == "pass"
    assert c["artifact_cap"]["status"] == "pass" and "train_seed42.log" in c["artifact_cap"]["detail"]
    from results.stats import significance            # 04-27 against 04-23 on the right baseline seed
    lqer = load(TEN / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")
    assert significance(lqer, fused, "progression")["p"] == pytest.approx(0.02545, abs=5e-5)   # not 0.0213
    _, c = checks(NON / "2026-04-04_GDN_Hybrid_LongContext")
    assert c["provenance"]["status"] == "pass" and "train_gpt_gdn.py" in c["provenance"]["detail"]
    assert c["config_consistency"]["status"] == "pass"                    # the two claimed 32k runs agree
    assert "seq32768.txt" in c["mean_not_best"]["detail"] or c["mean_not_best"]["status"] == "pass"
    rs = load(NON / "2026-04-05_118M_XNOR-Net_FP8_1024D_10L")
    assert "log_10mins_seed-42.txt" in {r.log for r in rs.runs}
    _, c = checks(NON / "2026-04-30_Random_Linear_Adapter")
    assert c["provenance"]["status"] == "warn" and "whitespace only" in c["provenance"]["detail"]


# ---- issue 19: forged folders and misreadings of bpb ------------------------------------------------------
def _canonical_log(seed: int, bpb: float, loss: float, *, val_tokens: int = 62_021_632, exact: float | None = None,
                   extra: str = "") -> str:
    """A log in the official format scoring the canonical sp1024 validation set."""
    return (f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./data/tokenizers/fineweb_1024_bpe.model\n"
            f"val_loader:shards pattern=./data/datasets/fineweb10B_sp1024/fineweb_val_*.bin tokens:{val_tokens}\n"
            f"seed:{seed}\n{extra}step:100/100 train_loss:2.0 train_time:590000ms step_avg:5900ms\n"
            f"final_int8_zlib_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:1401ms\n"
            f"final_int8_zlib_roundtrip_exact val_loss:{loss:.8f} val_bpb:{(bpb if exact is None else exact):.8f}\n")


def _loss_of(bpb: float) -> float:
    import math
    return bpb * math.log(2) * 2.43593


def test_an_edited_exact_line_that_disagrees_with_its_twin_fails(tmp_path):
    """The forger edits seed 2's `_exact` line; the claim still matches the rounded twin, but the two final lines
    of one evaluation now disagree."""
    d = tmp_path / "rec"
    d.mkdir()
    for seed, bpb in ((1, 1.2244), (2, 1.2250)):
        exact = 1.2150 if seed == 2 else None
        (d / f"train_seed{seed}.log").write_text(_canonical_log(seed, bpb, _loss_of(bpb), exact=exact))
    (d / "submission.json").write_text(json.dumps({"val_bpb": 1.2247, "seed_results": {"1": {"val_bpb": 1.2244},
                                                                                       "2": {"val_bpb": 1.2250}}}))
    _, c = checks(d)
    assert c["final_lines_agree"]["status"] == "fail"
    assert "train_seed2.log:5" in c["final_lines_agree"]["detail"] and "1.215" in c["final_lines_agree"]["detail"]
    (d / "train_seed2.log").write_text(_canonical_log(2, 1.2250, _loss_of(1.2250)))
    _, c = checks(d)
    assert c["final_lines_agree"]["status"] == "pass"


def test_bpb_scaled_down_on_the_canonical_set_fails(tmp_path):
    """val_bpb × 0.995 in every final line and in submission.json: the loss and the canonical bytes/token give
    the true bpb, and the log states the canonical token count, so it is not another validation set."""
    d = tmp_path / "rec"
    d.mkdir()
    true = {1: 1.2244, 2: 1.2250, 3: 1.2238}
    for seed, bpb in true.items():
        (d / f"train_seed{seed}.log").write_text(_canonical_log(seed, bpb * 0.995, _loss_of(bpb)))
    _, c = checks(d)
    assert c["bpb_consistency"]["status"] == "fail" and "canonical validation set" in c["bpb_consistency"]["detail"]
    assert "62,021,632" in c["bpb_consistency"]["detail"]
    # without a token count the log could be another export: a warning
    for seed, bpb in true.items():
        text = _canonical_log(seed, bpb * 0.995, _loss_of(bpb)).replace(" tokens:62021632", "")
        (d / f"train_seed{seed}.log").write_text(text)
    _, c = checks(d)
    assert c["bpb_consistency"]["status"] == "warn"


def test_canonical_tokens_cut_to_whole_sequences_are_canonical(tmp_path):
    """usable = ((N - 1) // L) * L: the official loader drops the tail; that is the canonical set."""
    d = tmp_path / "rec"
    d.mkdir()
    cut = ((62_021_632 - 1) // 16384) * 16384
    (d / "train_seed1.log").write_text(_canonical_log(1, 1.2244, _loss_of(1.2244), val_tokens=cut,
                                                      extra="train_seq_len:16384 train_batch_tokens:393216\n"))
    _, c = checks(d)
    assert c["bpb_consistency"]["status"] == "pass" and "whole sequences of 16,384" in c["bpb_consistency"]["detail"]
    (d / "train_seed1.log").write_text(_canonical_log(1, 1.2244, _loss_of(1.2244), val_tokens=cut - 5))
    _, c = checks(d)
    assert c["bpb_consistency"]["status"] == "warn" and "canonical 62,021,632" in c["bpb_consistency"]["detail"]


def test_a_val_loss_claim_is_checked(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    for seed, bpb in ((1, 1.2244), (2, 1.2250)):
        (d / f"train_seed{seed}.log").write_text(_canonical_log(seed, bpb, _loss_of(bpb)))
    for value, status in ((1.2247, "warn"), ((_loss_of(1.2244) + _loss_of(1.2250)) / 2, "pass"), (1.1, "fail")):
        (d / "submission.json").write_text(json.dumps({"val_loss": round(value, 6)}))
        _, c = checks(d)
        assert c["claim_matches_logs"]["status"] == status, c["claim_matches_logs"]["detail"]


@needs_records
def test_public_bpb_readings():
    _, c = checks(NON / "2026-04-15_Mamba3Hybrid_SP8192_GPTQ_TTT")                # 40,538,112 = cut to 4096
    assert c["bpb_consistency"]["status"] == "pass" and "whole sequences of 4,096" in c["bpb_consistency"]["detail"]
    _, c = checks(NON / "2026-03-31_LegendreGPT")                                 # "eval: 100 batches (limited)"
    assert c["bpb_consistency"]["status"] == "warn" and "part of the validation set" in c["bpb_consistency"]["detail"]
    _, c = checks(TEN / "2026-03-20_10L_Int5MLP_MuonWD04_SWA50")                   # "val_loss": 1.14276 is a bpb
    assert c["claim_matches_logs"]["status"] == "warn" and "wrong key" in c["claim_matches_logs"]["detail"]


# ---- issue 19/20: new checks -------------------------------------------------------------------------------
def test_a_batch_where_every_seed_failed_does_not_pass(tmp_path):
    """Issue 20: on the non-record track too (the smoke job's), a run directory with no scored seed fails."""
    d = make_run_dir(tmp_path, {42: [(1, None)], 7: [(137, 1.2)]})
    batch = json.loads((d / "batch.json").read_text())
    batch["spec"] = {"submission": {"track": "non_record_16mb"}}
    (d / "batch.json").write_text(json.dumps(batch))
    a, c = checks(d)
    assert a["verdict"] == "fail" and a["track"] == "non_record"
    assert c["logs_present"]["status"] == "fail" and "every seed failed" in c["logs_present"]["detail"]
    assert c["seed_count"]["status"] == "fail"


def _smi(n: int, name: str) -> str:
    return "".join(f"|   {i}  {name:<28}  On  |   00000000:{i:02X}:00.0 Off |                    0 |\n"
                   for i in range(n))


def _record_track_folder(tmp_path, extra: str = "", *, script: str | None = "print('x')\n", readme=True,
                         train_ms: int = 590_000) -> Path:
    d = tmp_path / "rec"
    d.mkdir(parents=True, exist_ok=True)
    (d / "submission.json").write_text(json.dumps({"val_bpb": 1.2244, "track": "10min_16mb"}))
    if readme:
        (d / "README.md").write_text("# rec\n")
    if script is not None:
        (d / "train_gpt.py").write_text(script)
    (d / "train_seed1.log").write_text(
        f"{extra}seed:1\nstep:100/100 train_loss:2.0 train_time:{train_ms}ms step_avg:5900ms\n"
        f"stopping_early: wallclock_cap train_time:{train_ms}ms step:100/20000\n"
        "final_int8_zlib_roundtrip_exact val_loss:2.06 val_bpb:1.2244\n")
    return d


def test_hardware_from_the_log(tmp_path):
    d = _record_track_folder(tmp_path, _smi(8, "NVIDIA H100 80GB HBM3") + "world_size:8 grad_accum_steps:1\n")
    _, c = checks(d)
    assert c["hardware"]["status"] == "pass" and "8x NVIDIA H100 80GB HBM3" in c["hardware"]["detail"]
    d = _record_track_folder(tmp_path, _smi(8, "NVIDIA H200") + "world_size:8 grad_accum_steps:1\n")
    _, c = checks(d)
    assert c["hardware"]["status"] == "fail" and "8x NVIDIA H200 (train_seed1.log:1)" in c["hardware"]["detail"]
    d = _record_track_folder(tmp_path, _smi(8, "NVIDIA H100 PCIe"))
    _, c = checks(d)
    assert c["hardware"]["status"] == "warn" and "not the SXM part" in c["hardware"]["detail"]
    d = _record_track_folder(tmp_path, "gpu: NVIDIA H100 80GB HBM3\nworld_size:16 grad_accum_steps:1\n")
    _, c = checks(d)
    assert c["hardware"]["status"] == "fail" and "16 GPUs" in c["hardware"]["detail"]


def test_calibration_on_training_data_after_the_timer(tmp_path):
    after = ("GPTQ:collecting Hessians from calibration data...\nGPTQ:collected 67 Hessians in 4.7s\n")
    d = _record_track_folder(tmp_path, train_ms=599_592)
    with open(d / "train_seed1.log", "a") as f:
        f.write(after)
    a, c = checks(d)
    check = c["train_data_after_timer"]
    assert check["status"] == "warn" and a["verdict"] == "pass"
    assert "599.6 s" in check["detail"] and "4.7 s" in check["detail"] and "604.3 s > 600 s" in check["detail"]
    assert "train_seed1.log:5" in check["detail"] and "train_seed1.log:6" in check["detail"]
    assert "the script shows" not in check["detail"]                  # print('x') reads nothing
    (d / "train_gpt.py").write_text("def collect_hessians(model, train_loader, n):\n    for _ in range(n):\n"
                                    "        x, y = train_loader.next_batch(8, 1)\n")
    _, c = checks(d)
    assert "train_gpt.py:3 in `collect_hessians`" in c["train_data_after_timer"]["detail"]
    strict = audit(load(d), strict=True)
    assert strict["verdict"] == "fail" and strict["policy"] == "strict"
    # a script that reserves the time (stops at 588 s) calibrates inside the budget
    d = _record_track_folder(tmp_path, train_ms=588_000)
    with open(d / "train_seed1.log", "a") as f:
        f.write(after)
    _, c = checks(d)
    assert c["train_data_after_timer"]["status"] == "pass"


def test_the_shipped_script_against_the_logged_code_size_and_the_cap(tmp_path):
    script = "print('the model')\n" * 100
    code = f"Serialized model int8+zlib: 15950000 bytes\nCode size: {len(script)} bytes\n"
    d = _record_track_folder(tmp_path, code, script=script)
    _, c = checks(d)
    assert c["script_size"]["status"] == "pass" and c["artifact_cap"]["status"] == "pass"
    (d / "train_gpt.py").write_text(script + "#" * 200_000)           # padded after the run: 200 kB over
    _, c = checks(d)
    assert c["script_size"]["status"] == "warn" and "+200,000" in c["script_size"]["detail"]
    assert c["artifact_cap"]["status"] == "fail" and "the shipped train_gpt.py is" in c["artifact_cap"]["detail"]


def test_required_files_of_a_record(tmp_path):
    d = _record_track_folder(tmp_path)
    _, c = checks(d)
    assert c["required_files"]["status"] == "pass"
    d = _record_track_folder(tmp_path / "b", script=None, readme=False)
    (d / "train_gpt_v5.py").write_text("print(1)\n")
    _, c = checks(d)
    assert c["required_files"]["status"] == "fail" and "lacks README.md" in c["required_files"]["detail"]
    assert "train_gpt_v5.py" in c["required_files"]["detail"]
    (d / "README.md").write_text("# b\n")
    _, c = checks(d)
    assert c["required_files"]["status"] == "warn"                    # a script, named otherwise


@needs_records
def test_public_misses_are_found():
    _, c = checks(TEN / "2026-03-19_10L_MixedPrecision")                          # 8xH200 in its nvidia-smi
    assert c["hardware"]["status"] == "fail" and "H200" in c["hardware"]["detail"]
    _, c = checks(TEN / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")
    assert c["train_data_after_timer"]["status"] == "warn" and "604.3 s" in c["train_data_after_timer"]["detail"]
    assert "train_gpt.py:2134 in `collect_hessians`: `train_loader.next_batch(" in c["train_data_after_timer"]["detail"]
    assert c["script_size"]["status"] == "warn" and "157,868" in c["script_size"]["detail"]
    assert "158,429" in c["script_size"]["detail"]


def test_cli_text_names_the_track_fits_100_columns_and_takes_strict(tmp_path, capsys):
    """Issue 20: a non-record folder is not labelled "(record)"; the text fits 100 columns; --strict turns the
    accepted practice (calibration after the timer) into a failure and exit code 1."""
    d = _record_track_folder(tmp_path, train_ms=599_592)
    with open(d / "train_seed1.log", "a") as f:
        f.write("GPTQ:collecting Hessians from calibration data...\nGPTQ:collected 67 Hessians in 4.7s\n")
    rc, out, _ = run_cli(capsys, d)
    assert rc == 0 and "record folder, record track" in out and "train_data_after_timer" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    rc, out, _ = run_cli(capsys, d, "--strict")
    assert rc == 1 and "strict policy" in out and "verdict: FAIL" in out
    (d / "submission.json").write_text(json.dumps({"val_bpb": 1.2244, "track": "non_record_16mb"}))
    rc, out, _ = run_cli(capsys, d)
    assert "record folder, non-record track" in out and "(record)" not in out
