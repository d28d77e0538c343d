"""The NAR's floor: a count table p(codebook k | codebook 0) from the training split.

The NAR predicts codebook k from text, speaker and codebooks < k. The simplest thing it must beat
is a lookup table of how often entry j of codebook k co-occurs with entry i of codebook 0 in the
training frames. Its validation CE is logged next to the NAR's (`val/cb{k}/ce_count_table`, and
the margin `val_ema/cb{k}/ce_margin` = table CE - model CE: > 0 means the NAR beats the table).

Smoothing: each row is a Dirichlet posterior around codebook k's unigram distribution,
p(j | i) = (n(i, j) + alpha * u(j)) / (n(i) + alpha), u = add-1/2 unigram. alpha is chosen on the
training split alone (fit on one half of the utterances, score the other), so the baseline is as
strong as a table gets without looking at validation data. Pure functions on CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def cooccurrence(codes: Sequence[Tensor], codebook_size: int) -> Tensor:
    """codes: utterances [n_q, T_i] -> counts [n_q, V, V]; counts[k, i, j] = frames with
    codebook 0 = i and codebook k = j (row 0 is the diagonal histogram of codebook 0)."""
    V = codebook_size
    flat = torch.cat([c.long() for c in codes], dim=1)  # [n_q, N]
    n_q = flat.size(0)
    index = flat[0][None, :] * V + flat  # [n_q, N] pair id of (codebook 0, codebook k)
    offsets = (torch.arange(n_q) * V * V)[:, None]  # [n_q, 1]
    counts = torch.bincount((index + offsets).reshape(-1), minlength=n_q * V * V)  # [n_q * V * V]
    return counts.view(n_q, V, V).float()


def table_log_probs(counts: Tensor, alpha: float) -> Tensor:
    """counts [n_q, V, V] -> log p(codebook k = j | codebook 0 = i) [n_q, V, V]."""
    unigram = counts.sum(dim=1) + 0.5  # [n_q, V]
    unigram = unigram / unigram.sum(dim=-1, keepdim=True)  # [n_q, V]
    rows = counts + alpha * unigram[:, None, :]  # [n_q, V, V]
    return (rows / rows.sum(dim=-1, keepdim=True)).log()  # [n_q, V, V]


def table_nll(log_probs: Tensor, codes: Sequence[Tensor]) -> tuple[Tensor, int]:
    """Summed NLL per codebook [n_q] (nats) of the frames of `codes`, and the frame count."""
    flat = torch.cat([c.long() for c in codes], dim=1)  # [n_q, N]
    n_q = flat.size(0)
    nll = -log_probs[torch.arange(n_q)[:, None], flat[0][None, :], flat]  # [n_q, N]
    return nll.double().sum(dim=1), flat.size(1)


def choose_alpha(codes: Sequence[Tensor], codebook_size: int, alphas: Sequence[float] = ALPHAS) -> float:
    """The alpha with the lowest held-out CE over codebooks 1.., fitting on even-indexed
    utterances and scoring odd-indexed ones (training data only). One utterance -> alphas[middle]."""
    fit, held = list(codes[0::2]), list(codes[1::2])
    if not held:
        return float(alphas[len(alphas) // 2])
    counts = cooccurrence(fit, codebook_size)
    scores = [float(table_nll(table_log_probs(counts, a), held)[0][1:].sum()) for a in alphas]
    return float(alphas[min(range(len(alphas)), key=scores.__getitem__)])


def fit_table(codes: Sequence[Tensor], codebook_size: int) -> Tensor:
    """The smoothed table of the training utterances `codes`: log p(codebook k | codebook 0) [n_q, V, V]."""
    return table_log_probs(cooccurrence(codes, codebook_size), choose_alpha(codes, codebook_size))


def count_table_ce(table: Tensor, val: Sequence[Tensor]) -> dict[int, float]:
    """Validation CE (nats/frame, pooled over frames) of a fitted table (`fit_table`) [n_q, V, V], for
    each codebook k >= 1: {k: ce}. No validation utterances -> {}."""
    if not val:
        return {}
    nll, n = table_nll(table, val)
    return {k: float(nll[k]) / max(n, 1) for k in range(1, nll.numel())}


def margin_metrics(metrics: dict[str, float], table_ce: dict[int, float],
                   prefixes: Sequence[str] = ("val", "val_ema")) -> dict[str, float]:
    """`val/cb{k}/ce_count_table`, `{prefix}/cb{k}/ce_margin` (table CE - the model's
    `{prefix}/cb{k}/ce`) and their means over codebooks (`val/ce_count_table`, `{prefix}/ce_margin`)."""
    out: dict[str, float] = {}
    if not table_ce:
        return out
    for k, ce in table_ce.items():
        out[f"val/cb{k}/ce_count_table"] = ce
    out["val/ce_count_table"] = sum(table_ce.values()) / len(table_ce)
    for prefix in prefixes:
        margins = [ce - metrics[f"{prefix}/cb{k}/ce"] for k, ce in table_ce.items() if f"{prefix}/cb{k}/ce" in metrics]
        for k, ce in table_ce.items():
            if f"{prefix}/cb{k}/ce" in metrics:
                out[f"{prefix}/cb{k}/ce_margin"] = ce - metrics[f"{prefix}/cb{k}/ce"]
        if margins:
            out[f"{prefix}/ce_margin"] = sum(margins) / len(margins)
    return out
