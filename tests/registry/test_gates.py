"""Every gate's pass and fail path (absolute, relative to each baseline, missing evidence, disabled)."""

from __future__ import annotations

import math

import pytest

from harmonica.config import load_config
from harmonica.config.schema import GateConfig, GatesConfig
from harmonica.registry.gates import (
    GATE_NAMES,
    beats,
    collapse_gate,
    collapse_metric_key,
    evaluate_gates,
    gate_tags,
    metric_gate,
    persisting_events,
    utilisation_gate,
)
from tests.registry.fakes import GOOD_METRICS, with_metrics


UTIL_OK = [{"model": "ar", "checkpoint_step": 100, "metric": "val/cb0/util_pred", "value": 0.4, "at": 100,
            "floor": 0.1, "collapsed_tag": False},
           {"model": "nar", "checkpoint_step": 100, "metric": "val/cb3/util_pred", "value": 0.3, "at": 100,
            "floor": 0.1, "collapsed_tag": True}]


def gate(threshold: float, relative_to: str = "absolute", enabled: bool = True) -> GateConfig:
    return GateConfig(threshold=threshold, relative_to=relative_to, enabled=enabled)


# ------------------------------------------------------------------------------------------ max_wer


@pytest.mark.parametrize(("wer", "passed"), [(0.30, True), (0.50, True), (0.51, False)])
def test_max_wer_absolute(wer, passed):
    r = metric_gate("max_wer", gate(0.5), with_metrics(eval__wer=wer))
    assert r.passed is passed and r.effective_threshold == 0.5 and r.value == wer
    assert ("<=" if passed else ">") in r.reason and "eval/wer" in r.reason


@pytest.mark.parametrize(("source", "baseline"), [("ground_truth", 0.05), ("resynthesis", 0.10)])
@pytest.mark.parametrize("delta", [0.02, 0.10, 0.30])
def test_max_wer_relative_adds_the_threshold_to_the_baseline(source, baseline, delta):
    # eval/wer is 0.20; effective = baseline + delta
    r = metric_gate("max_wer", gate(delta, source), GOOD_METRICS)
    assert r.effective_threshold == pytest.approx(baseline + delta)
    assert r.passed is (0.20 <= baseline + delta)
    assert r.relative_to == source and source in r.reason


def test_max_wer_relative_pass_and_fail_per_baseline():
    assert metric_gate("max_wer", gate(0.15, "ground_truth"), GOOD_METRICS).passed  # 0.20 <= 0.05 + 0.15
    assert not metric_gate("max_wer", gate(0.14, "ground_truth"), GOOD_METRICS).passed
    assert metric_gate("max_wer", gate(0.10, "resynthesis"), GOOD_METRICS).passed  # 0.20 <= 0.10 + 0.10
    assert not metric_gate("max_wer", gate(0.05, "resynthesis"), GOOD_METRICS).passed


def test_missing_baseline_fails_with_a_reason():
    metrics = {k: v for k, v in GOOD_METRICS.items() if not k.startswith("baseline/resynthesis/")}
    r = metric_gate("max_wer", gate(1.0, "resynthesis"), metrics)
    assert not r.passed and r.effective_threshold is None
    assert "baseline/resynthesis/wer" in r.reason and "missing" in r.reason


def test_non_finite_baseline_fails():
    r = metric_gate("min_sim", gate(0.5, "ground_truth"), with_metrics(baseline__ground_truth__sim=math.nan))
    assert not r.passed and "baseline/ground_truth/sim" in r.reason


def test_missing_metric_fails_even_with_a_lenient_threshold():
    metrics = {k: v for k, v in GOOD_METRICS.items() if k != "eval/sim"}  # e.g. every utterance too short
    r = metric_gate("min_sim", gate(0.0), metrics)
    assert not r.passed and r.value is None and "eval/sim" in r.reason


