"""script_static: the static read of shipped training scripts. Each fault pattern on a small synthetic script,
its corrected form (which must pass), our own payload, and real record folders with a script added."""
import shutil
import textwrap
from pathlib import Path

import pytest

from corpus import TEN, needs_records
from results.audit import audit
from results.load import load
from results.script_check import scan_files, scan_source

PAYLOAD = Path(__file__).resolve().parents[1] / "model" / "train_gpt.py"

BYTES_DOUBLE = '''
import numpy as np

def build_sentencepiece_luts(sp, vocab_size):
    base_bytes = np.zeros(vocab_size, dtype=np.int16)
    has_leading_space = np.zeros(vocab_size, dtype=np.bool_)
    is_boundary = np.ones(vocab_size, dtype=np.bool_)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        piece = sp.id_to_piece(i)
        if piece.startswith("\\u2581"):
            has_leading_space[i] = True
            base_bytes[i] = len(piece[1:].encode("utf-8")) + 1
        else:
            base_bytes[i] = len(piece.encode("utf-8"))
    return base_bytes, has_leading_space, is_boundary

def count(prev, tgt, base_bytes, has_leading_space, is_boundary):
    tb = base_bytes[tgt].astype(np.float64)
    tb += has_leading_space[tgt] & ~is_boundary[prev]
    return tb.sum()
'''
BYTES_OVERWRITTEN = '''
def luts(sp, n, torch):
    nbytes = torch.zeros(n)
    spaced = torch.zeros(n, dtype=torch.bool)
    for tok in range(n):
        text = sp.id_to_piece(tok)
        encoded = text.encode("utf-8")
        nbytes[tok] = len(encoded)
        if text.startswith("\u2581"):
            spaced[tok] = True
            nbytes[tok] = 1 + len(text[1:].encode("utf-8"))
    return nbytes, spaced
'''
BYTES_CANONICAL = '''
import numpy as np

def build_sentencepiece_luts(sp, vocab_size):
    base_bytes = np.zeros(vocab_size, dtype=np.int16)
    has_leading_space = np.zeros(vocab_size, dtype=np.bool_)
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if piece.startswith("\\u2581"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return base_bytes, has_leading_space
'''
BYTES_IN_TABLE_ONLY = '''
def build(sp, n):
    base = [0] * n
    for i in range(n):
        piece = sp.id_to_piece(i)
        base[i] = len(piece[1:].encode("utf-8")) + 1 if piece.startswith("\\u2581") else len(piece.encode("utf-8"))
    return base
'''
PRE_QUANT_TTT = '''
import torch

def eval_val(model, val_tokens):
    with torch.inference_mode():
        return model(val_tokens[:-1], val_tokens[1:])

def ttt_adapt(args, base_model, device, val_tokens):
    opt = torch.optim.SGD(base_model.parameters(), lr=args.ttt_lr)
    for epoch in range(args.ttt_epochs):
        for start in range(0, val_tokens.numel() - 1025, 1024):
            local = val_tokens[start:start + 1025].to(device)
            x, y = local[:-1], local[1:]
            opt.zero_grad()
            loss = base_model(x, y)
            loss.backward()
            opt.step()

def main(args, model, device, val_tokens):
    ttt_adapt(args, model, device, val_tokens)
    return eval_val(model, val_tokens)
'''
WARMUP_ON_VAL = '''
def warm_up_compile(model, make_adapter, val_tokens):
    for size in (64, 128):
        adapter = make_adapter(size)
        x = val_tokens[:size]
        model(x, adapter).sum().backward()
        del adapter
'''
PHASED_GLOBAL_SGD = '''
import torch

def global_sgd(model, opt, val_tokens):
    for start in range(0, len(val_tokens), 1024):
        model(val_tokens[start:start + 1025]).backward()
        opt.step()

def phased(model, opt, docs):
    scored = []
    for batch in docs:
        with torch.no_grad():
            model(batch)
        scored.append(batch)
        global_sgd(model, opt, torch.cat(scored))
'''
PRE_QUANT_TTT_HELPER = '''
def step(model, opt, chunk):
    opt.zero_grad()
    model(chunk[:-1], chunk[1:]).backward()
    opt.step()

def adapt(model, opt, tokens, epochs):
    for ep in range(epochs):
        for i in range(0, len(tokens), 1024):
            step(model, opt, tokens[i:i + 1025])

def main(model, opt, val_tokens):
    adapt(model, opt, val_tokens, 3)
'''
SCORE_FIRST_TTT = '''
import torch

def score(model, chunk):
    with torch.inference_mode():
        return model(chunk[:-1], chunk[1:])

def ttt_score_first(args, model, tokens):
    opt = torch.optim.SGD(model.parameters(), lr=args.ttt_lr)
    total = 0.0
    chunks = tokens.split(args.chunk)
    for ci, chunk in enumerate(chunks):
        with torch.inference_mode():
            total += model(chunk[:-1], chunk[1:])
        if ci == len(chunks) - 1:
            break
        for _ in range(args.ttt_epochs):
            opt.zero_grad()
            model(chunk[:-1], chunk[1:]).backward()
            opt.step()
    return total

def train(model, loader, val_tokens, opt):
    for step in range(100):
        x, y = loader.next_batch()
        model.train()
        loss = model(x, y)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            score(model, val_tokens)

def main(args, model, loader, val_tokens, opt):
    train(model, loader, val_tokens, opt)
    return ttt_score_first(args, model, val_tokens)
'''
NGRAM_TARGET = '''
import torch.nn as nn
import torch.nn.functional as F

class NgramHash(nn.Module):
    def __init__(self, buckets, dim):
        super().__init__()
        self.buckets = buckets
        self.emb = nn.Embedding(buckets, dim)

    def forward(self, ids, targets):
        prev = F.pad(ids, (1, 0))[:, :-1]
        key = (prev * 1000003 ^ ids * 92821 ^ targets * 31337) % self.buckets
        return self.emb(key)
'''
NGRAM_CAUSAL = NGRAM_TARGET.replace(" ^ targets * 31337", "")
NGRAM_COUNTS = '''
def update_cache(counts, prev2, prev1, y):
    key = (prev2 * 1000003 ^ prev1 * 92821 ^ y * 31337) % 65536
    counts[key] += 1
'''


