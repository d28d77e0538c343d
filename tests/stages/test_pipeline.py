"""The pipeline: one parent run, a child run per step, identical steps reused."""

import shutil

import pytest
from mlflow.tracking import MlflowClient

from harmonica.stages.pipeline import run_pipeline
from tests.tiny import tiny_cfg, tiny_steps


@pytest.mark.slow
def test_pipeline_runs_steps_as_children_and_reuses_identical_ones(tmp_path, tiny_corpus, tiny_cache_workdir):
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"), *tiny_steps("nar"), "eval.split=val")
    first = run_pipeline(cfg, work, progress=False)
    assert [s.name for s in first.steps] == ["preprocess", "train_ar", "train_nar", "evaluate", "promote"]
    assert not any(s.skipped for s in first.steps)
    client = MlflowClient(first.tracking_uri)
    for s in first.steps:  # the promote step too: its parent is passed, not taken from MLflow's active run
        assert client.get_run(s.run_id).data.tags["mlflow.parentRunId"] == first.parent_run_id
    [decision] = first.decisions
    promote = client.get_run(first.steps[-1].run_id).data.tags
    assert decision.promote_run_id == first.steps[-1].run_id
    assert promote["harmonica.evaluation_run_id"] == first.steps[3].run_id
    assert promote["harmonica.decision"] == decision.decision  # gates fail on a tiny model, or a dirty tree refuses

    again = run_pipeline(cfg, work, progress=False)
    assert all(s.skipped for s in again.steps) and again.decisions == []
    assert [s.run_id for s in again.steps] == [s.run_id for s in first.steps]
    parent = client.get_run(again.parent_run_id).data.tags
    assert parent["pipeline.train_nar.skipped"] == "true"

    changed = tiny_cfg(tiny_corpus, *tiny_steps("ar"), *tiny_steps("nar"), "eval.split=val", "training.nar.lr=2e-4")
    third = run_pipeline(changed, work, progress=False)
    assert {s.name: s.skipped for s in third.steps} == {
        "preprocess": True, "train_ar": True, "train_nar": False, "evaluate": False, "promote": False,
    }
    # the evaluate run is linked to the checkpoint models it scored: the reused AR by its run id (its best
    # EMA model), the new NAR by its local checkpoint (the model of that run and step)
    ev = client.get_run(third.steps[3].run_id)
    ar_model, nar_model = ev.data.tags["harmonica.ar_model_id"], ev.data.tags["harmonica.nar_model_id"]
    assert ar_model == client.get_run(first.steps[1].run_id).data.tags["harmonica.best_model_id"]
    assert client.get_logged_model(nar_model).source_run_id == third.steps[2].run_id
    assert {i.model_id for i in ev.inputs.model_inputs} == {ar_model, nar_model}
    for model_id in (ar_model, nar_model):
        model = client.get_logged_model(model_id)
        assert model.tags["harmonica.weights"] == "ema"
        linked = {m.key: m.value for m in model.metrics if m.run_id in (None, ev.info.run_id)}
        assert linked["eval/wer"] == ev.data.metrics["eval/wer"]
