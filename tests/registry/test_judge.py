"""The promotion decision with no store: Evidence built directly, then judge() and champion_rule()."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harmonica.config.schema import GateConfig, GatesConfig
from harmonica.registry.decision import champion_rule, judge, key_for
from harmonica.registry.evidence import ChampionEvidence, Evidence
from harmonica.registry.refusals import Flags
from harmonica.tracking import names
from harmonica.tracking.read import RunRecord
from tests.registry.fakes import GOOD_METRICS, with_metrics

AR_ID, NAR_ID, EVAL_ID = "a" * 32, "b" * 32, "e" * 32
FINGERPRINT = "f" * 16
CLEAN = {names.GIT_COMMIT: "0123456789abcdef", names.GIT_DIRTY: "false", names.SOURCE_HASH: "feedface"}
GATES = GatesConfig(champion_confidence=0)  # absolute thresholds: wer <= 0.5, sim >= 0.5, fail <= 0.2


def record(run_id: str, stage: str, *, status: str = "FINISHED", tags: dict | None = None, params: dict | None = None,
           metrics: dict | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, experiment_id="1", name=stage, status=status, start_time=0, end_time=1,
                     artifact_uri="", tags={names.STAGE: stage, names.PROJECT: "demo", **CLEAN, **(tags or {})},
                     params=params or {}, metrics=metrics or {})


def contract(kind: str) -> dict:
    return {"kind": kind, "codec_fingerprint": FINGERPRINT, "n_q": 4, "max_seq_len": 400}


def training(kind: str, **kw) -> RunRecord:
    kw.setdefault("tags", {names.STEPS: "1000", names.CONFIG_HASH: f"cfg-{kind}"})
    return record(AR_ID if kind == "ar" else NAR_ID, f"train_{kind}",
                  params={f"training.{kind}.total_steps": "1000", "data.max_duration": "10.0"}, **kw)


def evidence(metrics: dict | None = None, eval_tags: dict | None = None, eval_status: str = "FINISHED",
             **fields) -> Evidence:
    tags = {names.AR_RUN_ID: AR_ID, names.NAR_RUN_ID: NAR_ID, names.WEIGHTS: "ema", names.AR_STEP: "8",
            names.NAR_STEP: "8", **(eval_tags or {})}
    base = Evidence(
        eval_run=record(EVAL_ID, "evaluate", status=eval_status, tags=tags,
                        metrics=GOOD_METRICS if metrics is None else metrics),
        ar_run=training("ar"), nar_run=training("nar"), ar_dir=Path("/ckpt/ar"), nar_dir=Path("/ckpt/nar"),
        ar_meta={"step": 8, "contract": contract("ar")}, nar_meta={"step": 8, "contract": contract("nar")},
        ema_present={"ar": True, "nar": True}, codec_fingerprint=FINGERPRINT, end_steps={"ar": 1000, "nar": 1000},
        utilisation=[{"model": k, "checkpoint_step": 8, "metric": "val/cb0/util_pred", "value": 0.5, "at": 8,
                      "floor": 0.1, "collapsed_tag": False} for k in ("ar", "nar")],
        weights_key="w" * 64,
    )
    return replace(base, **fields)


# ------------------------------------------------------------------------------------ refusals


def test_a_clean_pair_is_judged_on_its_gates_with_its_identity():
    j = judge(evidence(), GATES)
    assert j.refusals == [] and j.passed and j.failing == []
    assert j.primary_metric == "eval/wer" and j.primary_value == pytest.approx(0.2)
    assert j.weights_key == "w" * 64 and j.candidate_key == key_for("w" * 64, EVAL_ID) and len(j.candidate_key) == 64
    assert key_for("w" * 64, "other") != j.candidate_key  # other evidence, other candidate


def test_unfinished_runs_are_refused_unless_allowed():
    ev = evidence(nar_run=training("nar", status="KILLED", tags={}), eval_status="RUNNING")
    j = judge(ev, GATES)
    text = "\n".join(j.refusals)
    assert f"evaluate run {EVAL_ID} is RUNNING, not FINISHED" in text
    assert f"unfinished: NAR training run {NAR_ID} is KILLED, not FINISHED (executed steps: unknown)" in text
    assert "--allow-unfinished" in text and j.candidate_key == "" and j.weights_key == ""
    allowed = judge(replace(ev, eval_run=evidence().eval_run), GATES, Flags(allow_unfinished=True))
    assert allowed.refusals == [] and any("allowed by --allow-unfinished" in n for n in allowed.notes)


def test_a_mixed_pair_is_refused_unless_allowed_but_training_knobs_may_differ():
    nar = training("nar")
    nar = replace(nar, tags={**nar.tags, names.PROJECT: "demo_collapse"},
                  params={**nar.params, "data.max_duration": "6.0", "training.nar.lr": "0.1"})
    j = judge(evidence(nar_run=nar), GATES)
    text = "\n".join(j.refusals)
    assert "mixed pair: the AR run" in text and "'demo_collapse'" in text
    assert "data.max_duration: AR 10.0 vs NAR 6.0" in text and "training.nar.lr" not in text
    assert "config hashes AR cfg-ar, NAR cfg-nar" in text
    assert judge(evidence(nar_run=nar), GATES, Flags(allow_mixed_pair=True)).refusals == []


@pytest.mark.parametrize(("who", "state", "words"), [
    ("ar", "true", f"AR training run {AR_ID} ran from a dirty git tree"),
    ("nar", "unknown", f"NAR training run {NAR_ID} ran from an unknown tree (no git metadata)"),
    ("eval", "true", f"evaluate run {EVAL_ID} ran from a dirty git tree"),
])
def test_dirty_or_unknown_code_is_refused_unless_allowed(who, state, words):
    if who == "eval":
        ev = evidence(eval_tags={names.GIT_DIRTY: state})
    else:
        run = training(who)
        ev = evidence(**{f"{who}_run": replace(run, tags={**run.tags, names.GIT_DIRTY: state})})
    j = judge(ev, GATES)
    assert any(r.startswith(f"provenance: {words} (commit 0123456789ab, source hash feedface)") for r in j.refusals)
    assert j.refusals[-1].endswith(f"{names.ALLOW_DIRTY}=true)")
    allowed = judge(ev, GATES, Flags(allow_dirty=True))
    assert allowed.refusals == [] and f"provenance (allowed by --allow-dirty): {words}" in "\n".join(allowed.notes)


def test_an_unknown_training_run_is_a_provenance_refusal():
    j = judge(evidence(ar_run=None), GATES)
    assert f"provenance: AR training run {AR_ID} is unknown to the tracking server, so its code is unknown" in j.refusals


def test_contract_weights_and_checkpoint_refusals():
    nar_meta = {"step": 8, "contract": {**contract("nar"), "n_q": 7}}
    j = judge(evidence(nar_meta=nar_meta), GATES)
    assert any(r.startswith("contract: ") and "n_q" in r for r in j.refusals)
    j = judge(evidence(codec_problem="/ckpt/nar has no codec/ directory, so the served model could not decode"), GATES)
    assert "contract: /ckpt/nar has no codec/ directory, so the served model could not decode" in j.refusals
    j = judge(evidence(eval_tags={names.WEIGHTS: "raw"}, ema_present={"ar": True, "nar": False}), GATES)
    assert any("scored 'raw' weights" in r for r in j.refusals)
    assert "/ckpt/nar has no ema.safetensors: the registry serves EMA weights only" in j.refusals
    j = judge(evidence(eval_tags={names.NAR_STEP: "4"}), GATES)
    assert any("NAR checkpoint /ckpt/nar now holds step 8 but evaluate run" in r and "scored step 4" in r
               for r in j.refusals)
    j = judge(evidence(ar_meta={}), GATES)
    assert any(r.startswith("the evaluated AR checkpoint cannot be found") for r in j.refusals)


# ------------------------------------------------------------------------------------ gates


def test_gate_failures_are_named_and_a_missing_baseline_fails_its_gate():
    strict = GatesConfig(max_wer=GateConfig(threshold=0.05, relative_to="ground_truth"),
                         min_sim=GateConfig(threshold=0.95, relative_to="resynthesis"), champion_confidence=0)
    j = judge(evidence(), strict)  # wer 0.2 > 0.05 + 0.05, sim 0.8 < 0.85 * 0.95
    assert j.refusals == [] and not j.passed and j.failing == ["max_wer", "min_sim"]
    metrics = {k: v for k, v in GOOD_METRICS.items() if not k.startswith("baseline/ground_truth")}
    j = judge(evidence(metrics=metrics), strict)
    assert "max_wer" in j.failing and "baseline/ground_truth/wer" in next(g.reason for g in j.gates if g.name == "max_wer")


def test_collapse_in_the_tail_and_low_utilisation_fail_their_gates():
    events = [{"model": "nar", "kind": "codebook", "name": "nar/cb1", "step": 950}]
    low = [{"model": "nar", "checkpoint_step": 8, "metric": "val_ema/cb1/util_pred", "value": 0.05, "at": 8,
            "floor": 0.1, "collapsed_tag": True}]
    j = judge(evidence(collapse_events=events, utilisation=low), GATES)
    assert j.refusals == [] and j.failing == ["collapse_free_tail", "checkpoint_utilisation"]


# ------------------------------------------------------------------------------------ the champion


def test_first_passing_candidate_becomes_champion_and_a_failing_one_never_does():
    j = judge(evidence(), GATES)
    assert champion_rule(j, GATES, ChampionEvidence(None), samples=100, seed=0) == (
        True, None, "no champion yet: all gates pass, eval/wer = 0.2 -> champion")
    failing = judge(evidence(metrics=with_metrics(eval__wer=0.9)), GATES)
    move, current, reason = champion_rule(failing, GATES, ChampionEvidence("3", 0.5), samples=100, seed=0)
    assert not move and current == "3" and reason == "champion unchanged (v3): gate(s) failed: max_wer"
    no_metric = judge(evidence(metrics={k: v for k, v in GOOD_METRICS.items() if k != "eval/wer"}),
                      GATES.model_copy(update={"max_wer": GateConfig(threshold=0.5, enabled=False)}))
    move, _, reason = champion_rule(no_metric, GATES, ChampionEvidence(None), samples=100, seed=0)
    assert not move and "has no eval/wer (the primary metric)" in reason


def test_point_estimates_move_only_on_a_strict_win():
    j = judge(evidence(), GATES)  # eval/wer 0.2, mode min
    assert champion_rule(j, GATES, ChampionEvidence("2", 0.3), samples=100, seed=0)[:2] == (True, "2")
    move, current, reason = champion_rule(j, GATES, ChampionEvidence("2", 0.2), samples=100, seed=0)
    assert not move and current == "2" and "not better" in reason  # a tie keeps the champion
    move, _, reason = champion_rule(j, GATES, ChampionEvidence("2", None), samples=100, seed=0)
    assert not move and "champion v2 has no comparable eval/wer: it stays" in reason


def test_significance_without_per_utterance_tables_keeps_the_champion():
    gates = GatesConfig()  # champion_confidence 0.95
    j = judge(evidence(), gates)
    move, _, reason = champion_rule(j, gates, ChampionEvidence("1", 0.45), samples=500, seed=0)
    assert not move and "no readable per-utterance table" in reason and "champion v1 stays" in reason
