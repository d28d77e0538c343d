import itertools
import logging
import sys

import numpy as np
import pytest

from harmonica.config.schema import SpeakerSimConfig
from harmonica.evaluation import speaker as spk
from harmonica.evaluation.speaker import (
    EcapaEncoder,
    EmptyAudioError,
    ResemblyzerEncoder,
    SpeakerBackendError,
    build_speaker_encoder,
    cosine,
    speaker_similarity,
)

# Two prompt-split utterances per voice. Measured (resemblyzer): same voice 0.85 mean
# (0.81-0.89 per voice), male vs female 0.58 mean.
MALE = {"en_us_m3": ("en_us_m3_174", "en_us_m3_194"), "en_gb_x_rp_m7": ("en_gb_x_rp_m7_060", "en_gb_x_rp_m7_094")}
FEMALE = {"en_us_f2": ("en_us_f2_005", "en_us_f2_039"), "en_f4": ("en_f4_087", "en_f4_095")}


@pytest.fixture(scope="module")
def encoder():
    return build_speaker_encoder(SpeakerSimConfig(backend="resemblyzer"))


@pytest.fixture
def no_speechbrain(monkeypatch):
    monkeypatch.setitem(sys.modules, "speechbrain", None)  # import -> ImportError, even if installed


@pytest.mark.slow
def test_embedding_is_unit_norm(encoder, demo_wav) -> None:
    emb = encoder.embed(demo_wav("en_us_m3_174"), 16_000)
    assert emb.ndim == 1 and emb.shape[0] == 256
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(encoder, ResemblyzerEncoder) and encoder.name == "resemblyzer"


def test_same_speaker_more_similar_than_other_gender(encoder, demo_wav) -> None:
    emb = {u: encoder.embed(demo_wav(u), 16_000) for v in (*MALE.values(), *FEMALE.values()) for u in v}
    same = [cosine(emb[a], emb[b]) for a, b in (*MALE.values(), *FEMALE.values())]
    cross = [cosine(emb[m], emb[f]) for mv, fv in itertools.product(MALE.values(), FEMALE.values())
             for m in mv for f in fv]
    print(f"SIM same voice {np.mean(same):.3f} {np.round(same, 3)}; male-female {np.mean(cross):.3f}")
    assert np.mean(same) > np.mean(cross) + 0.1
    assert min(same) > max(cross)


def test_speaker_similarity_and_resampling(encoder, demo_wav) -> None:
    import soxr

    a, b = demo_wav("en_f4_087"), demo_wav("en_f4_095")
    s16 = speaker_similarity(encoder, a, b, 16_000)
    s24 = speaker_similarity(encoder, soxr.resample(a, 16_000, 24_000), soxr.resample(b, 16_000, 24_000), 24_000)
    assert s16 > 0.7
    assert s24 == pytest.approx(s16, abs=0.05)


def test_silent_or_tiny_audio_raises_value_error(encoder, demo_wav) -> None:
    for wav in (np.zeros(16_000, np.float32), np.zeros(100, np.float32)):
        with pytest.raises(EmptyAudioError):
            encoder.embed(wav, 16_000)
    with pytest.raises(ValueError):  # EmptyAudioError is a ValueError: callers may record NaN
        speaker_similarity(encoder, np.zeros(16_000, np.float32), demo_wav("en_f4_087"), 16_000)


def test_cosine_edge_cases() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_ecapa_unavailable_names_the_fix(no_speechbrain) -> None:
    with pytest.raises(SpeakerBackendError) as err:
        EcapaEncoder("speechbrain/spkrec-ecapa-voxceleb").load()
    msg = str(err.value)
    assert "install speechbrain" in msg and "eval.speaker.ecapa_source" in msg
    assert "eval.speaker.backend=resemblyzer" in msg


def test_backend_ecapa_raises(no_speechbrain, monkeypatch) -> None:
    monkeypatch.setattr(spk, "_ENCODERS", {})
    with pytest.raises(SpeakerBackendError):
        build_speaker_encoder(SpeakerSimConfig(backend="ecapa", ecapa_source="/nonexistent/ecapa"))


def test_auto_falls_back_to_resemblyzer(no_speechbrain, encoder, monkeypatch, caplog) -> None:
    monkeypatch.setattr(spk, "_ENCODERS", {("resemblyzer", ""): encoder})  # reuse the loaded model
    with caplog.at_level(logging.WARNING, logger="harmonica.evaluation.speaker"):
        enc = build_speaker_encoder(SpeakerSimConfig(backend="auto"))
    assert enc is encoder
    assert "falling back to resemblyzer" in caplog.text
    caplog.clear()
    assert build_speaker_encoder(SpeakerSimConfig(backend="auto")) is enc  # cached: no second warning
    assert caplog.text == ""