@pytest.mark.parametrize("source,status,pattern,line", [
    (BYTES_DOUBLE, "fail", "space_double_count", 15),
    (BYTES_OVERWRITTEN, "fail", "space_double_count", 11),
    (BYTES_IN_TABLE_ONLY, "warn", "space_double_count", 6),
    (PRE_QUANT_TTT, "fail", "val_trained_before_scored", 16),
    (PRE_QUANT_TTT_HELPER, "fail", "val_trained_before_scored", 10),
    (NGRAM_TARGET, "fail", "ngram_key_has_target", 13),
    (NGRAM_COUNTS, "warn", "ngram_key_has_target", 3),
    (WARMUP_ON_VAL, "warn", "val_trained_before_scored", 6),
])
def test_each_pattern_is_found_with_its_line(source, status, pattern, line):
    (f,) = scan_source(source, "train_gpt.py")
    assert (f.status, f.pattern, f.line) == (status, pattern, line)
    assert str(f).startswith(f"train_gpt.py:{line}: ")


@pytest.mark.parametrize("source", [BYTES_CANONICAL, SCORE_FIRST_TTT, NGRAM_CAUSAL, PHASED_GLOBAL_SGD])
def test_corrected_forms_pass(source):
    assert scan_source(source, "train_gpt.py") == []


def test_pre_quant_ttt_names_the_validation_data():
    (f,) = scan_source(PRE_QUANT_TTT_HELPER, "x.py")
    assert "tokens" in f.message and "line 13" in f.message          # the call that gives it validation data


def test_unparsable_script_is_a_warning():
    (f,) = scan_source("def broken(:\n", "train_gpt.py")
    assert f.status == "warn" and f.pattern == "unreadable"


def test_our_payload_passes():
    """model/train_gpt.py: canonical byte tables, legal score-first TTT, bigram/trigram hashes of past tokens."""
    assert scan_files([PAYLOAD]) == []


def test_run_dir_with_the_payload_passes(tmp_path):
    from test_submit import make_run_dir
    run = make_run_dir(tmp_path)
    script = run / "train_gpt.py"
    script.write_bytes(PAYLOAD.read_bytes())
    c = {x["id"]: x for x in audit(load(run))["checks"]}
    assert c["script_static"]["status"] == "pass" and "train_gpt.py" in c["script_static"]["detail"]


@needs_records
@pytest.mark.parametrize("source,status", [(BYTES_DOUBLE, "fail"), (BYTES_CANONICAL, "pass")])
def test_real_record_folder_with_a_script(tmp_path, source, status):
    """The public folders ship no scripts here: with one added, the check reads every *.py of the folder."""
    folder = tmp_path / "rec"
    shutil.copytree(TEN / "2026-04-06_SP8192_QK5_LegalTTT_1.0828", folder)
    (folder / "train_gdn_7k.py").write_text(textwrap.dedent(source))
    a = audit(load(folder))
    c = {x["id"]: x for x in a["checks"]}
    assert c["script_static"]["status"] == status
    if status == "fail":
        assert "train_gdn_7k.py:15" in c["script_static"]["detail"] and a["verdict"] == "fail"


@needs_records
def test_a_real_record_folder_script_is_read():
    """The public folders ship their scripts: script_static reads the shipped train_gpt.py (a clean one here)."""
    c = {x["id"]: x for x in audit(load(TEN / "2026-04-06_SP8192_QK5_LegalTTT_1.0828"))["checks"]}
    assert c["script_static"]["status"] == "pass" and c["script_static"]["detail"].startswith("read train_gpt.py")
