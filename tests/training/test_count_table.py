import math

import pytest
import torch

from harmonica.training.count_table import (
    ALPHAS, choose_alpha, cooccurrence, count_table_ce, fit_table, margin_metrics, table_log_probs, table_nll,
)


def _utts(n: int, V: int, T: int = 50, seed: int = 0, noise: float = 0.0) -> list[torch.Tensor]:
    """3 codebooks: cb1 = (cb0 + 1) % V exactly, cb2 independent uniform (or cb1 with noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        c0 = torch.randint(0, V, (T,), generator=g)
        c1 = (c0 + 1) % V
        if noise:
            flip = torch.rand(T, generator=g) < noise
            c1 = torch.where(flip, torch.randint(0, V, (T,), generator=g), c1)
        out.append(torch.stack([c0, c1, torch.randint(0, V, (T,), generator=g)]))  # [3, T]
    return out


def test_cooccurrence_counts_pairs_with_codebook_zero() -> None:
    codes = [torch.tensor([[0, 1, 1], [2, 0, 0]]), torch.tensor([[1], [2]])]  # [2, T]
    counts = cooccurrence(codes, 3)
    assert counts.shape == (2, 3, 3)
    assert counts[1, 1, 0] == 2 and counts[1, 1, 2] == 1 and counts[1, 0, 2] == 1 and counts[1].sum() == 4
    assert torch.equal(counts[0].diagonal(), torch.tensor([1.0, 3.0, 0.0]))


def test_rows_are_distributions_and_nll_matches_manual() -> None:
    codes = _utts(4, 8)
    lp = table_log_probs(cooccurrence(codes, 8), alpha=1.0)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 8), atol=1e-5, rtol=0)
    nll, n = table_nll(lp, codes[:1])
    assert n == 50
    manual = -sum(float(lp[2, codes[0][0, t], codes[0][2, t]]) for t in range(50))
    assert float(nll[2]) == pytest.approx(manual, rel=1e-5)


def test_table_learns_a_deterministic_codebook_and_not_an_independent_one() -> None:
    V = 16
    train, val = _utts(40, V, seed=0), _utts(10, V, seed=1)
    ce = count_table_ce(fit_table(train, V), val)
    assert set(ce) == {1, 2}
    assert ce[1] < 0.2  # cb1 is a function of cb0
    assert ce[2] == pytest.approx(math.log(V), abs=0.15)  # independent: no better than uniform
    assert count_table_ce(fit_table(train, V), []) == {}


def test_alpha_is_chosen_on_training_data_only() -> None:
    V = 16
    clean = choose_alpha(_utts(40, V, seed=0), V)
    noisy = choose_alpha(_utts(40, V, seed=0, noise=0.9), V)
    assert clean in ALPHAS and noisy in ALPHAS
    assert clean < noisy  # a deterministic table needs little smoothing, a noisy one much more


def test_margin_metrics_are_table_minus_model() -> None:
    metrics = {"val/cb1/ce": 3.0, "val/cb2/ce": 5.0, "val_ema/cb1/ce": 2.5, "val_ema/cb2/ce": 4.0}
    out = margin_metrics(metrics, {1: 4.0, 2: 4.5})
    assert out["val/cb1/ce_count_table"] == 4.0 and out["val/ce_count_table"] == 4.25
    assert out["val/cb1/ce_margin"] == 1.0 and out["val/cb2/ce_margin"] == -0.5
    assert out["val_ema/cb2/ce_margin"] == 0.5 and out["val_ema/ce_margin"] == pytest.approx(1.0)
    assert margin_metrics(metrics, {}) == {}
