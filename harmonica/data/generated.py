"""The `demo_generated` corpus: grammar sentences spoken by espeak-ng voices, made at preprocess.

`ensure_generated_corpus(cfg, workdir)` writes (or reuses) a corpus directory in the bundled demo
layout (`metadata.csv` id|speaker|split|text, `wavs/<speaker>/<id>.flac`), so `prepare_demo` reads it.
The directory is `<workdir>/corpora/demo_generated-<key>`, the key hashing every generator setting, the
grammar version, the espeak-ng version and the sample rate; a complete one is reused, never rebuilt.

Splits (the bundled corpus's rules, every sentence distinct so held-out text never reaches train):
  eval   - `eval_sentences`, each spoken by two different voices: by default (`eval_text: bundled`)
           the bundled corpus's held-out sentences, natural text whose ground-truth WER matches the
           bundled demo's (whisper tiny.en reads grammar sentences, plausible but unpredictable, with
           ~0.5 WER against ~0.16 for natural ones in the same voices); grammar sentences equal to
           them are dropped;
  val    - `val_sentences`, one voice each;
  prompt - `prompts_per_speaker` own sentences per voice;
  train  - the rest, voices round-robin.
Audio: espeak-ng 22.05 kHz, resampled with soxr (HQ) to the codec rate, 16-bit FLAC. Synthesis runs in
`data.workers` spawned processes (espeak-ng is process-global; see `espeak.synthesize`).
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import logging
import multiprocessing
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from harmonica.config.schema import GeneratedCorpusConfig
from harmonica.data import espeak
from harmonica.data.corpora import prepare_demo
from harmonica.data.sentences import GRAMMAR_VERSION, generate_sentences, text_key

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the plan or the rendering changes
COMPLETE = "COMPLETE"
DEFAULT_RATE, DEFAULT_PITCH = 175, 50
AMPLITUDE = 70  # espeak's 100 hard-clips some loud vowels
SYNTH_CHUNK = 16  # utterances per forked espeak child; part of the output, so of GENERATOR_VERSION


@dataclass(frozen=True)
class Voice:
    voice: str
    rate: int
    pitch: int

    @property
    def speaker(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.voice).strip("_")


@dataclass(frozen=True)
class Item:
    utt_id: str
    speaker: str
    split: str
    text: str


def parse_voice(spec: str) -> Voice:
    """'en-us+m3:172:40' (voice, words per minute, pitch 0-99); rate and pitch are optional."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError(f"voice spec {spec!r}: expected 'voice[:rate[:pitch]]', e.g. 'en-us+f3:176:60'")
    nums = [int(p) for p in parts[1:]]
    return Voice(parts[0], *(nums + [DEFAULT_RATE, DEFAULT_PITCH][len(nums):]))


def bundled_eval_sentences() -> list[str]:
    """The held-out sentences of the bundled demo corpus, in id order, each once."""
    manifests = prepare_demo()
    return list(dict.fromkeys(u.text for u in sorted(manifests.by_split("eval"), key=lambda u: u.id)))


def choose_sentences(gcfg: GeneratedCorpusConfig, seed: int) -> list[str]:
    """The eval sentences first (eval_sentences of them), then the grammar's, all distinct."""
    grammar = generate_sentences(gcfg.sentences, seed)
    if gcfg.eval_text == "grammar":
        return grammar
    held = bundled_eval_sentences()
    if gcfg.eval_sentences > len(held):
        raise ValueError(f"data.generated.eval_sentences={gcfg.eval_sentences}, but the bundled corpus holds out "
                         f"{len(held)} sentences; lower it or set data.generated.eval_text=grammar")
    held = held[: gcfg.eval_sentences]
    keys = {text_key(t) for t in held}
    return held + [s for s in grammar if text_key(s) not in keys][: gcfg.sentences - len(held)]


