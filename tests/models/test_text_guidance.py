"""Classifier-free guidance on the text: the AR trains on the empty text for a share of utterances
(`training.ar.text_dropout`) and decodes with logits = empty + s * (text - empty)
(`eval.decode.text_guidance`)."""

from __future__ import annotations

import pytest
import torch

from harmonica.config.schema import TrainingConfig
from harmonica.models import ARModel
from harmonica.models.ar import empty_text
from harmonica.training.objectives import text_dropout
from harmonica.training.steps import ARTask, NARTask
from tests.models.tiny import CODEBOOK, N_Q, ar_model, batch, reference_greedy


def test_the_empty_text_is_each_rows_bos_and_eos() -> None:
    text = torch.tensor([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0], [1, 5, 6, 7, 2]])
    assert empty_text(text, torch.tensor([4, 3, 5])).tolist() == [[1, 2], [1, 2], [1, 2]]
    odd = torch.tensor([[4, 5, 6, 0]])  # whatever the ids: first and last valid token
    assert empty_text(odd, torch.tensor([3])).tolist() == [[4, 6]]


def _reference_guided_greedy(m: ARModel, text, tl, prefix, plen, max_new, penalty, scale) -> list[int]:
    """No cache, no batching: two full forwards per step (the text, the empty text), combined."""
    empty = empty_text(text, tl)  # [1, 2]

    def next_logits(seq: list[int]) -> torch.Tensor:
        audio, lens = torch.tensor([seq], dtype=torch.long).reshape(1, -1), torch.tensor([len(seq)])
        cond = m(text, tl, audio, lens)[0][:, len(seq)]  # [1, V+1]
        uncond = m(empty, torch.tensor([2]), audio, lens)[0][:, len(seq)]  # [1, V+1]
        return uncond + scale * (cond - uncond)

    return reference_greedy(m, next_logits, prefix, plen, max_new, penalty)


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_guided_generation_equals_combining_the_two_forwards(scale: float) -> None:
    m = ar_model()
    with torch.no_grad():
        m.head.bias[m.stop_id] = 0.1  # items stop at different steps
        m.text_emb.weight.mul_(30)  # a random model barely reads its text: make the text matter
    b = batch(seed=4)
    text, tl, prefix = b["text"], b["text_lens"], b["codes"][:, 0, :5].clamp(min=0)
    plens = torch.tensor([5, 2, 0])
    out = m.generate(text, tl, prefix=prefix, prefix_lens=plens, max_new_tokens=20, temperature=0.0,
                     repetition_penalty=1.5, text_guidance=scale)
    for i in range(3):
        L = int(tl[i])
        ref = _reference_guided_greedy(m, text[i: i + 1, :L], tl[i: i + 1], prefix[i], plens[i], 20, 1.5, scale)
        assert out[i].tolist() == ref
    if scale == 0.0:  # s = 0 is the unconditional model: the same as decoding the empty text itself
        empty = m.generate(empty_text(text, tl), torch.full((3,), 2), prefix=prefix, prefix_lens=plens,
                           max_new_tokens=20, temperature=0.0, repetition_penalty=1.5)
        assert [o.tolist() for o in out] == [o.tolist() for o in empty]
    else:  # guidance changes what is decoded (else the reference could not tell it from no guidance)
        plain = m.generate(text, tl, prefix=prefix, prefix_lens=plens, max_new_tokens=20, temperature=0.0,
                           repetition_penalty=1.5)
        assert [o.tolist() for o in out] != [o.tolist() for o in plain]


def test_text_dropout_blanks_a_share_of_rows_and_leaves_the_stream_alone_when_off() -> None:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 20, (400, 9))
    text[:, 0], text[:, 8] = 1, 2
    lens = torch.full((400,), 9)
    out, out_lens, dropped = text_dropout(text, lens, 0.25, g)
    assert 0.18 < dropped.float().mean().item() < 0.32
    assert out[dropped, :2].tolist() == [[1, 2]] * int(dropped.sum())
    assert (out[dropped, 2:] == 0).all() and (out_lens[dropped] == 2).all()
    assert torch.equal(out[~dropped], text[~dropped]) and (out_lens[~dropped] == 9).all()
    assert (text[:, 8] == 2).all()  # input not modified
    before = g.get_state()
    same, same_lens, none = text_dropout(text, lens, 0.0, g)
    assert same is text and same_lens is lens and not none.any()
    assert torch.equal(g.get_state(), before)  # off: no draw, other noise streams unchanged


def _ar_batch() -> dict:
    b = batch()
    return {"text": b["text"], "text_lens": b["text_lens"], "audio": b["codes"][:, 0].clamp(0, CODEBOOK - 1),
            "audio_lens": b["audio_lens"]}


def test_the_ar_task_trains_dropped_rows_on_the_empty_text() -> None:
    cfg = TrainingConfig(warmup_steps=0, total_steps=1000, text_dropout=0.999, guided_attention_weight=1.0)
    seen = {}
    model = ar_model().train()
    forward = model.forward

    def spy(text, text_lens, *args, **kwargs):
        seen["text"], seen["lens"] = text.clone(), text_lens.clone()
        return forward(text, text_lens, *args, **kwargs)

    model.forward = spy
    out = ARTask(cfg, CODEBOOK, N_Q).train_step(model, _ar_batch(), 0, torch.Generator().manual_seed(0), False)
    assert seen["lens"].tolist() == [2, 2, 2]
    assert torch.isfinite(out.loss)
    # every row dropped: the guided-attention loss has no row left to guide
    assert float(out.terms["guided_attn"]) == 0.0


def test_the_nar_refuses_text_dropout() -> None:
    with pytest.raises(ValueError, match="training.nar.text_dropout"):
        NARTask(TrainingConfig(warmup_steps=0, total_steps=1000, text_dropout=0.1), CODEBOOK, N_Q)
