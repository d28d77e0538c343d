"""Bootstrap intervals over utterances, pure numpy.

Every headline number of an evaluation is a ratio of sums over utterances: corpus WER = word errors
/ reference words, a mean (CER, a failure rate) = values / count, mean SIM = finite values / finite
count. So one routine serves them all: resample utterances with replacement (the same resamples for
every source of one evaluation, so their intervals are comparable), recompute the ratio, take
percentiles. A paired bootstrap (two systems scored on the same utterances) resamples the
utterances once and reads both systems on each resample, so the per-utterance difficulty cancels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonica.evaluation.failures import FAILURE_KINDS
from harmonica.evaluation.text import normalize_text

LEVEL = 0.95


def resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n] utterance indices drawn with replacement; deterministic for (n, samples, seed)."""
    if n <= 0 or samples <= 0:
        return np.zeros((0, max(n, 0)), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def resampled_ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(num[i]) / sum(den[i]) for every resample row of idx -> [samples] (NaN where den sums to 0)."""
    top = num[idx].sum(axis=1)  # [samples]
    bottom = den[idx].sum(axis=1)  # [samples]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided percentile interval of resampled statistics (NaN, NaN when none is finite)."""
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _num(value: Any) -> float:
    """A table cell as float: None (how logged tables store NaN) -> NaN."""
    return float("nan") if value is None else float(value)


def word_counts(text: str, hypothesis: str, wer: float) -> tuple[float, float]:
    """(word errors, reference words) of one utterance from its WER, as corpus WER counts them."""
    n = len(normalize_text(text).split())
    if n == 0:  # an empty reference: every hypothesis word is an insertion (see corpus_wer)
        return float(len(normalize_text(hypothesis).split())), 0.0
    return float(wer) * n, float(n)


def ratio_terms(rows: Sequence[Mapping[str, Any]], source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric suffix -> (numerators [n], denominators [n]) of `source`'s per-utterance values, for
    wer (corpus), cer, sim (finite values only) and every failure rate."""
    pairs = [word_counts(r["text"], r.get(f"{source}_hypothesis") or "", _num(r.get(f"{source}_wer"))) for r in rows]
    errors = np.array([p[0] for p in pairs], dtype=np.float64)
    words = np.array([p[1] for p in pairs], dtype=np.float64)
    ones = np.ones(len(rows), dtype=np.float64)
    sims = np.array([_num(r.get(f"{source}_sim")) for r in rows], dtype=np.float64)  # None in logged tables
    finite = np.isfinite(sims)
    out = {
        "wer": (errors, words),
        "cer": (np.array([_num(r.get(f"{source}_cer")) for r in rows], dtype=np.float64), ones),
        "sim": (np.where(finite, sims, 0.0), finite.astype(np.float64)),
    }
    flags = {k: np.array([float(bool(r.get(f"{source}_fail_{k}", False))) for r in rows]) for k in FAILURE_KINDS}
    for kind, values in flags.items():
        out[f"fail/{kind}"] = (values, ones)
    out["fail/any"] = (np.clip(sum(flags.values(), np.zeros(len(rows))), 0, 1), ones)
    return out


def by_utterance(rows: Sequence[Mapping[str, Any]], source: str,
                 ids: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ratio_terms summed over the rows of each utterance id (several decoding seeds) -> [n ids], in
    the order of `ids` (default: first appearance), so a resample of utterances takes each with all
    its decodings: intervals over utterances and seeds, pairs matched by utterance."""
    order = list(dict.fromkeys(r["id"] for r in rows)) if ids is None else list(ids)
    position = {u: i for i, u in enumerate(order)}
    group = np.array([position.get(r["id"], -1) for r in rows], dtype=np.int64)  # [rows]
    keep = group >= 0
    out = {}
    for suffix, (num, den) in ratio_terms([r for r, k in zip(rows, keep) if k], source).items():
        out[suffix] = (np.bincount(group[keep], weights=num, minlength=len(order)),
                       np.bincount(group[keep], weights=den, minlength=len(order)))
    return out


def interval_metrics(rows: Sequence[Mapping[str, Any]], source: str, prefix: str, idx: np.ndarray,
                     level: float = LEVEL) -> dict[str, float]:
    """`<prefix>/<metric>_ci_low` / `_ci_high` for wer, cer, sim and the failure rates (empty when
    there are no resamples). idx [samples, utterances] indexes the distinct ids of rows."""
    if idx.size == 0 or not rows:
        return {}
    out: dict[str, float] = {}
    for suffix, (num, den) in by_utterance(rows, source).items():
        lo, hi = percentile_interval(resampled_ratios(num, den, idx), level)
        out[f"{prefix}/{suffix}_ci_low"] = lo
        out[f"{prefix}/{suffix}_ci_high"] = hi
    return out


@dataclass(frozen=True)
class PairedDifference:
    """candidate - reference on one metric over the utterances both scored."""

    metric: str
    utterances: int
    difference: float  # the point estimate on the shared utterances
    low: float  # two-sided interval at `level`
    high: float
    one_sided: float  # the bound that decides: upper (mode min) / lower (mode max) at `level`
    level: float
    mode: str

    @property
    def significant(self) -> bool:
        """The candidate is better at this confidence: the whole one-sided interval is an improvement."""
        if not np.isfinite(self.one_sided):
            return False
        return self.one_sided < 0 if self.mode == "min" else self.one_sided > 0

    def describe(self) -> str:
        return (f"{self.metric} difference candidate - champion {self.difference:+.4g} over {self.utterances} shared "
                f"utterances, {self.level:.0%} interval [{self.low:+.4g}, {self.high:+.4g}]")


def paired_difference(candidate: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                      suffix: str, *, mode: str, level: float, samples: int, seed: int,
                      source: str = "model", metric: str | None = None) -> PairedDifference | None:
    """Paired bootstrap of candidate - reference on `suffix` (wer, cer, sim, fail/<kind>) over the
    utterance ids both tables hold; None when they share no utterance or the metric has no
    per-utterance form."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be min or max, got {mode!r}")
    shared = sorted({r["id"] for r in candidate} & {r["id"] for r in reference})
    if not shared or samples <= 0:
        return None
    cand_terms = by_utterance(candidate, source, shared)  # every decoding seed of an utterance pooled
    ref_terms = by_utterance(reference, source, shared)
    if suffix not in cand_terms:
        return None
    (cn, cd), (rn, rd) = cand_terms[suffix], ref_terms[suffix]
    idx = resample_indices(len(shared), samples, seed)
    diffs = resampled_ratios(cn, cd, idx) - resampled_ratios(rn, rd, idx)  # [samples]
    full = np.arange(len(shared))[None]  # [1, n]: the point estimate
    point = float(resampled_ratios(cn, cd, full)[0] - resampled_ratios(rn, rd, full)[0])
    low, high = percentile_interval(diffs, level)
    finite = diffs[np.isfinite(diffs)]
    if finite.size == 0:
        one_sided = float("nan")
    else:
        one_sided = float(np.quantile(finite, level if mode == "min" else 1 - level))
    return PairedDifference(metric or suffix, len(shared), point, low, high, one_sided, level, mode)
