"""End to end: a 2-process gloo torchrun of a tiny config on the bundled data (train, quantize,
roundtrip, sliding window, TTT), then the log lines and the size accounting are checked."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "model" / "train_gpt.py"
TINY = ROOT / "model" / "data" / "tiny"

TINY_ENV = {
    "DEVICE": "cpu", "DATA_PATH": str(TINY), "TOKENIZER_PATH": str(TINY / "tokenizer.model"), "VOCAB_SIZE": "1024",
    "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2", "HEAD_DIM": "32", "MLP_MULT": "2",
    "BIGRAM_VOCAB_SIZE": "256", "BIGRAM_DIM": "16", "TRAIN_SEQ_LEN": "128", "EVAL_SEQ_LEN": "128",
    "EVAL_STRIDE": "64", "TRAIN_BATCH_TOKENS": "2048", "GRAD_ACCUM_STEPS": "1", "WARMUP_STEPS": "2",
    "TRAIN_LOG_EVERY": "5", "VAL_MAX_TOKENS": "4096", "EVAL_BATCH_SEQS": "8", "TTT_CHUNK_TOKENS": "1024",
    "TTT_EPOCHS": "1", "TTT_BATCH_SEQS": "4", "TTT_FREEZE_BLOCKS": "1", "SWA_EVERY": "2", "COMPRESSOR": "auto",
    "SEED": "7",
}

FLOAT = r"([0-9.]+(?:e[-+]?\d+)?)"


def torchrun(tmp_path, **extra):
    env = {**os.environ, **TINY_ENV, "ARTIFACT_DIR": str(tmp_path), **extra}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (tmp_path / "train.log").read_text(), proc.stdout


@pytest.mark.slow
def test_two_process_gloo_end_to_end(tmp_path):
    log, stdout = torchrun(tmp_path, ITERATIONS="20", MAX_WALLCLOCK_SECONDS="0", QAT_START_FRAC="0.5",
                           SWA_START_FRAC="0.8")
    assert log.strip() in stdout   # rank 0 writes the same lines to stdout and train.log (once, not twice)
    assert re.search(r"^seed:7$", log, re.M)
    code = SCRIPT.read_bytes()
    assert re.search(rf"^script_sha256:{hashlib.sha256(code).hexdigest()}$", log, re.M)
    assert "Hyperparameters:" in log and log.count("  ttt_chunk_tokens: 1024") == 1
    assert re.search(r"^world_size:2 ", log, re.M)
    assert re.search(r"^val_tokens:4096$", log, re.M)
    bpt = float(re.search(rf"^val_bytes_per_token:{FLOAT}$", log, re.M).group(1))
    assert 1.5 < bpt < 4.0
    steps = re.findall(rf"^step:(\d+)/20 train_loss:{FLOAT} train_time:(\d+)ms step_avg:{FLOAT}ms$", log, re.M)
    # every 5th, the first five, and the first step of each phase (QAT at 11, SWA at 18)
    assert [int(s[0]) for s in steps] == [1, 2, 3, 4, 5, 10, 11, 15, 18, 20]
    assert float(steps[-1][1]) < float(steps[0][1])        # it learned something
    assert "stopping_early" not in log
    assert re.search(r"^qat:enabled step:10 ", log, re.M)
    assert re.search(r"^final_weights:swa snapshots:2$", log, re.M)
    assert re.search(r"^step_time median:[\d.]+ms first:[\d.]+ms@1 qat:[\d.]+ms@11 swa:[\d.]+ms@18 "
                     r"in_window_stall:\d+ms", log, re.M)
    assert re.search(r"^warmup_rank_spread:\d+ms$", log, re.M)
    code_size = int(re.search(r"^Code size: (\d+) bytes$", log, re.M).group(1))
    m = re.search(r"^Total submission size int6\+((?:zstd|brotli)(?:\+(?:zstd|brotli))?): (\d+) bytes$", log, re.M)
    artifact = tmp_path / "final_model.int6.ptz"
    assert code_size == len(code)
    assert int(m.group(2)) == len(code) + artifact.stat().st_size
    results = {}
    for label in ("final_int6_roundtrip_exact", "final_int6_sliding_window_exact", "legal_ttt_exact"):
        mm = re.search(rf"^{label} val_loss:{FLOAT} val_bpb:{FLOAT}", log, re.M)
        assert mm, label
        loss, bpb = float(mm.group(1)), float(mm.group(2))
        assert 0 < loss < 8
        assert bpb == pytest.approx(loss / 0.6931471805599453 / bpt, rel=1e-5)   # canonical bytes/token
        results[label] = loss
    assert re.search(r"^legal_ttt_exact .* eval_time:\d+ms$", log, re.M)
    pre = float(re.search(rf"^diagnostic_prequant val_loss:{FLOAT} val_bpb:{FLOAT} ", log, re.M).group(1))
    assert abs(pre - results["final_int6_roundtrip_exact"]) < 0.1   # int6 costs little here
    assert results["final_int6_sliding_window_exact"] < results["final_int6_roundtrip_exact"] + 0.05


@pytest.mark.slow
def test_wallclock_cap_stops_all_ranks(tmp_path):
    # generous fractions so that a slow, loaded CI machine still reaches QAT and SWA before the cap
    log, _ = torchrun(tmp_path, ITERATIONS="100000", MAX_WALLCLOCK_SECONDS="8", TTT_ENABLED="0",
                      WARMDOWN_FRAC="0.7", QAT_START_FRAC="0.25", SWA_START_FRAC="0.3", SWA_EVERY="1",
                      MODEL_DIM="128", ARTIFACT_TARGET_BYTES="350000")   # ~410 kB without a cap
    m = re.search(r"^stopping_early: wallclock_cap train_time:(\d+)ms step:(\d+)/100000$", log, re.M)
    assert m and int(m.group(1)) < 12000   # it predicts the next step; only an unusually slow one overshoots
    assert re.search(r"^final_weights:swa ", log, re.M)
    # the size cap is met by a coarser grid, which QAT already trained on
    assert float(re.search(rf"^qat:enabled .* step_mult:{FLOAT}$", log, re.M).group(1)) > 1.0
    assert float(re.search(rf"^quant_step_mult:{FLOAT} ", log, re.M).group(1)) > 1.0
    assert int(re.search(r"^Total submission size int6\+[a-z+]+: (\d+) bytes$", log, re.M).group(1)) <= 350000
    assert "final_int6_sliding_window_exact" in log and "legal_ttt_exact" not in log
