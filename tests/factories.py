"""Tiny synthetic corpora for tests: harmonic tones with pauses plus transcripts, in the on-disk
layouts of LJSpeech and VCTK, with switches to inject each kind of bad input."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

# Bad-input kinds the factories can inject, and what the pipeline must report for each.
BAD_KINDS: tuple[str, ...] = (
    "missing_audio", "corrupt_audio", "empty_text", "non_utf8_text", "other_sr", "stereo",
    "non_finite", "zero_length", "empty_file",
)
# Rejected by the recipe (header-only probe).
RECIPE_REASON: dict[str, str] = {
    "missing_audio": "missing_file",
    "corrupt_audio": "unreadable",
    "empty_text": "empty_text",
    "non_utf8_text": "non_utf8_text",
    "zero_length": "zero_length",
    "empty_file": "zero_length",
}
# Pass the recipe; only loading the samples reveals the problem (AudioError reason).
LOAD_REASON: dict[str, str] = {"non_finite": "non_finite"}
# Pass everything; the loader must fix them up (resample / downmix).
FIXABLE: tuple[str, ...] = ("other_sr", "stereo")
OTHER_SR = 11_025

_WORDS = (
    "the quiet river runs past old stone houses near a green hill where birds sing each morning "
    "and children play with a red ball under tall trees while bread bakes slowly in warm ovens"
).split()


def sentence(i: int, n_words: int = 7) -> str:
    """A deterministic, unique-per-index pseudo sentence of ordinary words."""
    words = [_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(n_words)]
    return " ".join(words).capitalize() + f" number {i}."


def tone(sr: int, duration: float = 1.2, f0: float = 140.0, pause: float = 0.12,
         seed: int = 0, amp: float = 0.5) -> np.ndarray:
    """Speech-like test signal: harmonic 'syllables' of ~0.25 s separated by short pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * duration))
    t = np.arange(n) / sr
    sig = np.zeros(n)
    for h in range(1, 6):
        sig += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h
    syllable, period = 0.25, 0.25 + pause
    phase = np.minimum(t % period, syllable)
    env = np.where(t % period < syllable, np.sin(np.pi * phase / syllable) ** 0.5, 0.0)
    sig *= env
    sig[: int(0.05 * sr)] = 0  # short leading/trailing silence, like a real recording
    sig[n - int(0.05 * sr):] = 0
    peak = np.abs(sig).max()
    return (amp * sig / peak if peak > 0 else sig).astype(np.float32)


