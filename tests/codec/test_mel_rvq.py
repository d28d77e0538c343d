"""mel_rvq: shapes, reconstruction quality, fingerprint and state round trip.

Measured on this machine (2 cores), default config (n_q=8, K=256, 100 mels, hop 320), fit on the
`train_wavs` fixture (~25 s synthetic speech), evaluated on `test_wavs`:
  quantized log-mel MAE (nats) by stages k=1,2,4,8: 0.53, 0.41, 0.32, 0.25
  log-mel MAE of the Griffin-Lim audio vs the quantized log-mel: 0.20 (max 0.23)
  fit on 50 utterances (66 s audio): 1.0-1.3 s (up to ~4 s when the machine is busy)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from harmonica.codec import Codec, build_codec, load_codec
from harmonica.codec.mel_rvq import MelRVQCodec
from harmonica.config.schema import CodecConfig
from harmonica.data import espeak

HOP = 320


def _mae(a, b) -> float:
    return float((a - b).abs().mean())


@pytest.fixture(scope="module")
def codec(train_wavs) -> MelRVQCodec:
    c = build_codec(CodecConfig())
    assert isinstance(c, MelRVQCodec) and c.needs_fit and not c.pretrained
    c.fit(train_wavs)
    return c


def test_contract_attributes(codec: Codec) -> None:
    assert codec.name == "mel_rvq" and codec.sample_rate == 24_000 and codec.frame_rate == 75.0
    assert (codec.n_q, codec.codebook_size, codec.hop_length) == (8, 256, HOP)
    assert codec.pretrained and not codec.needs_fit
    d = codec.describe()
    assert d["codec.name"] == "mel_rvq" and d["codec.n_q"] == 8 and d["codec.pretrained"] is True
    assert all(isinstance(v, (str, int, float, bool)) for v in d.values())


@pytest.mark.parametrize("n", [1, 319, 320, 321, 24_000, 24_001])
def test_encode_shape_dtype_range(codec: Codec, one_second: np.ndarray, n: int) -> None:
    wav = np.resize(one_second, n)
    codes = codec.encode(wav)
    assert codes.shape == (8, -(-n // HOP)) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 256
    out = codec.decode(codes)
    assert out.dtype == np.float32 and out.shape == (codes.shape[1] * HOP,)
    assert codec.encode(out).shape == codes.shape  # frame count survives a round trip


def test_one_second_is_75_frames(codec: Codec, one_second: np.ndarray) -> None:
    assert codec.encode(one_second).shape == (8, 75)


def test_quantization_error_bounded_and_decreasing(codec: MelRVQCodec, test_wavs) -> None:
    errs = []
    for k in (1, 2, 4, 8):
        per = [_mae(codec.features(w), codec.quantized_log_mel(codec.encode(w)[:k])) for w in test_wavs]
        errs.append(float(np.mean(per)))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # measured 0.53 > 0.41 > 0.32 > 0.25
    assert errs[-1] < 0.35, errs  # measured 0.25
    assert errs[-1] < 0.7 * errs[0], errs


def test_griffin_lim_matches_quantized_mel(codec: MelRVQCodec, test_wavs) -> None:
    for w in test_wavs:
        codes = codec.encode(w)
        audio = codec.decode(codes)
        assert np.abs(audio).max() < 4.0  # sane level
        # measured 0.20 mean / 0.23 max
        assert _mae(codec.features(audio), codec.quantized_log_mel(codes)) < 0.3


def test_unquantized_resynthesis_is_the_vocoder_alone(codec: MelRVQCodec, test_wavs) -> None:
    """The recording's own log-mel through Griffin-Lim: closer to the recording than any decode of its
    codes (the ladder's `unquantized` level: what the vocoder loses, without the quantizer)."""
    for w in test_wavs:
        audio = codec.resynthesize_unquantized(w)
        assert audio.dtype == np.float32 and audio.shape == (codec.encode(w).shape[1] * HOP,)
        assert np.array_equal(audio, codec.decode_latent(codec.latent(w)))
        truth = codec.features(w)  # [T, n_mels]
        unquantized = _mae(codec.features(audio), truth)
        quantized = _mae(codec.features(codec.decode(codec.encode(w))), truth)
        assert unquantized < quantized, (unquantized, quantized)


def test_decode_is_deterministic_and_accepts_prefix(codec: Codec, one_second) -> None:
    codes = codec.encode(one_second)
    assert np.array_equal(codec.decode(codes), codec.decode(codes))
    assert codec.decode(codes[:1]).shape == (75 * HOP,)  # first-stage-only decoding (AR output)
    with pytest.raises(ValueError):
        codec.decode(np.full((8, 5), 256))


# ------------------------------------------------------------------------- fingerprint / state


def test_fingerprint_stable_across_fits(codec: MelRVQCodec, train_wavs) -> None:
    again = build_codec(CodecConfig())
    again.fit(train_wavs)
    assert again.fingerprint() == codec.fingerprint()
    assert len(codec.fingerprint()) == 64 and int(codec.fingerprint(), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [{"n_q": 4}, {"codebook_size": 128}, {"hop_length": 300}, {"n_mels": 80},
     {"sample_rate": 16_000}, {"n_fft": 1024}],
)
def test_fingerprint_changes_with_settings(change: dict) -> None:
    base = build_codec(CodecConfig())
    other = build_codec(CodecConfig(**change))
    assert base.fingerprint() != other.fingerprint()


def test_fingerprint_changes_with_codebooks(codec: MelRVQCodec, train_wavs) -> None:
    unfitted = build_codec(CodecConfig())
    assert unfitted.fingerprint() != codec.fingerprint()
    other_seed = build_codec(CodecConfig(seed=1))
    other_seed.fit(train_wavs)
    assert other_seed.fingerprint() != codec.fingerprint()
    other_data = build_codec(CodecConfig())
    other_data.fit(train_wavs[:10])
    assert other_data.fingerprint() != codec.fingerprint()


def test_save_load_round_trip(codec: MelRVQCodec, test_wavs, tmp_path: Path) -> None:
    codec.save_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codec.json", "mel_rvq_codebooks.safetensors"]
    loaded = load_codec(CodecConfig(), tmp_path)
    assert loaded.fingerprint() == codec.fingerprint() and not loaded.needs_fit
    for w in test_wavs:
        assert np.array_equal(loaded.encode(w), codec.encode(w))
    with pytest.raises(ValueError, match="other settings"):
        load_codec(CodecConfig(n_mels=80), tmp_path)


def test_save_unfitted_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        build_codec(CodecConfig()).save_state(tmp_path)


# ------------------------------------------------------------------------- real speech (optional)


def _espeak(text: str, voice: str) -> np.ndarray:
    wav, sr = espeak.synthesize(text, voice)  # the bundled libespeak-ng (espeakng-loader), in process
    return soxr.resample(wav, sr, 24_000).astype(np.float32)


@pytest.mark.slow
def test_real_speech_round_trip(tmp_path: Path) -> None:
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "She sells sea shells by the sea shore.",
        "A journey of a thousand miles begins with a single step.",
        "Peter Piper picked a peck of pickled peppers.",
        "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
        "It was the best of times, it was the worst of times.",
    ]
    wavs = [_espeak(s, v) for s in sentences for v in ("en-us", "en-us+f3")]
    held_out = _espeak("Colourless green ideas sleep furiously tonight.", "en-us")
    c = build_codec(CodecConfig(codebook_size=128))
    c.fit(wavs)
    codes = c.encode(held_out)
    q = c.quantized_log_mel(codes)
    # measured: quantized log-mel MAE 0.26; Griffin-Lim audio vs quantized log-mel 0.21
    assert _mae(c.features(held_out), q) < 0.4
    assert _mae(c.features(c.decode(codes)), q) < 0.3


