import math

import pytest
import torch

from harmonica.models import apply_repetition_penalty, attention_entropy, cap_audio, per_codebook, sample_next
from harmonica.models.layers import Block, PositionalEmbedding, lengths_to_mask


def test_uniform_attention_entropy_is_log_n_keys() -> None:
    probs = torch.full((2, 3, 5, 7), 1 / 7)
    torch.testing.assert_close(attention_entropy(probs, torch.ones(2, 5, dtype=torch.bool)),
                               torch.full((3,), math.log(7)))
    torch.testing.assert_close(attention_entropy(probs), torch.full((3,), math.log(7)))


def test_entropy_excludes_masked_keys_and_queries() -> None:
    probs = torch.zeros(1, 2, 4, 6)
    probs[..., :3] = 1 / 3  # 3 valid keys, the rest masked (probability 0)
    probs[:, :, 3] = torch.softmax(torch.randn(2, 6), -1)  # an invalid query row: must not count
    qmask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(attention_entropy(probs, qmask), torch.full((2,), math.log(3)))


def test_one_hot_attention_entropy_is_zero_and_grad_finite() -> None:
    logits = torch.tensor([[[[30.0, -1e4, -1e4]]]], requires_grad=True)
    ent = attention_entropy(logits.softmax(-1))
    assert ent.abs().max() < 1e-6
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_explicit_attention_path_matches_sdpa_and_reports_entropy() -> None:
    torch.manual_seed(0)
    block = Block(32, 4, 2, 0.0).eval()
    x = torch.randn(2, 5, 32)
    mask = lengths_to_mask(torch.tensor([5, 3]), 5)
    allowed = mask[:, None, None, :]
    y1, _, e1 = block(x, allowed, query_mask=mask)
    y2, _, e2 = block(x, allowed, query_mask=mask, collect_attn=True)
    assert e1 is None and e2.shape == (4,)
    torch.testing.assert_close(y1[0], y2[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y1[1, :3], y2[1, :3], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(y1).all() and (e2 <= math.log(5) + 1e-5).all()


def test_fully_masked_query_row_gives_no_nan() -> None:
    block = Block(16, 2, 2, 0.0).eval()
    allowed = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    y, _, _ = block(torch.randn(1, 3, 16), allowed)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_positions_are_clamped_to_the_table(kind: str) -> None:
    pe = PositionalEmbedding(1024, 8, kind)
    out = pe(torch.arange(1026))  # the RCA: 1025 positions against a 1024 table
    assert out.shape == (1026, 8)
    torch.testing.assert_close(out[1024], out[1023])
    torch.testing.assert_close(out[1025], out[1023])


def test_cap_audio_reserves_the_stop_position() -> None:
    codes = torch.zeros(2, 4, 1500)
    assert cap_audio(codes, 1024).shape == (2, 4, 1023)
    assert cap_audio(torch.zeros(10), 1024).shape == (10,)


def test_sample_next_greedy_topk_topp() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, 1.0, top_k=1, generator=g).tolist() == [1, 0]
        assert sample_next(logits, 1.0, top_p=0.01, generator=g).tolist() == [1, 0]
        assert set(sample_next(logits, 5.0, top_k=2, generator=g).tolist()) <= {0, 1, 3}
    a = sample_next(logits.repeat(50, 1), 2.0, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits.repeat(50, 1), 2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample_next(logits, 1.0, top_p=0.7, generator=torch.Generator().manual_seed(s))) for s in range(200)}
    assert seen == {0, 1}


def test_repetition_penalty() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1, 7]]), 2.0,
                                   history_mask=torch.tensor([[True, True, True, True]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    masked = apply_repetition_penalty(logits, torch.tensor([[0, 2]]), 2.0, torch.tensor([[False, True]]))
    torch.testing.assert_close(masked, torch.tensor([[2.0, -2.0, 0.5, 0.5]]))
    assert apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0) is logits


def test_per_codebook() -> None:
    assert per_codebook(0.7, 3) == 0.7
    assert per_codebook([1.0, 0.5], 0) == 1.0
    assert per_codebook([1.0, 0.5], 5) == 0.5


@pytest.mark.parametrize("collect_attn", [False, True])
def test_attn_dropout_sets_the_attention_probabilities_dropout_apart(collect_attn: bool) -> None:
    """attn_dropout=0 keeps the residual/FFN dropout but no dropout on the attention probabilities
    (on CPU that is what lets torch use its fused kernel); None falls back to `dropout`."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    allowed = lengths_to_mask(torch.tensor([6, 4]), 6)[:, None, None, :]
    outputs = {}
    for attn_dropout in (0.0, None):
        block = Block(16, 2, 2, 0.5, attn_dropout=attn_dropout)
        block.load_state_dict(Block(16, 2, 2, 0.0).state_dict())  # same weights for both
        attn = block.attn.train()
        attn.resid_drop.eval()  # only the attention-probability dropout stays random
        y_train, _, _ = attn(x, allowed, collect_attn=collect_attn)
        y_eval, _, _ = attn.eval()(x, allowed, collect_attn=collect_attn)
        outputs[attn_dropout] = (y_train, y_eval)
    torch.testing.assert_close(*outputs[0.0])
    assert not torch.allclose(*outputs[None])
