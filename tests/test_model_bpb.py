"""Canonical byte counting (docs/CHALLENGE.md) and the evaluation window plan."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model"))
import train_gpt as tg  # noqa: E402

TINY = ROOT / "model" / "data" / "tiny"
spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(TINY / "tokenizer.model"))


@pytest.fixture(scope="module")
def val_docs(sp):
    """The first validation documents, split at BOS (every document starts with BOS)."""
    toks = np.asarray(tg.shard_tokens(TINY / "fineweb_val_000000.bin")).astype(np.int64)
    starts = np.flatnonzero(toks == sp.bos_id())
    docs = [toks[a:b] for a, b in zip(starts, list(starts[1:]) + [len(toks)])]
    assert len(docs) > 300
    return docs[:300]


def double_count_luts(sp, vocab_size):
    """The published bug: the leading space is counted inside the table AND again at eval time."""
    luts = tg.build_byte_luts(sp, vocab_size)
    base = luts["base"].clone()
    for i in range(sp.get_piece_size()):
        if not luts["boundary"][i] and not sp.is_byte(i) and sp.id_to_piece(i).startswith("\u2581"):
            base[i] += 1
    return {**luts, "base": base}


def test_tables_follow_the_canonical_rules(sp):
    luts = tg.build_byte_luts(sp, 1100)
    for i in (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id()):
        assert luts["boundary"][i] and luts["base"][i] == 0
    assert luts["boundary"][1024:].all() and (luts["base"][1024:] == 0).all()   # beyond the tokenizer
    byte_ids = [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(luts["base"][i] == 1 for i in byte_ids)
    spaced = [i for i in range(sp.get_piece_size()) if sp.id_to_piece(i).startswith("\u2581")]
    assert spaced
    for i in spaced:
        assert luts["has_space"][i]
        assert luts["base"][i] == len(sp.id_to_piece(i)[1:].encode("utf-8"))


def test_count_matches_utf8_bytes_of_decoded_documents(sp, val_docs):
    luts = tg.build_byte_luts(sp, 1024)
    bad = double_count_luts(sp, 1024)
    total_true = total_ours = total_bad = 0
    for doc in val_docs:
        true = len(sp.decode(doc[1:].tolist()).encode("utf-8"))
        ours = tg.count_bytes(doc, luts)
        assert ours == true, sp.decode(doc[1:].tolist())[:80]
        total_true += true
        total_ours += ours
        total_bad += tg.count_bytes(doc, bad)
    assert total_ours == total_true
    # the double count overstates bytes, which would make bpb look better than it is
    assert total_bad > 1.05 * total_true


def test_double_count_makes_bpb_look_better(sp, val_docs):
    stream = np.concatenate(val_docs)
    n_tok = len(stream) - 1
    nll = 2.0 * n_tok   # any fixed total loss
    ours = nll / math.log(2) / tg.count_bytes(stream, tg.build_byte_luts(sp, 1024))
    bad = nll / math.log(2) / tg.count_bytes(stream, double_count_luts(sp, 1024))
    assert bad < ours / 1.05


def test_space_byte_depends_on_previous_token(sp):
    luts = tg.build_byte_luts(sp, 1024)
    word = next(i for i in range(sp.get_piece_size()) if sp.id_to_piece(i).startswith("\u2581")
                and len(sp.id_to_piece(i)) > 2)
    other = next(i for i in range(300, sp.get_piece_size()) if not sp.id_to_piece(i).startswith("\u2581"))
    base = int(luts["base"][word])
    assert tg.count_bytes([sp.bos_id(), word], luts) == base          # after a boundary: no space
    assert tg.count_bytes([other, word], luts) == base + 1            # mid-text: the space is a byte


@pytest.mark.parametrize("total,seq,stride", [(1000, 128, 64), (1000, 128, 128), (50, 128, 16), (999, 100, 33)])
def test_window_plan_scores_every_target_once_with_full_context(total, seq, stride):
    for a, b in [(0, total), (total // 3, 2 * total // 3 + 1)]:
        plan = tg.window_plan(a, b, seq, stride, total)
        L = min(seq, total)
        covered = []
        for ws, s, e in plan:
            assert 0 <= ws and ws + L <= total and ws <= s < e <= ws + L
            assert e - s <= max(stride, L if ws == 0 else stride)
            assert ws == 0 or e - ws == L   # the window ends at the last scored target (max context)
            covered.extend(range(s, e))
        assert covered == list(range(a, b))


def test_sliding_equals_plain_when_stride_is_seq_len():
    torch.manual_seed(0)
    args = tg.Hyperparameters({"VOCAB_SIZE": "64", "NUM_LAYERS": "2", "MODEL_DIM": "32", "NUM_HEADS": "2",
                               "HEAD_DIM": "16", "MLP_MULT": "2", "BIGRAM_VOCAB_SIZE": "32", "BIGRAM_DIM": "8"})
    m = tg.GPT(args).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    toks = torch.randint(0, 64, (501,))
    luts = {"base": torch.ones(64, dtype=torch.int32), "has_space": torch.zeros(64, dtype=torch.bool),
            "boundary": torch.zeros(64, dtype=torch.bool)}
    cpu = torch.device("cpu")
    from contextlib import nullcontext
    plain = tg.eval_stream(m, toks, 100, 100, 3, luts, cpu, nullcontext())
    with torch.no_grad():
        nll = m(toks[:-1][None], toks[1:][None], reduction="none")
    # plain windows restart the state every 100 tokens; its loss is a mean over all 500 targets
    assert plain[1] == pytest.approx(plain[0] / math.log(2))   # 1 byte per token here
    full = tg.eval_stream(m, toks, 500, 500, 1, luts, cpu, nullcontext())
    assert full[0] == pytest.approx(float(nll.mean()), rel=1e-6)
    sliding = tg.eval_stream(m, toks, 100, 20, 4, luts, cpu, nullcontext())
    assert sliding[0] != pytest.approx(plain[0], rel=1e-9)
