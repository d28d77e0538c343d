"""EnCodec wrapper with random init (never touches the network) and the offline fallback."""

from __future__ import annotations

import logging
import socket
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonica.codec import build_codec, load_codec
from harmonica.codec import encodec_loading
from harmonica.codec.encodec_codec import EncodecCodec
from harmonica.config.schema import CodecConfig
from tests.codec.audio_factory import corpus

HOP = 320


def _cfg(**kw) -> CodecConfig:
    base = {"name": "encodec", "pretrained": False, "kmeans_iters": 10}
    return CodecConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def fit_wavs() -> list[np.ndarray]:
    return corpus(12, seed=5, min_dur=1.0, max_dur=2.0)  # ~18 s -> ~1300 frames > 1024 centroids


@pytest.fixture(scope="module")
def codec_bw15(fit_wavs) -> EncodecCodec:
    c = build_codec(_cfg(bandwidth=1.5))
    c.fit(fit_wavs[:4])
    return c


@pytest.fixture(scope="module")
def codec(fit_wavs) -> EncodecCodec:
    c = build_codec(_cfg())
    assert isinstance(c, EncodecCodec)
    assert c.needs_fit and not c.pretrained and c.source == "random"
    c.fit(fit_wavs)
    return c


@pytest.mark.slow
def test_contract_attributes(codec: EncodecCodec) -> None:
    assert (codec.sample_rate, codec.frame_rate, codec.hop_length) == (24_000, 75.0, HOP)
    assert (codec.n_q, codec.codebook_size) == (8, 1024)
    assert not codec.needs_fit and not codec.pretrained
    d = codec.describe()
    assert d["codec.pretrained"] is False and d["codec.bandwidth"] == 6.0
    assert d["codec.weights_source"] == "random"


def test_unfitted_random_encodec_refuses_to_encode(one_second) -> None:
    c = build_codec(_cfg())
    with pytest.raises(RuntimeError, match="fit"):
        c.encode(one_second)


def test_shapes_and_fit(codec: EncodecCodec, one_second) -> None:
    codes = codec.encode(one_second)
    assert codes.shape == (8, 75) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 1024
    assert codes.any()  # untrained codebooks would give all zeros
    # ~1300 fit frames for 1024 centroids: stages 1-2 absorb nearly all residual (measured 33 and
    # 46 distinct codes), later stages see ~zero residuals; real fits use far more frames
    assert len(np.unique(codes[0])) > 10 and len(np.unique(codes[1])) > 10
    out = codec.decode(codes)
    assert out.shape == (75 * HOP,) and out.dtype == np.float32
    assert codec.encode(np.resize(one_second, 24_001)).shape == (8, 76)


def test_bandwidth_sets_n_q(codec_bw15: EncodecCodec, one_second) -> None:
    assert codec_bw15.n_q == 2 and codec_bw15.encode(one_second).shape == (2, 75)


def test_fingerprint(codec: EncodecCodec, codec_bw15: EncodecCodec) -> None:
    a, b = build_codec(_cfg()), build_codec(_cfg())
    assert a.fingerprint() == b.fingerprint()  # same seed -> same random weights
    assert a.fingerprint() != codec.fingerprint()  # fit changed the codebooks
    assert a.fingerprint() != build_codec(_cfg(bandwidth=12.0)).fingerprint()  # same weights
    assert codec.fingerprint() != codec_bw15.fingerprint()


def test_save_load_round_trip(
    codec: EncodecCodec, codec_bw15: EncodecCodec, one_second, tmp_path: Path
) -> None:
    codec.save_state(tmp_path)
    assert (tmp_path / "encodec_state.safetensors").is_file()
    loaded = load_codec(_cfg(seed=3), tmp_path)  # other init seed: the state overrides weights
    assert loaded.fingerprint() == codec.fingerprint() and not loaded.needs_fit
    codes = codec.encode(one_second)
    assert np.array_equal(loaded.encode(one_second), codes)
    assert np.array_equal(loaded.decode(codes), codec.decode(codes))
    with pytest.raises(ValueError, match="other settings"):
        codec_bw15.load_state(tmp_path)


def test_read_state_dict_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(1)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.th")
    for name in ("w.safetensors", "w.th"):
        got = encodec_loading.read_state_dict(tmp_path / name)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_weights_path(codec: EncodecCodec, one_second, tmp_path: Path) -> None:
    path = tmp_path / "weights.th"
    torch.save(codec.model.state_dict(), path)
    c = build_codec(_cfg(weights_path=str(path)))
    assert c.pretrained and not c.needs_fit and c.source.startswith("file:")
    c.fit([one_second])  # real weights: no-op
    assert c.fingerprint() == codec.fingerprint()
    assert np.array_equal(c.encode(one_second), codec.encode(one_second))
    # real weights are not copied into the state dir; reloading checks the weights hash
    state_dir = tmp_path / "state"
    c.save_state(state_dir)
    assert [p.name for p in state_dir.iterdir()] == ["codec.json"]
    assert load_codec(_cfg(weights_path=str(path)), state_dir).fingerprint() == c.fingerprint()
    with pytest.raises(RuntimeError, match="weights"):
        load_codec(_cfg(), state_dir)  # random weights differ from the recorded ones


