"""Small numpy-only spectral helpers shared by the failure detectors and the prosody tracker.

Kept free of torch/librosa so the detectors are cheap, deterministic and importable anywhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import soxr

ANALYSIS_SR = 16_000
WIN = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms: 100 frames per second
N_FFT = 512
N_MELS = 40
_EPS = 1e-10


def to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Float64 mono samples at 16 kHz (NaN/inf zeroed), the common rate of every analysis here."""
    x = np.nan_to_num(np.asarray(wav, dtype=np.float64).reshape(-1))
    if sr != ANALYSIS_SR and x.size:
        x = soxr.resample(x, sr, ANALYSIS_SR, quality="HQ")
    return x


def frame(x: np.ndarray, win: int = WIN, hop: int = HOP) -> np.ndarray:
    """(n_frames, win) view; the tail is zero-padded so every sample belongs to a frame."""
    n = max(1, -(-max(0, x.size - win) // hop) + 1)
    padded = np.zeros((n - 1) * hop + win)
    padded[: x.size] = x[: padded.size]
    return np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]


def power_spectrogram(x: np.ndarray) -> np.ndarray:
    """|STFT|^2 with a 25 ms Hann window and 10 ms hop: (n_frames, N_FFT // 2 + 1)."""
    frames = frame(x) * np.hanning(WIN)
    return np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2


def frame_db(x: np.ndarray) -> np.ndarray:
    """Per-frame RMS level in dBFS on the 25 ms / 10 ms grid of `power_spectrogram`."""
    f = frame(x)
    return 10 * np.log10(np.mean(f**2, axis=1) + _EPS)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, fmin: float = 60.0, fmax: float = 7600.0) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) triangular HTK-mel filterbank."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(fmax)), n_mels + 2))
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / ANALYSIS_SR)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def log_mel(power: np.ndarray) -> np.ndarray:
    """(n_frames, N_MELS) log10 mel energies from a power spectrogram."""
    return np.log10(power @ mel_filterbank().T + _EPS)
