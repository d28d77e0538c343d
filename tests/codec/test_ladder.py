"""The codec ladder's intervals: pure computation over its per-utterance rows."""

from __future__ import annotations

from harmonica.codec.ladder import Ladder, ladder_intervals
from harmonica.evaluation.text import corpus_wer

TEXTS = ["the cat sat on the mat", "a dog ran home", "birds sing at dawn", "it rained all day",
         "she reads a book", "we walk to school"]


def _rows(level: str, hyps: list[str]) -> list[dict]:
    return [{"level": level, "id": f"u{i}", "text": t, "hypothesis": h, "cer": 0.0}
            for i, (t, h) in enumerate(zip(TEXTS, hyps, strict=True))]


def test_interval_brackets_the_corpus_wer_and_is_zero_for_a_perfect_level():
    half = [t if i % 2 else "something else entirely" for i, t in enumerate(TEXTS)]
    rows = _rows("ground_truth", TEXTS) + _rows("k1", half)
    ci = ladder_intervals(rows, ["ground_truth", "k1"], samples=500, seed=0)
    assert ci["codec/ladder/ground_truth/wer_ci_low"] == ci["codec/ladder/ground_truth/wer_ci_high"] == 0.0
    point = corpus_wer(TEXTS, half)
    lo, hi = ci["codec/ladder/k1/wer_ci_low"], ci["codec/ladder/k1/wer_ci_high"]
    assert 0.0 < lo < point < hi  # three of six utterances are wrong: the resamples disagree
    assert ladder_intervals(rows, ["ground_truth", "k1"], samples=500, seed=0) == ci  # seeded


def test_no_resamples_or_a_level_missing_an_utterance_gives_no_interval():
    rows = _rows("ground_truth", TEXTS) + _rows("k1", TEXTS)[:-1]
    assert ladder_intervals(rows, ["ground_truth", "k1"], samples=0, seed=0) == {}
    ci = ladder_intervals(rows, ["ground_truth", "k1"], samples=50, seed=0)
    assert "codec/ladder/ground_truth/wer_ci_low" in ci and "codec/ladder/k1/wer_ci_low" not in ci


def test_summary_shows_the_interval_when_there_is_one():
    metrics = {f"codec/ladder/{lv}/{m}": 0.5 for lv in ("ground_truth", "unquantized", "k1") for m in ("wer", "cer")}
    ladder = Ladder(metrics, [], {"n_q": 1})
    assert ladder.summary().endswith("k1 0.500")
    ladder.metrics.update({"codec/ladder/k1/wer_ci_low": 0.25, "codec/ladder/k1/wer_ci_high": 0.75})
    assert ladder.summary().endswith("k1 0.500 [0.25, 0.75]")
