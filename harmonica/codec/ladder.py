"""The codec ladder: what the first k stages of the codec carry, measured as intelligibility.

For a fixed slice of held-out utterances (the first `n` eval-split ids of a token cache, else val), the
cached codes of stages 0..k-1 are decoded for every k = 1..n_q and transcribed by the evaluation ASR;
WER (corpus-level, as `eval/wer`) and CER (mean, as `eval/cer`) per k show how much speech the AR's
target (k = 1) and each NAR stage add, next to the same figures on the recordings themselves and on
the codec without its quantizer (`unquantized`: the recording's own latent through the codec's
decoder), which splits what resynthesis loses into the vocoder's share and the quantizer's. A slice of
a few utterances is noisy, so each level's WER carries a 95% bootstrap interval over the slice's
utterances (`.../wer_ci_low|_ci_high`, the same resamples for every level, as evaluate does). Pure
computation: the preprocess stage logs the result (`codec/ladder/k{k}/wer` ...).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonica.codec import load_codec
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.audio import load_audio, normalize, trim_silence
from harmonica.data.cache import TokenCache
from harmonica.evaluation.asr import get_asr
from harmonica.evaluation.bootstrap import percentile_interval, resample_indices, resampled_ratios, word_counts
from harmonica.evaluation.suite import _split_items as split_items
from harmonica.evaluation.text import cer, corpus_wer, wer

log = logging.getLogger(__name__)

LADDER_FILE = "codec_ladder.json"
GROUND_TRUTH = "ground_truth"
UNQUANTIZED = "unquantized"
LADDER_VERSION = 2  # 2: + the unquantized level; a stored ladder of another version is measured again


@dataclass
class Ladder:
    metrics: dict[str, float]  # codec/ladder/{k<k>|ground_truth|unquantized}/{wer,cer,wer_ci_*}, .../time_sec
    rows: list[dict[str, Any]]  # one per (utterance, level): id, level, text, hypothesis, wer, cer
    settings: dict[str, Any]

    def table(self) -> dict[str, list[Any]]:
        keys = ("level", "id", "text", "hypothesis", "cer")
        return {k: [r[k] for r in self.rows] for k in keys}

    def levels(self) -> list[str]:
        return [GROUND_TRUTH, UNQUANTIZED] + [f"k{k}" for k in range(1, self.settings["n_q"] + 1)]

    def wer_cell(self, level: str) -> str:
        """'0.546 [0.47, 0.62]' (the interval when there is one)."""
        m, key = self.metrics, f"codec/ladder/{level}/wer"
        lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
        bounds = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
        return f"{m[key]:.3f}{bounds}"

    def summary(self) -> str:
        cells = [f"{lv} {self.wer_cell(lv)}" for lv in self.levels()]
        return "codec ladder WER [95% CI]: " + ", ".join(cells)


def ladder_intervals(rows: list[dict[str, Any]], levels: list[str], samples: int, seed: int) -> dict[str, float]:
    """`codec/ladder/<level>/wer_ci_low|_ci_high`: percentile intervals of corpus WER over resamples of
    the slice's utterances, the same resamples for every level (empty with no resamples; a level that
    lacks an utterance of the slice gets none)."""
    ids = list(dict.fromkeys(r["id"] for r in rows))
    idx = resample_indices(len(ids), samples, seed)  # [samples, n]
    out: dict[str, float] = {}
    if idx.size == 0:
        return out
    for level in levels:
        by_id = {r["id"]: r for r in rows if r["level"] == level}
        if set(by_id) != set(ids):
            continue
        counts = np.array([word_counts(by_id[u]["text"], by_id[u]["hypothesis"],
                                       wer(by_id[u]["text"], by_id[u]["hypothesis"])) for u in ids])  # [n, 2]
        lo, hi = percentile_interval(resampled_ratios(counts[:, 0], counts[:, 1], idx))
        out[f"codec/ladder/{level}/wer_ci_low"] = lo
        out[f"codec/ladder/{level}/wer_ci_high"] = hi
    return out


def ladder_slice(cache: TokenCache, n: int) -> list[tuple[dict[str, Any], np.ndarray, str]]:
    """(index row, codes [n_q, T], audio path) of the first n ids of the eval split (else val)."""
    split = "eval" if "eval" in cache.splits() else "val"
    items = [(row, codes.numpy(), path) for row, codes, path in split_items(cache, split)]
    return sorted(items, key=lambda it: it[0]["id"])[:n]


def _settings(cfg: HarmonicaConfig, cache: TokenCache, n: int) -> dict[str, Any]:
    smoothing = cfg.eval.decode.latent_smoothing
    return {"utterances": n, "asr": cfg.eval.asr.model_dump(mode="json"), "cache": cache.fingerprint,
            "n_q": int(cache.contract["n_q"]), "version": LADDER_VERSION,
            # only when on, so ladders stored without it stay valid
            **({"latent_smoothing": list(smoothing)} if len(smoothing) > 1 else {})}


def _score(level: str, items: list[tuple[dict[str, Any], np.ndarray, str]], wavs: list[np.ndarray], sr: int,
           asr: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = [row["text"] for row, _, _ in items]
    hyps = asr.transcribe_many(wavs, sr)
    rows = [{"level": level, "id": row["id"], "text": text, "hypothesis": hyp, "cer": cer(text, hyp)}
            for (row, _, _), text, hyp in zip(items, texts, hyps, strict=True)]
    metrics = {f"codec/ladder/{level}/wer": corpus_wer(texts, hyps),
               f"codec/ladder/{level}/cer": statistics.fmean(r["cer"] for r in rows)}
    return metrics, rows


def _read_stored(path: Path) -> dict[str, Any] | None:
    """The stored ladder's payload; None when there is none or it cannot be read (measured again)."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("stored codec ladder %s is unreadable (%s); measuring it again", path, e)
        return None
    return payload if isinstance(payload, dict) else None


