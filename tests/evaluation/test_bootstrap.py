"""Bootstrap intervals and the paired bootstrap on synthetic per-utterance tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harmonica.evaluation.bootstrap import (
    interval_metrics,
    paired_difference,
    ratio_terms,
    resample_indices,
    resampled_ratios,
)
from harmonica.evaluation.failures import FAILURE_KINDS
from harmonica.evaluation.text import corpus_wer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def row(i: int, wer: float, sim: float = 0.8, fail: bool = False, source: str = "model", n_words: int = 5) -> dict:
    text = " ".join(WORDS[:n_words])
    wrong = round(wer * n_words)
    hyp = " ".join(["x"] * wrong + WORDS[wrong:n_words])  # `wrong` substitutions
    return {"id": f"u{i:03d}", "text": text, f"{source}_hypothesis": hyp, f"{source}_wer": wrong / n_words,
            f"{source}_cer": wer / 2, f"{source}_sim": sim,
            **{f"{source}_fail_{k}": (fail and k == "silence") for k in FAILURE_KINDS}}


def table(wers: list[float], **kw) -> list[dict]:
    return [row(i, w, **kw) for i, w in enumerate(wers)]


def test_resamples_are_deterministic_and_shaped():
    a, b = resample_indices(7, 50, seed=3), resample_indices(7, 50, seed=3)
    assert a.shape == (50, 7) and np.array_equal(a, b) and a.min() >= 0 and a.max() < 7
    assert not np.array_equal(a, resample_indices(7, 50, seed=4))
    assert resample_indices(7, 0, seed=3).size == 0


def test_wer_terms_reproduce_corpus_wer():
    rows = [row(0, 0.2, n_words=5), row(1, 1.0, n_words=2), row(2, 0.0, n_words=10)]
    errors, words = ratio_terms(rows, "model")["wer"]
    full = resampled_ratios(errors, words, np.arange(3)[None])[0]
    assert full == pytest.approx(corpus_wer([r["text"] for r in rows], [r["model_hypothesis"] for r in rows]))


def test_intervals_bracket_the_estimate_and_narrow_with_more_utterances():
    rng = np.random.default_rng(0)
    small = table(list(rng.choice([0.0, 0.2, 0.4, 0.6], size=20)))
    large = table(list(rng.choice([0.0, 0.2, 0.4, 0.6], size=400)))
    widths = []
    for rows in (small, large):
        m = interval_metrics(rows, "model", "eval", resample_indices(len(rows), 500, seed=0))
        errors, words = ratio_terms(rows, "model")["wer"]
        point = errors.sum() / words.sum()
        assert m["eval/wer_ci_low"] <= point <= m["eval/wer_ci_high"]
        widths.append(m["eval/wer_ci_high"] - m["eval/wer_ci_low"])
        assert {"eval/sim_ci_low", "eval/cer_ci_high", "eval/fail/any_ci_low", "eval/fail/silence_ci_high"} <= set(m)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 20x the utterances, ~4.5x narrower


def test_sim_interval_ignores_utterances_without_an_embedding():
    rows = [row(0, 0.0, sim=0.9), row(1, 0.0, sim=math.nan), row(2, 0.0, sim=0.9)]
    m = interval_metrics(rows, "model", "eval", resample_indices(3, 200, seed=0))
    assert m["eval/sim_ci_low"] == pytest.approx(0.9) and m["eval/sim_ci_high"] == pytest.approx(0.9)


def test_failure_rate_interval():
    rows = [row(i, 0.0, fail=i < 10) for i in range(40)]  # 25% silent
    m = interval_metrics(rows, "model", "eval", resample_indices(40, 1000, seed=0))
    assert m["eval/fail/any_ci_low"] < 0.25 < m["eval/fail/any_ci_high"]
    assert m["eval/fail/any_ci_low"] > 0.05 and m["eval/fail/any_ci_high"] < 0.5


def test_no_resamples_no_intervals():
    assert interval_metrics(table([0.2, 0.4]), "model", "eval", resample_indices(2, 0, 0)) == {}


# ------------------------------------------------------------------------------------ paired bootstrap


def test_paired_clear_win_is_significant():
    rng = np.random.default_rng(1)
    champion = table(list(rng.choice([0.4, 0.6, 0.8], size=40)))
    candidate = [{**r, "model_wer": max(0.0, r["model_wer"] - 0.4),
                  "model_hypothesis": row(0, max(0.0, r["model_wer"] - 0.4))["model_hypothesis"]} for r in champion]
    d = paired_difference(candidate, champion, "wer", mode="min", level=0.95, samples=1000, seed=0)
    assert d is not None and d.utterances == 40 and d.significant
    assert d.difference == pytest.approx(-0.4) and d.high < 0 and d.one_sided < 0
    assert "[" in d.describe() and "40 shared utterances" in d.describe()


def test_paired_difference_within_noise_is_not_significant():
    rng = np.random.default_rng(2)
    champion = table(list(rng.choice([0.0, 0.2, 0.4, 0.6, 0.8], size=40)))
    # the same quality: a different draw from the same distribution, slightly better on average
    candidate = table(list(rng.choice([0.0, 0.2, 0.4, 0.6, 0.8], size=40)))
    d = paired_difference(candidate, champion, "wer", mode="min", level=0.95, samples=1000, seed=0)
    assert d is not None and not d.significant and d.low < 0 < d.high


def test_paired_uses_only_shared_utterances_and_mode_max():
    champion = [row(i, 0.0, sim=0.70) for i in range(30)]
    candidate = [row(i, 0.0, sim=0.80 + 0.01 * (i % 3)) for i in range(10, 40)]  # 20 shared
    d = paired_difference(candidate, champion, "sim", mode="max", level=0.95, samples=500, seed=0)
    assert d is not None and d.utterances == 20 and d.significant and d.one_sided > 0
    assert paired_difference(candidate, champion, "sim", mode="min", level=0.95, samples=500, seed=0).significant is False
    assert paired_difference(candidate, [row(99, 0.0)], "sim", mode="max", level=0.95, samples=500, seed=0) is None
    assert paired_difference(candidate, champion, "prosody", mode="max", level=0.95, samples=500, seed=0) is None
    with pytest.raises(ValueError):
        paired_difference(candidate, champion, "sim", mode="median", level=0.95, samples=500, seed=0)


def test_several_seeds_per_utterance_pool_by_utterance():
    from harmonica.evaluation.bootstrap import by_utterance

    rng = np.random.default_rng(1)
    wers = list(rng.choice([0.0, 0.2, 0.4, 0.6, 0.8], size=30))
    one = table(wers)
    # two decodings per utterance, the second one worse: rows utterance-major, ids repeated
    two = [r for w, a, b in zip(wers, one, table([min(1.0, w + 0.2) for w in wers])) for r in (a, b)]
    errors, words = by_utterance(two, "model")["wer"]
    assert errors.shape == (30,) and np.allclose(words, 10.0)  # each utterance: 2 decodings x 5 words
    idx = resample_indices(30, 500, seed=0)  # over utterances, each taken with all its decodings
    m = interval_metrics(two, "model", "eval", idx)
    point = errors.sum() / words.sum()
    assert m["eval/wer_ci_low"] <= point <= m["eval/wer_ci_high"]
    assert point == pytest.approx(corpus_wer([r["text"] for r in two], [r["model_hypothesis"] for r in two]))
    # paired by utterance id: a two-seed table against its own first seed differs by the second seed's excess
    diff = paired_difference(two, one, "wer", mode="min", level=0.95, samples=500, seed=0)
    assert diff.utterances == 30 and diff.difference > 0
    same = paired_difference(two, two, "wer", mode="min", level=0.95, samples=200, seed=0)
    assert same.difference == 0 and not same.significant


def test_utterance_seeds_are_stable_distinct_and_independent_of_position():
    from harmonica.evaluation.seeds import utterance_seed

    assert utterance_seed(0, "u001") == utterance_seed(0, "u001")  # no salted hash: any process agrees
    assert utterance_seed(0, "u001") == 2797438068803152058  # pinned: changing it reseeds every verdict
    seeds = {utterance_seed(s, u, k) for s in (0, 1) for u in ("u001", "u002") for k in (0, 1)}
    assert len(seeds) == 8 and all(0 <= x < 2**63 for x in seeds)
