"""Detectors of typical neural-TTS failures on one generated utterance: pure functions of
(samples, sample rate, text) with no model.

Each kind is a boolean flag plus the numeric value it was decided on, so the evaluation can log
failure rates and the distributions behind them. Thresholds are module constants; the figures in
their comments were measured on all 224 utterances of the bundled demo corpus (espeak-ng, 16 kHz)
and on crafted failure signals (see tests/evaluation/test_failures.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harmonica.data.audio import frame_rms_db
from harmonica.evaluation.features import (
    ANALYSIS_SR,
    HOP,
    frame_db,
    log_mel,
    power_spectrogram,
    to_16k,
)
from harmonica.evaluation.text import normalize_text

FAILURE_KINDS: tuple[str, ...] = ("silence", "clipping", "looping", "noise", "too_long", "too_short")

# --- silence: 20 ms frames below SILENCE_DB. Demo corpus share 0.13-0.30 (median 0.19, leading and
# trailing pauses included); an all-zero signal is 1.0. RMS floor catches a uniformly faint output.
SILENCE_DB = -45.0
SILENCE_MAX_RATIO = 0.8
SILENCE_MIN_RMS_DB = -60.0  # demo corpus RMS -26.8..-20.8 dBFS

# --- clipping: samples at |x| >= CLIP_LEVEL. Demo corpus 0.0 everywhere; a full-scale square wave 1.0.
CLIP_LEVEL = 0.99
CLIP_MAX_RATIO = 0.01

# --- looping: windowed self-similarity of spectral-shape frames at a lag (see `loop_score`).
# Demo corpus max 0.41 (median 0.16); a 0.5 s speech chunk repeated 6 times 0.98, with +-4 dB gain
# changes and noise 0.92; a 1.8 s sentence tiled to 10 s 0.80; white noise 0.06. A stuck, steady
# sound (one token repeated) is scored 1.0 and counts as looping on purpose (STUCK_VARIATION).
LOOP_THRESHOLD = 0.7
LOOP_MIN_LAG_SEC = 0.3  # shorter lags would match within sustained phones
LOOP_MAX_LAG_SEC = 3.0
LOOP_MIN_SPAN_SEC = 1.0  # a match must persist this long and at least one lag (>= 2 full copies)
LOOP_ACTIVE_DB = 35.0  # frames within this of the loudest take part; silence never "matches"
LOOP_RANGE_DB = 60.0
LOOP_NORM_FLOOR = 1.0  # log10 units over 40 mel bands; demo speech frames have norms ~3-7
# Median centred-frame norm: demo corpus 5.2-8.2; white/pink noise 1.6; steady buzzes and square
# waves 0.6-0.95; pure tone 0.02.
STUCK_VARIATION = 1.2

# --- noise: median spectral flatness (100-7000 Hz) of frames within NOISE_ACTIVE_DB of the loudest.
# Demo corpus 0.001-0.017; speech + white noise at 20 dB SNR 0.05, at 10 dB 0.25, at 0 dB 0.50;
# pink noise 0.33; white noise 0.57.
NOISE_FLATNESS = 0.3
NOISE_ACTIVE_DB = 30.0

# --- duration vs text: expected = max(MIN_EXPECTED_SEC, chars * seconds_per_char) with chars the
# length of `normalize_text(text)` (spaces included, numbers spelled out). Demo corpus: total
# duration / total chars = 0.061 s/char (per utterance 0.049-0.078, file silences included); real
# read speech (LJSpeech-like) is close, so one default serves. The floor covers the onset/offset
# silence that even a one-word utterance has.
SECONDS_PER_CHAR = 0.061
MIN_EXPECTED_SEC = 0.5
DURATION_MIN_RATIO = 0.4
DURATION_MAX_RATIO = 2.5


@dataclass
class FailureReport:
    flags: dict[str, bool] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(self.flags.values())

    @property
    def kinds(self) -> list[str]:
        return [k for k in FAILURE_KINDS if self.flags.get(k)]


def silence_stats(wav: np.ndarray, sr: int) -> tuple[float, float]:
    """(share of 20 ms frames below SILENCE_DB, overall RMS in dBFS)."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return 1.0, -100.0
    ratio = float(np.mean(frame_rms_db(x, sr, 20.0) < SILENCE_DB))
    rms_db = float(10 * np.log10(np.mean(x**2) + 1e-10))
    return ratio, rms_db


def clipping_ratio(wav: np.ndarray) -> float:
    x = np.asarray(wav).reshape(-1)
    return float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0