# ------------------------------------------------------------------------------- offline fallback


def test_offline_fallback_real_network_call(monkeypatch, tmp_path: Path, caplog) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.delenv("HARMONICA_OFFLINE", raising=False)
    timeout = socket.getdefaulttimeout()
    with caplog.at_level(logging.WARNING):
        c = build_codec(_cfg(pretrained=True))  # the probe is bounded at 3 s, so this cannot hang
    assert not c.pretrained and c.needs_fit and c.source == "random"
    assert "codec.weights_path" in caplog.text
    assert socket.getdefaulttimeout() == timeout


def test_offline_fallback_simulated_download_failure(monkeypatch, tmp_path: Path, caplog) -> None:
    """The host 'answers' but the download fails: the real encodec route must fall back."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(encodec_loading, "network_reachable", lambda *a, **k: True)
    seen = {}

    def fail(url, *args, **kwargs):
        seen["url"], seen["timeout"] = url, socket.getdefaulttimeout()
        raise urllib.error.URLError("simulated offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    before = socket.getdefaulttimeout()
    with caplog.at_level(logging.WARNING):
        c = build_codec(_cfg(pretrained=True))
    assert seen["url"].endswith(encodec_loading.CHECKPOINT_NAME)
    assert seen["timeout"] == encodec_loading.DOWNLOAD_SOCKET_TIMEOUT_S  # no unbounded hang
    assert socket.getdefaulttimeout() == before
    assert not c.pretrained and c.needs_fit and "URLError" in caplog.text


def test_published_route_uses_hub_cache(codec: EncodecCodec, monkeypatch, tmp_path: Path) -> None:
    """A checkpoint already in the torch hub cache is used without any network access."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(encodec_loading, "network_reachable", lambda *a, **k: pytest.fail("probed"))
    cached = encodec_loading.hub_checkpoint_path()
    cached.parent.mkdir(parents=True)
    torch.save(codec.model.state_dict(), cached)  # stands in for the published file
    c = build_codec(_cfg(pretrained=True))
    assert c.pretrained and c.source == "published" and not c.needs_fit
    assert c.fingerprint() == codec.fingerprint()


def test_offline_env_skips_probe(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HARMONICA_OFFLINE", "1")
    assert encodec_loading.network_reachable() is False


def test_missing_weights_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_codec(_cfg(weights_path=str(tmp_path / "nope.th")))


def test_torchaudio_placeholder_is_removed() -> None:
    enc = encodec_loading.import_encodec()
    assert "torchaudio" not in sys.modules or not isinstance(
        sys.modules["torchaudio"], encodec_loading._TorchaudioPlaceholder
    )
    ta = enc.utils.torchaudio
    if isinstance(ta, encodec_loading._TorchaudioPlaceholder):
        with pytest.raises(RuntimeError, match="torchaudio unavailable"):
            ta.load  # noqa: B018


def test_missing_encodec_says_how_to_install_it(monkeypatch) -> None:
    for key in [k for k in sys.modules if k == "encodec" or k.startswith("encodec.")]:
        monkeypatch.delitem(sys.modules, key)

    class NoEncodec:  # a machine without encodec installed
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "encodec":
                raise ModuleNotFoundError("No module named 'encodec'", name="encodec")
            return None

    monkeypatch.setattr(sys, "meta_path", [NoEncodec, *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps encodec==0.1.1"):
        encodec_loading.import_encodec()


def test_decode_expected_with_one_hot_probabilities_is_decode(codec: EncodecCodec) -> None:
    codes = np.random.default_rng(0).integers(0, codec.codebook_size, size=(3, 12))  # [3, T]
    probs = {s: torch.nn.functional.one_hot(torch.from_numpy(codes[s]), codec.codebook_size).float() for s in (1, 2)}
    np.testing.assert_allclose(codec.decode_expected(codes, probs), codec.decode(codes), atol=1e-5)


def test_unquantized_resynthesis_decodes_the_quantizers_input(codec: EncodecCodec, one_second) -> None:
    latent = codec.latent(one_second)  # [75, 128]
    assert latent.shape == (75, 128)
    codes = codec.encode(one_second)  # [8, 75]
    # the latent is what the stages approximate: each stage's embedding brings the sum closer to it
    sums = torch.cumsum(torch.stack([codec.stage_embeddings(s)[codes[s]] for s in range(codec.n_q)]), 0)
    errors = [float((latent - s).pow(2).mean()) for s in sums]  # stage 1 .. n_q
    assert errors[-1] < errors[0], errors
    out = codec.resynthesize_unquantized(one_second)
    assert out.shape == (75 * HOP,) and out.dtype == np.float32
    np.testing.assert_allclose(out, codec.decode_latent(latent), atol=1e-6)