def test_disabled_gate_is_reported_as_skipped_and_passed():
    r = metric_gate("max_wer", gate(0.0, enabled=False), with_metrics(eval__wer=0.99))
    assert r.passed and r.skipped and r.verdict == "SKIP" and "disabled" in r.reason


# ------------------------------------------------------------------------------------------ min_sim


@pytest.mark.parametrize(("sim", "passed"), [(0.80, True), (0.50, True), (0.49, False)])
def test_min_sim_absolute(sim, passed):
    r = metric_gate("min_sim", gate(0.5), with_metrics(eval__sim=sim))
    assert r.passed is passed and r.effective_threshold == 0.5


def test_min_sim_relative_multiplies_the_baseline():
    # eval/sim 0.80; ground truth 0.90, resynthesis 0.85
    r = metric_gate("min_sim", gate(0.85, "ground_truth"), GOOD_METRICS)
    assert r.effective_threshold == pytest.approx(0.765) and r.passed
    r = metric_gate("min_sim", gate(0.95, "ground_truth"), GOOD_METRICS)
    assert r.effective_threshold == pytest.approx(0.855) and not r.passed and "x" in r.reason
    assert metric_gate("min_sim", gate(0.9, "resynthesis"), GOOD_METRICS).passed  # 0.80 >= 0.765
    assert not metric_gate("min_sim", gate(0.99, "resynthesis"), GOOD_METRICS).passed  # 0.80 < 0.8415


# --------------------------------------------------------------------------------- max_failure_rate


@pytest.mark.parametrize(("rate", "passed"), [(0.0, True), (0.2, True), (0.25, False)])
def test_max_failure_rate_absolute(rate, passed):
    r = metric_gate("max_failure_rate", gate(0.2), with_metrics(eval__fail__any=rate))
    assert r.passed is passed and "eval/fail/any" in r.reason


def test_max_failure_rate_relative_to_both_baselines():
    # eval/fail/any 0.05; ground truth 0.0, resynthesis 0.02
    assert metric_gate("max_failure_rate", gate(0.05, "ground_truth"), GOOD_METRICS).passed
    assert not metric_gate("max_failure_rate", gate(0.04, "ground_truth"), GOOD_METRICS).passed
    assert metric_gate("max_failure_rate", gate(0.03, "resynthesis"), GOOD_METRICS).passed
    assert not metric_gate("max_failure_rate", gate(0.02, "resynthesis"), GOOD_METRICS).passed
    missing = {k: v for k, v in GOOD_METRICS.items() if k != "baseline/ground_truth/fail/any"}
    r = metric_gate("max_failure_rate", gate(0.5, "ground_truth"), missing)
    assert not r.passed and "baseline/ground_truth/fail/any" in r.reason


# ------------------------------------------------------------------------------------ collapse tail


def test_no_collapse_events_pass():
    r = collapse_gate(0.2, [], {"ar": 1000, "nar": 1000})
    assert r.passed and r.value == 0 and "no collapse in the last 20%" in r.reason


def test_collapse_before_the_tail_passes():
    events = [{"model": "ar", "step": 500, "kind": "util", "name": "ar/util"},
              {"model": "nar", "step": 800, "kind": "util", "name": "nar/util"}]  # 800 is the window's edge
    r = collapse_gate(0.2, events, {"ar": 1000, "nar": 1000})
    assert r.passed and "2 earlier event(s)" in r.reason


def test_collapse_inside_the_tail_fails_and_is_named():
    events = [{"model": "nar", "step": 801, "kind": "util", "name": "nar/util_pred_cb2"}]
    r = collapse_gate(0.2, events, {"ar": 1000, "nar": 1000})
    assert not r.passed and r.value == 1
    assert "NAR step 801" in r.reason and "nar/util_pred_cb2" in r.reason


