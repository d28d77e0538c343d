import numpy as np
import pytest
import torch

from harmonica.config.schema import DecodeConfig
from harmonica.inference.decode import cut_loops, find_loop, limit_peak, max_frames_for_text


def test_loops_are_found_and_cut_keeping_one_period():
    speech_like = torch.arange(100) % 97
    looped = torch.cat([speech_like, torch.tensor([5, 6, 7] * 30)])
    assert find_loop(looped, 75.0) == (100, 3)
    cut, was_cut = cut_loops(looped, 75.0)
    assert was_cut and cut.tolist() == speech_like.tolist() + [5, 6, 7]
    assert find_loop(torch.tensor([9] * 60), 75.0) == (0, 1)  # a stuck token is a period-1 loop


def test_no_loop_in_varied_tokens_or_short_repeats():
    torch.manual_seed(0)
    assert find_loop(torch.randint(0, 256, (450,)), 75.0) is None
    short = torch.cat([torch.randint(0, 256, (50,)), torch.tensor([1, 2] * 10), torch.randint(0, 256, (50,))])
    assert find_loop(short, 75.0) is None  # 20 frames = 0.27 s < 0.6 s


def test_length_bound_follows_text_and_model():
    d = DecodeConfig(max_length_per_char=0.25)
    assert max_frames_for_text(40, d, 75.0, 511) == 511  # 750 by the text, capped by the model
    assert max_frames_for_text(10, d, 75.0, 511) == round(10 * 0.25 * 75)


def test_peak_ceiling_attenuates_over_full_scale_and_records_the_gain():
    from harmonica.data.audio import normalize
    from harmonica.evaluation.failures import detect_failures

    sr = 16000
    t = np.arange(sr, dtype=np.float32) / sr
    loud = (1.6 * np.sin(2 * np.pi * 220 * t) * np.hanning(sr)).astype(np.float32)  # peak 1.6: past full scale
    assert detect_failures(np.clip(loud, -1, 1), sr, "a").flags["clipping"]  # what a WAV writer would make of it
    out, gain = limit_peak(loud, -1.0)
    assert np.abs(out).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    assert gain == pytest.approx(-1.0 - 20 * np.log10(np.abs(loud).max()), abs=1e-4)
    assert not detect_failures(out, sr, "a").flags["clipping"]
    # the same level the corpus is normalised to (data.normalize=peak at -1 dBFS)
    assert np.abs(out).max() == pytest.approx(np.abs(normalize(loud, "peak", -1.0)).max(), rel=1e-5)
    quiet = loud * np.float32(0.01)  # never amplified: a faint output stays faint for the silence detector
    same, gain = limit_peak(quiet, -1.0)
    assert gain == 0.0 and np.array_equal(same, quiet)
    assert limit_peak(np.zeros(0, dtype=np.float32), -1.0)[1] == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        limit_peak(np.array([0.1, np.nan], dtype=np.float32), -1.0)
