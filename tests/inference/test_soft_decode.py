"""eval.decode.nar_residual=expected: the Synthesizer decodes the NAR's stage distributions as
expected codec embeddings instead of the argmax entries."""

import numpy as np
import torch

from harmonica.config.schema import DecodeConfig
from harmonica.inference.synthesize import Synthesizer


def test_expected_residual_decodes_the_nar_distributions(tiny_checkpoints, tiny_corpus):
    hard = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"])
    soft = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"], decode=DecodeConfig(nar_residual="expected"))
    prompt = hard.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    cb0 = torch.randint(0, hard.codec.stage_sizes[0], (40,), generator=torch.Generator().manual_seed(0))  # [T]
    calls: list[dict] = []
    decode_expected = soft.codec.decode_expected
    soft.codec.decode_expected = lambda codes, probs, *a: calls.append(probs) or decode_expected(codes, probs, *a)
    a = hard.complete("a quiet river", cb0, prompt=prompt)
    b = soft.complete("a quiet river", cb0, prompt=prompt)
    [probs] = calls
    n_q = soft.codec.n_q
    assert sorted(probs) == list(range(1, n_q))
    for k, p in probs.items():
        assert p.shape == (40, soft.codec.stage_sizes[k])
        torch.testing.assert_close(p.sum(-1), torch.ones(40))
    assert a.shape == b.shape and np.isfinite(b).all() and not np.allclose(a, b)
