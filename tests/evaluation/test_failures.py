import numpy as np
import pytest

from harmonica.evaluation.failures import (
    FAILURE_KINDS,
    FailureReport,
    detect_failures,
    expected_duration,
)

SR = 16_000
# Ten demo utterances over all six voices (ids from the eval and prompt splits).
CLEAN_IDS = ("en_f3_001", "en_f3_022", "en_f4_078", "en_f4_087", "en_gb_x_rp_m7_032", "en_gb_x_rp_m7_060",
             "en_m1_077", "en_m1_184", "en_us_f2_005", "en_us_m3_105")
LONG_TEXT = "The kettle is boiling in the kitchen and the cat is asleep by the window."


def only(report: FailureReport, kind: str) -> bool:
    return report.flags[kind] and report.kinds == [kind]


@pytest.mark.slow
def test_clean_speech_raises_no_flag(demo_rows, demo_wav) -> None:
    for utt in CLEAN_IDS:
        rep = detect_failures(demo_wav(utt), SR, demo_rows[utt]["text"])
        assert set(rep.flags) == set(FAILURE_KINDS)
        assert not rep.failed, (utt, rep.kinds, rep.values)
        # Margins measured on the whole corpus: loop <= 0.41, flatness <= 0.012, ratio 0.81-1.27.
        assert rep.values["loop_score"] < 0.5 and rep.values["spectral_flatness"] < 0.05
        assert 0.7 < rep.values["duration_ratio"] < 1.4


def test_silence() -> None:
    rep = detect_failures(np.zeros(2 * SR, np.float32), SR, "hello there my friend")
    assert only(rep, "silence")
    faint = np.random.default_rng(0).normal(0, 1e-4, 2 * SR)  # -80 dBFS hiss
    assert detect_failures(faint, SR, "hello there my friend").flags["silence"]


def test_clipping() -> None:
    t = np.arange(2 * SR) / SR
    rep = detect_failures(np.sign(np.sin(2 * np.pi * 200 * t)), SR, "hello there my friend")
    assert rep.flags["clipping"] and rep.values["clip_ratio"] > 0.9


def test_looping_speech_chunk(demo_wav) -> None:
    chunk = demo_wav("en_f3_001")[SR // 2: SR]  # 0.5 s from inside the sentence
    rep = detect_failures(np.tile(chunk, 6), SR, "The kettle is boiling in the kitchen again")
    assert only(rep, "looping")
    assert rep.values["loop_score"] > 0.9 and rep.values["loop_lag_sec"] == pytest.approx(0.5, abs=0.02)


def test_looping_survives_gain_changes_and_noise(demo_wav) -> None:
    chunk = demo_wav("en_f3_001")[SR // 2: SR].astype(np.float64)
    wav = np.concatenate([chunk * g for g in (1.0, 0.5, 1.5, 0.7, 1.2, 0.9)])
    wav += np.random.default_rng(0).normal(0, 0.005, wav.size)
    assert detect_failures(wav, SR, "The kettle is boiling in the kitchen again").flags["looping"]


def test_stuck_tone_counts_as_looping() -> None:
    t = np.arange(2 * SR) / SR
    rep = detect_failures(0.3 * np.sin(2 * np.pi * 150 * t), SR, "hello there my friend")
    assert rep.flags["looping"] and not rep.flags["noise"]


def test_white_noise() -> None:
    rep = detect_failures(np.random.default_rng(0).normal(0, 0.1, 2 * SR), SR, "hello there my friend")
    assert only(rep, "noise")
    assert rep.values["spectral_flatness"] > 0.5


def test_too_long(demo_wav) -> None:
    wav = np.concatenate([demo_wav("en_m1_184"), np.random.default_rng(0).normal(0, 0.05, 10 * SR)])[: 10 * SR]
    rep = detect_failures(wav, SR, "Hello.")
    assert rep.flags["too_long"] and not rep.flags["too_short"]
    assert rep.values["duration_ratio"] > 10


def test_too_short(demo_wav) -> None:
    wav = demo_wav("en_f3_001")[SR // 4: SR // 4 + SR // 5]  # 0.2 s
    rep = detect_failures(wav, SR, LONG_TEXT)
    assert rep.flags["too_short"] and not rep.flags["too_long"]


def test_expected_rate_is_a_parameter(demo_rows, demo_wav) -> None:
    utt = "en_f3_001"
    wav, text = demo_wav(utt), demo_rows[utt]["text"]
    assert not detect_failures(wav, SR, text).flags["too_long"]
    assert detect_failures(wav, SR, text, seconds_per_char=0.01).flags["too_long"]
    assert expected_duration("Hi") == pytest.approx(0.5)  # floor for very short texts
    assert expected_duration("a" * 100, seconds_per_char=0.1) == pytest.approx(10.0)


def test_other_sample_rates_and_empty_input(demo_rows, demo_wav) -> None:
    import soxr

    wav = soxr.resample(demo_wav("en_us_f2_005"), SR, 24_000)
    assert not detect_failures(wav, 24_000, demo_rows["en_us_f2_005"]["text"]).failed
    rep = detect_failures(np.zeros(0, np.float32), SR, "hello")
    assert rep.flags["silence"] and rep.flags["too_short"]