def test_each_model_has_its_own_window():
    events = [{"model": "ar", "step": 450, "kind": "util", "name": "x"}]
    assert not collapse_gate(0.2, events, {"ar": 500, "nar": 5000}).passed  # 450 > 400
    assert collapse_gate(0.2, events, {"ar": 5000, "nar": 500}).passed
    assert not collapse_gate(0.2, events, 500).passed  # an int applies to every event


def test_events_that_cannot_be_placed_count_against_the_candidate():
    r = collapse_gate(0.2, [{"model": "ar", "step": None, "kind": "unknown", "name": "training run not found"}],
                      {"nar": 1000})
    assert not r.passed and "unknown" in r.reason


def test_a_collapse_lasts_until_its_metric_recovers():
    event = {"model": "nar", "step": 100, "kind": "codebook", "name": "nar/cb3", "value": 0.01, "floor": 0.1}
    assert collapse_metric_key(event) == "nar/cb3/util_pred"
    assert collapse_metric_key({"kind": "attention", "name": "ar/attn_entropy/layer1"}) == "ar/attn_entropy/layer1_min"
    still = {("nar", "nar/cb3/util_pred"): [(100, 0.01), (500, 0.02), (950, 0.05), (990, 0.3)]}
    [span] = persisting_events([event], still)
    assert span["step"] == 950 and span["collapsed_since"] == 100 and span["kind"] == "persisting"
    r = collapse_gate(0.2, [event, span], {"nar": 1000})
    assert not r.passed and "nar/cb3 still collapsed at step 950 (since step 100)" in r.reason
    recovered = {("nar", "nar/cb3/util_pred"): [(100, 0.01), (200, 0.5), (950, 0.6)]}
    assert persisting_events([event], recovered) == []
    assert collapse_gate(0.2, [event], {"nar": 1000}).passed
    [unknown] = persisting_events([event], {})  # no history: recovery cannot be shown
    assert unknown["step"] is None and not collapse_gate(0.2, [event, unknown], {"nar": 1000}).passed
    assert persisting_events([{**event, "kind": "other"}], {}) == []  # not a monitored metric


def test_zero_tail_disables_the_collapse_gate():
    r = collapse_gate(0.0, [{"model": "ar", "step": 999}], {"ar": 1000})
    assert r.passed and r.skipped


def test_whole_training_tail():
    assert not collapse_gate(1.0, [{"model": "ar", "step": 1}], {"ar": 1000}).passed


# ----------------------------------------------------------------------------------------- together


def test_evaluate_gates_reports_every_gate_in_order():
    results = evaluate_gates(GOOD_METRICS, GatesConfig(), [], {"ar": 100, "nar": 100}, UTIL_OK)
    assert [r.name for r in results] == list(GATE_NAMES)
    assert all(r.passed for r in results)
    bad = evaluate_gates(with_metrics(eval__wer=0.9, eval__sim=0.1), GatesConfig(),
                         [{"model": "ar", "step": 99}], {"ar": 100, "nar": 100})
    assert [r.name for r in bad if not r.passed] == ["max_wer", "min_sim", "collapse_free_tail",
                                                     "checkpoint_utilisation"]  # no utilisation evidence


def test_gate_tags_carry_value_threshold_and_verdict():
    results = evaluate_gates(with_metrics(eval__wer=0.9), GatesConfig(max_wer=gate(0.1, "ground_truth")), [],
                             {"ar": 100, "nar": 100})
    tags = gate_tags(results)
    assert tags["gate.max_wer.value"] == "0.9"
    assert tags["gate.max_wer.threshold"] == "0.15"
    assert tags["gate.max_wer.passed"] == "false"
    assert tags["gate.max_wer.configured"] == "0.1 (ground_truth)"
    assert tags["gate.min_sim.passed"] == "true"
    assert {f"gate.{n}.{f}" for n in GATE_NAMES for f in ("value", "threshold", "passed")} <= set(tags)


