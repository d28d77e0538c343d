"""eval.decode.ar_coarse=expected: codebook 0 is decoded as the mean of its embeddings under the AR's
distribution at each output frame; the AR and the NAR still read the sampled entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonica.config.schema import DecodeConfig
from harmonica.inference.synthesize import Synthesizer
from tests.models.test_ar_reduction import _stop_bias
from tests.models.tiny import CODEBOOK, ar_model, batch


@pytest.mark.parametrize("r", [1, 2])
def test_generate_reports_the_distribution_each_kept_token_came_from(r: int) -> None:
    m = ar_model(frames_per_step=r)
    _stop_bias(m, 1.5)  # sampled items stop at different steps
    b = batch(seed=4)
    dists: list[torch.Tensor] = []
    out = m.generate(b["text"], b["text_lens"], max_new_tokens=15, generator=torch.Generator().manual_seed(0),
                     probs_out=dists)
    plain = m.generate(b["text"], b["text_lens"], max_new_tokens=15, generator=torch.Generator().manual_seed(0))
    assert [o.tolist() for o in out] == [o.tolist() for o in plain]  # asking for them changes nothing
    assert len(dists) == len(out) and len({len(o) for o in out}) > 1
    for tokens, p in zip(out, dists):
        assert p.shape == (len(tokens), CODEBOOK)  # STOP left out
        torch.testing.assert_close(p.sum(-1), torch.ones(len(tokens)))
    _stop_bias(m, -1e4)  # the greedy items run to the budget
    dists = []
    out = m.generate(b["text"], b["text_lens"], max_new_tokens=15, temperature=0.0, probs_out=dists)
    for tokens, p in zip(out, dists):
        assert p.argmax(-1).tolist() == tokens.tolist()  # greedy, no penalty: the mode was taken
    sharp: list[torch.Tensor] = []
    m.generate(b["text"], b["text_lens"], max_new_tokens=15, temperature=0.0, probs_out=sharp, probs_temperature=0.25)
    for p, q in zip(dists, sharp):
        assert (q.max(-1).values >= p.max(-1).values - 1e-6).all() and (q.max(-1).values > p.max(-1).values).any()


def test_synthesizer_decodes_the_expected_codebook_0(tiny_checkpoints, tiny_corpus) -> None:
    greedy = dict(temperature=[0.0], repetition_penalty=1.0, max_length_per_char=0.05)
    hard = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"], decode=DecodeConfig(**greedy))
    soft = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"],
                       decode=DecodeConfig(ar_coarse="expected", **greedy))
    near_argmax = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"],
                              decode=DecodeConfig(ar_coarse="expected", ar_coarse_temperature=1e-4, **greedy))
    prompt = hard.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    calls: list[dict] = []
    decode_expected = soft.codec.decode_expected
    soft.codec.decode_expected = lambda codes, probs, *a: calls.append(probs) or decode_expected(codes, probs, *a)
    a, info_a = hard.synthesize("a quiet river", prompt=prompt)
    b, info_b = soft.synthesize("a quiet river", prompt=prompt)
    c, _ = near_argmax.synthesize("a quiet river", prompt=prompt)
    # same tokens read by the NAR; only what the codec decodes for codebook 0 changes
    assert torch.equal(info_a["codes"], info_b["codes"]) and info_a["codes"].size(1) > 0
    [probs] = calls
    assert sorted(probs) == [0]  # nar_residual stays `sampled`
    assert probs[0].shape == (info_b["codes"].size(1), soft.codec.stage_sizes[0])
    assert a.shape == b.shape and np.isfinite(b).all() and not np.allclose(a, b)
    np.testing.assert_allclose(c, a, atol=1e-4)  # a near-zero temperature decodes the argmax entry
