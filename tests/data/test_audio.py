import numpy as np
import pytest
import soundfile as sf

from harmonica.data.audio import (
    AudioError, audio_info, frame_rms_db, load_audio, normalize, read_audio, trim_silence,
)
from tests.factories import OTHER_SR, tone, write_audio_kind


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_load_and_info(tmp_path, suffix):
    p = tmp_path / f"a{suffix}"
    write_audio_kind(p, None, 16000)
    dur, sr, ch = audio_info(p)
    assert (sr, ch) == (16000, 1) and dur == pytest.approx(1.2, abs=1e-3)
    wav = load_audio(p, 16000)
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == 19200


def test_resample_other_rate(tmp_path):
    p = tmp_path / "a.wav"
    write_audio_kind(p, "other_sr", 16000)
    assert audio_info(p)[1] == OTHER_SR
    wav = load_audio(p, 24000)
    assert abs(len(wav) - round(1.2 * 24000)) <= 1
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.3


def test_stereo_downmix(tmp_path):
    p = tmp_path / "a.wav"
    write_audio_kind(p, "stereo", 16000)
    assert audio_info(p)[2] == 2
    wav, sr = read_audio(p)
    left, _ = sf.read(str(p), dtype="float32")
    assert wav.ndim == 1 and np.allclose(wav, left.mean(axis=1))


@pytest.mark.parametrize("kind,reason", [
    ("missing_audio", "missing_file"), ("corrupt_audio", "unreadable"),
    ("zero_length", "zero_length"), ("empty_file", "zero_length"), ("non_finite", "non_finite"),
])
def test_load_errors(tmp_path, kind, reason):
    p = tmp_path / "a.wav"
    write_audio_kind(p, kind, 16000)
    with pytest.raises(AudioError) as e:
        load_audio(p, 16000)
    assert e.value.reason == reason
    if kind != "non_finite":  # NaNs are only visible after decoding
        with pytest.raises(AudioError) as e2:
            audio_info(p)
        assert e2.value.reason == reason


def test_frame_rms_db():
    sr = 1000
    x = np.concatenate([np.zeros(40), np.full(40, 0.5), np.full(10, 0.5)])
    db = frame_rms_db(x, sr, frame_ms=20)
    assert len(db) == 5
    assert db[0] == pytest.approx(-100.0)
    assert db[2] == pytest.approx(20 * np.log10(0.5))
    assert db[-1] == pytest.approx(20 * np.log10(0.5))  # partial frame not diluted by padding


def test_trim_silence_keeps_margin():
    sr = 16000
    x = np.concatenate([np.zeros(sr), tone(sr, 1.0), np.zeros(sr)]).astype(np.float32)
    y = trim_silence(x, sr, -40.0, margin_ms=30)
    assert 0.9 < len(y) / sr < 1.1
    assert abs(y[0]) < 1e-6 and abs(y[-1]) < 1e-6  # margin of silence left on both sides
    assert len(trim_silence(np.zeros(100, np.float32), sr, -40.0)) == 100


def test_normalize_modes():
    x = tone(16000) * 0.1
    p = normalize(x, "peak", -6.0)
    assert np.abs(p).max() == pytest.approx(10 ** (-6 / 20), rel=1e-4)
    r = normalize(x, "rms", -20.0)
    assert np.sqrt(np.mean(r.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-3)
    loud = normalize(x, "rms", -1.0)  # would exceed full scale: limited instead
    assert np.abs(loud).max() <= 0.999 + 1e-6
    assert normalize(x, "none", -1.0) is not None and np.array_equal(normalize(x, "none", -1.0), x)
    assert not normalize(np.zeros(10, np.float32), "peak", -1.0).any()
    with pytest.raises(ValueError):
        normalize(x, "loud", -1.0)  # type: ignore[arg-type]
