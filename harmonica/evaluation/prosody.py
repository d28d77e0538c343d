"""Prosody statistics: duration, F0 level/variation and voicing, and generated-vs-reference ratios.

The pitch tracker is a compact YIN (de Cheveigne & Kawahara 2002) in numpy: enough to tell a flat
or wrong-register generation from the reference speaker, without a pitch-model dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.ndimage import median_filter

from harmonica.evaluation.features import ANALYSIS_SR, HOP, frame, to_16k

F0_MIN = 50.0
F0_MAX = 400.0
YIN_WIN = 400  # 25 ms integration window at 16 kHz
YIN_THRESHOLD = 0.2  # CMNDF dip below this = periodic (YIN paper: 0.1-0.2); 0.15 left the rough
# espeak male voices only 21-33 % voiced, 0.3 starts adding F0 outliers (std of en_gb_x_rp_m7 +50 %)
# F0 statistics need this many voiced frames (0.1 s); fewer (e.g. Griffin-Lim resynthesis of the
# low espeak male voices, often 1-3 voiced frames) gave f0_std ratios of 0.02..6.6: report NaN.
MIN_VOICED_FRAMES = 10
VOICED_DB = 35.0  # frames more than this below the loudest are never voiced (breath, noise floor)


def _cmndf(frames: np.ndarray, max_lag: int) -> np.ndarray:
    """Cumulative-mean-normalised difference function for each frame: (n_frames, max_lag + 1)."""
    n_fft = 1 << math.ceil(math.log2(frames.shape[1] + YIN_WIN))
    head = frames[:, :YIN_WIN]
    # r(tau) = sum_{j<W} x_j x_{j+tau} via one cross-correlation in the frequency domain.
    spec = np.fft.rfft(frames, n_fft, axis=1) * np.conj(np.fft.rfft(head, n_fft, axis=1))
    r = np.fft.irfft(spec, n_fft, axis=1)[:, : max_lag + 1]
    sq = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    energy0 = sq[:, YIN_WIN][:, None]  # sum x_j^2, j < W
    energy_tau = sq[:, lags + YIN_WIN] - sq[:, lags]  # sum x_{j+tau}^2, j < W
    diff = np.maximum(energy0 + energy_tau - 2 * r, 0.0)
    cum = np.cumsum(diff[:, 1:], axis=1)
    out = np.ones_like(diff)
    out[:, 1:] = diff[:, 1:] * np.arange(1, max_lag + 1) / np.maximum(cum, 1e-12)
    return out


def _f0_frames(x16: np.ndarray) -> np.ndarray:
    """Per 10 ms frame F0 in Hz, NaN where unvoiced."""
    min_lag = int(ANALYSIS_SR / F0_MAX)
    max_lag = math.ceil(ANALYSIS_SR / F0_MIN)
    frames = frame(x16, win=YIN_WIN + max_lag + 1, hop=HOP)
    energy_db = 10 * np.log10(np.mean(frames[:, :YIN_WIN] ** 2, axis=1) + 1e-10)
    d = _cmndf(frames, max_lag)
    f0 = np.full(frames.shape[0], np.nan)
    loud = (energy_db > energy_db.max() - VOICED_DB) & (energy_db > -60.0)
    for i in np.flatnonzero(loud):
        row = d[i]
        below = np.flatnonzero(row[min_lag:max_lag] < YIN_THRESHOLD)
        if below.size == 0:
            continue
        tau = min_lag + below[0]
        while tau + 1 < max_lag and row[tau + 1] < row[tau]:  # walk down to the dip's minimum
            tau += 1
        # Parabolic interpolation around the minimum for sub-sample period resolution.
        a, b, c = row[tau - 1], row[tau], row[min(tau + 1, max_lag)]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0
        period = tau + float(np.clip(shift, -1, 1))
        f0[i] = ANALYSIS_SR / period
    voiced = np.isfinite(f0)
    if voiced.sum() >= 3:
        # A 5-frame median over the voiced frames removes isolated octave jumps.
        f0[voiced] = median_filter(f0[voiced], size=5, mode="nearest")
    return f0


def f0_track(wav: np.ndarray, sr: int) -> np.ndarray:
    """F0 in Hz (50-400) of the voiced 10 ms frames only, in time order (empty if unvoiced)."""
    x16 = to_16k(wav, sr)
    if x16.size == 0:
        return np.zeros(0)
    f0 = _f0_frames(x16)
    return f0[np.isfinite(f0)]


def prosody_stats(wav: np.ndarray, sr: int) -> dict[str, float]:
    """duration (s), f0_mean and f0_std (Hz; NaN with < MIN_VOICED_FRAMES voiced frames),
    voiced_ratio (voiced / all 10 ms frames)."""
    x16 = to_16k(wav, sr)
    duration = np.asarray(wav).size / sr if sr > 0 else 0.0
    if x16.size == 0:
        return {"duration": duration, "f0_mean": math.nan, "f0_std": math.nan, "voiced_ratio": 0.0}
    f0 = _f0_frames(x16)
    voiced = f0[np.isfinite(f0)]
    enough = voiced.size >= MIN_VOICED_FRAMES
    return {
        "duration": float(duration),
        "f0_mean": float(voiced.mean()) if enough else math.nan,
        "f0_std": float(voiced.std()) if enough else math.nan,
        "voiced_ratio": float(voiced.size / f0.size),
    }


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def prosody_compare(gen: np.ndarray | Mapping[str, float], ref: np.ndarray | Mapping[str, float],
                    sr: int | None = None) -> dict[str, float]:
    """Generated / reference ratios: duration_ratio, f0_mean_ratio, f0_std_ratio.

    `gen` and `ref` are waveforms at `sr`, or `prosody_stats` dicts (reuse a reference's stats).
    A ratio is NaN when either side lacks the quantity (no voiced frames, zero duration), so it
    can be dropped from medians with `math.isfinite`.
    """
    def stats(x: np.ndarray | Mapping[str, float]) -> Mapping[str, float]:
        if isinstance(x, Mapping):
            return x
        if sr is None:
            raise ValueError("prosody_compare: pass sr when comparing waveforms")
        return prosody_stats(x, sr)

    g, r = stats(gen), stats(ref)
    return {
        "duration_ratio": _ratio(g["duration"], r["duration"]),
        "f0_mean_ratio": _ratio(g["f0_mean"], r["f0_mean"]),
        "f0_std_ratio": _ratio(g["f0_std"], r["f0_std"]),
    }
