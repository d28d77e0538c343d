#!/usr/bin/env python
"""Regenerate the bundled demo corpus (harmonica/data/demo_corpus) with espeak-ng.

Deterministic: the sentence list (scripts/demo_sentences.txt), the split assignment (fixed seed)
and espeak-ng synthesis are all reproducible, so re-running rewrites identical metadata.

    /work/venv/bin/python scripts/make_demo_corpus.py [--out DIR] [--voices v1,v2,...]

Layout written: metadata.csv (id|speaker|split|text), wavs/<speaker>/<id>.flac (16 kHz, 16-bit
mono FLAC), sentences.txt (sentence number = line number), README.md.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger("make_demo_corpus")

REPO = Path(__file__).resolve().parents[1]
SENTENCES = Path(__file__).resolve().parent / "demo_sentences.txt"
DEFAULT_OUT = REPO / "harmonica" / "data" / "demo_corpus"
OUT_SR = 16_000
# Samples are rounded to 12-bit resolution (72 dB dynamic range, ample for synthetic voices)
# and stored as 16-bit FLAC; FLAC encodes the 4 always-zero low bits for free, which keeps the
# bundled corpus near 6 MB instead of ~9 MB.
EFFECTIVE_BITS = 12
SEED = 20240611

# (voice, words per minute, pitch 0-99): three male, three female espeak-ng variants, with
# speed/pitch spread so the speakers are easy to tell apart by ear and by embedding.
DEFAULT_VOICES: list[tuple[str, int, int]] = [
    ("en-us+m3", 172, 40),
    ("en+m1", 182, 52),
    ("en-gb-x-rp+m7", 166, 35),
    ("en-us+f2", 176, 60),
    ("en+f3", 186, 55),
    ("en+f4", 168, 68),
]
# espeak-ng's default amplitude (100) hard-clips some loud vowels in its int16 output.
AMPLITUDE = 70
N_TRAIN, N_VAL, N_EVAL, PROMPTS_PER_SPEAKER = 160, 12, 20, 2


@dataclass(frozen=True)
class Item:
    utt_id: str
    speaker: str
    split: str
    sentence_no: int
    text: str


def speaker_name(voice: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", voice).strip("_")


def plan(sentences: list[str], speakers: list[str]) -> list[Item]:
    """Assign sentences to splits and speakers.

    train: N_TRAIN sentences, one speaker each (round-robin); val: N_VAL, one speaker each;
    eval: N_EVAL sentences never in train, each spoken by two different speakers;
    prompt: PROMPTS_PER_SPEAKER own sentences per speaker.
    """
    n_spk = len(speakers)
    need = N_TRAIN + N_VAL + N_EVAL + PROMPTS_PER_SPEAKER * n_spk
    if len(sentences) < need:
        raise SystemExit(f"need {need} sentences, {SENTENCES} has {len(sentences)}")
    if n_spk < 2:
        raise SystemExit("need at least two voices (eval sentences are spoken by two speakers)")
    numbered = list(enumerate(sentences, 1))
    random.Random(SEED).shuffle(numbered)
    train = numbered[:N_TRAIN]
    val = numbered[N_TRAIN:N_TRAIN + N_VAL]
    ev = numbered[N_TRAIN + N_VAL:N_TRAIN + N_VAL + N_EVAL]
    prompt = numbered[N_TRAIN + N_VAL + N_EVAL:need]

    items: list[Item] = []

    def add(split: str, spk_idx: int, no: int, text: str) -> None:
        spk = speakers[spk_idx % n_spk]
        items.append(Item(f"{spk}_{no:03d}", spk, split, no, text))

    for i, (no, text) in enumerate(train):
        add("train", i, no, text)
    for i, (no, text) in enumerate(val):
        add("val", i, no, text)
    for i, (no, text) in enumerate(ev):
        # Second speaker offset cycles 1..n-1 so every pair of speakers shows up, never twice the same.
        add("eval", i, no, text)
        add("eval", i + 1 + (i // n_spk) % (n_spk - 1), no, text)
    for i, (no, text) in enumerate(prompt):
        add("prompt", i, no, text)
    return items


def synthesize(voice: str, speed: int, pitch: int, text: str, workdir: Path) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        txt, wav = Path(d) / "in.txt", Path(d) / "out.wav"
        txt.write_text(text + "\n", encoding="utf-8")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(AMPLITUDE),
             "-f", str(txt), "-w", str(wav)],
            check=True, capture_output=True,
        )
        data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def render(item: Item, voice: tuple[str, int, int], out: Path, workdir: Path) -> float:
    wav, sr = synthesize(*voice, item.text, workdir)
    wav = soxr.resample(wav, sr, OUT_SR, quality="HQ") if sr != OUT_SR else wav
    scale = 2 ** (EFFECTIVE_BITS - 1)
    steps = np.clip(np.round(wav * scale), -scale, scale - 1).astype(np.int16)
    pcm = steps * np.int16(2 ** (16 - EFFECTIVE_BITS))
    path = out / "wavs" / item.speaker / f"{item.utt_id}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, OUT_SR, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return len(wav) / OUT_SR


def espeak_version() -> str:
    r = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    m = re.search(r"eSpeak NG text-to-speech: (\S+)", r.stdout)
    return f"espeak-ng {m[1]}" if m else "espeak-ng"


def write_readme(out: Path, items: list[Item], voices: dict[str, tuple[str, int, int]],
                 durations: dict[str, float]) -> None:
    size_mb = sum(p.stat().st_size for p in (out / "wavs").rglob("*.flac")) / 1e6
    splits = ("train", "val", "eval", "prompt")
    rows = []
    for spk, (voice, speed, pitch) in voices.items():
        counts = [sum(i.speaker == spk and i.split == s for i in items) for s in splits]
        rows.append(f"| {spk} | `{voice}` | {speed} | {pitch} | " + " | ".join(map(str, counts)) + " |")
    totals = [sum(i.split == s for i in items) for s in splits]
    text = f"""# harmonica demo corpus

