"""Synthetic speech-like test audio: voiced harmonics under moving formants plus noise bursts."""

from __future__ import annotations

import numpy as np

SR = 24_000


def _formant_gain(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Sum of resonance peaks evaluated at `freqs` ``[H, T]`` for formants ``[F, T]``."""
    gain = np.zeros_like(freqs)
    for f, bw in zip(formants, bandwidths):
        gain += 1.0 / (1.0 + ((freqs - f[None]) / bw) ** 2)
    return gain


def utterance(seed: int, duration: float = 1.0, sr: int = SR) -> np.ndarray:
    """One float32 mono "utterance" in [-1, 1]: syllables of voiced sound with fricative bursts."""
    rng = np.random.default_rng(seed)
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    # f0 contour: a speaker-specific base with slow declination and vibrato-like wobble
    f0_base = rng.uniform(90, 220)
    f0 = f0_base * (1.0 - 0.15 * t / max(duration, 1e-3)) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr  # [T]
    # formants move between random vowel targets at the syllable rate (~4 Hz)
    n_syll = max(1, int(duration * rng.uniform(3, 5)))
    knots = np.linspace(0, n, n_syll + 1)
    targets = np.stack([rng.uniform(300, 900, n_syll + 1), rng.uniform(900, 2400, n_syll + 1),
                        rng.uniform(2400, 3400, n_syll + 1)])
    formants = np.stack([np.interp(np.arange(n), knots, tr) for tr in targets])  # [3, T]
    bws = np.array([[80.0], [120.0], [200.0]])
    n_harm = int(8000 // f0_base)
    voiced = np.zeros(n)
    for h in range(1, n_harm + 1):
        fh = h * f0  # [T]
        amp = _formant_gain(fh[None], formants, bws)[0] / h ** 0.5
        voiced += np.where(fh < sr / 2 - 500, amp * np.sin(h * phase), 0.0)
    # syllable amplitude envelope with short gaps
    syl_pos = (np.arange(n) / n * n_syll) % 1.0
    env = np.clip(np.sin(np.pi * syl_pos) * 1.4, 0, 1) ** 1.5
    sig = voiced * env
    # fricative-like noise bursts (high-passed white noise) at syllable boundaries
    noise = rng.standard_normal(n)
    noise = np.diff(noise, prepend=0.0)  # crude high-pass
    burst = np.exp(-(((syl_pos - 0.02) % 1.0) / 0.04))
    sig += 0.25 * noise * burst * rng.uniform(0.5, 1.0)
    sig += 1e-3 * rng.standard_normal(n)  # noise floor
    sig = sig / (np.abs(sig).max() + 1e-9) * rng.uniform(0.5, 0.9)
    return sig.astype(np.float32)


def corpus(n: int, seed: int = 0, min_dur: float = 0.5, max_dur: float = 2.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [utterance(int(rng.integers(1 << 30)), float(rng.uniform(min_dur, max_dur))) for _ in range(n)]
