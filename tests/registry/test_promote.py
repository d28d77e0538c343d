"""Promotion on the SQLite default: gate tags, champion logic, refusals, idempotency, rollback, CLI ops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.config.schema import GateConfig, GatesConfig
from harmonica.registry.cli_ops import (
    RegistryError,
    champion_history,
    list_versions,
    rollback,
    show_version,
)
from harmonica.registry.gates import GATE_NAMES
from harmonica.tracking.lock import LockTimeout, RegistryLock, lock_name
from harmonica.registry.promote import PromotionError, PromotionRefused, promote
from harmonica.stages.promote import run_promote
from tests.registry.fakes import with_metrics

NAME = "harmonica-tts"


def run(store, eid, **kw):
    kw.setdefault("smoke_test", False)
    return promote(eid, tracking_uri=store.tracking_uri, workdir=store.workdir, cfg=store.cfg, **kw)


def aliases(store) -> dict[str, str]:
    return {k: str(v) for k, v in store.client.get_registered_model(NAME).aliases.items()}


def versions(store) -> list:
    return list(store.client.search_model_versions(f"name='{NAME}'"))


def promote_runs(store) -> list:
    return store.client.search_runs([store.experiment_id], "tags.`harmonica.stage` = 'promote'")


# ------------------------------------------------------------------------------------ happy path


@pytest.mark.slow
def test_first_passing_candidate_becomes_champion_with_every_gate_tagged(store, ckpts):
    eid = store.candidate(ckpts)
    d = run(store, eid)
    assert d.registered_new and d.passed and d.champion_moved and d.decision == "champion"
    assert d.version == "1" and aliases(store) == {"candidate": "1", "champion": "1"}
    mv = store.client.get_model_version(NAME, "1")
    t = mv.tags
    for gate in GATE_NAMES:
        assert t[f"gate.{gate}.passed"] == "true"
        assert f"gate.{gate}.value" in t and f"gate.{gate}.threshold" in t
    assert t["gate.max_wer.value"] == "0.2" and t["gate.max_wer.threshold"] == "0.5"
    ev = store.client.get_run(eid).data.tags
    assert t["harmonica.evaluation_run_id"] == eid
    assert t["harmonica.ar_run_id"] == ev["harmonica.ar_run_id"] and t["harmonica.nar_run_id"] == ev["harmonica.nar_run_id"]
    assert t["harmonica.config_hash"] == "cfg-eval"
    assert t["harmonica.git_commit"] == ev["harmonica.git_commit"] and t["harmonica.git_dirty"] == "false"
    assert t["harmonica.source_hash"] == "feedfacecafebeef" and t["harmonica.serving_source_hash"]
    assert t["harmonica.primary_metric"] == "eval/wer" and float(t["harmonica.primary_value"]) == 0.2
    assert t["harmonica.candidate_key"] == d.candidate_key and len(d.candidate_key) == 64
    assert t["harmonica.decision"] == "champion" and t["harmonica.promotion_complete"] == "true"
    assert mv.description.startswith("harmonica-tts v1: CHAMPION")
    # the decision is recorded on the promote run too
    [prun] = promote_runs(store)
    assert prun.info.run_id == d.promote_run_id == mv.run_id
    assert prun.data.tags["harmonica.decision"] == "champion" and prun.data.tags["harmonica.model_version"] == "1"
    assert prun.data.tags["harmonica.evaluation_run_id"] == eid
    path = store.client.download_artifacts(prun.info.run_id, "decision.json", str(store.workdir / "dl"))
    recorded = json.loads(Path(path).read_text())
    assert recorded["decision"] == "champion" and recorded["version"] == "1" and len(recorded["gates"]) == 5
    # the model is EMA-only
    arts = {a.path for a in store.client.list_artifacts(prun.info.run_id)}
    assert "decision.json" in arts
    history = champion_history(NAME, tracking_uri=store.tracking_uri)
    assert history[-1]["to"] == "1" and history[-1]["via"] == "promote"
    # the version is created from the logged model, which carries the gate and evaluation metrics (what the
    # registry page shows: MLflow's SQL registry keeps the model as the version's models:/ source)
    assert mv.source == f"models:/{t['harmonica.model_id']}"
    linked = {m.key: m.value for m in store.client.get_logged_model(t["harmonica.model_id"]).metrics}
    assert linked["gate/max_wer/value"] == 0.2 and linked["gate/max_wer/passed"] == 1.0
    assert linked["eval/wer"] == store.client.get_run(eid).data.metrics["eval/wer"]
    assert {f"gate/{g}/passed" for g in GATE_NAMES} <= set(linked)


def test_promoting_the_same_evaluation_twice_registers_one_version(store, ckpts):
    eid = store.candidate(ckpts)
    first = run(store, eid)
    second = run(store, eid)
    assert len(versions(store)) == 1
    assert not second.registered_new and second.version == first.version and second.decision == "existing"
    assert not second.champion_moved and "already version 1" in second.text()
    assert len(promote_runs(store)) == 1  # the idempotent answer records nothing new


@pytest.mark.slow
def test_same_weights_evaluated_again_is_a_new_candidate(store, ckpts):
    first = run(store, store.candidate(ckpts))
    again = run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.2)))
    assert again.registered_new and again.version == "2" and again.candidate_key != first.candidate_key
    assert "same weights are already version(s) v1" in again.text()
    assert not again.champion_moved  # a tie keeps the champion
    mv1, mv2 = (store.client.get_model_version(NAME, v) for v in ("1", "2"))
    assert mv1.tags["harmonica.weights_key"] == mv2.tags["harmonica.weights_key"]


# ------------------------------------------------------------------------------------ champion logic


@pytest.mark.slow
def test_better_candidate_moves_champion_worse_stays_candidate(store, ckpts):
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.30)))
    better = run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.10)))
    assert better.champion_moved and better.previous_champion == "1"
    assert aliases(store) == {"candidate": "2", "champion": "2"}
    assert store.client.get_model_version(NAME, "1").tags["harmonica.superseded_by"] == "2"
    worse = run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.15)))
    assert worse.passed and not worse.champion_moved and worse.decision == "candidate"
    assert "vs champion v2 0.1 (mode min): not better" in worse.text()
    assert aliases(store) == {"candidate": "3", "champion": "2"}
    assert store.client.get_model_version(NAME, "3").tags["harmonica.decision"] == "candidate"


@pytest.mark.slow
def test_primary_metric_in_max_mode(store, ckpts):
    gates = GatesConfig(primary_metric="eval/sim", primary_mode="max", champion_confidence=0)
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__sim=0.7)), gates=gates)
    d = run(store, store.candidate(ckpts, metrics=with_metrics(eval__sim=0.9, eval__wer=0.45)), gates=gates)
    assert d.champion_moved and aliases(store)["champion"] == "2"


def test_collapsing_candidate_is_candidate_only_with_failing_gates_named(store, ckpts):
    """The demo_collapse case: a better WER does not help when the NAR collapsed late in training."""
    run(store, store.candidate(ckpts))
    eid = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.05),
                          nar_events=[{"step": 950, "name": "nar/cb1"}])
    d = run(store, eid)
    assert d.registered_new and not d.passed and not d.champion_moved and d.decision == "candidate"
    assert d.failing_gates == ["collapse_free_tail"]
    assert "gates failed: collapse_free_tail" in d.headline() and "NAR step 950 codebook:nar/cb1" in d.text()
    assert aliases(store) == {"candidate": "2", "champion": "1"}
    t = store.client.get_model_version(NAME, "2").tags
    assert t["gate.collapse_free_tail.passed"] == "false" and t["gate.collapse_free_tail.value"] == "1"
    assert t["harmonica.failing_gates"] == "collapse_free_tail" and t["harmonica.gates_passed"] == "false"


def test_failing_metric_gates_are_named_in_decision_and_tags(store, ckpts):
    gates = GatesConfig(max_wer=GateConfig(threshold=0.05, relative_to="ground_truth"),
                        min_sim=GateConfig(threshold=0.95, relative_to="resynthesis"))
    d = run(store, store.candidate(ckpts), gates=gates)  # wer 0.2 > 0.10, sim 0.8 < 0.8075
    assert not d.passed and d.failing_gates == ["max_wer", "min_sim"] and not d.champion_moved
    assert aliases(store) == {"candidate": "1"}  # no champion at all
    t = store.client.get_model_version(NAME, "1").tags
    assert t["gate.max_wer.passed"] == "false" and t["gate.max_wer.threshold"] == "0.1"
    assert t["gate.min_sim.passed"] == "false" and t["gate.min_sim.threshold"] == "0.8075"
    assert t["gate.max_failure_rate.passed"] == "true"


def test_missing_baseline_fails_the_relative_gate_end_to_end(store, ckpts):
    metrics = {k: v for k, v in with_metrics().items() if not k.startswith("baseline/ground_truth")}
    d = run(store, store.candidate(ckpts, metrics=metrics),
            gates=GatesConfig(max_failure_rate=GateConfig(threshold=0.1, relative_to="ground_truth")))
    assert d.failing_gates == ["max_failure_rate"] and "baseline/ground_truth/fail/any" in d.text()


def test_collapse_outside_the_tail_passes_end_to_end(store, ckpts):
    d = run(store, store.candidate(ckpts, ar_events=[{"step": 100, "name": "ar/cb0"}]))  # recovered by step 110
    assert d.passed and d.champion_moved and "1 earlier event(s)" in d.text()


def test_collapse_that_lasts_into_the_tail_fails_end_to_end(store, ckpts):
    """One event at step 100 (the monitor fires once per collapse) but still collapsed at step 900."""
    d = run(store, store.candidate(ckpts, nar_events=[{"step": 100, "name": "nar/cb2", "until": 900}]))
    assert d.failing_gates == ["collapse_free_tail"]
    assert "NAR nar/cb2 still collapsed at step 900 (since step 100)" in d.text()


def test_collapse_without_metric_history_fails_end_to_end(store, ckpts):
    d = run(store, store.candidate(ckpts, ar_events=[{"step": 100, "name": "ar/cb0", "history": False}]))
    assert d.failing_gates == ["collapse_free_tail"] and "no ar/cb0/util_pred history" in d.text()


# ------------------------------------------------------------------------------------ refusals


def test_contract_mismatch_refuses_and_registers_nothing(store, ckpts):
    meta_file = ckpts["nar"] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["contract"]["text_vocab_hash"] = "0000000000000000"
    meta["contract"]["n_q"] = 7
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(PromotionRefused) as err:
        run(store, store.candidate(ckpts))
    text = str(err.value)
    assert "REFUSED" in text and "contract: text_vocab_hash" in text and "contract: n_q" in text
    assert err.value.decision.decision == "refused" and err.value.decision.version is None
    assert store.client.search_registered_models(f"name='{NAME}'") == []
    [prun] = promote_runs(store)
    assert prun.data.tags["harmonica.decision"] == "refused"


def test_dirty_training_run_is_refused_unless_allow_dirty(store, ckpts):
    eid = store.candidate(ckpts, train_dirty="true")
    with pytest.raises(PromotionRefused) as err:
        run(store, eid)
    text = str(err.value)
    ar_run = store.client.get_run(eid).data.tags["harmonica.ar_run_id"]
    assert f"AR training run {ar_run} ran from a dirty git tree" in text and "--allow-dirty" in text
    assert not store.client.search_registered_models(f"name='{NAME}'")
    d = run(store, eid, allow_dirty=True)
    assert d.registered_new and d.champion_moved and any("allowed by --allow-dirty" in r for r in d.reasons)
    t = store.client.get_model_version(NAME, d.version).tags
    assert t["harmonica.allow_dirty"] == "true" and t["harmonica.git_dirty"] == "true"
    assert "dirty=true" in t["harmonica.code.ar"]


def test_unknown_tree_and_dirty_evaluation_are_refused(store, ckpts):
    with pytest.raises(PromotionRefused, match="unknown tree"):
        run(store, store.candidate(ckpts, train_dirty="unknown"))
    with pytest.raises(PromotionRefused, match="evaluate run .* ran from a dirty git tree"):
        run(store, store.candidate(ckpts, eval_dirty="true"))


def test_unknown_training_runs_are_refused(store, ckpts):
    eid = store.evaluate_run("0" * 32, "1" * 32, ckpts)
    with pytest.raises(PromotionRefused, match="unknown to the tracking server"):
        run(store, eid)


def test_raw_weights_unfinished_runs_and_overwritten_checkpoints_are_refused(store, ckpts):
    with pytest.raises(PromotionRefused, match="'raw' weights"):
        run(store, store.candidate(ckpts, weights="raw"))
    with pytest.raises(PromotionRefused, match="is RUNNING, not FINISHED"):
        run(store, store.candidate(ckpts, status="RUNNING"))
    eid = store.candidate(ckpts, extra_tags={"harmonica.nar_step": "4"})  # the dir now holds step 8
    with pytest.raises(PromotionRefused, match="now holds step 8 but evaluate run .* scored step 4"):
        run(store, eid)


def test_not_an_evaluate_run(store, ckpts):
    ar = store.training_run("ar")
    with pytest.raises(PromotionError, match="not an evaluate run"):
        run(store, ar)
    with pytest.raises(PromotionError, match="not found"):
        run(store, "f" * 32)


# ------------------------------------------------------------------------------------ registry ops


@pytest.mark.slow
def test_rollback_moves_champion_back_and_records_why(store, ckpts):
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.30)))
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.10)))
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__wer=0.9)))  # fails max_wer -> v3 candidate
    uri = store.tracking_uri
    with pytest.raises(RegistryError, match="did not pass its gates"):
        rollback(NAME, "3", "try it", tracking_uri=uri)
    with pytest.raises(RegistryError, match="needs a reason"):
        rollback(NAME, "1", " ", tracking_uri=uri)
    result = rollback(NAME, "1", "v2 mispronounces numbers in production", tracking_uri=uri)
    assert result.from_version == "2" and result.to_version == "1" and not result.forced
    assert aliases(store)["champion"] == "1"
    t1 = store.client.get_model_version(NAME, "1").tags
    assert t1["harmonica.rollback_reason"] == "v2 mispronounces numbers in production"
    assert t1["harmonica.rolled_back_from"] == "2"
    assert "v1" in store.client.get_model_version(NAME, "2").tags["harmonica.rolled_back_to"]
    rm = store.client.get_registered_model(NAME)
    assert "by rollback" in rm.description and "mispronounces" in rm.description
    history = champion_history(NAME, tracking_uri=uri)
    assert [(h["from"], h["to"], h["via"]) for h in history] == [(None, "1", "promote"), ("1", "2", "promote"),
                                                                ("2", "1", "rollback")]
    with pytest.raises(RegistryError, match="not earlier than the champion"):
        rollback(NAME, "2", "forward again", tracking_uri=uri)
    forced = rollback(NAME, "3", "testing a failing version on purpose", tracking_uri=uri, force=True)
    assert forced.forced and aliases(store)["champion"] == "3"
    assert store.client.get_model_version(NAME, "3").tags["harmonica.rollback_forced"] == "true"
    # the lock is released after every operation
    assert not store.client.search_registered_models(f"name='{lock_name(NAME)}'")


@pytest.mark.slow
def test_list_and_show(store, ckpts):
    run(store, store.candidate(ckpts))
    run(store, store.candidate(ckpts, metrics=with_metrics(eval__sim=0.1)))
    rows = list_versions(NAME, tracking_uri=store.tracking_uri)
    assert [r["version"] for r in rows] == ["2", "1"]
    assert rows[0]["aliases"] == ["candidate"] and rows[0]["failing_gates"] == "min_sim"
    assert rows[1]["aliases"] == ["champion"] and rows[1]["decision"] == "champion"
    shown = show_version(NAME, "champion", tracking_uri=store.tracking_uri)
    assert shown["version"] == "1" and shown["gates"]["gate.min_sim.passed"] == "true"
    assert shown["uri"] == f"models:/{NAME}/1" and "CHAMPION" in shown["description"]
    assert show_version(NAME, "v2", tracking_uri=store.tracking_uri)["aliases"] == ["candidate"]
    with pytest.raises(RegistryError, match="no version or alias 'nope'"):
        show_version(NAME, "nope", tracking_uri=store.tracking_uri)
    with pytest.raises(RegistryError, match="no registered model"):
        list_versions("other-model", tracking_uri=store.tracking_uri)


def test_stage_runner_resolves_the_workdir_store(store, ckpts, monkeypatch):
    """`harmonica promote --evaluation ID --workdir W`: the default store is sqlite under W."""
    import harmonica.stages.promote as stage

    eid = store.candidate(ckpts)
    assert store.tracking_uri == f"sqlite:///{(store.workdir / 'mlflow.db').resolve()}"
    seen = {}

    def fake_promote(evaluation_run_id, **kw):
        seen.update(kw, evaluation_run_id=evaluation_run_id)
        return "decision"

    monkeypatch.setattr(stage, "promote", fake_promote)
    assert run_promote(eid, store.workdir, allow_dirty=True) == "decision"
    assert seen["tracking_uri"] == store.tracking_uri and seen["allow_dirty"] is True
    assert seen["cfg"].project == "demo" and seen["cfg"].gates.primary_metric == "eval/wer"
    with pytest.raises(PromotionError, match="not found"):
        run_promote("e" * 32, store.workdir)
    with pytest.raises(PromotionError, match="--allow-unfinished.* not found"):  # a flag typed as the run id
        run_promote("--allow-unfinished", store.workdir)
    # the pipeline hands its config over: nothing is loaded; a project: its config is loaded once
    loads = []
    real_load = stage.load_config
    monkeypatch.setattr(stage, "load_config", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    run_promote(eid, store.workdir, cfg=store.cfg, parent_run_id="p" * 32)
    assert loads == [] and seen["cfg"] is store.cfg and seen["parent_run_id"] == "p" * 32
    assert seen["tracking_uri"] == store.tracking_uri
    run_promote(eid, store.workdir, project="demo", overrides=["gates.max_wer.threshold=0.3"])
    assert loads == [("demo", ["gates.max_wer.threshold=0.3"])] and seen["cfg"].gates.max_wer.threshold == 0.3


# ------------------------------------------------------------------------------------ the lock


def test_lock_is_exclusive_names_its_holder_and_breaks_when_stale(store):
    client = MlflowClient(store.tracking_uri)
    name = lock_name("lock-test")
    first = RegistryLock(client, name, purpose="first", timeout=5).acquire()
    with pytest.raises(LockTimeout, match=r"held by pid \d+ .*\(first\)"):
        RegistryLock(client, name, purpose="second", timeout=0.5).acquire()
    # a holder presumed dead: a waiter with a short stale_after breaks it by renaming it away
    breaker = RegistryLock(client, name, purpose="breaker", timeout=5, stale_after=0.0).acquire()
    assert breaker.broke == [first.holder]
    assert client.get_registered_model(f"{name}.stale.{first.holder}").tags["purpose"] == "first"
    with pytest.raises(Exception, match="no longer ours"):
        first.assert_held()
    first.release()  # must not delete the breaker's lock
    breaker.assert_held()
    breaker.release()
    assert not client.search_registered_models(f"name='{name}'")