A tiny multi-speaker English corpus bundled with harmonica so the whole pipeline (preprocessing,
codec, AR/NAR training, evaluation) can run offline in minutes. It is *synthetic*: every utterance
was generated with {espeak_version()} from sentences written for this project.

- **License:** CC0 1.0 (public domain dedication). Sentences and audio were created for harmonica;
  no third-party recordings or texts are included.
- **Regenerate:** `python scripts/make_demo_corpus.py` (deterministic; sentence list in
  `scripts/demo_sentences.txt`, copied here as `sentences.txt`, sentence number = line number).
- **Audio:** espeak-ng 22.05 kHz output (amplitude {AMPLITUDE}, so nothing clips) resampled with
  soxr (HQ) to {OUT_SR} Hz, stored as 16-bit mono FLAC in `wavs/<speaker>/<id>.flac`; samples are
  rounded to {EFFECTIVE_BITS}-bit resolution to keep the corpus small (FLAC stores the zero low
  bits for free). Ids are `<speaker>_<sentence number>`.
- **Metadata:** `metadata.csv`, `|`-separated with header `id|speaker|split|text`; splits are fixed.
- **Size:** {len(items)} utterances, {sum(durations.values()) / 60:.1f} min, {size_mb:.2f} MB.

## Splits

- `train`: {N_TRAIN} sentences, each spoken by one speaker (round-robin over speakers).
- `val`: {N_VAL} sentences, one speaker each.
- `eval`: {N_EVAL} held-out sentences never in train, each spoken by two different speakers.
- `prompt`: {PROMPTS_PER_SPEAKER} extra sentences per speaker (not in train), for acoustic prompts
  and speaker-similarity references.

## Speakers

| speaker | espeak-ng voice | words/min | pitch | train | val | eval | prompt |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
| **total** | | | | {' | '.join(map(str, totals))} |

Voices `+m*` are male and `+f*` female espeak-ng variants.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output corpus directory")
    ap.add_argument("--voices", default=None,
                    help="comma-separated espeak-ng voices (default: 3 male + 3 female variants)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("espeak-ng") is None:
        logger.error("espeak-ng not found on PATH (apt-get install espeak-ng)")
        return 1

    if args.voices:
        names = [v.strip() for v in args.voices.split(",") if v.strip()]
        voice_list = [(v, 166 + 6 * (i % 4), 35 + 8 * (i % 5)) for i, v in enumerate(names)]
    else:
        voice_list = DEFAULT_VOICES
    voices = {speaker_name(v[0]): v for v in voice_list}
    if len(voices) != len(voice_list):
        raise SystemExit("voices map to duplicate speaker names")

    sentences = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    items = plan(sentences, list(voices))

    out: Path = args.out
    if (out / "wavs").exists():
        shutil.rmtree(out / "wavs")  # stale files from another voice set must not linger
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        durs = list(pool.map(lambda it: render(it, voices[it.speaker], out, Path(work)), items))
    durations = {it.utt_id: d for it, d in zip(items, durs)}

    (out / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    with open(out / "metadata.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("id|speaker|split|text\n")
        for it in sorted(items, key=lambda i: (i.speaker, i.sentence_no)):
            f.write(f"{it.utt_id}|{it.speaker}|{it.split}|{it.text}\n")
    write_readme(out, items, voices, durations)
    logger.info("wrote %d utterances (%.1f min) to %s", len(items), sum(durs) / 60, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
