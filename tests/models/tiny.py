"""Tiny model/batch factories for the model tests (CPU, milliseconds per forward)."""

from __future__ import annotations

from typing import Any

import torch

from harmonica.config.schema import ARModelConfig, NARModelConfig
from harmonica.models import ARModel, NARModel

TEXT_VOCAB = 24
CODEBOOK = 16
N_Q = 4
MAX_TEXT = 16


def ar_model(**overrides: Any) -> ARModel:
    kw = dict(d_model=32, n_layers=2, n_heads=4, ff_mult=2, dropout=0.0, max_seq_len=32, text_layers=1)
    kw.update(overrides)
    torch.manual_seed(0)
    return ARModel(ARModelConfig(**kw), text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK,
                   max_text_len=MAX_TEXT).eval()


def nar_model(speaker_condition: str = "prompt", **overrides: Any) -> NARModel:
    kw = dict(d_model=32, n_layers=2, n_heads=4, ff_mult=2, dropout=0.0, max_seq_len=32, text_layers=1,
              prompt_frames=6, max_speakers=5)
    kw.update(overrides)
    torch.manual_seed(0)
    return NARModel(NARModelConfig(speaker_condition=speaker_condition, **kw), text_vocab_size=TEXT_VOCAB,
                    codebook_size=CODEBOOK, n_q=N_Q, max_text_len=MAX_TEXT).eval()


def batch(B: int = 3, L: int = 9, T: int = 11, P: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """Padded batch with varied lengths; item 0 is full length. Padding holds junk (-1 / 99) on
    purpose: the models must never read it."""
    g = torch.Generator().manual_seed(seed)
    text_lens = torch.tensor([L] + [max(2, L - 2 - i) for i in range(B - 1)])
    audio_lens = torch.tensor([T] + [max(1, T - 3 - 2 * i) for i in range(B - 1)])
    prompt_lens = torch.tensor([P] + [max(1, P - 2 - i) for i in range(B - 1)])
    text = torch.randint(3, TEXT_VOCAB, (B, L), generator=g)
    codes = torch.randint(0, CODEBOOK, (B, N_Q, T), generator=g)
    prompt = torch.randint(0, CODEBOOK, (B, N_Q, P), generator=g)
    for b in range(B):
        text[b, text_lens[b]:] = 0
        codes[b, :, audio_lens[b]:] = -1
        prompt[b, :, prompt_lens[b]:] = 99
    return dict(text=text, text_lens=text_lens, codes=codes, audio_lens=audio_lens, prompt=prompt,
                prompt_lens=prompt_lens, speaker=torch.arange(B) % 5)


def reference_greedy(m: ARModel, next_logits: Any, prefix: torch.Tensor, plen: Any, max_new: int,
                     penalty: float) -> list[int]:
    """The AR's greedy decoding without a KV cache: `next_logits(seq)` re-runs full forwards on the
    growing sequence (a list of ids) and returns the next token's logits [1, V+1]."""
    from harmonica.models import apply_repetition_penalty

    seq = prefix[: int(plen)].tolist()
    new: list[int] = []
    for _ in range(max_new):
        if len(seq) >= m.max_seq_len - 1:
            break
        last = next_logits(seq)  # [1, V+1]
        if new:
            last = apply_repetition_penalty(last, torch.tensor([new]), penalty)
        tok = int(last.argmax(-1))
        if tok == m.stop_id:
            break
        seq.append(tok)
        new.append(tok)
    return new
