"""Per-codebook usage statistics, gradient norms, update ratios and attention summaries."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harmonica.config.schema import CollapseConfig, TrainingConfig
from harmonica.training.diagnostics import (
    CodebookUsage,
    attention_entropy_summary,
    grad_norms,
    histogram_stats,
    snapshot_params,
    update_ratios,
)
from harmonica.training.guided import guided_heads
from harmonica.training.monitor import CollapseMonitor

K = 8


def full_mask(*shape):
    return torch.ones(*shape, dtype=torch.bool)


def test_histogram_stats_by_hand():
    util, ent, ppl = histogram_stats(torch.tensor([[3, 3, 3, 3], [0, 5, 0, 0], [0, 0, 0, 0]]))
    assert util.tolist() == [1.0, 0.25, 0.0]
    assert ent[0].item() == pytest.approx(math.log(4))
    assert ent[1].item() == 0.0 and ent[2].item() == 0.0
    assert ppl[0].item() == pytest.approx(4.0)


def test_uniform_and_single_token_codebooks():
    u = CodebookUsage(n_codebooks=3, codebook_size=K)
    uniform = torch.arange(K).repeat(2).reshape(2, K)
    single = torch.full((2, K), 5)
    u.update(1, uniform, uniform, full_mask(2, K), ce_sum=torch.tensor(4.0))
    u.update(2, single, uniform, full_mask(2, K), ce_sum=torch.tensor(8.0))
    s = u.summary("nar")
    assert "nar/cb0/util_pred" not in s  # cb0 never updated: not reported (no false alarm)
    assert s["nar/cb1/util_pred"].item() == 1.0
    assert s["nar/cb1/usage_entropy"].item() == pytest.approx(math.log(K), rel=1e-6)
    assert s["nar/cb1/perplexity"].item() == pytest.approx(K, rel=1e-5)
    assert s["nar/cb1/acc"].item() == 1.0
    assert s["nar/cb1/ce"].item() == pytest.approx(4.0 / 16)
    assert s["nar/cb2/util_pred"].item() == pytest.approx(1 / K)
    assert s["nar/cb2/util_target"].item() == 1.0
    assert s["nar/cb2/usage_entropy"].item() == 0.0
    assert s["nar/cb2/perplexity"].item() == pytest.approx(1.0)
    assert s["nar/cb2/acc"].item() == pytest.approx(2 / 16)
    assert s["nar/util_pred_median"].item() == pytest.approx((1.0 + 1 / K) / 2)
    assert all(isinstance(v, torch.Tensor) for v in s.values())


def test_accumulates_over_updates_respects_mask_and_resets():
    u = CodebookUsage(1, K)
    mask = torch.tensor([[True, True, False]])
    for tok in range(K):
        pred = torch.tensor([[tok, tok, 7 - tok]])  # third position is padding
        tgt = torch.tensor([[tok, -100, 0]])  # padded/ignored target values are harmless
        u.update(0, pred, tgt, mask, ce_sum=torch.tensor(1.0))
        if tok == 1:
            s = u.summary("ar")
            assert s["ar/cb0/util_pred"].item() == pytest.approx(2 / K)
    s = u.summary("ar")
    assert s["ar/cb0/util_pred"].item() == 1.0  # every entry seen once across the window
    assert u.pred_counts[0].tolist() == [2] * K  # padding not counted
    assert s["ar/cb0/ce"].item() == pytest.approx(K / (2 * K))
    assert s["ar/cb0/acc"].item() == pytest.approx(0.5)  # second position's target never matches
    u.reset()
    assert u.summary("ar") == {}
    assert u.pred_counts.sum().item() == 0


def test_out_of_range_tokens_not_in_histogram():
    u = CodebookUsage(1, K)
    stop = torch.tensor([[K, K, 3]])  # AR stop token id == codebook_size
    u.update(0, stop, stop, full_mask(1, 3), ce_sum=torch.tensor(0.0))
    assert u.pred_counts.sum().item() == 1
    assert u.summary("ar")["ar/cb0/acc"].item() == 1.0


def test_update_does_not_sync(monkeypatch):
    """update() must not read values to the host: make .item()/.cpu()/.tolist()/bool() raise."""
    u = CodebookUsage(2, K)
    pred = torch.randint(0, K, (2, 5))
    tgt = torch.randint(0, K, (2, 5))
    mask = full_mask(2, 5)
    ce = torch.tensor(3.0)

    def boom(*a, **k):
        raise AssertionError("host sync inside update")

    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "numpy", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    u.update(0, pred, tgt, mask, ce)
    u.update(1, pred, tgt, mask, ce, correct=torch.tensor(1), count=torch.tensor(10))
    s = u.summary("x")  # summary builds tensors without syncing too
    monkeypatch.undo()
    assert s["x/cb1/acc"].item() == pytest.approx(0.1)


def test_grad_norms_match_clip_grad_norm():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(3, 2)
    (b(a(torch.randn(5, 4))).square().sum()).backward()
    groups = {"attention": list(a.parameters()), "output_heads": list(b.parameters()),
              "speaker_encoder": []}
    norms = grad_norms(groups)
    assert set(norms) == {"attention", "output_heads", "total"}
    ref_a = torch.nn.utils.clip_grad_norm_(a.parameters(), float("inf"))
    ref = torch.nn.utils.clip_grad_norm_(list(a.parameters()) + list(b.parameters()), 1e9)
    assert norms["attention"].item() == pytest.approx(ref_a.item(), rel=1e-6)
    assert norms["total"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_update_ratios():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    v = nn.Parameter(torch.tensor([1.0, 0.0]))
    groups = {"attention": [w], "output_heads": [v]}
    before = snapshot_params(groups)
    with torch.no_grad():
        w.add_(torch.tensor([0.3, 0.4]))  # ||dw|| = 0.5, ||w|| = 5
        v.add_(torch.tensor([0.0, 0.1]))
    r = update_ratios(groups, before)
    assert r["attention"].item() == pytest.approx(0.1)
    assert r["output_heads"].item() == pytest.approx(0.1)
    assert r["total"].item() == pytest.approx(math.sqrt(0.25 + 0.01) / math.sqrt(26))


def test_attention_entropy_summary():
    ae = torch.tensor([[1.0, 2.0, 3.0], [0.1, 2.0, 2.0]])
    s = attention_entropy_summary(ae, "ar")
    assert s["ar/attn_entropy/layer0"].item() == pytest.approx(2.0)
    assert s["ar/attn_entropy/layer0_min"].item() == pytest.approx(1.0)
    assert s["ar/attn_entropy/layer1_min"].item() == pytest.approx(0.1)
    assert len(s) == 4
    with pytest.raises(ValueError):
        attention_entropy_summary(torch.ones(3), "ar")


def test_attention_entropy_summary_leaves_the_sharp_guided_heads_out_of_the_floor():
    ae = torch.tensor([[1.0, 2.0, 3.0], [0.1, 0.2, 2.0], [0.1, 0.1, 0.1]])
    sharp = torch.tensor([[False] * 3, [True, True, False], [True] * 3])
    s = attention_entropy_summary(ae, "ar", sharp)
    assert s["ar/attn_entropy/layer1"].item() == pytest.approx(2.3 / 3)  # the mean keeps every head
    assert s["ar/attn_entropy/layer1_min"].item() == pytest.approx(2.0)  # the free head only
    assert s["ar/attn_entropy/layer1_guided"].item() == pytest.approx(0.15)
    assert "ar/attn_entropy/layer2_min" not in s and s["ar/attn_entropy/layer2_guided"].item() == pytest.approx(0.1)
    assert "ar/attn_entropy/layer0_guided" not in s and s["ar/attn_entropy/layer0_min"].item() == pytest.approx(1.0)
    # what the collapse monitor judges: only the free heads' minimum
    events = CollapseMonitor(CollapseConfig(grace_steps=0, attn_entropy_floor=0.5)).check(10, {k: float(v) for k, v in s.items()})
    assert events == []
    assert [e.name for e in CollapseMonitor(CollapseConfig(grace_steps=0, attn_entropy_floor=0.5)).check(
        10, {k: float(v) for k, v in attention_entropy_summary(ae, "ar").items()})] == [
        "ar/attn_entropy/layer1", "ar/attn_entropy/layer2"]
    with pytest.raises(ValueError, match="sharp"):
        attention_entropy_summary(ae, "ar", sharp[:2])


def test_guided_heads_mark_the_guided_heads_of_the_guided_decoder_blocks():
    cfg = TrainingConfig(warmup_steps=0, total_steps=1000, guided_attention_weight=1.0, guided_attention_heads=2,
                         guided_attention_layers=[1])
    mask = guided_heads(cfg, text_layers=2, n_layers=3, n_heads=4)  # rows: 2 text-encoder layers, then 3 blocks
    assert mask.tolist() == [[False] * 4, [False] * 4, [False] * 4, [True, True, False, False], [False] * 4]
    every = guided_heads(TrainingConfig(warmup_steps=0, total_steps=1000, guided_attention_weight=1.0), 1, 2, 4)
    assert every.tolist() == [[False] * 4, [True] * 4, [True] * 4]
    assert guided_heads(TrainingConfig(warmup_steps=0, total_steps=1000), 2, 3, 4) is None