def write_audio_kind(path: Path, kind: str | None, sr: int, seed: int = 0) -> None:
    """Write the audio file for an utterance, broken in the way `kind` says (None = healthy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "missing_audio":
        return
    if kind == "corrupt_audio":
        path.write_bytes(b"this is not audio \x00\x01\x02 garbage" * 20)
        return
    if kind == "empty_file":
        path.write_bytes(b"")
        return
    if kind == "zero_length":
        if path.suffix == ".flac":
            raise ValueError("libsndfile cannot write a header-only FLAC; use empty_file")
        sf.write(str(path), np.zeros(0, dtype=np.float32), sr, subtype="PCM_16")
        return
    if kind == "non_finite":
        if path.suffix != ".wav":
            raise ValueError("NaN needs a float WAV; FLAC is integer-only")
        wav = tone(sr, seed=seed)
        wav[100], wav[200] = np.nan, np.inf
        sf.write(str(path), wav, sr, subtype="FLOAT")
        return
    rate = OTHER_SR if kind == "other_sr" else sr
    wav = tone(rate, seed=seed, f0=120.0 + 10 * (seed % 8))
    if kind == "stereo":
        wav = np.stack([wav, 0.5 * wav], axis=1)
    sf.write(str(path), wav, rate, subtype="PCM_16")


@dataclass
class FakeCorpus:
    root: Path
    ids: list[str]  # every utterance id written, healthy or not
    texts: dict[str, str]
    bad: dict[str, str] = field(default_factory=dict)  # kind -> utterance id

    @property
    def bad_ids(self) -> set[str]:
        return set(self.bad.values())


def _check_kinds(bad: Iterable[str]) -> list[str]:
    kinds = list(bad)
    unknown = set(kinds) - set(BAD_KINDS)
    if unknown:
        raise ValueError(f"unknown bad kinds {unknown}; choose from {BAD_KINDS}")
    return kinds


def make_ljspeech_corpus(tmp: Path, n: int = 12, bad: Iterable[str] = (), sr: int = 16_000) -> FakeCorpus:
    """LJSpeech layout: metadata.csv (id|text|normalized_text) + wavs/<id>.wav. The i-th bad kind
    is injected into the i-th utterance."""
    kinds = _check_kinds(bad)
    if len(kinds) > n:
        raise ValueError("more bad kinds than utterances")
    root = Path(tmp) / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    ids = [f"LJ001-{i + 1:04d}" for i in range(n)]
    texts, lines = {}, []
    corpus = FakeCorpus(root, ids, texts)
    for i, utt_id in enumerate(ids):
        kind = kinds[i] if i < len(kinds) else None
        if kind:
            corpus.bad[kind] = utt_id
        text = sentence(i)
        texts[utt_id] = text
        if kind == "empty_text":
            line = f"{utt_id}|   |".encode()
        elif kind == "non_utf8_text":
            line = f"{utt_id}|".encode() + "Caf\u00e9 au lait".encode("latin-1") + b"|x"
        else:
            # Raw column keeps digits; normalized column spells things out and must win.
            line = f"{utt_id}|{text.replace(' number ', ' no. ')}|{text}".encode()
        lines.append(line)
        write_audio_kind(root / "wavs" / f"{utt_id}.wav", kind, sr, seed=i)
    (root / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    return corpus


def make_vctk_corpus(
    tmp: Path, layout: str = "new", speakers: Iterable[str] = ("p225", "p226", "p227", "p228"),
    n_sentences: int = 20, bad: Iterable[str] = (), sr: int = 16_000,
) -> FakeCorpus:
    """VCTK layout, new = 0.92 (`wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac`) or old = 0.80
    (`wav48/<spk>/<spk>_<nnn>.wav`); `txt/<spk>/<spk>_<nnn>.txt`. Sentence <nnn> has the same text
    for every speaker. The i-th bad kind is injected into sentence i+1 of the first speaker."""
    if layout not in ("new", "old"):
        raise ValueError("layout must be 'new' or 'old'")
    kinds = _check_kinds(bad)
    speakers = list(speakers)
    root = Path(tmp) / ("VCTK-Corpus-0.92" if layout == "new" else "VCTK-Corpus")
    ids: list[str] = []
    corpus = FakeCorpus(root, ids, {})
    for s, spk in enumerate(speakers):
        for k in range(1, n_sentences + 1):
            utt_id = f"{spk}_{k:03d}"
            ids.append(utt_id)
            kind = kinds[k - 1] if s == 0 and k - 1 < len(kinds) else None
            if kind:
                corpus.bad[kind] = utt_id
            text = sentence(k)
            corpus.texts[utt_id] = text
            txt = root / "txt" / spk / f"{utt_id}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            if kind == "empty_text":
                txt.write_bytes(b"  \n")
            elif kind == "non_utf8_text":
                txt.write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1") + b"\n")
            else:
                txt.write_text(text + "\n", encoding="utf-8")
            if layout == "new" and kind not in ("non_finite", "zero_length"):
                audio = root / "wav48_silence_trimmed" / spk / f"{utt_id}_mic1.flac"
            else:
                # FLAC cannot carry NaN or a header-only file: those live in the old-layout wav
                # path, which the recipe falls back to when the mic1 flac is absent.
                audio = root / "wav48" / spk / f"{utt_id}.wav"
            write_audio_kind(audio, kind, sr, seed=s * 100 + k)
    return corpus
