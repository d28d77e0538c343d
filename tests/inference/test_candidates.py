"""eval.decode.ar_candidates: the AR samples several codebook-0 sequences per utterance in one batch and
the one it is surest of (its mean log-probability of its own tokens) is kept."""

from __future__ import annotations

import pytest
import torch

from harmonica.config.schema import DecodeConfig
from harmonica.inference.decode import decode_ar, max_frames_for_text, pick_candidate
from tests.models.test_ar_reduction import _stop_bias
from tests.models.tiny import ar_model, batch


def test_pick_candidate_prefers_the_surest_sequence_without_a_fault() -> None:
    assert pick_candidate([-2.0, -1.0, -3.0], [False, False, False]) == 1
    assert pick_candidate([-2.0, -1.0, -3.0], [False, True, False]) == 0  # the surest one looped
    assert pick_candidate([-2.0, -1.0, -3.0], [True, True, True]) == 1  # all faulty: the surest


@pytest.mark.parametrize("r", [1, 2])
def test_the_score_is_the_mean_log_probability_a_teacher_forced_forward_gives_the_sampled_tokens(r: int) -> None:
    m = ar_model(frames_per_step=r)
    _stop_bias(m, 1.5)  # items stop at different steps
    b = batch(seed=4)
    scores: list[float] = []
    out = m.generate(b["text"], b["text_lens"], max_new_tokens=15, generator=torch.Generator().manual_seed(0),
                     scores_out=scores, temperature=0.7)
    plain = m.generate(b["text"], b["text_lens"], max_new_tokens=15, generator=torch.Generator().manual_seed(0),
                       temperature=0.7)
    assert [o.tolist() for o in out] == [o.tolist() for o in plain]  # asking for them changes nothing
    assert len(scores) == len(out) and len({len(o) for o in out}) > 1
    for i, tokens in enumerate(out):
        L, T = int(b["text_lens"][i]), len(tokens)
        with torch.no_grad():
            logits, _, aux = m(b["text"][i: i + 1, :L], torch.tensor([L]), tokens[None],
                               torch.tensor([T]))  # [1, T+1, V+1]
        stopped = T < 15  # a STOP was sampled (the rest ran to the budget, whose last token has no STOP)
        n = T + 1 if stopped else T
        targets = aux["targets"][0, :n]  # the tokens, then STOP
        expected = logits[0, :n].log_softmax(-1).gather(1, targets[:, None]).mean()
        assert scores[i] == pytest.approx(float(expected), abs=1e-4)


def test_decode_ar_keeps_the_candidate_the_ar_is_surest_of() -> None:
    m = ar_model()
    _stop_bias(m, 1.0)
    text = batch(seed=4)["text"][0]
    decode = DecodeConfig(temperature=[1.0], top_p=[1.0], repetition_penalty=1.0, ar_candidates=5,
                          max_length_per_char=0.2)
    tokens, facts = decode_ar(m, text, decode, 10.0, generator=torch.Generator().manual_seed(3))
    budget = max_frames_for_text(text.numel(), decode, 10.0, m.max_audio_len)
    # the same five samples, drawn as one batch with the same generator
    scores: list[float] = []
    cands = m.generate(text[None].repeat(5, 1), torch.full((5,), text.numel()), max_new_tokens=budget,
                       temperature=1.0, repetition_penalty=1.0, generator=torch.Generator().manual_seed(3),
                       scores_out=scores)
    assert len({tuple(c.tolist()) for c in cands}) > 1  # they differ
    fine = [i for i, c in enumerate(cands) if len(c) < budget]
    best = max(fine or range(5), key=lambda i: scores[i])
    assert tokens.tolist() == cands[best].tolist() and facts["ar_logprob"] == pytest.approx(scores[best])
    assert facts["ar_logprob"] >= max(scores[i] for i in fine or range(5)) - 1e-9
    # one candidate is exactly the single-sample decoding's behaviour
    single = DecodeConfig(temperature=[1.0], top_p=[1.0], repetition_penalty=1.0, max_length_per_char=0.2)
    one, _ = decode_ar(m, text, single, 10.0, generator=torch.Generator().manual_seed(3))
    [plain] = m.generate(text[None], torch.tensor([text.numel()]), max_new_tokens=budget, temperature=1.0,
                         repetition_penalty=1.0, generator=torch.Generator().manual_seed(3))
    assert one.tolist() == plain.tolist()
