"""Monotonic text window at AR decoding (`eval.decode.text_window`, harmonica.models.monotonic)."""

from __future__ import annotations

import torch

import harmonica.models.ar as ar_module
from harmonica.models import monotonic
from harmonica.models.monotonic import BACKWARD, advance, windowed_allowed
from tests.models.tiny import ar_model, batch


def test_windowed_heads_see_only_the_text_keys_around_their_position() -> None:
    key_valid = torch.ones(2, 12, dtype=torch.bool)  # 8 text keys, then prompt/audio keys
    key_valid[1, 6:8] = False  # row 1: a shorter text (padding keys stay invalid)
    allowed = windowed_allowed(key_valid, torch.tensor([0, 4]), text_len=8, n_heads=4, heads=2, forward=2)
    assert allowed.shape == (2, 4, 1, 12)
    row0 = allowed[0, :, 0]  # position 0: text keys 0..2
    assert row0[0].tolist() == [True] * 3 + [False] * 5 + [True] * 4
    assert row0[1].tolist() == row0[0].tolist()
    assert row0[2].all() and row0[3].all()  # heads past `heads` are not windowed
    row1 = allowed[1, 0, 0]  # position 4: keys 4 - BACKWARD .. 6, and key 6 is padding
    assert BACKWARD == 1
    assert row1.tolist() == [False] * 3 + [True, True, True] + [False, False] + [True] * 4
    assert allowed[1, 3, 0].tolist() == key_valid[1].tolist()
    every = windowed_allowed(key_valid, torch.tensor([0, 4]), text_len=8, n_heads=4, heads=0, forward=2)
    assert not every[0, 3, 0, 5]  # heads=0 windows every head


def test_the_position_follows_the_windowed_heads_and_never_moves_back() -> None:
    probs = torch.zeros(2, 4, 1, 10)  # [R, H, 1, S], text_len 6
    probs[0, :2, 0, 3] = 1.0  # row 0: the windowed heads read text key 3
    probs[0, 2:, 0, 5] = 1.0  # the free heads elsewhere do not move it
    probs[1, :2, 0, 1] = 1.0  # row 1 reads key 1, behind its position 2
    new = advance(torch.tensor([1, 2]), [probs, probs], text_len=6, heads=2)
    assert new.tolist() == [3, 2]
    assert advance(torch.tensor([1, 2]), [probs], text_len=6, heads=0).tolist() == [3, 2]  # 3 (2 heads) ties 5 (2 heads): first


def _generate(m, b, **kw) -> list[list[int]]:
    out = m.generate(b["text"], b["text_lens"], max_new_tokens=20, temperature=0.0, repetition_penalty=1.0, **kw)
    return [o.tolist() for o in out]


def test_an_unbounded_window_decodes_as_without_one(monkeypatch) -> None:
    m = ar_model()
    with torch.no_grad():
        m.text_emb.weight.mul_(30)  # a random model barely reads its text: make the text matter
    b = batch(seed=4)
    plain = _generate(m, b)
    L = int(b["text"].size(1))
    monkeypatch.setattr(monotonic, "BACKWARD", L)  # the window covers the whole text wherever it is
    assert _generate(m, b, text_window=L, text_window_heads=2) == plain


def test_windowed_heads_put_no_attention_outside_their_window(monkeypatch) -> None:
    m = ar_model()
    with torch.no_grad():
        m.text_emb.weight.mul_(30)
    b = batch(seed=4)
    seen: list[tuple[list[int], int]] = []

    def checked(position, probs, **kw):
        for p in probs:  # [R, H, 1, S]
            for r, c in enumerate(position.tolist()):
                text = p[r, :2, 0, : kw["text_len"]]  # [2, L] the windowed heads
                outside = torch.ones(kw["text_len"], dtype=torch.bool)
                outside[max(c - 1, 0): c + 2] = False  # window c-1 .. c+1
                assert float(text[:, outside].abs().max()) == 0.0
        new = monotonic.advance(position, probs, **kw)
        assert (new >= position).all() and (new <= position + 1).all()
        seen.append((new.tolist(), len(probs)))
        return new

    monkeypatch.setattr(ar_module, "advance", checked)
    narrow = _generate(m, b, text_window=1, text_window_heads=2)
    assert seen and all(n == len(m.blocks) for _, n in seen)
    assert max(max(pos) for pos, _ in seen) > 0  # the position moved through the text
    assert narrow != _generate(m, b)  # the window changed what was decoded
