"""The evaluation suite: fixed eval slice -> synthesis -> WER/CER, SIM, failures, prosody, baselines.

Pure in the tracking sense: it returns rows and aggregates; the evaluate stage logs them. The same
scoring runs on three sources per utterance so their gaps are comparable: the model, the codec
resynthesis of the ground-truth tokens, and the ground-truth recording itself -- plus optional
oracle sources (`oracle/<name>/*`) that say which half of the model is broken: the ground-truth
first codebook completed by the model's NAR (a perfect AR), the resynthesis of the first k
codebooks (what the AR's target alone carries). Every aggregate carries a bootstrap interval over
utterances (`<prefix>/<metric>_ci_low|_ci_high`, harmonica.evaluation.bootstrap).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonica.config.schema import EvalConfig
from harmonica.data.audio import load_audio
from harmonica.data.cache import TokenCache
from harmonica.data.manifest import read_manifest
from harmonica.evaluation.asr import get_asr
from harmonica.evaluation.bootstrap import interval_metrics, resample_indices
from harmonica.evaluation.failures import FAILURE_KINDS, detect_failures
from harmonica.evaluation.prosody import prosody_compare
from harmonica.evaluation.seeds import seed_spread_metrics, utterance_seed
from harmonica.evaluation.speaker import build_speaker_encoder, speaker_similarity
from harmonica.evaluation.text import cer, corpus_wer, normalize_text, wer

SOURCES = ("model", "resynthesis", "ground_truth")
PREFIXES = {"model": "eval", "resynthesis": "baseline/resynthesis", "ground_truth": "baseline/ground_truth"}


def source_prefix(source: str) -> str:
    """Metric namespace of a source: eval, baseline/<name>, or oracle/<name> for an oracle source."""
    return PREFIXES.get(source, f"oracle/{source}")


class EvalError(ValueError):
    """An evaluation that cannot run (empty slice, missing prompts); the message names the fix."""


@dataclass
class EvalItem:
    id: str
    speaker: str
    text: str
    audio_path: str  # the ground-truth recording
    codes: torch.Tensor  # [n_q, T] ground-truth tokens
    prompt: torch.Tensor  # [n_q, P] acoustic prompt from the held-out prompt set
    prompt_id: str
    reference_path: str  # another utterance of the same speaker (never the prompt) for SIM


def _split_items(cache: TokenCache, split: str) -> list[tuple[dict[str, Any], torch.Tensor, str]]:
    if split not in cache.splits():
        return []
    tokens = cache.load_split(split)
    paths = {u.id: u.path for u in read_manifest(cache.directory / "manifests" / f"manifest_{split}.jsonl")}
    out = []
    for i in range(len(tokens)):
        _, codes, row = tokens.item(i)
        out.append((row, codes, paths[row["id"]]))
    return out


def build_eval_slice(cache: TokenCache, cfg: EvalConfig, prompt_frames: int) -> list[EvalItem]:
    """Held-out sentences with, per speaker, a held-out prompt and a different reference utterance."""
    rows = _split_items(cache, cfg.split)
    if not rows:
        raise EvalError(
            f"the eval slice '{cfg.split}' of token cache {cache.directory} is empty: preprocess a corpus "
            "with held-out sentences (data.eval_fraction > 0) or set eval.split=val"
        )
    prompts: dict[str, list[tuple[dict[str, Any], torch.Tensor, str]]] = {}
    for row, codes, path in sorted(_split_items(cache, "prompt"), key=lambda r: r[0]["id"]):
        prompts.setdefault(row["speaker"], []).append((row, codes, path))
    items = []
    for row, codes, path in sorted(rows, key=lambda r: r[0]["id"]):
        mine = prompts.get(row["speaker"], [])
        if not mine:
            raise EvalError(f"speaker {row['speaker']} of eval utterance {row['id']} has no prompt-set utterance")
        prompt_row, prompt_codes, _ = mine[0]
        if len(mine) > 1:
            reference = mine[1][2]
        else:  # another held-out sentence of the same speaker, never the prompt itself
            others = [p for r, _, p in rows if r["speaker"] == row["speaker"] and r["id"] != row["id"]]
            if not others:
                raise EvalError(f"speaker {row['speaker']} has no second utterance to measure similarity against")
            reference = others[0]
        items.append(EvalItem(row["id"], row["speaker"], row["text"], path, codes,
                              prompt_codes[:, :prompt_frames], prompt_row["id"], reference))
    return items[: cfg.max_utterances] if cfg.max_utterances else items


@dataclass
class Scored:
    hypothesis: str
    wer: float
    cer: float
    sim: float
    failures: dict[str, bool]
    extra: dict[str, float] = field(default_factory=dict)


class Scorer:
    """ASR, speaker encoder and detectors, loaded once per process."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.asr = get_asr(cfg.asr)
        self.speaker = build_speaker_encoder(cfg.speaker)
        self.seconds: dict[str, float] = {}  # per scorer: asr, speaker, prosody, failure_detectors

    @property
    def model_seconds(self) -> float:
        """Time inside ASR and speaker-encoder calls."""
        return self.seconds.get("asr", 0.0) + self.seconds.get("speaker", 0.0)

    def _took(self, part: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - started
        return now

    def score(self, wav: np.ndarray, sr: int, text: str, reference: np.ndarray, gt: np.ndarray | None) -> Scored:
        t = time.perf_counter()
        failures = detect_failures(wav, sr, text)
        t = self._took("failure_detectors", t)
        if wav.size < sr // 10:
            return Scored("", 1.0, 1.0, float("nan"), {**failures.flags, "too_short": True})
        hyp = self.asr.transcribe(wav, sr)
        t = self._took("asr", t)
        try:
            sim = speaker_similarity(self.speaker, wav, reference, sr)
        except ValueError:  # too short / silent for an embedding: counted by the failure flags
            sim = float("nan")
        t = self._took("speaker", t)
        extra = {f"prosody_{k}": v for k, v in prosody_compare(wav, gt, sr).items()} if gt is not None else {}
        self._took("prosody", t)
        return Scored(hyp, wer(text, hyp), cer(text, hyp), sim, dict(failures.flags), extra)


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    audio_dir: Path
    model_seconds: float
    wall_seconds: float
    # where the wall time went: the scorer's parts (asr, speaker, prosody, failure_detectors); the
    # evaluate stage adds the synthesizer's (ar, nar, codec_decode, codec_decode_baseline, ...)
    seconds: dict[str, float] = field(default_factory=dict)


def _aggregate(rows: list[dict[str, Any]], source: str, prefix: str) -> dict[str, float]:
    texts = [r["text"] for r in rows]
    hyps = [r[f"{source}_hypothesis"] for r in rows]
    sims = [r[f"{source}_sim"] for r in rows if np.isfinite(r[f"{source}_sim"])]
    out = {
        f"{prefix}/wer": corpus_wer(texts, hyps),
        f"{prefix}/wer_mean": statistics.fmean(r[f"{source}_wer"] for r in rows),
        f"{prefix}/cer": statistics.fmean(r[f"{source}_cer"] for r in rows),
        f"{prefix}/sim": statistics.fmean(sims) if sims else float("nan"),
    }
    any_fail = [any(r[f"{source}_fail_{k}"] for k in FAILURE_KINDS) for r in rows]
    for kind in FAILURE_KINDS:
        out[f"{prefix}/fail/{kind}"] = statistics.fmean(float(r[f"{source}_fail_{kind}"]) for r in rows)
    out[f"{prefix}/fail/any"] = statistics.fmean(float(x) for x in any_fail)
    return out


def run_suite(
    items: list[EvalItem],
    synthesize: Callable[[EvalItem, int], tuple[np.ndarray, dict[str, Any]]],
    decode_codes: Callable[[np.ndarray], np.ndarray],
    scorer: Scorer,
    sample_rate: int,
    audio_dir: Path,
    write_wav: Callable[[Path, np.ndarray, int], Any],
    progress: Callable[[list[EvalItem]], Any] = lambda xs: xs,
    oracles: Mapping[str, Callable[[EvalItem], np.ndarray]] | None = None,
    bootstrap_samples: int = 0,
    seed: int = 0,
    num_seeds: int = 1,
) -> EvalResult:
    """Score the model, both baselines and the oracle sources on every item; write the model's wavs
    to audio_dir. oracles: source name (row keys `<name>_wer`..., metrics `oracle/<name>/...`) ->
    the audio of that source for an item. synthesize(item, seed): the model decodes each item
    num_seeds times, with seeds from (seed, item id, index) -- one row per decoding, utterance-major;
    intervals resample utterances, each with all its decodings (over utterances and seeds)."""
    oracles = dict(oracles or {})
    clash = set(oracles) & set(SOURCES)
    if clash:
        raise ValueError(f"oracle source names {sorted(clash)} collide with {SOURCES}")
    start = time.perf_counter()
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in progress(items):
        gt = load_audio(item.audio_path, sample_rate)
        reference = load_audio(item.reference_path, sample_rate)
        # the baselines and oracles do not depend on the model's seed: scored once per utterance
        fixed = {"resynthesis": decode_codes(item.codes.numpy()), "ground_truth": gt,
                 **{name: make(item) for name, make in oracles.items()}}
        fixed_scores = {name: scorer.score(audio, sample_rate, item.text, reference, None)
                        for name, audio in fixed.items()}
        for index in range(num_seeds):
            seed_value = utterance_seed(seed, item.id, index)
            wav, info = synthesize(item, seed_value)
            name = item.id if index == 0 else f"{item.id}_s{index}"
            if wav.size:
                write_wav(audio_dir / f"{name}.wav", wav, sample_rate)
            row: dict[str, Any] = {"id": item.id, "speaker": item.speaker, "text": item.text,
                                   "normalized_text": normalize_text(item.text), "prompt_id": item.prompt_id,
                                   "seed_index": index, "seed": str(seed_value),
                                   "audio": f"audio/{name}.wav" if wav.size else ""}
            scores = {"model": scorer.score(wav, sample_rate, item.text, reference, gt), **fixed_scores}
            for source, s in scores.items():
                row.update({f"{source}_hypothesis": s.hypothesis, f"{source}_wer": s.wer, f"{source}_cer": s.cer,
                            f"{source}_sim": s.sim})
                row.update({f"{source}_fail_{k}": bool(s.failures.get(k, False)) for k in FAILURE_KINDS})
                if source == "model":
                    row.update(s.extra)
            row.update({k: v for k, v in info.items() if k != "codes"})
            rows.append(row)
    idx = resample_indices(len(items), bootstrap_samples, seed)  # shared by every source: comparable intervals
    metrics: dict[str, float] = {}
    for source in (*SOURCES, *oracles):
        metrics.update(_aggregate(rows, source, source_prefix(source)))
        metrics.update(interval_metrics(rows, source, source_prefix(source), idx))
    for key in ("prosody_duration_ratio", "prosody_f0_mean_ratio", "prosody_f0_std_ratio"):
        vals = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if vals:
            metrics[f"eval/{key.replace('prosody_', 'prosody/')}"] = statistics.median(vals)
    metrics["eval/utterances"] = float(len(items))
    metrics["eval/num_seeds"] = float(num_seeds)
    metrics.update(seed_spread_metrics(rows))  # eval/seeds/*: the spread of the per-seed scores
    metrics["eval/bootstrap_samples"] = float(idx.shape[0])
    metrics["eval/loop_cut_rate"] = statistics.fmean(r.get("ar_loop_cut", 0.0) for r in rows)
    metrics["eval/length_bound_rate"] = statistics.fmean(r.get("ar_hit_length_bound", 0.0) for r in rows)
    logps = [float(r["ar_logprob"]) for r in rows if "ar_logprob" in r]  # how sure the AR was of what it said
    if logps:
        metrics["eval/ar_logprob_mean"] = statistics.fmean(logps)
    gains = [float(r.get("gain_db", 0.0)) for r in rows]  # the peak ceiling's attenuation, <= 0 dB
    metrics["eval/peak_gain_db_mean"] = statistics.fmean(gains)
    metrics["eval/peak_limited_rate"] = statistics.fmean(float(g < 0) for g in gains)
    return EvalResult(rows, metrics, audio_dir, scorer.model_seconds, time.perf_counter() - start,
                      dict(scorer.seconds))