def _shape_frames(x16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centred log-mel frames, active mask): see `loop_score`."""
    db = frame_db(x16)
    active = (db > db.max() - LOOP_ACTIVE_DB) & (db > SILENCE_DB)
    f = log_mel(power_spectrogram(x16))
    # 60 dB range below the loudest cell: bands with (almost) no energy would otherwise swing
    # between arbitrary tiny values frame to frame and read as spectral change.
    f = np.maximum(f, f.max() - LOOP_RANGE_DB / 10)
    if active.any():
        f = f - f[active].mean(axis=0)  # fixed timbre/channel
    f = f - f.mean(axis=1, keepdims=True)  # level: a repeat at another gain still matches
    return f, active


def loop_score(x16: np.ndarray) -> tuple[float, float, float]:
    """(max windowed similarity, its lag in seconds, spectral variation) of a 16 kHz signal.

    Frames are log-mel vectors centred over the utterance and per frame. For each lag L in
    [LOOP_MIN_LAG_SEC, LOOP_MAX_LAG_SEC] the cosine of frame t with frame t+L is averaged over a
    window of max(LOOP_MIN_SPAN_SEC, L) and the best window is kept: only content that repeats
    itself for a sustained stretch scores near 1; ordinary speech never matches a shifted copy of
    itself for a second. Quiet frames count as 0 (silence does not "repeat"). Norms below
    LOOP_NORM_FLOOR are floored so frames that are nearly the mean (noise, steady tones) compare as
    ~0 instead of as random unit vectors. Spectral variation is the median norm of the active
    centred frames; below STUCK_VARIATION the output is one sound held still (an AR model
    repeating a single token), which repeats at every lag: its score is 1.0 at the minimum lag.
    """
    fps = ANALYSIS_SR / HOP
    f, active = _shape_frames(x16)
    if active.sum() < 2:
        return 0.0, 0.0, 0.0
    norms = np.linalg.norm(f, axis=1)
    variation = float(np.median(norms[active]))
    if variation < STUCK_VARIATION and active.sum() >= LOOP_MIN_SPAN_SEC * fps:
        return 1.0, LOOP_MIN_LAG_SEC, variation
    f = f / np.maximum(norms, LOOP_NORM_FLOOR)[:, None]
    f[~active] = 0.0
    n = f.shape[0]
    best, best_lag = 0.0, 0.0
    for lag in range(int(LOOP_MIN_LAG_SEC * fps), int(LOOP_MAX_LAG_SEC * fps) + 1):
        win = int(max(LOOP_MIN_SPAN_SEC * fps, lag))
        if n - lag < win:
            break
        sim = np.einsum("ij,ij->i", f[:-lag], f[lag:])
        csum = np.concatenate([[0.0], np.cumsum(sim)])
        score = float((csum[win:] - csum[:-win]).max() / win)
        if score > best:
            best, best_lag = score, lag / fps
    return best, best_lag, variation


def spectral_flatness(x16: np.ndarray) -> float:
    """Median spectral flatness (geometric / arithmetic mean power, 100-7000 Hz) of loud frames.

    ~0.56 for white noise (the expectation for a periodogram of Gaussian noise), near 0 for
    harmonic speech. 0.0 when no frame is loud enough (silence is a separate failure).
    """
    power = power_spectrogram(x16)[:, 3:225] + 1e-12  # bins of 31.25 Hz: ~94-7000 Hz
    db = frame_db(x16)
    loud = (db > db.max() - NOISE_ACTIVE_DB) & (db > SILENCE_DB)
    if not loud.any():
        return 0.0
    flat = np.exp(np.mean(np.log(power[loud]), axis=1)) / np.mean(power[loud], axis=1)
    return float(np.median(flat))


def expected_duration(text: str, seconds_per_char: float | None = None) -> float:
    spc = SECONDS_PER_CHAR if seconds_per_char is None else seconds_per_char
    return max(MIN_EXPECTED_SEC, len(normalize_text(text)) * spc)


def detect_failures(wav: np.ndarray, sr: int, text: str, *, seconds_per_char: float | None = None
                    ) -> FailureReport:
    """Run every detector on one generated utterance.

    `values` holds silence_ratio, rms_db, clip_ratio, loop_score, loop_lag_sec, spectral_variation,
    spectral_flatness, duration_sec, expected_sec and duration_ratio; `flags` has one bool per FAILURE_KINDS entry.
    `seconds_per_char` overrides the demo-corpus speaking rate (e.g. measured on your training set).
    Looping and noise are only judged when the output is not silent (their features need sound).
    """
    x = np.nan_to_num(np.asarray(wav, dtype=np.float64).reshape(-1))
    duration = x.size / sr if sr > 0 else 0.0
    sil_ratio, rms_db = silence_stats(x, sr)
    silent = sil_ratio > SILENCE_MAX_RATIO or rms_db < SILENCE_MIN_RMS_DB
    clip = clipping_ratio(x)
    x16 = to_16k(x, sr)
    loop, lag, variation = loop_score(x16) if not silent and x16.size else (0.0, 0.0, 0.0)
    flat = spectral_flatness(x16) if not silent and x16.size else 0.0
    expected = expected_duration(text, seconds_per_char)
    ratio = duration / expected
    values = {
        "silence_ratio": sil_ratio, "rms_db": rms_db, "clip_ratio": clip, "loop_score": loop,
        "loop_lag_sec": lag, "spectral_variation": variation, "spectral_flatness": flat,
        "duration_sec": duration, "expected_sec": expected, "duration_ratio": ratio,
    }
    flags = {
        "silence": bool(silent),
        "clipping": clip > CLIP_MAX_RATIO,
        "looping": loop > LOOP_THRESHOLD,
        "noise": flat > NOISE_FLATNESS,
        "too_long": ratio > DURATION_MAX_RATIO,
        "too_short": ratio < DURATION_MIN_RATIO,
    }
    return FailureReport(flags=flags, values=values)