def test_per_stage_codebook_sizes(train_wavs, one_second: np.ndarray, tmp_path: Path) -> None:
    cfg = CodecConfig(n_q=3, codebook_sizes=[64, 8, 4], kmeans_iters=3, griffin_lim_iters=2)
    c = build_codec(cfg)
    c.fit(train_wavs)
    assert c.codebook_size == 64 and c.stage_sizes == [64, 8, 4]
    codes = c.encode(one_second)
    assert [int(row.max()) < s for row, s in zip(codes, [64, 8, 4])] == [True] * 3
    assert len(np.unique(codes[0])) > 8  # stage 0 really has more entries
    assert c.decode(codes).shape == (codes.shape[1] * HOP,)
    bad = codes.copy()
    bad[1, 0] = 9
    with pytest.raises(ValueError, match="stage 1 codes outside"):
        c.decode(bad)
    c.save_state(tmp_path / "s")
    back = load_codec(cfg, tmp_path / "s")
    assert back.fingerprint() == c.fingerprint() and np.array_equal(back.encode(one_second), codes)
    assert c.describe()["codec.codebook_sizes"] == "64,8,4"
    # a uniform list is another setting than codebook_size (recorded), but a valid one
    assert build_codec(CodecConfig(n_q=2, codebook_sizes=[8, 8])).stage_sizes == [8, 8]
    assert "codebook_sizes" not in build_codec(CodecConfig(n_q=2, codebook_size=8)).settings()


@pytest.mark.parametrize("sizes", [[8, 16], [8], [8, 1]])
def test_codebook_sizes_are_validated(sizes: list[int]) -> None:
    with pytest.raises(ValueError, match="codebook_sizes"):
        CodecConfig(n_q=2, codebook_sizes=sizes)


def test_decode_expected_with_one_hot_probabilities_is_decode(codec: MelRVQCodec, one_second) -> None:
    codes = codec.encode(one_second)[:3]  # [3, T]
    probs = {s: torch.nn.functional.one_hot(torch.from_numpy(codes[s]), codec.stage_sizes[s]).float() for s in (1, 2)}
    np.testing.assert_allclose(codec.decode_expected(codes, probs), codec.decode(codes), atol=1e-6)


def test_decode_expected_decodes_the_probability_weighted_embedding(codec: MelRVQCodec, one_second,
                                                                    monkeypatch) -> None:
    codes = codec.encode(one_second)[:2]  # [2, T]
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(codec, "decode_latent", lambda latent: seen.append(latent) or np.zeros(1, np.float32))
    K = codec.stage_sizes[1]
    codec.decode_expected(codes, {1: torch.full((codes.shape[1], K), 1.0 / K)})  # uniform: the mean entry
    expected = codec.stage_embeddings(0)[torch.from_numpy(codes[0])] + codec.stage_embeddings(1).mean(0)
    torch.testing.assert_close(seen[0], expected)


def test_decode_expected_refuses_probabilities_that_do_not_fit(codec: MelRVQCodec, one_second) -> None:
    codes = codec.encode(one_second)[:2]
    with pytest.raises(ValueError, match="stage 1 probabilities"):
        codec.decode_expected(codes, {1: torch.ones(3, 5)})
    with pytest.raises(ValueError, match="outside the 2 decoded"):
        codec.decode_expected(codes, {2: torch.ones(codes.shape[1], codec.stage_sizes[2])})
