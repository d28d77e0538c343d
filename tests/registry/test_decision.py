"""The champion rule by paired bootstrap: synthetic per-utterance tables, then through promote."""

from __future__ import annotations

import numpy as np
import pytest

from harmonica.config.schema import GatesConfig
from harmonica.evaluation.failures import FAILURE_KINDS
from harmonica.registry.decision import champion_verdict, primary_suffix
from harmonica.reports.common import table_rows
from harmonica.registry.promote import promote
from tests.registry.fakes import with_metrics

WORDS = "one two three four five six seven eight nine ten".split()
GATES = GatesConfig()  # champion_confidence 0.95, eval/wer, min


def utterances(wers: list[float], sim: float = 0.8) -> list[dict]:
    rows = []
    for i, w in enumerate(wers):
        wrong = round(w * 10)
        rows.append({"id": f"u{i:03d}", "text": " ".join(WORDS), "model_hypothesis": " ".join(["x"] * wrong + WORDS[wrong:]),
                     "model_wer": wrong / 10, "model_cer": w / 2, "model_sim": sim,
                     **{f"model_fail_{k}": False for k in FAILURE_KINDS}})
    return rows


def corpus(rows: list[dict]) -> float:
    return float(np.mean([r["model_wer"] for r in rows]))  # every utterance has 10 words


# per-utterance changes of a candidate as good as the champion: one or two words better or worse on
# each sentence, 0.02 better on average (std 0.15 -> a standard error of ~0.024 over 40 sentences)
NOISE = np.tile([0.2, -0.2, 0.1, -0.1, -0.1], 8)


@pytest.fixture
def champion_rows() -> list[dict]:
    return utterances(list(np.random.default_rng(0).choice([0.3, 0.4, 0.5, 0.6, 0.7], size=40)))


def test_clear_win_promotes(champion_rows):
    candidate = utterances([max(0.0, r["model_wer"] - 0.3) for r in champion_rows])
    move, reason = champion_verdict(corpus(candidate), corpus(champion_rows), "1", GATES, candidate, champion_rows,
                                    samples=1000, seed=0)
    assert move and "significantly better" in reason and "not significantly" not in reason
    assert "40 shared utterances" in reason and "95% interval [" in reason


def test_within_noise_does_not_promote(champion_rows):
    # better on the point estimate (by one word on a few sentences) but not beyond resampling noise
    candidate = utterances([r["model_wer"] + d for r, d in zip(champion_rows, NOISE, strict=True)])
    cand, champ = corpus(candidate), corpus(champion_rows)
    assert cand < champ  # a point-estimate rule would have crowned it
    move, reason = champion_verdict(cand, champ, "1", GATES, candidate, champion_rows, samples=1000, seed=0)
    assert not move and "not significantly better" in reason and "interval [-" in reason
    point = GatesConfig(champion_confidence=0)
    assert champion_verdict(cand, champ, "1", point, candidate, champion_rows, samples=1000, seed=0)[0]


def test_no_evidence_keeps_the_champion(champion_rows):
    better = utterances([0.0] * 40)
    for cand_rows, champ_rows, why in ((None, champion_rows, "no readable per-utterance table"),
                                       (better, None, "champion's evaluate run has no readable"),
                                       ([{**r, "id": "other-" + r["id"]} for r in better], champion_rows,
                                        "share no utterance")):
        move, reason = champion_verdict(0.0, 0.5, "3", GATES, cand_rows, champ_rows, samples=500, seed=0)
        assert not move and why in reason and "champion v3 stays" in reason
    move, reason = champion_verdict(0.0, 0.5, "3", GATES, better, champion_rows, samples=0, seed=0)
    assert not move and "bootstrap_samples = 0" in reason
    odd = GatesConfig(primary_metric="eval/prosody/duration_ratio")
    assert not champion_verdict(0.0, 0.5, "3", odd, better, champion_rows, samples=500, seed=0)[0]


def test_primary_suffix_and_table_rows():
    assert [primary_suffix(m) for m in ("eval/wer", "eval/sim", "eval/fail/any", "eval/utterances", "val/loss")] == \
        ["wer", "sim", "fail/any", None, None]
    assert table_rows({"columns": ["id", "model_wer"], "data": [["a", 0.1]]}) == [{"id": "a", "model_wer": 0.1}]
    assert table_rows({"nope": 1}) == [] and table_rows(None) == []


@pytest.mark.slow
def test_promote_moves_the_champion_only_on_a_significant_win(store, ckpts, champion_rows):
    cfg = store.cfg.model_copy(deep=True)
    cfg.gates.champion_confidence = 0.95
    cfg.eval.bootstrap_samples = 500
    cfg.gates.max_wer.threshold = 1.0  # the synthetic champion's WER is ~0.5

    def candidate(rows: list[dict]) -> str:
        return store.candidate(ckpts, metrics=with_metrics(eval__wer=corpus(rows)), table=rows)

    first = promote(candidate(champion_rows), tracking_uri=store.tracking_uri, workdir=store.workdir, cfg=cfg,
                    smoke_test=False)
    assert first.champion_moved  # no champion yet: the gates decide
    noisy = utterances([r["model_wer"] + d for r, d in zip(champion_rows, NOISE, strict=True)])
    assert corpus(noisy) < corpus(champion_rows)
    d = promote(candidate(noisy), tracking_uri=store.tracking_uri, workdir=store.workdir, cfg=cfg, smoke_test=False)
    assert not d.champion_moved and d.decision == "candidate" and "not significantly better" in d.text()
    clear = utterances([max(0.0, r["model_wer"] - 0.3) for r in champion_rows])
    d = promote(candidate(clear), tracking_uri=store.tracking_uri, workdir=store.workdir, cfg=cfg, smoke_test=False)
    assert d.champion_moved and d.previous_champion == "1" and "significantly better" in d.text()
