"""Chunked gated delta rule (our CPU path) against the step-by-step recurrence, float64."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
import train_gpt as tg  # noqa: E402


def _inputs(B, T, H, K, V, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q = torch.randn(B, T, H, K, dtype=dt, generator=g)
    k = torch.randn(B, T, H, K, dtype=dt, generator=g)
    v = torch.randn(B, T, H, V, dtype=dt, generator=g)
    gate = -F.softplus(torch.randn(B, T, H, dtype=dt, generator=g)) * 0.5   # log decay <= 0
    beta = torch.rand(B, T, H, dtype=dt, generator=g)
    h0 = torch.randn(B, H, K, V, dtype=dt, generator=g) if with_state else None
    leaves = [t.requires_grad_() for t in (q, k, v, gate, beta)]
    return leaves, h0


@pytest.mark.parametrize("T,chunk", [(64, 64), (130, 64), (37, 16), (5, 16)])
@pytest.mark.parametrize("l2", [True, False])
def test_chunked_matches_recurrent_outputs_and_grads(T, chunk, l2):
    (q, k, v, g, beta), h0 = _inputs(2, T, 2, 16, 12, seed=T)
    if not l2:   # unnormalised keys need small norms for a stable delta rule
        with torch.no_grad():
            k.mul_(0.2)
    o_ref, s_ref = tg.recurrent_gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                    use_qk_l2norm_in_kernel=l2)
    o, s = tg.chunk_gated_delta_rule_torch(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                           use_qk_l2norm_in_kernel=l2, chunk_size=chunk)
    assert o.shape == o_ref.shape == v.shape
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-10)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, dtype=o.dtype, generator=gen)
    ds = torch.randn(s.shape, dtype=s.dtype, generator=gen)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), [q, k, v, g, beta])
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), [q, k, v, g, beta])
    for name, a, b in zip("q k v g beta".split(), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=f"gradient of {name}")


def test_chunked_gradcheck():
    (q, k, v, g, beta), _ = _inputs(1, 11, 1, 4, 3, seed=3, with_state=False)
    fn = lambda *xs: tg.chunk_gated_delta_rule_torch(*xs, use_qk_l2norm_in_kernel=True, chunk_size=4)[0]
    assert torch.autograd.gradcheck(fn, (q, k, v, g, beta), eps=1e-6, atol=1e-8)


def test_chunked_is_causal():
    (q, k, v, g, beta), _ = _inputs(1, 40, 2, 8, 8, seed=5, with_state=False)
    o1, _ = tg.chunk_gated_delta_rule_torch(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, chunk_size=16)
    v2 = v.detach().clone()
    v2[:, 30:] += 1.0
    o2, _ = tg.chunk_gated_delta_rule_torch(q, k, v2, g, beta, use_qk_l2norm_in_kernel=True, chunk_size=16)
    assert torch.equal(o1[:, :30], o2[:, :30])
    assert not torch.allclose(o1[:, 30:], o2[:, 30:])


def test_model_forward_backward_cpu_and_shared_kv():
    args = tg.Hyperparameters({"VOCAB_SIZE": "64", "NUM_LAYERS": "4", "MODEL_DIM": "32", "NUM_HEADS": "2",
                               "HEAD_DIM": "16", "MLP_MULT": "2", "BIGRAM_VOCAB_SIZE": "32", "BIGRAM_DIM": "8"})
    torch.manual_seed(0)
    m = tg.GPT(args)
    # layer pairs share one k/v parameter object
    assert m.blocks[0].mixer.k_proj.weight is m.blocks[1].mixer.k_proj.weight
    assert m.blocks[2].mixer.v_proj.weight is m.blocks[3].mixer.v_proj.weight
    assert m.blocks[1].mixer.k_proj.weight is not m.blocks[2].mixer.k_proj.weight
    muon, embed, scalar = tg.split_params(m)
    ids = {id(p) for p in muon + embed + scalar}
    assert len(ids) == len(muon) + len(embed) + len(scalar) == len(list(m.parameters()))
    x = torch.randint(0, 64, (2, 24))
    loss = m(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert m.blocks[0].mixer.k_proj.weight.grad is not None
    nll = m(x, x, reduction="none")
    assert nll.shape == (2, 24)
    torch.testing.assert_close(nll.mean(), loss)
