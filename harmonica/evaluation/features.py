"""Small spectral helpers shared by the failure detectors and the prosody tracker.

numpy + librosa (framing, HTK mel filterbank), no torch: the detectors stay cheap, deterministic and
importable anywhere. `import librosa` is lazy; its first use loads numba/scipy once (~2-4 s).
"""

from __future__ import annotations

from functools import lru_cache

import librosa
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


def pad_to_frames(x: np.ndarray, win: int = WIN, hop: int = HOP) -> np.ndarray:
    """`x` zero-padded to (n_frames - 1) * hop + win samples: frames of `win` every `hop` cover it all."""
    n = max(1, -(-max(0, x.size - win) // hop) + 1)
    padded = np.zeros((n - 1) * hop + win)
    padded[: x.size] = x[: padded.size]
    return padded


def frame(x: np.ndarray, win: int = WIN, hop: int = HOP) -> np.ndarray:
    """(n_frames, win) view; the tail is zero-padded so every sample belongs to a frame."""
    return librosa.util.frame(pad_to_frames(x, win, hop), frame_length=win, hop_length=hop, axis=0)


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
    """(n_mels, N_FFT // 2 + 1) triangular HTK-mel filterbank with unit peaks (no area norm)."""
    return librosa.filters.mel(sr=ANALYSIS_SR, n_fft=N_FFT, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               htk=True, norm=None, dtype=np.float64)


def log_mel(power: np.ndarray) -> np.ndarray:
    """(n_frames, N_MELS) log10 mel energies from a power spectrogram."""
    return np.log10(power @ mel_filterbank().T + _EPS)
