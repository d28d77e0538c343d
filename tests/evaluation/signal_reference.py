"""Deterministic signals and the summary numbers of the evaluation's signal code on them.

The committed data/signal_reference.json was written by the hand-written numpy mel filterbank,
framing and YIN tracker (commit 7e84122) before they moved to librosa;
tests/evaluation/test_signal_reference.py holds today's code to it within stated tolerances.
`python -m tests.evaluation.signal_reference` rewrites it: only for a deliberate change of scores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from harmonica.data.audio import read_audio
from harmonica.data.corpora import DEMO_CORPUS_DIR
from harmonica.evaluation.failures import detect_failures
from harmonica.evaluation.features import (
    frame,
    frame_db,
    log_mel,
    mel_filterbank,
    power_spectrogram,
    to_16k,
)
from harmonica.evaluation.prosody import f0_track, prosody_compare, prosody_stats

REFERENCE_JSON = Path(__file__).parent / "data" / "signal_reference.json"
DEMO_IDS = ("en_us_f2_005", "en_us_m3_174", "en_gb_x_rp_m7_060")
TEXT = "A sentence of ordinary length for the duration check."
# Pairs compared with prosody_compare (generated, reference).
# References have a real F0 spread: a steady tone's f0_std (~0) makes an f0_std_ratio meaningless.
PAIRS = (("tone220_24k", "gapped_16k"), ("en_us_m3_174", "en_us_f2_005"), ("chirp_16k", "tone220_24k"))


def harmonic(f0: np.ndarray | float, seconds: float, sr: int, vibrato: float = 0.0) -> np.ndarray:
    """Five harmonics (1/k amplitudes) of a fundamental, optionally with a 5 Hz vibrato of +-vibrato Hz."""
    t = np.arange(int(seconds * sr)) / sr
    inst = np.broadcast_to(np.asarray(f0, dtype=np.float64), t.shape) + vibrato * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    return sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))


def _demo(utt_id: str) -> tuple[np.ndarray, int, str]:
    with open(DEMO_CORPUS_DIR / "metadata.csv", newline="", encoding="utf-8") as fh:
        row = {r["id"]: r for r in csv.DictReader(fh, delimiter="|")}[utt_id]
    wav, sr = read_audio(DEMO_CORPUS_DIR / "wavs" / row["speaker"] / f"{utt_id}.flac")
    return np.asarray(wav, dtype=np.float64), sr, row["text"]


def signals() -> dict[str, tuple[np.ndarray, int, str]]:
    """name -> (samples, sample rate, text)."""
    rng = np.random.default_rng(0)
    out: dict[str, tuple[np.ndarray, int, str]] = {
        "tone150_22k": (harmonic(150.0, 2.0, 22_050), 22_050, TEXT),
        "tone220_24k": (harmonic(220.0, 2.0, 24_000, vibrato=10.0), 24_000, TEXT),
        "tone100_16k": (harmonic(100.0, 1.5, 16_000), 16_000, TEXT),
        "chirp_16k": (harmonic(np.linspace(100.0, 300.0, 32_000), 2.0, 16_000), 16_000, TEXT),
        "gapped_16k": (np.concatenate([harmonic(180.0, 0.5, 16_000), np.zeros(8_000),
                                       harmonic(120.0, 0.5, 16_000)]), 16_000, TEXT),
        "noise_16k": (rng.normal(0.0, 0.1, 16_000), 16_000, TEXT),
        "silence_16k": (np.zeros(16_000), 16_000, TEXT),
    }
    for utt_id in DEMO_IDS:
        out[utt_id] = _demo(utt_id)
    wav, sr, text = out["en_us_f2_005"]
    out["looped_16k"] = (np.tile(wav[4_000:12_000], 6), sr, text)  # a 0.5 s chunk six times
    return out


def _f(x: float) -> float:
    return float(round(float(x), 10))


def summarize() -> dict:
    fb = mel_filterbank()
    ref: dict = {"mel_filterbank": {"shape": list(fb.shape), "row_sums": [_f(v) for v in fb.sum(axis=1)],
                                    "row_argmax": [int(v) for v in fb.argmax(axis=1)]},
                 "signals": {}}
    sigs = signals()
    for name, (wav, sr, text) in sigs.items():
        x16 = to_16k(wav, sr)
        lm = log_mel(power_spectrogram(x16))
        f0 = f0_track(wav, sr)
        ref["signals"][name] = {
            "n16": int(x16.size),
            "frames": list(frame(x16).shape),
            "frame_db_mean": _f(frame_db(x16).mean()),
            "log_mel_mean": _f(lm.mean()),
            "log_mel_band_means": [_f(v) for v in lm.mean(axis=0)],
            "f0_track": {"n": int(f0.size), "median": _f(np.median(f0)) if f0.size else None},
            "prosody_stats": {k: _f(v) for k, v in prosody_stats(wav, sr).items()},
            "failures": {k: _f(v) for k, v in detect_failures(wav, sr, text).values.items()},
            "failure_flags": detect_failures(wav, sr, text).kinds,
        }
    ref["prosody_compare"] = {f"{g}/{r}": {k: _f(v) for k, v in prosody_compare(
        sigs[g][0], prosody_stats(*sigs[r][:2]), sigs[g][1]).items()} for g, r in PAIRS}
    return ref


if __name__ == "__main__":
    REFERENCE_JSON.parent.mkdir(exist_ok=True)
    REFERENCE_JSON.write_text(json.dumps(summarize(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE_JSON}")