@pytest.mark.parametrize(("cand", "champ", "mode", "expected"), [
    (0.1, 0.2, "min", True), (0.2, 0.1, "min", False), (0.2, 0.2, "min", False),
    (0.9, 0.8, "max", True), (0.8, 0.9, "max", False), (0.8, 0.8, "max", False),
    (0.5, None, "min", True), (None, 0.5, "min", False), (math.nan, 0.5, "min", False),
])
def test_beats(cand, champ, mode, expected):
    assert beats(cand, champ, mode) is expected


def test_beats_rejects_an_unknown_mode():
    with pytest.raises(ValueError):
        beats(1.0, 2.0, "median")


def test_gates_yaml_is_layered_into_the_config(root):
    text = (root / "mlruns_config" / "gates.yaml").read_text()
    # the documented relative semantics are the implemented ones
    assert "added to (WER, failure rate) or multiplied with (SIM)" in text
    cfg = load_config("demo")
    assert cfg.gates.primary_metric == "eval/wer" and cfg.gates.collapse_free_tail == 0.2


# ------------------------------------------------------------------------------- bounds and margins


def test_bound_caps_a_relative_max_gate_and_reports_the_shortfall():
    # resynthesis 0.10 + 0.2 = 0.30 is looser than the bound 0.25 -> effective 0.25
    bounded = GateConfig(threshold=0.2, relative_to="resynthesis", bound=0.25)
    r = metric_gate("max_wer", bounded, with_metrics(eval__wer=0.28))
    assert r.effective_threshold == pytest.approx(0.25) and not r.passed
    assert r.margin == pytest.approx(-0.03) and "MISSED BY 0.03" in r.reason and "bound 0.25" in r.reason
    # a baseline that makes the relative threshold stricter than the bound keeps it
    strict = with_metrics(eval__wer=0.28, baseline__resynthesis__wer=0.02)
    r = metric_gate("max_wer", bounded, strict)
    assert r.effective_threshold == pytest.approx(0.22) and r.margin == pytest.approx(-0.06)


def test_bound_floors_a_relative_min_gate():
    # resynthesis SIM 0.85 x 0.5 = 0.425 is looser than the bound 0.7 -> effective 0.7
    r = metric_gate("min_sim", GateConfig(threshold=0.5, relative_to="resynthesis", bound=0.7),
                    with_metrics(eval__sim=0.75))
    assert r.effective_threshold == pytest.approx(0.7) and r.passed and r.margin == pytest.approx(0.05)
    assert "headroom 0.05" in r.reason


def test_bound_never_rescues_a_missing_baseline():
    metrics = {k: v for k, v in GOOD_METRICS.items() if not k.startswith("baseline/resynthesis/")}
    r = metric_gate("max_wer", GateConfig(threshold=0.2, relative_to="resynthesis", bound=0.6), metrics)
    assert not r.passed and "baseline/resynthesis/wer" in r.reason


def test_margin_is_a_version_tag():
    tags = gate_tags(evaluate_gates(with_metrics(eval__wer=0.9), GatesConfig(), [], {"ar": 100, "nar": 100}))
    assert tags["gate.max_wer.margin"] == "-0.4" and tags["gate.min_sim.margin"] == "0.3"


# issue 10's measurements of the demo (40 eval utterances, whisper tiny.en, resemblyzer)
DEMO_BASELINES = {"baseline/ground_truth/wer": 0.305, "baseline/ground_truth/sim": 0.835,
                  "baseline/ground_truth/fail/any": 0.0, "baseline/resynthesis/wer": 0.439,
                  "baseline/resynthesis/sim": 0.784, "baseline/resynthesis/fail/any": 0.0}


