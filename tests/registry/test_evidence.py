"""Evidence that matches what was trained (issue 14): unfinished runs, unreached tails, mixed pairs.

The scenario of the issue, replayed on fake-but-real runs: an AR from a finished `demo` run and the
NAR of a `demo_collapse` run killed at step 220 of 300 (status RUNNING, collapsed since step 10,
recovered only at step 200, validation utilisation 0.061) were crowned champion with every gate
PASS."""

from __future__ import annotations

import pytest

from harmonica.registry.promote import PromotionRefused, promote
from harmonica.tracking.registry import ModelRegistry

NAME = "harmonica-tts"


def _promote(store, eid, **kw):
    return promote(eid, tracking_uri=store.tracking_uri, workdir=store.workdir, cfg=store.cfg, smoke_test=False, **kw)


@pytest.fixture
def killed_pair(store, ckpts) -> str:
    ar = store.training_run("ar", total_steps=300)
    nar = store.training_run("nar", total_steps=300, steps=220, status="RUNNING", project="demo_collapse",
                             events=[{"step": 10, "until": 200}], val_util=0.061)
    return store.evaluate_run(ar, nar, ckpts)


def test_the_issue_14_scenario_is_refused_and_names_each_reason(store, killed_pair):
    with pytest.raises(PromotionRefused) as refused:
        _promote(store, killed_pair)
    text = refused.value.decision.text()
    assert "REFUSED" in text
    assert "unfinished: NAR training run" in text and "is RUNNING, not FINISHED" in text and "--allow-unfinished" in text
    assert "mixed pair: the AR run" in text and "'demo' but the NAR run" in text and "'demo_collapse'" in text
    assert "--allow-mixed-pair" in text
    assert ModelRegistry(store.tracking_uri).alias(NAME, "champion") is None


def test_with_the_overrides_the_unreached_tail_fails_the_collapse_gate(store, killed_pair):
    d = _promote(store, killed_pair, allow_unfinished=True, allow_mixed_pair=True)
    assert d.decision == "candidate" and not d.champion_moved
    assert d.failing_gates == ["collapse_free_tail", "checkpoint_utilisation"]
    util = next(g.reason for g in d.gates if g.name == "checkpoint_utilisation")
    assert "NAR val/cb1/util_pred 0.061 < floor 0.1" in util and "harmonica.collapse=true" in util
    reason = next(g.reason for g in d.gates if g.name == "collapse_free_tail")
    assert "NAR tail not observed: the run is RUNNING and its last logged step (220) never reached the last 20%" in reason
    assert "steps > 240 of 300" in reason
    tags = store.client.get_model_version(NAME, d.version).tags
    assert tags["harmonica.allow_unfinished"] == "true" and tags["harmonica.allow_mixed_pair"] == "true"
    assert tags["harmonica.ar_project"] == "demo" and tags["harmonica.nar_project"] == "demo_collapse"
    assert tags["harmonica.nar_run_status"] == "RUNNING"
    assert tags["harmonica.ar_config_hash"] == "cfg-ar" and tags["harmonica.nar_config_hash"] == "cfg-nar"
    assert ModelRegistry(store.tracking_uri).alias(NAME, "champion") is None


def test_an_unfinished_run_that_reached_its_tail_is_judged_on_what_it_trained(store, ckpts):
    ar = store.training_run("ar", total_steps=300)
    nar = store.training_run("nar", total_steps=300, steps=290, status="KILLED", events=[{"step": 250}])
    d = _promote(store, store.evaluate_run(ar, nar, ckpts), allow_unfinished=True)
    assert d.failing_gates == ["collapse_free_tail"]  # 250 > 290 * 0.8: inside the tail of what it trained
    assert "NAR steps > 232 of 290" in next(g.reason for g in d.gates if g.name == "collapse_free_tail")
    clean = store.training_run("nar", total_steps=300, steps=290, status="KILLED")
    d = _promote(store, store.evaluate_run(ar, clean, ckpts), allow_unfinished=True)
    assert d.passed and d.champion_moved
    assert any("allowed by --allow-unfinished" in r for r in d.reasons)


def test_different_data_settings_are_a_mixed_pair(store, ckpts):
    ar = store.training_run("ar", params={"data.max_duration": "6.0", "training.ar.lr": "0.001"})
    nar = store.training_run("nar", params={"data.max_duration": "10.0", "training.nar.lr": "0.0002"})
    eid = store.evaluate_run(ar, nar, ckpts)
    with pytest.raises(PromotionRefused, match=r"data.max_duration: AR 6.0 vs NAR 10.0") as refused:
        _promote(store, eid)
    assert "training.nar.lr" not in refused.value.decision.text()  # training knobs may differ
    d = _promote(store, eid, allow_mixed_pair=True)
    assert d.champion_moved and any("allowed by --allow-mixed-pair" in r for r in d.reasons)


def test_utilisation_is_read_from_the_served_ema_weights_at_the_checkpoint_step(store, ckpts):
    import json

    step = json.loads((ckpts["nar"] / "meta.json").read_text())["step"]
    ar = store.training_run("ar")
    nar = store.training_run("nar")  # val/cb1/util_pred 0.5 (raw weights)
    store.client.log_metric(nar, "val_ema/cb1/util_pred", 0.05, step=step)  # the EMA collapsed at the checkpoint
    store.client.log_metric(nar, "val_ema/cb1/util_pred", 0.9, step=step + 100)  # after it: not the checkpoint
    d = _promote(store, store.evaluate_run(ar, nar, ckpts))
    assert d.failing_gates == ["checkpoint_utilisation"]
    assert f"NAR val_ema/cb1/util_pred 0.05 < floor 0.1 at step {step}" in d.text()
