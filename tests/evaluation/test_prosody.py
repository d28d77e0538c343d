import math

import numpy as np
import pytest

from harmonica.evaluation.prosody import f0_track, prosody_compare, prosody_stats

SR = 16_000
MALE = ("en_us_m3_174", "en_gb_x_rp_m7_060", "en_m1_180")
FEMALE = ("en_us_f2_005", "en_f3_067", "en_f4_087")


def harmonic(f0: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6))


@pytest.mark.parametrize("sr", [16_000, 24_000])
def test_f0_of_harmonic_tone(sr: int) -> None:
    f0 = f0_track(harmonic(150.0, sr=sr), sr)
    assert f0.size > 50
    assert np.median(f0) == pytest.approx(150.0, rel=0.05)


def test_unvoiced_input_is_nan_safe() -> None:
    for wav in (np.zeros(SR), np.random.default_rng(0).normal(0, 0.1, SR), np.zeros(0)):
        stats = prosody_stats(wav, SR)
        assert math.isnan(stats["f0_mean"]) and stats["voiced_ratio"] == 0.0
    cmp = prosody_compare(np.zeros(SR), harmonic(150.0), SR)
    assert cmp["duration_ratio"] == pytest.approx(1.0)
    assert math.isnan(cmp["f0_mean_ratio"]) and math.isnan(cmp["f0_std_ratio"])


def test_compare_ratios(demo_wav) -> None:
    a, b = demo_wav("en_us_f2_005"), demo_wav("en_us_m3_174")
    same = prosody_compare(a, a, SR)
    assert same == pytest.approx({"duration_ratio": 1.0, "f0_mean_ratio": 1.0, "f0_std_ratio": 1.0})
    cross = prosody_compare(prosody_stats(b, SR), prosody_stats(a, SR))  # precomputed stats work too
    assert cross["duration_ratio"] == pytest.approx(b.size / a.size)
    assert cross["f0_mean_ratio"] < 0.7  # male / female
    with pytest.raises(ValueError, match="sr"):
        prosody_compare(a, a)


def test_male_voices_lower_than_female(demo_wav) -> None:
    # Measured: male voices f0_mean 87-101 Hz, female 205-236 Hz over the whole corpus.
    male = [prosody_stats(demo_wav(u), SR)["f0_mean"] for u in MALE]
    female = [prosody_stats(demo_wav(u), SR)["f0_mean"] for u in FEMALE]
    assert max(male) < 140 < min(female), (male, female)
    assert all(60 < m < 400 for m in male + female)