def test_demo_gates_are_no_looser_than_the_targets_whatever_the_baseline():
    gates = load_config("demo").gates
    for name in ("max_wer", "min_sim"):
        assert getattr(gates, name).relative_to == "resynthesis"
    assert gates.max_failure_rate.relative_to == "absolute" and gates.max_failure_rate.threshold == 0.1
    # a terrible codec / ASR cannot loosen them past WER 0.6, SIM 0.7, failure rate 0.1
    awful = {"baseline/resynthesis/wer": 5.0, "baseline/resynthesis/sim": 0.0, "baseline/resynthesis/fail/any": 1.0}
    effective = {r.name: r.effective_threshold for r in evaluate_gates(awful, gates, [], 100)}
    assert effective["max_wer"] == 0.6 and effective["min_sim"] == 0.7 and effective["max_failure_rate"] == 0.1
    # at the measured baselines they are as strict as the targets or stricter
    measured = {r.name: r.effective_threshold for r in evaluate_gates(DEMO_BASELINES, gates, [], 100)}
    assert measured["max_wer"] <= 0.6 and measured["min_sim"] >= 0.7 and measured["max_failure_rate"] <= 0.1


def test_the_babbling_demo_model_of_issue_10_is_not_crowned_and_each_miss_is_quantified():
    gates = load_config("demo").gates
    babble = {**DEMO_BASELINES, "eval/wer": 1.023, "eval/sim": 0.570, "eval/fail/any": 0.475}
    results = {r.name: r for r in evaluate_gates(babble, gates, [], 100, UTIL_OK)}
    assert [n for n, r in results.items() if not r.passed] == ["max_wer", "min_sim", "max_failure_rate"]
    assert results["max_wer"].margin == pytest.approx(-0.423)  # 1.023 vs min(0.439 + 0.2, 0.6)
    assert results["min_sim"].margin == pytest.approx(0.570 - 0.784 * 0.9)
    assert "MISSED BY 0.423" in results["max_wer"].reason
    good = {**DEMO_BASELINES, "eval/wer": 0.55, "eval/sim": 0.74, "eval/fail/any": 0.05}
    assert all(r.passed for r in evaluate_gates(good, gates, [], 100, UTIL_OK))


# ------------------------------------------------------------------------------ checkpoint utilisation


def test_checkpoint_utilisation_passes_a_recovered_run_and_fails_a_collapsed_checkpoint():
    ok = utilisation_gate(True, UTIL_OK)
    assert ok.passed and ok.value == 0.3 and ok.margin == pytest.approx(0.2)
    assert "tagged collapsed earlier, recovered" in ok.reason
    collapsed = [UTIL_OK[0], {**UTIL_OK[1], "value": 0.061, "at": 200, "checkpoint_step": 220}]
    bad = utilisation_gate(True, collapsed)
    assert not bad.passed and bad.margin == pytest.approx(0.061 - 0.1)
    assert "NAR val/cb3/util_pred 0.061 < floor 0.1 at step 200 (checkpoint step 220)" in bad.reason
    assert "harmonica.collapse=true" in bad.reason and "MISSED BY 0.039" in bad.reason


def test_checkpoint_utilisation_never_passes_without_evidence():
    assert not utilisation_gate(True, None).passed and not utilisation_gate(True, []).passed
    unknown = utilisation_gate(True, [{**UTIL_OK[0], "value": None}])
    assert not unknown.passed and "no validation utilisation at or before checkpoint step 100" in unknown.reason
    assert utilisation_gate(False, None).skipped


def test_unfinished_run_fails_only_when_its_planned_tail_was_never_reached():
    killed = {"model": "nar", "kind": "unfinished", "step": 220, "planned": 300, "status": "RUNNING"}
    r = collapse_gate(0.2, [killed], {"ar": 300, "nar": 220})
    assert not r.passed and "NAR tail not observed" in r.reason and "steps > 240 of 300" in r.reason
    reached = {**killed, "step": 280}
    r = collapse_gate(0.2, [reached], {"ar": 300, "nar": 280})
    assert r.passed and "NAR steps > 224 of 280" in r.reason and "0 earlier event(s)" in r.reason
    assert not collapse_gate(0.2, [{**killed, "step": None}], {"ar": 300}).passed  # last step unknown
