"""Decoding seeds and the spread of the model's score over them."""

import pytest

from harmonica.evaluation.seeds import by_seed, describe_by_seed, seed_spread_metrics, utterance_seed


def _row(uid: str, index: int, hyp: str, text: str = "a b c d", cer: float = 0.0) -> dict:
    return {"id": uid, "seed_index": index, "text": text, "model_hypothesis": hyp, "model_cer": cer}


def test_the_seed_is_a_pure_function_of_eval_seed_utterance_and_index():
    assert utterance_seed(0, "u1", 0) == utterance_seed(0, "u1", 0)
    assert len({utterance_seed(0, "u1", 0), utterance_seed(0, "u1", 1), utterance_seed(1, "u1", 0),
                utterance_seed(0, "u2", 0)}) == 4


def test_per_seed_scores_and_their_spread():
    rows = [_row("u1", 0, "a b c d"), _row("u1", 1, "a b x d", cer=0.2),  # seed 1 misses a word
            _row("u2", 0, "a b c d"), _row("u2", 1, "", cer=1.0)]  # and a whole utterance
    per = by_seed(rows)
    assert per[0] == {"wer": 0.0, "cer": 0.0}
    assert per[1]["wer"] == pytest.approx(5 / 8) and per[1]["cer"] == pytest.approx(0.6)
    m = seed_spread_metrics(rows)
    assert (m["eval/seeds/wer_min"], m["eval/seeds/wer_max"]) == (0.0, pytest.approx(5 / 8))
    assert m["eval/seeds/wer_std"] == pytest.approx((5 / 8) / 2 ** 0.5)
    assert set(m) == {f"eval/seeds/{k}_{s}" for k in ("wer", "cer") for s in ("min", "max", "std")}
    assert describe_by_seed(rows).startswith("WER by decoding seed 0.000 / 0.625 (spread 0.625")


def test_one_seed_has_no_spread():
    rows = [_row("u1", 0, "a b"), {"id": "u2", "text": "a", "model_hypothesis": "a", "model_cer": 0.0}]
    assert list(by_seed(rows)) == [0]  # a row without seed_index is seed 0
    assert seed_spread_metrics(rows) == {} and describe_by_seed(rows) is None
