"""Audio I/O and signal conditioning: pure functions, float32 numpy in and out.

Every failure to obtain usable samples is an `AudioError` with a machine-readable `reason`, so
recipes and the cache can turn it into a rejection row instead of crashing a long preprocessing run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

# dBFS assigned to an all-zero frame; keeps log math finite and gives metrics a hard floor.
DB_FLOOR = -100.0
_EPS = 10 ** (DB_FLOOR / 20)

AUDIO_ERROR_REASONS: frozenset[str] = frozenset(
    {"missing_file", "unreadable", "zero_length", "non_finite"}
)


class AudioError(Exception):
    """Raised when a file cannot yield usable audio. `reason` is one of AUDIO_ERROR_REASONS."""

    def __init__(self, reason: str, message: str, path: str | Path | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.path = str(path) if path is not None else None


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise AudioError("missing_file", f"no such audio file: {path}", path)
    # libsndfile reports an empty file as an unknown format; it is really a zero-length recording.
    if os.path.getsize(path) == 0:
        raise AudioError("zero_length", f"empty file (0 bytes): {path}", path)


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration_sec, sample_rate, channels) from the header only, without decoding samples."""
    p = Path(path)
    _check_exists(p)
    try:
        info = sf.info(str(p))
    except Exception as e:  # libsndfile raises several types for garbage input
        raise AudioError("unreadable", f"cannot parse audio header of {p}: {e}", p) from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("zero_length", f"no samples in {p}", p)
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a wav/flac file at its native rate -> (float32 mono samples, sample_rate)."""
    p = Path(path)
    _check_exists(p)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError("unreadable", f"cannot decode {p}: {e}", p) from e
    if data.shape[0] == 0:
        raise AudioError("zero_length", f"no samples in {p}", p)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError("non_finite", f"{bad} NaN/inf samples in {p}", p)
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, target_sr: int) -> np.ndarray:
    """Float32 mono samples at `target_sr` (multi-channel averaged, soxr HQ resampling)."""
    wav, sr = read_audio(path)
    return resample(wav, sr, target_sr)


def frame_rms_db(wav: np.ndarray, sr: int, frame_ms: float = 20.0) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames (last partial frame included)."""
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    hop = max(1, int(round(sr * frame_ms / 1000)))
    if wav.size == 0:
        return np.zeros(0, dtype=np.float64)
    n_frames = -(-wav.size // hop)
    padded = np.zeros(n_frames * hop, dtype=np.float64)
    padded[: wav.size] = wav
    sq = (padded**2).reshape(n_frames, hop).sum(axis=1)
    # Divide the partial last frame by its true length so trailing zero padding does not lower it.
    lengths = np.full(n_frames, hop, dtype=np.float64)
    lengths[-1] = wav.size - (n_frames - 1) * hop
    rms = np.sqrt(sq / lengths)
    return 20 * np.log10(np.maximum(rms, _EPS))


def trim_silence(
    wav: np.ndarray, sr: int, top_db: float, margin_ms: float = 30.0, frame_ms: float = 10.0
) -> np.ndarray:
    """Cut leading/trailing frames quieter than `|top_db|` dB below the loudest frame.

    The threshold is relative to the utterance peak (as librosa's `top_db`) so it works before
    level normalization; the sign of `top_db` is ignored so the config's negative `trim_db` fits.
    `margin_ms` of the cut region is kept so plosive onsets and decays are not clipped.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.size == 0:
        return wav
    db = frame_rms_db(wav, sr, frame_ms)
    loud = np.flatnonzero(db >= db.max() - abs(top_db))
    hop = max(1, int(round(sr * frame_ms / 1000)))
    margin = int(round(sr * margin_ms / 1000))
    start = max(0, loud[0] * hop - margin)
    end = min(wav.size, (loud[-1] + 1) * hop + margin)
    return wav[start:end]


def normalize(
    wav: np.ndarray, mode: Literal["none", "peak", "rms"], level_db: float, max_peak: float = 0.999
) -> np.ndarray:
    """Scale to a peak or RMS level in dBFS.

    RMS mode can push peaks past full scale; those are scaled back to `max_peak` (trading a lower
    RMS for no clipping) because clipped training audio is worse than a slightly quiet one.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if mode == "none" or wav.size == 0:
        return wav
    target = 10 ** (level_db / 20)
    if mode == "peak":
        ref = float(np.abs(wav).max())
    elif mode == "rms":
        ref = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    else:
        raise ValueError(f"unknown normalize mode {mode!r}; expected none|peak|rms")
    if ref <= _EPS:  # digital silence: nothing meaningful to scale
        return wav
    out = wav * np.float32(target / ref)
    peak = float(np.abs(out).max())
    if peak > max_peak:
        out *= np.float32(max_peak / peak)
    return out.astype(np.float32, copy=False)


def write_audio(path: str | Path, wav: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write mono audio; format follows the suffix (.wav/.flac)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.asarray(wav), sr, subtype=subtype)
    return p
