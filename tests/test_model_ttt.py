"""Score-first TTT: every token is scored (under inference_mode) before any update that uses it."""
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
import train_gpt as tg  # noqa: E402

N_TOKENS, VOCAB = 1201, 2048   # token id == its position, so a forward call reveals which targets it saw


class Spy(nn.Module):
    """Records, for every forward, whether it ran under inference_mode and the last target it saw."""

    def __init__(self, model, log):
        super().__init__()
        self.model, self.log = model, log

    def forward(self, x, y, reduction="mean"):
        self.log.append(("forward", torch.is_inference_mode_enabled(), torch.is_grad_enabled(), int(y.max())))
        return self.model(x, y, reduction=reduction)


def snapshot(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def check_score_first(log, n_chunks):
    """Raises AssertionError unless the log shows score-first TTT."""
    kinds = [(e[0], e[1]) for e in log if e[0] in ("score", "update")]
    expected = [e for i in range(n_chunks) for e in (("score", i), ("update", i))][:-1]
    assert kinds == expected, f"event order {kinds}"
    scored_upto = -1
    params_now = log[0][2] if log[0][0] == "init" else None
    for e in log:
        if e[0] == "forward":
            _, inference, grad, last_target = e
            if grad:   # a training forward: only targets that were already scored
                assert not inference
                assert last_target <= scored_upto, f"trained on target {last_target} before it was scored"
            else:      # a scoring forward
                assert inference, "scoring must run under torch.inference_mode()"
                scored_upto = max(scored_upto, last_target)
        elif e[0] == "score":
            assert torch.equal(e[2], params_now), f"weights at scoring chunk {e[1]} were already updated"
        elif e[0] == "update":
            assert not torch.equal(e[2], params_now), "update did not change the weights"
            params_now = e[2]


def run_ttt(tmp_env=None):
    env = {"VOCAB_SIZE": str(VOCAB), "NUM_LAYERS": "3", "MODEL_DIM": "32", "NUM_HEADS": "2", "HEAD_DIM": "16",
           "MLP_MULT": "2", "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "8", "EVAL_SEQ_LEN": "100",
           "EVAL_STRIDE": "25", "EVAL_BATCH_SEQS": "4", "TTT_CHUNK_TOKENS": "300", "TTT_EPOCHS": "2",
           "TTT_BATCH_SEQS": "2", "TTT_LR": "0.05", "TTT_FREEZE_BLOCKS": "1", **(tmp_env or {})}
    args = tg.Hyperparameters(env)
    torch.manual_seed(0)
    model = tg.GPT(args, bos_id=-1)
    tokens = torch.arange(N_TOKENS) % VOCAB
    luts = {"base": torch.ones(VOCAB, dtype=torch.int32), "has_space": torch.zeros(VOCAB, dtype=torch.bool),
            "boundary": torch.zeros(VOCAB, dtype=torch.bool)}
    log = [("init", None, snapshot(model))]
    frozen0 = snapshot(model.blocks[0])
    on_event = lambda kind, i: log.append((kind, i, snapshot(model)))
    loss, bpb = tg.eval_ttt(args, Spy(model, log), model, tokens, luts, torch.device("cpu"), nullcontext(),
                            on_event=on_event)
    return args, model, log, loss, bpb, frozen0


def test_ttt_scores_every_chunk_before_training_on_it():
    args, model, log, loss, bpb, frozen0 = run_ttt()
    n_chunks = -(-(N_TOKENS - 1) // args.ttt_chunk_tokens)
    assert n_chunks == 4
    check_score_first(log, n_chunks)
    # every target was scored, the last chunk was never trained on, the frozen block never moved
    assert max(e[3] for e in log if e[0] == "forward" and not e[2]) == N_TOKENS - 1
    assert max(e[3] for e in log if e[0] == "forward" and e[2]) <= 3 * args.ttt_chunk_tokens
    assert torch.equal(snapshot(model.blocks[0]), frozen0)
    assert loss > 0 and bpb == pytest.approx(loss / 0.6931471805599453)


def test_ttt_without_epochs_equals_sliding_eval():
    args, model, log, loss, _, _ = run_ttt({"TTT_EPOCHS": "0"})
    torch.manual_seed(0)
    fresh = tg.GPT(args, bos_id=-1)
    luts = {"base": torch.ones(VOCAB, dtype=torch.int32), "has_space": torch.zeros(VOCAB, dtype=torch.bool),
            "boundary": torch.zeros(VOCAB, dtype=torch.bool)}
    sl, _ = tg.eval_stream(fresh, torch.arange(N_TOKENS) % VOCAB, 100, 25, 4, luts, torch.device("cpu"),
                           nullcontext())
    assert loss == pytest.approx(sl, rel=1e-9)


def test_checker_catches_update_before_score():
    """The checker itself fails on a log where chunk 1 was trained on before it was scored."""
    w0, w1, w2 = torch.zeros(3), torch.ones(3), torch.full((3,), 2.0)
    honest = [("init", None, w0), ("forward", True, False, 10), ("score", 0, w0), ("forward", False, True, 10),
              ("update", 0, w1), ("forward", True, False, 20), ("score", 1, w1)]
    check_score_first(honest, 2)
    early_update = [("init", None, w0), ("forward", True, False, 10), ("score", 0, w0),
                    ("forward", False, True, 20), ("update", 0, w1), ("forward", True, False, 20), ("score", 1, w1)]
    with pytest.raises(AssertionError, match="before it was scored"):
        check_score_first(early_update, 2)
    stale = [("init", None, w0), ("forward", True, False, 10), ("score", 0, w0), ("forward", False, True, 10),
             ("update", 0, w1), ("forward", True, False, 20), ("score", 1, w2)]
    with pytest.raises(AssertionError, match="already updated"):
        check_score_first(stale, 2)
    no_inference = [("init", None, w0), ("forward", False, False, 10), ("score", 0, w0)]
    with pytest.raises(AssertionError, match="inference_mode"):
        check_score_first(no_inference, 1)
