"""Corpus -> quality filter -> codec (fit, encode) -> token cache. No tracking in here.

Bad inputs never stop the run: each one becomes a row of the quality report with its reason. Only a
corpus that yields no usable training utterance is an error.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmonica.codec import Codec, build_codec, load_codec
from harmonica.config.schema import HarmonicaConfig
from harmonica.data import cache as cache_mod
from harmonica.data import locks
from harmonica.data.audio import AudioError, load_audio, normalize, trim_silence
from harmonica.data.corpora import prepare_corpus
from harmonica.data.manifest import CorpusManifests, Utterance
from harmonica.data.quality import QualityReport, QualityResult, assess
from harmonica.data.text import build_frontend
from harmonica.training.progress import progress_wanted

log = logging.getLogger(__name__)


class PreprocessError(RuntimeError):
    """Nothing usable came out of the corpus; the message says what to check."""

    def __init__(self, message: str, quality_dir: Path | None = None) -> None:
        super().__init__(message)
        self.quality_dir = quality_dir


@dataclass
class PreprocessResult:
    cache: cache_mod.TokenCache
    reused: bool
    counts: dict[str, int]
    quality_dir: Path
    manifests_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def codec_pretrained(self) -> bool:
        return bool(self.cache.meta["codec"].get("codec.pretrained", False))


def load_processed(utt: Utterance, cfg: HarmonicaConfig) -> np.ndarray:
    """The waveform as the codec sees it, before normalisation: mono, resampled, trimmed."""
    wav = load_audio(utt.path, cfg.codec.sample_rate)
    if cfg.data.trim_silence:
        wav = trim_silence(wav, cfg.codec.sample_rate, cfg.data.trim_db)
    return wav


def process_utterance(utt: Utterance, cfg: HarmonicaConfig, codec: Codec) -> dict[str, Any]:
    """One utterance -> {"status": "kept", codes, text_ids, ...} or {"status": "rejected", reasons}."""
    sr = cfg.codec.sample_rate
    try:
        wav = load_processed(utt, cfg)
    except AudioError as exc:
        return {"status": "rejected", "id": utt.id, "speaker": utt.speaker, "reasons": [exc.reason], "detail": str(exc)}
    result = assess(wav, sr, utt.text, cfg.data.quality, cfg.data.min_duration, cfg.data.max_duration)
    out: dict[str, Any] = {"id": utt.id, "speaker": utt.speaker, "metrics": result.metrics}
    if not result.passed:
        return {**out, "status": "rejected", "reasons": result.failed, "detail": ""}
    frames = codec.num_frames(len(wav))
    if frames > cfg.max_audio_frames:
        detail = f"{frames} frames > max_seq_len - 1 = {cfg.max_audio_frames}"
        return {**out, "status": "rejected", "reasons": ["too_long_for_model"], "detail": detail}
    wav = normalize(wav, cfg.data.normalize, cfg.data.normalize_level_db)
    codes = codec.encode(wav)  # [n_q, T]
    text_ids, unknown = build_frontend(cfg.text).encode_counted(utt.text)
    return {
        **out,
        "status": "kept",
        "split": utt.split,
        "text": utt.text,
        "text_ids": text_ids,
        "text_unknown": unknown,
        "codes": codes,
        "duration": len(wav) / sr,
    }


# ------------------------------------------------------------------------ parallel encoding workers

_WORKER: dict[str, Any] = {}


def _init_worker(cfg_json: str, codec_dir: str) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe
    cfg = HarmonicaConfig.model_validate_json(cfg_json)
    _WORKER["cfg"] = cfg
    _WORKER["codec"] = load_codec(cfg.codec, Path(codec_dir))


def _work(utt: Utterance) -> dict[str, Any]:
    return process_utterance(utt, _WORKER["cfg"], _WORKER["codec"])


def _encode_all(
    utts: list[Utterance], cfg: HarmonicaConfig, codec: Codec, codec_dir: Path, workers: int, progress: bool
) -> list[dict[str, Any]]:
    bar = tqdm(total=len(utts), desc="encode", unit="utt", disable=not progress_wanted(progress))
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for utt in utts:
            results.append(process_utterance(utt, cfg, codec))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")  # fork after torch initialised threads can hang
        with futures.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg.model_dump_json(), str(codec_dir))
        ) as pool:
            for res in pool.map(_work, utts, chunksize=max(1, len(utts) // (workers * 8))):
                results.append(res)
                bar.update()
    bar.close()
    return results


def _fit_codec(codec: Codec, train: list[Utterance], cfg: HarmonicaConfig, progress: bool) -> int:
    """Fit data-dependent codec state on a seeded subset of the training split."""
    budget = cfg.codec.kmeans_max_frames
    order = list(train)
    random.Random(cfg.codec.seed).shuffle(order)
    wavs: list[np.ndarray] = []
    frames = 0
    for utt in tqdm(order, desc="fit codec", unit="utt", disable=not progress_wanted(progress)):
        if frames >= budget:
            break
        try:
            wav = load_processed(utt, cfg)
        except AudioError:
            continue  # reported by the encoding pass
        q = assess(wav, cfg.codec.sample_rate, utt.text, cfg.data.quality, cfg.data.min_duration, cfg.data.max_duration)
        if not q.passed:
            continue  # what the quality filter rejects must not shape the codebooks either
        wavs.append(normalize(wav, cfg.data.normalize, cfg.data.normalize_level_db))
        frames += codec.num_frames(len(wav))
    if not wavs:
        raise PreprocessError("no usable (readable) training audio to fit the codec on")
    codec.fit(wavs)
    return len(wavs)


def _contract(cfg: HarmonicaConfig, codec: Codec, codec_fp: str) -> dict[str, Any]:
    frontend = build_frontend(cfg.text)
    return {
        "codec_name": codec.name,
        "codec_fingerprint": codec_fp,
        "n_q": codec.n_q,
        "codebook_size": codec.codebook_size,
        "codebook_sizes": codec.stage_sizes,
        "frame_rate": codec.frame_rate,
        "sample_rate": codec.sample_rate,
        "text_vocab_hash": frontend.vocab_hash(),
        "text_vocab_size": frontend.vocab_size,
        "max_text_len": cfg.text.max_text_len,
        "pad_id": frontend.pad_id,
        "bos_id": frontend.bos_id,
        "eos_id": frontend.eos_id,
        "max_seq_len": min(cfg.model.ar.max_seq_len, cfg.model.nar.max_seq_len),
        "max_audio_frames": cfg.max_audio_frames,
    }


def load_manifests(
    cfg: HarmonicaConfig, corpus_dir: str | Path | None, workdir: Path | None = None, workers: int = 1
) -> CorpusManifests:
    if cfg.data.corpus_format == "demo_generated":  # synthesised (or reused) under the workdir
        if workdir is None:
            raise PreprocessError("the demo_generated corpus is built under a workdir; none was given")
        from harmonica.data.generated import ensure_generated_corpus

        generated = ensure_generated_corpus(cfg.data.generated, cfg.data.split_seed, cfg.codec.sample_rate,
                                            workdir, workers)
        return prepare_corpus("demo", generated, cfg.data)
    return prepare_corpus(cfg.data.corpus_format, corpus_dir or cfg.data.corpus_dir, cfg.data)


def build_token_cache(
    cfg: HarmonicaConfig,
    workdir: Path,
    *,
    corpus_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessResult:
    workers = workers or cfg.data.workers
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifests = load_manifests(cfg, corpus_dir, workdir, workers)
    timings["scan_sec"] = time.perf_counter() - t0
    if not manifests.by_split("train"):
        reasons: dict[str, int] = {}
        for r in manifests.rejected:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        raise PreprocessError(
            f"the {cfg.data.corpus_format} corpus at {corpus_dir or cfg.data.corpus_dir or 'the bundled demo'} "
            f"yields no usable training utterance ({len(manifests.rejected)} rejected: {reasons})"
        )
    settings = cache_mod.cache_settings(cfg)
    digest = cache_mod.corpus_digest(manifests.utterances)
    key = cache_mod.cache_key(settings, digest)
    final = cache_mod.cache_root(workdir) / key

    # one build per cache key at a time: a second process waits, then finds the first one's cache
    with locks.hold(final, f"building the token cache {key}"):
        return _build_locked(cfg, manifests, settings, digest, final, workers, progress, timings)


def _build_locked(
    cfg: HarmonicaConfig,
    manifests: CorpusManifests,
    settings: dict[str, Any],
    digest: str,
    final: Path,
    workers: int,
    progress: bool,
    timings: dict[str, float],
) -> PreprocessResult:
    key = final.name
    if cache_mod.is_complete(final):
        missing = cache_mod.missing_parts(final)
        if missing:
            log.warning("the token cache %s is marked complete but lacks %s: rebuilding it", final, ", ".join(missing))
            (final / cache_mod.COMPLETE_MARKER).unlink()
    if cache_mod.is_complete(final):
        cache = cache_mod.open_cache(final)
        log.info("token cache hit: %s (fingerprint %s)", final, cache.fingerprint)
        return PreprocessResult(
            cache=cache,
            reused=True,
            counts=cache.meta["quality_counts"],
            quality_dir=final / "quality",
            manifests_dir=final / "manifests",
            timings=timings,
        )

    build = cache_mod.fresh_dir(final.with_name(key + ".partial"))
    codec = build_codec(cfg.codec)
    if codec.needs_fit:
        t = time.perf_counter()
        timings["fit_utterances"] = _fit_codec(codec, manifests.by_split("train"), cfg, progress)
        timings["fit_sec"] = time.perf_counter() - t
    codec.save_state(build / "codec")
    codec_fp = codec.fingerprint()

    t = time.perf_counter()
    results = _encode_all(manifests.utterances, cfg, codec, build / "codec", workers, progress)
    timings["encode_sec"] = time.perf_counter() - t

    report = QualityReport()
    report.add_rejections(manifests.rejected)
    kept: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        if res["status"] == "kept":
            report.add_result(res["id"], res["speaker"], QualityResult(res["metrics"], []))
            kept.setdefault(res["split"], []).append(res)
        elif res.get("metrics"):
            report.add_result(res["id"], res["speaker"], QualityResult(res["metrics"], res["reasons"]))
        else:
            report.add_rejection(res["id"], res["reasons"][0], speaker=res["speaker"], detail=res["detail"])
    report.write(build / "quality")
    counts = report.counts()
    if not kept.get("train"):
        raise PreprocessError(
            f"no usable training utterance in the corpus ({counts}); see the quality report at "
            f"{build / 'quality' / 'quality_report.csv'}",
            quality_dir=build / "quality",
        )

    if not kept.get("eval") and (cfg.data.eval_fraction > 0 or cfg.data.eval_speakers):
        had = sum(u.split == "eval" for u in manifests.utterances)
        log.warning(
            "the eval split is empty (%d eval utterances in the corpus, none kept by the quality filter): "
            "`harmonica evaluate` will have nothing to score; raise data.eval_fraction, name "
            "data.eval_speakers or relax data.quality.*", had)
    splits = {name: cache_mod.write_split(build, name, items) for name, items in sorted(kept.items())}
    kept_ids = {r["id"] for items in kept.values() for r in items}
    CorpusManifests(
        utterances=[u for u in manifests.utterances if u.id in kept_ids], rejected=manifests.rejected
    ).write(build / "manifests")
    timings["audio_sec"] = float(sum(s["seconds"] for s in splits.values()))
    meta = {
        "fingerprint": cache_mod.fingerprint(key, codec_fp),
        "key": key,
        "project": cfg.project,
        "settings": settings,
        "corpus_digest": digest,
        "codec": codec.describe(),
        "contract": _contract(cfg, codec, codec_fp),
        "splits": splits,
        "quality_counts": counts,
        "text": {**build_frontend(cfg.text).describe(),
                 "unknown_symbols": sum(r["text_unknown"] for items in kept.values() for r in items)},
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    cache_mod.finalize(build, final, meta)
    return PreprocessResult(
        cache=cache_mod.open_cache(final),
        reused=False,
        counts=counts,
        quality_dir=final / "quality",
        manifests_dir=final / "manifests",
        timings=timings,
    )
