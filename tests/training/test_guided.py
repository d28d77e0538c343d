import pytest
import torch

from harmonica.config.schema import TrainingConfig
from harmonica.training.guided import (
    diagonal_penalty, guided_attention_loss, guided_layers, guided_loss_from_probs, guided_weight_at, text_attention,
)
from harmonica.training.steps import ARTask
from tests.models.tiny import CODEBOOK, ar_model, batch


def _cfg(**kw) -> TrainingConfig:
    return TrainingConfig(warmup_steps=0, total_steps=1000, **kw)


def test_penalty_is_zero_on_the_diagonal_and_grows_away_from_it() -> None:
    text_lens, qmask = torch.tensor([10]), torch.ones(1, 10, dtype=torch.bool)
    W = diagonal_penalty(text_lens, qmask, 10, sigma=0.2)[0]  # [Tq, L]
    assert torch.allclose(W.diagonal(), torch.zeros(10))
    assert W[0, 9] > W[0, 5] > W[0, 1] > 0 and W[0, 9] > 0.99


def _attn(kind: str, B: int = 2, H: int = 2, Tq: int = 12, L: int = 8) -> torch.Tensor:
    if kind == "diagonal":
        idx = (torch.arange(Tq) * L // Tq)  # [Tq]
        a = torch.nn.functional.one_hot(idx, L).float()  # [Tq, L]
    elif kind == "uniform":
        a = torch.full((Tq, L), 1.0 / L)
    else:  # anti-diagonal
        a = torch.nn.functional.one_hot(L - 1 - torch.arange(Tq) * L // Tq, L).float()
    return a.expand(B, H, Tq, L).clone()


def test_loss_is_lowest_for_a_diagonal_attention() -> None:
    text_lens, qmask = torch.tensor([8, 8]), torch.ones(2, 12, dtype=torch.bool)
    losses = {k: float(guided_attention_loss(_attn(k), text_lens, qmask, 0.2)) for k in ("diagonal", "uniform", "anti")}
    assert losses["diagonal"] < 0.05 < losses["uniform"] < losses["anti"]
    # only the shape of the text attention counts: halving the mass on text changes nothing
    half = guided_attention_loss(0.5 * _attn("uniform"), text_lens, qmask, 0.2)
    assert float(half) == pytest.approx(losses["uniform"], rel=1e-6)
    # padded queries are ignored
    qmask[:, 6:] = False
    junk = torch.cat([_attn("diagonal", Tq=6), _attn("anti", Tq=6)], dim=2)  # [B, H, 12, L]
    assert float(guided_attention_loss(junk, text_lens, qmask, 0.2)) < 0.05


def test_weight_schedule_and_layers() -> None:
    assert guided_weight_at(5, _cfg()) == 0.0
    cfg = _cfg(guided_attention_weight=2.0, guided_attention_decay_steps=100)
    assert guided_weight_at(0, cfg) == 2.0 and guided_weight_at(50, cfg) == 1.0 and guided_weight_at(150, cfg) == 0.0
    assert guided_weight_at(10_000, _cfg(guided_attention_weight=2.0)) == 2.0
    assert guided_layers(_cfg(), 3) == [0, 1, 2] and guided_layers(_cfg(guided_attention_layers=[1]), 3) == [1]
    with pytest.raises(ValueError, match="guided_attention_layers"):
        guided_layers(_cfg(guided_attention_layers=[3]), 3)


def _ar_batch() -> dict:
    b = batch()
    return {"text": b["text"], "text_lens": b["text_lens"], "audio": b["codes"][:, 0].clamp(0, CODEBOOK - 1),
            "audio_lens": b["audio_lens"]}


def _grads(cfg: TrainingConfig, step: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    model = ar_model().train()
    out = ARTask(cfg, CODEBOOK, 4).train_step(model, _ar_batch(), step, torch.Generator().manual_seed(0), False)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out.terms


def test_enabling_guided_attention_changes_gradients_and_is_logged() -> None:
    off, terms_off = _grads(_cfg())
    on, terms_on = _grads(_cfg(guided_attention_weight=1.0))
    assert "guided_attn" not in terms_off
    assert float(terms_on["guided_attn"]) > 0 and float(terms_on["guided_attn_weight"]) == 1.0
    assert any(not torch.allclose(off[n], on[n]) for n in off)
    torch.testing.assert_close(terms_on["ce"], terms_off["ce"])  # same forward, only the loss differs
    # decayed to 0: back to the fast path, identical gradients
    decayed, terms = _grads(_cfg(guided_attention_weight=1.0, guided_attention_decay_steps=10), step=10)
    assert "guided_attn" not in terms
    for n in off:
        torch.testing.assert_close(decayed[n], off[n])


@pytest.mark.parametrize("overrides", [{}, {"speaker_condition": "prompt", "prompt_frames": 6},
                                       {"frames_per_step": 2}])
def test_text_probe_gives_the_full_attention_path_s_loss_and_gradients(overrides) -> None:
    """The guided loss from the probe (softmax over the text keys of the guided heads; fused kernel for the
    output) equals the loss from the explicit attention (full softmax, sliced to the text, renormalised):
    same value, same gradients -- the probe only makes the step faster."""
    b = batch()
    text, tl, audio, al = b["text"], b["text_lens"], b["codes"][:, 0].clamp_min(0), b["audio_lens"]
    voice = {"prompt": b["prompt"], "prompt_lens": b["prompt_lens"]} if overrides.get("speaker_condition") else {}
    heads, layers, results = 2, [0, 1], []
    for probe in (False, True):
        model = ar_model(**overrides).train()
        logits, ce, aux = model(text, tl, audio, al, attn_layers=layers, attn_text_heads=heads if probe else None,
                                **voice)
        if probe:
            text_probs = aux["attn_probs"]
        else:
            text_probs = {i: text_attention(aux["attn_probs"][i], text.size(1), aux["audio_offset"])[:, :heads]
                          for i in layers}
        assert all(p.shape[1] == heads and p.shape[-1] == text.size(1) for p in text_probs.values())
        loss = guided_loss_from_probs(text_probs, layers, tl, aux["query_mask"], 0.2)
        (ce + loss).backward()
        results.append((logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                         if p.grad is not None}))
    (l0, g0, grads0), (l1, g1, grads1) = results
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-4)
    assert grads0.keys() == grads1.keys()
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], atol=1e-6, rtol=1e-3)
