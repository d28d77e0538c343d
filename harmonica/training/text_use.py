"""Does the AR read the text? Validation diagnostics (pure functions of a model and batches).

  {prefix}/text_gain        teacher-forced CE with each utterance's text swapped for another's of
                            the same batch (a fixed derangement) minus CE with the true texts, in
                            nats per frame. ~0 = the model ignores the text (it continues audio).
                            An acoustic prompt stays with its utterance: only the text is swapped.
  {prefix}/attn_text_share  mean attention mass audio queries put on text keys (over valid queries,
                            heads and decoder layers); /layer{i} per layer.
  {prefix}/guided_attn      the guided-attention penalty of that attention (harmonica/training/
                            guided.py): ~0 = diagonal (monotonic reading), ~0.6+ = diffuse.

A batch of one utterance has nothing to swap with: it counts for the attention metrics only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harmonica.training.data import prompt_kwargs
from harmonica.training.guided import guided_attention_loss, text_attention


def derangement(n: int) -> Tensor:
    """A fixed permutation of 0..n-1 without fixed points (n >= 2): each item takes the next
    item's text. Batches are length-sorted, so the swapped text has a similar length."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 items, got {n}")
    return (torch.arange(n) + 1) % n  # [n]


def text_share(text_probs: Tensor, query_mask: Tensor) -> Tensor:
    """text_probs [B, H, Tq, L] audio queries over text keys -> 0-d mean text mass per valid query."""
    mass = text_probs.float().sum(-1)  # [B, H, Tq]
    valid = query_mask[:, None, :].expand_as(mass)  # [B, H, Tq]
    return torch.where(valid, mass, torch.zeros_like(mass)).sum() / valid.sum().clamp_min(1)


@torch.no_grad()
def text_use_metrics(model: nn.Module, batches: Sequence[dict[str, Any]], prefix: str,
                     sigma: float) -> dict[str, float]:
    """The module doc's metrics of an AR `model` over AR validation batches (eval mode inside)."""
    was_training = model.training
    model.eval()
    n_layers = len(model.blocks)
    layers = list(range(n_layers))
    true_sum = swapped_sum = 0.0
    swap_frames = 0
    share = torch.zeros(n_layers)
    guided = torch.zeros(n_layers)
    queries = 0
    try:
        for b in batches:
            text, text_lens, audio, audio_lens = b["text"], b["text_lens"], b["audio"], b["audio_lens"]
            L = text.size(1)
            voice = prompt_kwargs(b)  # the voice stays with its utterance when the texts swap
            _, loss, aux = model(text, text_lens, audio, audio_lens, attn_layers=layers, **voice)
            qmask = aux["query_mask"]  # [B, G] valid audio queries (G = T+1 at one frame per position)
            nq, nf = int(qmask.sum()), int(aux["mask"].sum())  # queries, valid targets
            for i in layers:
                p = text_attention(aux["attn_probs"][i], L, aux["audio_offset"])  # [B, H, G, L]
                share[i] += float(text_share(p, qmask)) * nq
                guided[i] += float(guided_attention_loss(p, text_lens, qmask, sigma)) * nq
            queries += nq
            if text.size(0) >= 2:
                perm = derangement(text.size(0)).to(text.device)
                _, swapped, _ = model(text[perm], text_lens[perm], audio, audio_lens, **voice)
                true_sum += float(loss) * nf
                swapped_sum += float(swapped) * nf
                swap_frames += nf
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    if swap_frames:
        out[f"{prefix}/text_gain"] = (swapped_sum - true_sum) / swap_frames
    if queries:  # pooled over valid audio queries
        share, guided = share / queries, guided / queries
        out[f"{prefix}/attn_text_share"] = float(share.mean())
        out.update({f"{prefix}/attn_text_share/layer{i}": float(share[i]) for i in layers})
        out[f"{prefix}/guided_attn"] = float(guided.mean())
    return out
