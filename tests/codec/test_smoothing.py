"""eval.decode.latent_smoothing: the summed latent is low-passed along time before the codec's decoder,
for the model's output and the codec baselines alike (Synthesizer.decode_codes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonica.codec import build_codec
from harmonica.codec.base import smooth_frames
from harmonica.config.schema import CodecConfig, DecodeConfig


def test_smooth_frames_convolves_along_time_with_replicated_edges() -> None:
    x = torch.zeros(7, 2)  # [T, D]
    x[3] = torch.tensor([4.0, -8.0])  # an impulse
    y = smooth_frames(x, [1, 2, 1])  # [T, D]
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 0], torch.tensor([0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(y[:, 1], -2 * y[:, 0])  # each dimension on its own
    ramp = torch.arange(5.0)[:, None]  # [5, 1]
    # edges replicate the first / last frame: a constant stays constant, a ramp keeps its inside
    torch.testing.assert_close(smooth_frames(ramp, [1, 2, 1])[:, 0], torch.tensor([0.25, 1.0, 2.0, 3.0, 3.75]))
    torch.testing.assert_close(smooth_frames(torch.full((4, 3), 2.5), [1, 4, 6, 4, 1]), torch.full((4, 3), 2.5))
    assert smooth_frames(x, []) is x and smooth_frames(x, [3.0]) is x
    for bad in ([1, 2], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="smoothing kernel"):
            smooth_frames(x, bad)
        with pytest.raises(ValueError, match="latent_smoothing"):
            DecodeConfig(latent_smoothing=bad)


def test_decode_expected_smooths_the_summed_latent(train_wavs, one_second, monkeypatch) -> None:
    codec = build_codec(CodecConfig(n_q=2, codebook_size=16, kmeans_iters=3, griffin_lim_iters=2))
    codec.fit(train_wavs)
    codes = codec.encode(one_second)  # [2, T]
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(codec, "decode_latent", lambda latent: seen.append(latent) or np.zeros(1, np.float32))
    codec.decode_expected(codes, {}, [1, 2, 1])
    plain = codec.quantized_log_mel(codes)  # [T, n_mels]
    torch.testing.assert_close(seen[0], smooth_frames(plain, [1, 2, 1]))
    assert not torch.allclose(seen[0], plain)


def test_the_synthesizer_smooths_baselines_and_model_output_alike(tiny_checkpoints, tiny_corpus) -> None:
    from harmonica.inference.synthesize import Synthesizer

    greedy = dict(temperature=[0.0], repetition_penalty=1.0, max_length_per_char=0.05)
    plain = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"], decode=DecodeConfig(**greedy))
    smooth = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"],
                         decode=DecodeConfig(latent_smoothing=[1, 2, 1], **greedy))
    latents: list[torch.Tensor] = []
    decode_latent = smooth.codec.decode_latent
    smooth.codec.decode_latent = lambda latent: latents.append(latent) or decode_latent(latent)
    prompt = plain.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    a, info_a = plain.synthesize("a quiet river", prompt=prompt)
    b, info_b = smooth.synthesize("a quiet river", prompt=prompt)
    assert torch.equal(info_a["codes"], info_b["codes"])  # the tokens do not change, only their decoding
    codes = info_b["codes"].numpy()  # [n_q, T]
    torch.testing.assert_close(latents[-1], smooth_frames(smooth.codec.quantized_log_mel(codes), [1, 2, 1]))
    assert a.shape == b.shape
    # a baseline (the resynthesis of a recording's codes) goes through the same smoothing
    codes = smooth.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav"))).numpy()  # [n_q, P]
    wav, _ = smooth.decode_codes(codes, "codec_decode_baseline")
    torch.testing.assert_close(latents[-1], smooth_frames(smooth.codec.quantized_log_mel(codes), [1, 2, 1]))
    base = plain.decode_codes(codes, "codec_decode_baseline")[0]
    assert np.abs(wav - base).max() > 1e-3 * np.abs(base).max()


def test_decode_as_is_plain_decode_unless_asked(train_wavs, one_second, monkeypatch) -> None:
    codec = build_codec(CodecConfig(n_q=2, codebook_size=16, kmeans_iters=3, griffin_lim_iters=2))
    codec.fit(train_wavs)
    codes = codec.encode(one_second)  # [2, T]
    np.testing.assert_array_equal(codec.decode_as(codes), codec.decode(codes))
    np.testing.assert_array_equal(codec.decode_as(codes, {}, [1.0]), codec.decode(codes))
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(codec, "decode_latent", lambda latent: seen.append(latent) or np.zeros(1, np.float32))
    codec.decode_as(codes, None, [1, 2, 1])
    torch.testing.assert_close(seen[-1], smooth_frames(codec.quantized_log_mel(codes), [1, 2, 1]))
