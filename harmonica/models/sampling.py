"""Token sampling helpers shared by the AR/NAR `generate` methods and inference code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T", int, float)


def per_codebook(value: T | Sequence[T], codebook: int) -> T:
    """A scalar, or a per-codebook list indexed by codebook id (entry 0 = the AR's codebook 0);
    a list shorter than the codebook id repeats its last entry."""
    if isinstance(value, Sequence):
        if not value:
            raise ValueError("per-codebook decode setting is an empty list")
        return value[min(codebook, len(value) - 1)]
    return value


def apply_repetition_penalty(logits: Tensor, history: Tensor, penalty: float,
                             history_mask: Tensor | None = None) -> Tensor:
    """CTRL-style penalty: every token id seen in `history` has its logit divided by `penalty`
    when positive, multiplied when negative. logits [B, V]; history [B, T] ids; history_mask
    [B, T] bool (None = all valid; ids outside [0, V) are ignored). Returns new logits [B, V]."""
    if penalty == 1.0 or history.numel() == 0:
        return logits
    V = logits.size(-1)
    valid = (history >= 0) & (history < V)  # [B, T]
    if history_mask is not None:
        valid = valid & history_mask
    hits = torch.zeros_like(logits).scatter_add_(1, history.clamp(0, V - 1), valid.to(logits.dtype))  # [B, V]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # [B, V]
    return torch.where(hits > 0, penalised, logits)  # [B, V]


def _draw_on(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where a seeded draw happens: on the generator's device (torch refuses a generator of another one), so
    a seed draws the same numbers whether the model trains or decodes on a CPU or a GPU."""
    return generator.device if generator is not None else device


def uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """torch.rand drawn on the generator's device (`_draw_on`), moved to `device`."""
    return torch.rand(shape, generator=generator, device=_draw_on(generator, device)).to(device)  # [shape]


def integers(high: int, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device,
             dtype: torch.dtype = torch.long) -> Tensor:
    """torch.randint(0, high) drawn on the generator's device (`_draw_on`), moved to `device`."""
    on = _draw_on(generator, device)
    return torch.randint(0, high, shape, generator=generator, device=on, dtype=dtype).to(device)  # [shape]


def multinomial(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One id per row of probs [B, V] -> [B], drawn on the generator's device (`_draw_on`)."""
    on = _draw_on(generator, probs.device)
    return torch.multinomial(probs.to(on), 1, generator=generator).squeeze(-1).to(probs.device)  # [B]


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """Sample one id per row of logits [B, V] -> [B]. temperature <= 0 is argmax (greedy);
    top_k 0 = off; top_p 1.0 = off (nucleus keeps the smallest set reaching top_p, at least 1)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)  # [B]
    logits = logits.float() / temperature  # [B, V]
    V = logits.size(-1)
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # [B, V]
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(dim=-1)  # [B, V]
        remove = probs.cumsum(dim=-1) - probs > top_p  # [B, V] mass before this token already enough
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))  # [B, V]
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)  # [B, V]
    probs = logits.softmax(dim=-1)  # [B, V]
    return multinomial(probs, generator)  # [B]
