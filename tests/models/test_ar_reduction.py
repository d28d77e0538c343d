"""AR reduction factor (`model.ar.frames_per_step` = r): each position reads the previous r frames
and predicts the next r; per-frame logits, targets and decoding stay as at r = 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harmonica.config.schema import TrainingConfig
from harmonica.models import ARModel, apply_repetition_penalty
from harmonica.training.steps import ARTask
from harmonica.training.text_use import text_use_metrics
from tests.models.tiny import CODEBOOK, ar_model, batch


def _stop_bias(m: ARModel, value: float) -> None:
    with torch.no_grad():
        for i in range(m.frames_per_step):  # every slot's STOP logit
            m.head.bias[i * (CODEBOOK + 1) + m.stop_id] = value


def test_forward_keeps_per_frame_logits_and_positions_shrink_by_r() -> None:
    m = ar_model(frames_per_step=2)
    b = batch(seed=1)
    text, tl, audio, al = b["text"], b["text_lens"], b["codes"][:, 0], b["audio_lens"]
    logits, loss, aux = m(text, tl, audio, al, attn_layers=[0])
    B, T = audio.shape
    assert logits.shape == (B, T + 1, CODEBOOK + 1)
    manual = F.cross_entropy(logits[aux["mask"]], aux["targets"][aux["mask"]])
    torch.testing.assert_close(loss, manual)
    G = (T + 1 + 1) // 2
    assert aux["query_mask"].shape == (B, G)
    assert aux["query_mask"].sum(1).tolist() == [(int(n) + 2) // 2 for n in al]  # ceil((T_b + 1) / 2)
    assert aux["attn_probs"][0].shape[-1] == aux["audio_offset"] + G
    assert m.contract()["frames_per_step"] == 2 and "frames_per_step" not in ar_model().contract()


def test_a_frame_sees_only_the_groups_before_its_own() -> None:
    m = ar_model(frames_per_step=3)
    b = batch(seed=2)
    text, tl, audio, al = b["text"], b["text_lens"], b["codes"][:, 0].clamp(min=0), b["audio_lens"]
    k = 4  # change frame a_4 (group 1: frames 3..5) and every frame after it
    changed = audio.clone()
    changed[:, k:] = (changed[:, k:] + 5) % CODEBOOK
    l1, _, _ = m(text, tl, audio, al)
    l2, _, _ = m(text, tl, changed, al)
    # a_4 is an input of position 2 (frames 3..5 predict 6..8): frames 0..5 cannot see it
    torch.testing.assert_close(l1[:, :6], l2[:, :6], atol=1e-6, rtol=0)
    assert (l1[0, 6:9] - l2[0, 6:9]).abs().max() > 1e-4


def _reference_greedy(m: ARModel, text: torch.Tensor, tl: torch.Tensor, max_new: int, penalty: float) -> list[int]:
    """No cache: a full forward per step on the frames so far plus r-1 dummies, whose last position
    predicts the next r frames; greedy slot by slot, the penalty on every earlier new frame."""
    r = m.frames_per_step
    new: list[int] = []
    while len(new) < max_new:
        seq = new + [0] * (r - 1)  # dummies fill the predicted group's slots; no position reads them
        logits = m(text, tl, torch.tensor([seq]).reshape(1, -1), torch.tensor([len(seq)]))[0]  # [1, T+1, V+1]
        n0 = len(new)  # frames n0 .. n0+r-1 come from the position reading frames n0-r .. n0-1
        for i in range(r):
            last = logits[:, n0 + i]  # [1, V+1]
            if new:
                last = apply_repetition_penalty(last, torch.tensor([new]), penalty)
            tok = int(last.argmax(-1))
            if tok == m.stop_id:
                return new
            new.append(tok)
            if len(new) >= max_new:
                return new
    return new


@pytest.mark.parametrize(("r", "stop_bias"), [(2, 0.05), (3, 0.0)])
def test_kv_cache_generation_equals_no_cache_greedy(r: int, stop_bias: float) -> None:
    m = ar_model(frames_per_step=r)
    _stop_bias(m, stop_bias)  # items stop at different steps, in different slots
    b = batch(seed=4)
    text, tl = b["text"], b["text_lens"]
    out = m.generate(text, tl, max_new_tokens=20, temperature=0.0, repetition_penalty=1.3)
    for i in range(3):
        L = int(tl[i])
        assert out[i].tolist() == _reference_greedy(m, text[i: i + 1, :L], tl[i: i + 1], 20, 1.3)
    assert len({len(o) for o in out}) > 1


def test_budget_and_prefix_rules() -> None:
    m = ar_model(frames_per_step=2)
    _stop_bias(m, -1e4)
    b = batch(seed=3)
    assert [len(o) for o in m.generate(b["text"], b["text_lens"], max_new_tokens=7)] == [7, 7, 7]  # odd budget
    prefix = b["codes"][:, 0, :4].clamp(min=0)
    out = m.generate(b["text"], b["text_lens"], prefix=prefix, prefix_lens=torch.tensor([4, 2, 0]), max_new_tokens=5)
    assert [len(o) for o in out] == [5, 5, 5]
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        m.generate(b["text"], b["text_lens"], prefix=prefix, prefix_lens=torch.tensor([3, 2, 0]), max_new_tokens=5)


def test_overfit_two_sequences_then_greedy_reproduces_them() -> None:
    torch.manual_seed(0)
    m = ar_model(dropout=0.0, frames_per_step=2).train()
    text = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 8, 10, 11, 2]])
    tl = torch.tensor([5, 6])
    audio = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7, 1, 8, 2, 8, 0, 0, 0]])
    al = torch.tensor([9, 6])  # odd and even lengths: STOP in either slot
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss, _ = m(text, tl, audio, al)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = m.eval().generate(text, tl, max_new_tokens=20, temperature=0.0)
    assert out[0].tolist() == audio[0].tolist() and out[1].tolist() == audio[1, :6].tolist()


def test_training_step_with_guided_attention_and_noise_and_the_text_use_metrics() -> None:
    m = ar_model(frames_per_step=2).train()
    b = batch(seed=5)
    step_batch = {"text": b["text"], "text_lens": b["text_lens"], "audio": b["codes"][:, 0].clamp(min=0),
                  "audio_lens": b["audio_lens"]}
    cfg = TrainingConfig(guided_attention_weight=1.0, guided_attention_heads=2, token_noise=0.3)
    out = ARTask(cfg, CODEBOOK, 4).train_step(m, step_batch, 10, torch.Generator().manual_seed(0), True)
    assert torch.isfinite(out.loss) and float(out.terms["guided_attn"]) > 0
    out.loss.backward()
    assert m.audio_emb.weight.grad[CODEBOOK + 2:].abs().sum() > 0  # slot 1's table learns
    metrics = text_use_metrics(m, [step_batch], "val", 0.2)
    assert 0 < metrics["val/attn_text_share"] <= 1 and "val/text_gain" in metrics