def plan(sentences: list[str], speakers: list[str], gcfg: GeneratedCorpusConfig) -> list[Item]:
    """Assign sentences (distinct, eval ones first) to splits and speakers; see the module docstring."""
    n_spk = len(speakers)
    counts = (gcfg.eval_sentences, gcfg.val_sentences, gcfg.prompts_per_speaker * n_spk)
    if sum(counts) >= len(sentences):
        raise ValueError(f"demo_generated: {len(sentences)} sentences leave none for train after "
                         f"eval/val/prompt take {sum(counts)}; raise data.generated.sentences")
    items: list[Item] = []

    def add(split: str, spk_idx: int, no: int) -> None:
        spk = speakers[spk_idx % n_spk]
        items.append(Item(f"{spk}_{no:05d}", spk, split, sentences[no]))

    no = 0
    for i in range(gcfg.eval_sentences):
        add("eval", i, no)
        # second voice offset cycles 1..n-1: every pair of voices occurs, never one voice twice
        add("eval", i + 1 + (i // n_spk) % (n_spk - 1), no)
        no += 1
    for i in range(gcfg.val_sentences):
        add("val", i, no)
        no += 1
    for i in range(counts[2]):
        add("prompt", i, no)
        no += 1
    for i in range(len(sentences) - no):
        add("train", i, no)
        no += 1
    return items


def corpus_key(gcfg: GeneratedCorpusConfig, seed: int, sample_rate: int, espeak_version: str) -> str:
    blob = json.dumps({"generated": gcfg.model_dump(mode="json"), "seed": seed, "sample_rate": sample_rate,
                       "grammar": GRAMMAR_VERSION, "generator": GENERATOR_VERSION, "espeak": espeak_version},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ synthesis workers


def _render(chunk: list[tuple[Item, Voice]], out_dir: str, sample_rate: int) -> list[float]:
    requests = [(it.text, v.voice, v.rate, v.pitch, AMPLITUDE) for it, v in chunk]
    wavs = espeak.synthesize_many(requests)
    durations = []
    for (item, _), wav in zip(chunk, wavs, strict=True):
        if espeak.sample_rate() != sample_rate:
            wav = soxr.resample(wav, espeak.sample_rate(), sample_rate, quality="HQ")
        pcm = np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)
        path = Path(out_dir) / "wavs" / item.speaker / f"{item.utt_id}.flac"
        sf.write(str(path), pcm, sample_rate, format="FLAC", subtype="PCM_16")
        durations.append(len(pcm) / sample_rate)
    return durations


def _synthesize_all(pairs: list[tuple[Item, Voice]], out_dir: Path, sample_rate: int, workers: int) -> list[float]:
    # Fixed chunks in plan order: each chunk is one espeak.synthesize_many call (one fork), so the
    # audio is the same whatever the number of workers. Spawned, not forked, workers: the caller may
    # run torch threads, and synthesize_many forks, which is only safe from a light process.
    chunks = [pairs[i:i + SYNTH_CHUNK] for i in range(0, len(pairs), SYNTH_CHUNK)]
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max(1, workers), mp_context=ctx) as pool:
        done = pool.map(_render, chunks, [str(out_dir)] * len(chunks), [sample_rate] * len(chunks))
        return [d for chunk in done for d in chunk]


def ensure_generated_corpus(gcfg: GeneratedCorpusConfig, seed: int, sample_rate: int, workdir: Path,
                            workers: int = 1) -> Path:
    """The corpus directory for these settings, synthesised now unless a complete one exists."""
    version = espeak.version()
    key = corpus_key(gcfg, seed, sample_rate, version)
    final = Path(workdir) / "corpora" / f"demo_generated-{key}"
    if (final / COMPLETE).is_file():
        log.info("demo_generated: reusing %s", final)
        return final
    voices = [parse_voice(v) for v in gcfg.voices]
    by_speaker = {v.speaker: v for v in voices}
    if len(by_speaker) != len(voices):
        raise ValueError(f"data.generated.voices {gcfg.voices} name the same voice twice")
    t0 = time.perf_counter()
    items = plan(choose_sentences(gcfg, seed), list(by_speaker), gcfg)
    build = final.with_name(final.name + ".partial")
    if build.exists():
        shutil.rmtree(build)  # a killed run's leftovers
    for spk in by_speaker:
        (build / "wavs" / spk).mkdir(parents=True)
    durations = _synthesize_all([(it, by_speaker[it.speaker]) for it in items], build, sample_rate, workers)
    seconds = time.perf_counter() - t0
    with open(build / "metadata.csv", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("id|speaker|split|text\n")
        for it in items:
            fh.write(f"{it.utt_id}|{it.speaker}|{it.split}|{it.text}\n")
    info = {
        "settings": gcfg.model_dump(mode="json"), "seed": seed, "sample_rate": sample_rate,
        "grammar_version": GRAMMAR_VERSION, "generator_version": GENERATOR_VERSION,
        "espeak_version": version, "utterances": len(items), "audio_minutes": round(sum(durations) / 60, 2),
        "synthesis_sec": round(seconds, 2), "workers": workers,
        "license": "CC0-1.0 (sentences from harmonica/data/sentence_grammar; audio by espeak-ng)",
    }
    (build / "generator.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    (build / "README.md").write_text(
        "# demo_generated corpus\n\nGenerated by harmonica at preprocess (harmonica/data/generated.py): "
        f"{len(items)} utterances, {info['audio_minutes']} min, {len(voices)} espeak-ng {version} voices.\n"
        "License: CC0 1.0 (sentences written by harmonica's grammar, see "
        "harmonica/data/sentence_grammar/README.md; audio synthesised by espeak-ng).\n",
        encoding="utf-8")
    (build / COMPLETE).write_text(key + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    build.rename(final)
    log.info("demo_generated: %d utterances (%.1f min) synthesised in %.1f s with %d workers -> %s",
             len(items), sum(durations) / 60, seconds, workers, final)
    return final
