"""The checks added for issue 11, on small synthetic record folders and on the real records: track-aware
rules, logs in any subfolder, claims found in another file, config_consistency, data_overlap, eval_time
with test-time training, and the one-line answer for a folder of tracks."""
import json
import math
from pathlib import Path

import pytest

from corpus import NON, RECORDS, TEN, needs_records
from results.audit import audit
from results.errors import PgolfError
from results.load import load

BPT = 3.72663          # sp8192


def log(seed: int, bpb: float, *, hparams: dict | None = None, train_ms: int = 590_000, ttt_ms: int | None = 300_000,
        extra: list[str] = (), tokenizer: str = "fineweb_8192_bpe.model", val_tokens: int = 40_540_160) -> str:
    loss = bpb * math.log(2) * BPT
    dump = ["Hyperparameters:"] + [f"  {k}: {v}" for k, v in {"seed": seed, **(hparams or {})}.items()]
    ttt = f" eval_time:{ttt_ms}ms" if ttt_ms is not None else ""
    return "\n".join(dump + [
        f"tokenizer_path:./data/tokenizers/{tokenizer} vocab_size:8192",
        f"val_tokens:{val_tokens}", *extra,
        f"step:100/100 train_loss:3.0 train_time:{train_ms}ms step_avg:5900ms",
        "Total submission size int6+brotli: 15900000 bytes",
        f"final_int6_sliding_window_exact val_loss:{loss + 0.03:.8f} val_bpb:{bpb + 0.01:.8f} eval_time:90000ms",
        f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}{ttt}"]) + "\n"


def record(root: Path, logs: dict[str, str], sub: dict | None = None, name: str = "rec") -> Path:
    d = root / name
    d.mkdir(parents=True)
    for rel, text in logs.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    if sub is not None:
        (d / "submission.json").write_text(json.dumps(sub))
    return d


def checks(path) -> dict:
    return {c["id"]: c for c in audit(load(path))["checks"]}


SEEDS = {1: 1.081, 2: 1.082, 3: 1.083}
HP = {"num_layers": 11, "matrix_lr": 0.025, "ttt_epochs": 3}


# ---- tracks ------------------------------------------------------------------------------------------
def test_non_record_track_has_no_time_limit_or_seed_minimum(tmp_path):
    sub = {"track": "non_record_16mb", "val_bpb": 1.081}
    d = record(tmp_path, {"train_seed1.log": log(1, 1.081, train_ms=14_400_000, ttt_ms=900_000)}, sub)
    c = checks(d)
    assert c["train_time"]["status"] == "skip" and "14400.0 s" in c["train_time"]["detail"]
    assert c["eval_time"]["status"] == "skip" and "non-record" in c["eval_time"]["detail"]
    assert c["seed_count"]["status"] == "pass" and "no seed minimum" in c["seed_count"]["detail"]
    sub["track"] = "10min_16mb"                                   # the same logs judged as a record
    (d / "submission.json").write_text(json.dumps(sub))
    c = checks(d)
    assert c["train_time"]["status"] == "fail" and c["eval_time"]["status"] == "fail"
    assert c["seed_count"]["status"] == "warn"


@needs_records
def test_non_record_folder_without_logs_is_a_warning_not_a_fail():
    a = audit(load(NON / "2026-03-29_LLaDA_MDLM_Diffusion"))
    c = {x["id"]: x for x in a["checks"]}
    assert a["verdict"] == "pass" and c["logs_present"]["status"] == "warn"
    assert c["claim_matches_logs"]["status"] == "skip"


def test_record_without_logs_still_fails(tmp_path):
    d = record(tmp_path, {}, {"val_bpb": 1.1, "track": "10min_16mb"})
    assert checks(d)["logs_present"]["status"] == "fail"


# ---- where the logs are ----------------------------------------------------------------------------
def test_logs_in_a_subfolder_named_after_the_pr_are_read(tmp_path):
    sub = {"val_bpb": 1.082, "seed_results": {str(s): {"val_bpb": v} for s, v in SEEDS.items()}}
    logs = {f"PR1234_upstream/train_seed{s}.log": log(s, v, hparams=HP) for s, v in SEEDS.items()}
    logs["PR1234_upstream/notes.txt"] = "ideas for next week\n"          # no run lines: not a log
    d = record(tmp_path, logs, sub)
    (d / "older_attempt").mkdir()
    (d / "older_attempt" / "submission.json").write_text("{}")         # a record of its own: left out
    (d / "older_attempt" / "train_seed9.log").write_text(log(9, 1.2))
    rs = load(d)
    assert sorted(r.log for r in rs.runs) == [f"PR1234_upstream/train_seed{s}.log" for s in (1, 2, 3)]
    c = checks(d)
    assert c["claim_matches_logs"]["status"] == "pass" and c["config_consistency"]["status"] == "pass"


@needs_records
@pytest.mark.parametrize("folder,says", [
    (RECORDS, "holds the tracks track_10min_16mb (46 record folders), track_non_record_16mb (14 record folders)"),
    (TEN, "is the track track_10min_16mb (46 record folders)"),
])
def test_a_folder_of_tracks_is_one_line(folder, says):
    with pytest.raises(PgolfError, match="audit one") as e:
        load(folder)
    assert says in str(e.value) and "\n" not in str(e.value)


# ---- claims ------------------------------------------------------------------------------------------
def test_claim_found_in_another_file_names_it_and_its_header(tmp_path):
    logs = {"train_seed1.log": log(1, 1.081), "train_seed2.log": log(2, 1.090),
            "train_seed3.log": log(7, 1.082)}                            # mislabelled: it is seed 7's run
    sub = {"val_bpb": 1.0813333, "seed_results": {"1": {"val_bpb": 1.081}, "2": {"val_bpb": 1.082},
                                                  "3": {"val_bpb": 1.081}}}
    c = checks(record(tmp_path, logs, sub))
    d = c["claim_matches_logs"]["detail"]
    assert c["claim_matches_logs"]["status"] == "fail"
    assert "seed 2: claimed 1.082, its log says 1.09 (train_seed2.log:" in d
    assert "the claimed value is in train_seed3.log:" in d and "whose header says seed 7" in d
    assert "seed 3 1.081 at train_seed1.log" not in d
    assert c["seed_labels"]["status"] == "fail"


# ---- config_consistency --------------------------------------------------------------------------------
@pytest.mark.parametrize("change,status,says", [
    ({}, "pass", "agree on 4 logged hyperparameters"),
    ({"matrix_lr": 0.03}, "fail", "matrix_lr = 0.025 (train_seed1.log), 0.025 (train_seed2.log), 0.03 (train_seed3.log)"),
    ({"ttt_epochs": 1}, "warn", "evaluation settings differ between seeds: ttt_epochs"),
    ({"data_dir": "/other/machine/data"}, "pass", "paths aside"),
])
def test_config_consistency(tmp_path, change, status, says):
    logs = {f"train_seed{s}.log": log(s, v, hparams={**HP, **(change if s == 3 else {})})
            for s, v in SEEDS.items()}
    c = checks(record(tmp_path, logs))["config_consistency"]
    assert c["status"] == status and says in c["detail"], c["detail"]


def test_config_consistency_other_tokenizer_or_missing_keys(tmp_path):
    logs = {f"train_seed{s}.log": log(s, v, hparams=HP) for s, v in SEEDS.items()}
    logs["train_seed3.log"] = log(3, 1.083, hparams={"num_layers": 11, "matrix_lr": 0.025}, tokenizer="fineweb_1024_bpe.model")
    c = checks(record(tmp_path, logs))["config_consistency"]
    assert c["status"] == "fail" and "different tokenizers" in c["detail"]
    assert "train_seed3.log lacks ttt_epochs" in c["detail"]


@needs_records
def test_config_consistency_on_real_records():
    c = checks(TEN / "2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR")["config_consistency"]
    assert c["status"] == "warn" and "ttt_enabled = False (train_seed314.log), True (train_seed42.log)" in c["detail"]
    c = checks(TEN / "2026-04-14_MultiPhaseGlobalSGD_PhasedTTT")["config_consistency"]
    assert c["status"] == "pass" and "3 runs agree" in c["detail"]


# ---- data_overlap ------------------------------------------------------------------------------------
def test_caseops_prepared_locally_with_the_leaky_default(tmp_path):
    caseops = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    d = record(tmp_path, {"train_seed1.log": log(1, 1.05, tokenizer=caseops, val_tokens=9_662_976,
                                                 extra=["train_shards: 1499"])})
    c = checks(d)["data_overlap"]
    assert c["status"] == "warn"
    assert "train_seed1.log:5: train_shards: 1499" in c["detail"] and "#2127" in c["detail"]
    assert "train_seed1.log:4: 9,662,976 validation tokens" in c["detail"]


@needs_records
def test_caseops_records_from_the_published_dataset_are_clean():
    c = checks(TEN / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")["data_overlap"]
    assert c["status"] == "pass" and "train_shards 80" in c["detail"] and "47,851,520" in c["detail"]


# ---- eval_time with test-time training -------------------------------------------------------------------
@pytest.mark.parametrize("ttt_ms,status,says", [
    (300_000, "pass", "test-time training included"),
    (610_000, "fail", "> 600 s"),
    (None, "warn", "no line times it"),
    (530_000, "warn", "add up to 620.0 s"),
])
def test_eval_time_covers_ttt(tmp_path, ttt_ms, status, says):
    d = record(tmp_path, {f"train_seed{s}.log": log(s, v, ttt_ms=ttt_ms) for s, v in SEEDS.items()})
    c = checks(d)["eval_time"]
    assert c["status"] == status and says in c["detail"], c["detail"]


@needs_records
def test_eval_time_on_real_ttt_records():
    c = checks(TEN / "2026-04-13_VarLenAttn_PhasingTTT2000")["eval_time"]
    assert c["status"] == "pass" and "515.3 s" in c["detail"] and "test-time training included" in c["detail"]


# ---- issue 20: the corpus benchmark writes only where it is told --------------------------------------------
def test_bench_audit_corpus_prints_and_writes_only_with_out(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    tracked = root / "bench" / "results" / "audit_corpus.json"
    before = tracked.read_bytes()
    records = tmp_path / "records"
    record(records / "track_10min_16mb", {f"train_seed{s}.log": log(s, bpb, hparams=HP) for s, bpb in SEEDS.items()},
           {"val_bpb": 1.082, "track": "10min_16mb"})
    cmd = [sys.executable, str(root / "bench" / "audit_corpus.py"), str(records), "--repeat", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0 and "folders: 1" in out.stdout and "per folder" in out.stdout
    assert tracked.read_bytes() == before and "wrote" not in out.stdout
    dest = tmp_path / "numbers.json"
    out = subprocess.run(cmd + ["--out", str(dest)], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0 and json.loads(dest.read_text())["folders"] == 1
    assert tracked.read_bytes() == before
