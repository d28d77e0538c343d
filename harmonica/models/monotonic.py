"""Monotonic text window for AR decoding (DCTTS "forcibly incremental attention", Tachibana et al. 2017).

Teacher-forced, the AR's guided heads read the text near the diagonal; free-running, one wrong
frame can send them back to a word already said or past the words still to say, and the output
turns into fluent babble. At decoding, each item keeps a text position c (the text key its
windowed heads attended most, never moving backwards); at each step those heads may only see the
text keys c - 1 .. c + forward. Prompt and audio keys, and the other heads, are untouched.

The windowed heads are the first `heads` heads of every decoder block (0 = all): the heads the
guided-attention loss trained (training.guided_attention_heads).
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKWARD = 1  # text keys before the position a windowed head may still see (a phone said twice)


def windowed_allowed(key_valid: Tensor, position: Tensor, *, text_len: int, n_heads: int, heads: int,
                     forward: int) -> Tensor:
    """key_valid [R, S] (text keys first, 0..text_len-1), position [R] -> allowed [R, H, 1, S]:
    heads < `heads` (0 = all) see only text keys position - BACKWARD .. position + forward."""
    R, S = key_valid.shape
    j = torch.arange(S, device=key_valid.device)[None, :]  # [1, S]
    lo, hi = (position - BACKWARD)[:, None], (position + forward)[:, None]  # [R, 1]
    outside = (j < text_len) & ((j < lo) | (j > hi))  # [R, S] text keys outside the window
    restricted = torch.arange(n_heads, device=key_valid.device) < (heads or n_heads)  # [H]
    blocked = outside[:, None, :] & restricted[None, :, None]  # [R, H, S]
    return (key_valid[:, None, :] & ~blocked)[:, :, None, :]  # [R, H, 1, S]


def advance(position: Tensor, probs: list[Tensor], *, text_len: int, heads: int) -> Tensor:
    """position [R]; probs: each block's attention of this step [R, H, 1, S] -> the new position [R]:
    the text key the windowed heads attend most (their mean over blocks and heads), never behind
    the old position."""
    text = torch.stack([p[:, : heads or p.size(1), 0, :text_len] for p in probs])  # [blocks, R, h, L]
    peak = text.float().mean(dim=(0, 2)).argmax(dim=-1)  # [R]
    return torch.maximum(position, peak)  # [R]
