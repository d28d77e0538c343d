"""The AR's acoustic prompt (model.ar.speaker_condition=prompt): codebook 0 of another utterance of
the speaker between the text and the audio."""

import pytest
import torch

from harmonica.training.guided import text_attention
from tests.models.tiny import CODEBOOK, N_Q, ar_model, batch, reference_greedy

PF = 6  # the tiny prompted AR's prompt_frames


def _prompted(**kw):
    return ar_model(speaker_condition="prompt", prompt_frames=PF, max_seq_len=48, **kw)


def _inputs(seed: int = 1):
    b = batch(seed=seed, P=PF)
    return b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"], b["prompt"], b["prompt_lens"]


def test_prompted_forward_shapes_offset_and_padding_invariance() -> None:
    m = _prompted()
    text, tl, audio, al, prompt, pl = _inputs()
    logits, _, aux = m(text, tl, audio, al, prompt=prompt, prompt_lens=pl, attn_layers=[0])
    B, T = audio.shape
    assert logits.shape == (B, T + 1, CODEBOOK + 1)
    assert aux["audio_offset"] == text.size(1) + PF
    S = text.size(1) + PF + T + 1
    assert aux["attn_probs"][0].shape[-2:] == (S, S)
    assert text_attention(aux["attn_probs"][0], text.size(1), aux["audio_offset"]).shape[2] == T + 1
    # each item alone, cut to its own lengths, gives the same logits: the prompt's padding (99) is never read
    for b in range(B):
        L, n, P = int(tl[b]), int(al[b]), int(pl[b])
        single, _, _ = m(text[b:b + 1, :L], tl[b:b + 1], audio[b:b + 1, :n], al[b:b + 1],
                         prompt=prompt[b:b + 1, :, :P], prompt_lens=pl[b:b + 1])
        torch.testing.assert_close(logits[b:b + 1, :n + 1], single, atol=1e-5, rtol=1e-5)


def test_the_prompt_conditions_the_prediction_and_is_required() -> None:
    m = _prompted()
    text, tl, audio, al, prompt, pl = _inputs()
    a, _, _ = m(text, tl, audio, al, prompt=prompt, prompt_lens=pl)
    b, _, _ = m(text, tl, audio, al, prompt=(prompt + 5) % CODEBOOK, prompt_lens=pl)
    assert (a - b).abs().max() > 1e-4
    # codebook 0 is what it reads: [B, n_q, P] and [B, P] are the same prompt
    c, _, _ = m(text, tl, audio, al, prompt=prompt[:, 0], prompt_lens=pl)
    torch.testing.assert_close(a, c)
    # a longer prompt is cut to prompt_frames
    longer = torch.cat([prompt, torch.randint(0, CODEBOOK, (prompt.size(0), N_Q, 4))], dim=2)
    d, _, _ = m(text, tl, audio, al, prompt=longer, prompt_lens=pl)
    torch.testing.assert_close(a, d)
    with pytest.raises(ValueError, match="speaker_condition=prompt"):
        m(text, tl, audio, al)
    assert "prompt_pos" not in dict(ar_model().named_parameters()) and m.contract()["speaker_condition"] == "prompt"
    assert m.contract()["prompt_frames"] == PF and ar_model().contract()["speaker_condition"] == "none"


def test_prompted_kv_cache_generation_equals_no_cache_greedy() -> None:
    m = _prompted()
    with torch.no_grad():
        m.head.bias[m.stop_id] = 0.1  # items stop at different steps
    text, tl, _, _, prompt, pl = _inputs(seed=4)
    out = m.generate(text, tl, max_new_tokens=20, temperature=0.0, prompt=prompt, prompt_lens=pl)
    for i in range(text.size(0)):
        L, P = int(tl[i]), int(pl[i])

        def next_logits(seq: list[int], i=i, L=L, P=P) -> torch.Tensor:
            audio = torch.tensor([seq], dtype=torch.long).reshape(1, -1)
            return m(text[i:i + 1, :L], tl[i:i + 1], audio, torch.tensor([len(seq)]),
                     prompt=prompt[i:i + 1, :, :P], prompt_lens=pl[i:i + 1])[0][:, len(seq)]  # [1, V+1]

        assert out[i].tolist() == reference_greedy(m, next_logits, torch.zeros(0, dtype=torch.long), 0, 20, 1.0)


def test_prompted_generation_with_text_guidance_keeps_the_voice_rows() -> None:
    m = _prompted()
    text, tl, _, _, prompt, pl = _inputs()
    out = m.generate(text, tl, max_new_tokens=5, temperature=0.0, prompt=prompt, prompt_lens=pl, text_guidance=2.0)
    assert len(out) == text.size(0) and all(o.numel() <= 5 for o in out)
    with pytest.raises(ValueError, match="acoustic prompt"):
        m.generate(text, tl, max_new_tokens=5)