def run_ladder(cfg: HarmonicaConfig, cache: TokenCache, n: int) -> Ladder | None:
    """The ladder on `n` utterances (None when the cache has no eval/val utterance). Reuses the result
    stored in the cache directory when it was made with the same slice size and ASR."""
    settings = _settings(cfg, cache, n)
    stored = cache.directory / LADDER_FILE
    payload = _read_stored(stored)
    if payload is not None and payload.get("settings") == settings:
        ladder = Ladder(payload["metrics"], payload["rows"], settings)
        ladder.metrics.update(_intervals(cfg, ladder))  # from the stored rows: older ladders gain them too
        return ladder
    items = ladder_slice(cache, n)
    if not items:
        return None
    start = time.perf_counter()
    codec = load_codec(cfg.codec, cache.codec_dir)
    sr = codec.sample_rate
    asr = get_asr(cfg.eval.asr)
    truth = []
    for _, _, path in items:  # the recording as the codec saw it: trimmed and normalised
        wav = load_audio(path, sr)
        if cfg.data.trim_silence:
            wav = trim_silence(wav, sr, cfg.data.trim_db)
        truth.append(normalize(wav, cfg.data.normalize, cfg.data.normalize_level_db))
    metrics, rows = _score(GROUND_TRUTH, items, truth, sr, asr)
    # decoded as evaluate decodes (eval.decode.latent_smoothing), so the ladder and the baselines agree
    smoothing = cfg.eval.decode.latent_smoothing
    m, r = _score(UNQUANTIZED, items, [codec.resynthesize_unquantized(w, smoothing) for w in truth], sr, asr)
    metrics.update(m)
    rows += r
    for k in range(1, codec.n_q + 1):
        wavs = [codec.decode_as(codes[:k], None, smoothing) for _, codes, _ in items]
        m, r = _score(f"k{k}", items, wavs, sr, asr)
        metrics.update(m)
        rows += r
    metrics["codec/ladder/time_sec"] = time.perf_counter() - start
    ladder = Ladder(metrics, rows, settings)
    ladder.metrics.update(_intervals(cfg, ladder))
    tmp = stored.with_name(stored.name + ".tmp")  # a kill mid-write must not leave half a ladder
    tmp.write_text(json.dumps({"settings": settings, "metrics": metrics, "rows": rows}, indent=1), encoding="utf-8")
    os.replace(tmp, stored)
    log.info("%s (%d utterances, %.0f s)", ladder.summary(), len(items), metrics["codec/ladder/time_sec"])
    return ladder


def _intervals(cfg: HarmonicaConfig, ladder: Ladder) -> dict[str, float]:
    return ladder_intervals(ladder.rows, ladder.levels(), cfg.eval.bootstrap_samples, cfg.eval.seed)


def write_table(ladder: Ladder, path: Path) -> Path:
    """A small markdown table: one line per level with its WER and CER."""
    lines = ["| level | WER [95% CI] | CER |", "|---|---|---|"]
    for level in ladder.levels():
        lines.append(f"| {level} | {ladder.wer_cell(level)} | {ladder.metrics[f'codec/ladder/{level}/cer']:.3f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
