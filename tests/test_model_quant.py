"""int6 artifact: per-row error bounds, shared weights stored once, compression, QAT, preflight, loader."""
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "model"))
import train_gpt as tg  # noqa: E402
from model.data import write_shard  # noqa: E402

SMALL = {"VOCAB_SIZE": "256", "NUM_LAYERS": "3", "MODEL_DIM": "320", "NUM_HEADS": "4", "HEAD_DIM": "64",
         "MLP_MULT": "1", "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "16"}


@pytest.mark.parametrize("bits", [6, 8])
def test_per_row_error_bounds(bits):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 300, generator=g) * torch.rand(64, 1, generator=g)
    w[3] = 0.0                                  # an all-zero row
    w[5, 7] = 40.0                              # an outlier row
    q, s = tg.quantize_rows(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (64,)
    assert int(q.abs().max()) <= qmax
    deq = q.float() * s.float()[:, None]
    err = (deq - w).abs()
    sf = s.float()[:, None]
    inside = w.abs() <= qmax * sf               # not clipped: error at most half a step
    assert (err[inside] <= sf.expand_as(w)[inside] / 2 + 1e-6).all()
    assert (err[~inside] <= (w.abs() - qmax * sf)[~inside] + 1e-6).all()   # clipped: only the excess
    assert torch.all(deq[3] == 0)
    # the chosen clip is never worse (row MSE) than plain absmax
    q1, s1 = tg.quantize_rows(w, bits, percentiles=(1.0,))
    mse = ((deq - w) ** 2).sum(1)
    mse1 = ((q1.float() * s1.float()[:, None] - w) ** 2).sum(1)
    assert (mse <= mse1 + 1e-9).all()
    keep = torch.ones(64, dtype=torch.bool)
    keep[5] = False                             # the outlier row is dominated by its own step size
    rel = (mse[keep].sum() / (w[keep] ** 2).sum()).item()
    assert rel < (2e-3 if bits == 6 else 1e-4)


def test_shared_weights_stored_once_and_strict_roundtrip(tmp_path):
    args = tg.Hyperparameters({**SMALL, "COMPRESSOR": "zstd"})
    torch.manual_seed(0)
    m = tg.GPT(args)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sd = m.state_dict()
    obj = tg.quantize_state_dict(sd, args)
    assert obj["alias"] == {"blocks.1.mixer.k_proj.weight": "blocks.0.mixer.k_proj.weight",
                            "blocks.1.mixer.v_proj.weight": "blocks.0.mixer.v_proj.weight"}
    stored = set(obj["q"]) | set(obj["f"])
    assert not stored & set(obj["alias"])
    assert stored | set(obj["alias"]) == set(sd)
    # every large matrix (GDN projections included) is int6; embeddings int8; small tensors fp16
    for name, t in sd.items():
        if name in obj["alias"]:
            continue
        if t.ndim == 2 and t.numel() > tg.SMALL_NUMEL:
            assert obj["bits"][name] == (8 if name == "tok_emb" else 6), name
        else:
            assert obj["f"][name].dtype == torch.float16, name
    assert any(".mixer.q_proj." in n for n in obj["q"]) and any(".mixer.k_proj." in n for n in obj["q"])
    # storing the shared weights once saves their bytes
    naive = dict(obj, alias={})
    for alias, target in obj["alias"].items():
        naive["q"] = {**naive["q"], alias: obj["q"][target].clone()}
        naive["s"] = {**naive["s"], alias: obj["s"][target].clone()}
    b1, b2 = io.BytesIO(), io.BytesIO()
    torch.save(obj, b1)
    torch.save(naive, b2)
    kv_bytes = sum(obj["q"][t].numel() for t in obj["alias"].values())
    assert len(b2.getvalue()) - len(b1.getvalue()) >= kv_bytes
    # file roundtrip, strict load, tying preserved
    path = tmp_path / "final_model.int6.ptz"
    info = tg.save_artifact(sd, path, args)
    assert info["method"] == "zstd" and info["bytes"] == os.path.getsize(path) and info["step_mult"] == 1.0
    assert abs(info["estimate"] - info["bytes"]) < 0.1 * info["bytes"]   # the entropy estimate is close
    m2 = tg.GPT(args)
    m2.load_state_dict(tg.load_artifact(path), strict=True)
    assert m2.blocks[0].mixer.k_proj.weight is m2.blocks[1].mixer.k_proj.weight
    for (name, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        name = obj["alias"].get(name, name)
        if name in obj["q"]:
            s = obj["s"][name].float()[:, None]
            assert ((a - b).abs() <= s * 0.5 + 1e-6).float().mean() > 0.99, name
        else:
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)


def test_compressors_roundtrip_and_auto_picks_smaller():
    raw = (b"parameter golf " * 5000) + bytes(range(256)) * 50
    blobs = {m: tg.compress_bytes(raw, m) for m in ("zstd", "brotli", "auto")}
    assert blobs["zstd"][1] == "zstd" and blobs["brotli"][1] == "brotli"
    for blob, _ in blobs.values():
        assert tg.decompress_bytes(blob) == raw
    assert len(blobs["auto"][0]) == min(len(blobs["zstd"][0]), len(blobs["brotli"][0]))


def test_qat_fake_quant_is_straight_through():
    lin = tg.CastedLinear(128, 32)
    x = torch.randn(4, 128)
    lin.qat.fill_(1.0)
    y = lin(x)
    wq = tg.fake_quant_rows(lin.weight.detach(), 6)
    torch.testing.assert_close(y, x @ wq.T)
    step = lin.weight.detach().abs().amax(1, keepdim=True) / 31
    assert torch.allclose(wq / step, (wq / step).round(), atol=1e-4)   # on the int6 grid
    assert not torch.allclose(wq, lin.weight)
    y.sum().backward()
    torch.testing.assert_close(lin.weight.grad, torch.ones(4, 32).T @ x)   # identity gradient
    lin.qat.fill_(0.0)
    torch.testing.assert_close(lin(x), x @ lin.weight.T)


def test_model_set_qat_reaches_every_matrix():
    m = tg.GPT(tg.Hyperparameters(SMALL))
    m.set_qat(True)
    lins = [mod for mod in m.modules() if isinstance(mod, tg.CastedLinear)]
    assert len(lins) >= 3 * 6 and all(float(l.qat) == 1.0 for l in lins)
    assert float(m.qat) == 1.0 and float(m.bigram.qat) == 1.0
    assert "qat" not in " ".join(m.state_dict())   # not persisted, so strict loads still work


@pytest.mark.parametrize("cap,fla,triton,bad", [
    ((9, 0), "0.6.0", "3.5.0", True),
    ((9, 0), "0.6.0", "3.4.0", True),
    ((9, 0), "0.5.0", "3.7.0", True),
    ((9, 0), "0.6.0", "3.6.0+git1234", True),
    ((9, 0), "0.6.0", "3.7.1", False),
    ((9, 0), "0.6.0", "3.8.0", False),
    ((9, 0), "0.6.0", "3.3.1", False),
    ((9, 0), "0.4.2", "3.5.0", False),
    ((8, 0), "0.6.0", "3.5.0", False),
    ((10, 0), "0.6.0", "3.5.0", False),
    ((9, 0), None, "3.5.0", False),
    ((9, 0), "0.6.0", None, False),
])
def test_check_fla_triton(cap, fla, triton, bad):
    msg = tg.check_fla_triton(cap, fla, triton)
    if bad:
        assert msg and "3.7.1" in msg and fla in msg and triton in msg
    else:
        assert msg is None


def test_lr_multiplier_follows_progress():
    assert tg.lr_multiplier(0.0, 0.5) == 1.0
    assert tg.lr_multiplier(0.5, 0.5) == 1.0
    assert tg.lr_multiplier(0.75, 0.5) == pytest.approx(0.5)
    assert tg.lr_multiplier(1.0, 0.5) == 0.0
    assert tg.lr_multiplier(0.99, 0.5, min_mult=0.1) == pytest.approx(0.1)
    assert tg.lr_multiplier(0.9, 0.0) == 1.0


def test_loader_ranks_read_disjoint_slices_of_the_same_stream(tmp_path):
    toks = np.arange(5000) % 60000
    write_shard(tmp_path / "fineweb_train_000000.bin", toks[:1700])
    write_shard(tmp_path / "fineweb_train_000001.bin", toks[1700:])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    cpu = torch.device("cpu")
    loaders = [tg.DistributedTokenLoader(pattern, r, 2, cpu) for r in range(2)]
    single = tg.DistributedTokenLoader(pattern, 0, 1, cpu)
    for step in range(3):
        xs = [ld.next_batch(256, 64) for ld in loaders]
        xa, ya = single.next_batch(2 * 257 - 1, 2 * 257 - 1)   # the same global span on one rank
        span = torch.cat([xa.reshape(-1), ya.reshape(-1)[-1:]])
        for r, (x, y) in enumerate(xs):
            assert x.shape == (4, 64)
            flat = torch.cat([x.reshape(-1), y.reshape(-1)[-1:]])
            assert torch.equal(flat, span[r * 257:(r + 1) * 257])
            assert torch.equal(x.reshape(-1)[1:], y.reshape(-1)[:-1])
    bad = tmp_path / "fineweb_train_000002.bin"
    bad.write_bytes(b"\0" * 2048)
    with pytest.raises(ValueError, match="not an official shard"):
        tg.shard_tokens(bad)


def test_size_budget_coarsens_the_grid_until_the_artifact_fits(tmp_path):
    args = tg.Hyperparameters({**SMALL, "COMPRESSOR": "zstd"})
    torch.manual_seed(0)
    m = tg.GPT(args)
    sd = m.state_dict()
    free = tg.save_artifact(sd, tmp_path / "a.ptz", args)
    budget = int(0.7 * free["bytes"])
    info = tg.save_artifact(sd, tmp_path / "b.ptz", args, budget_bytes=budget)
    assert info["step_mult"] > 1.0
    assert info["bytes"] == os.path.getsize(tmp_path / "b.ptz") <= budget
    assert info["bytes"] > 0.8 * budget              # it uses the budget rather than overshooting
    m2 = tg.GPT(args)
    m2.load_state_dict(tg.load_artifact(tmp_path / "b.ptz"), strict=True)
    # coarser grid: larger error than the unconstrained artifact, but still a faithful model
    w = sd["blocks.0.mlp.fc.weight"]
    e_free = (tg.load_artifact(tmp_path / "a.ptz")["blocks.0.mlp.fc.weight"] - w).pow(2).mean()
    e_tight = (m2.state_dict()["blocks.0.mlp.fc.weight"] - w).pow(2).mean()
    assert e_free < e_tight < 0.05 * w.pow(2).mean()
