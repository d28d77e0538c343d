"""The read side returns typed records from a real (sqlite) store."""

import pytest
from mlflow.tracking import MlflowClient

from harmonica.tracking import names
from harmonica.tracking.read import AmbiguousRunError, NotFoundError, TrackingReader


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("harmonica/t", artifact_location=str(tmp_path / "art"))
    return uri, client, exp


def _run(client, exp, stage, status="FINISHED", **tags):
    run = client.create_run(exp, tags={names.STAGE: stage, **tags}, run_name=f"{stage}-x")
    client.log_metric(run.info.run_id, "val/loss", 2.0, step=4)
    client.log_metric(run.info.run_id, "val/loss", 1.0, step=8)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.mark.slow
def test_runs_histories_and_previous_run(store, tmp_path):
    uri, client, exp = store
    first = _run(client, exp, "train_ar")
    _run(client, exp, "train_ar", status="FAILED")
    second = _run(client, exp, "train_ar", **{names.PROJECT: "demo"})
    reader = TrackingReader(uri)
    rec = reader.get_run(second)
    assert (rec.stage, rec.project, rec.status, rec.name) == ("train_ar", "demo", "FINISHED", "train_ar-x")
    assert rec.metrics["val/loss"] == 1.0
    assert [p.step for p in reader.metric_history(second, "val/loss")] == [4, 8]
    assert [r.run_id for r in reader.find_runs(stage="train_ar", status="FINISHED")] == [second, first]
    assert reader.find_runs(stage="train_ar", tags={names.PROJECT: "demo"})[0].run_id == second
    assert reader.previous_run(rec).run_id == first
    with pytest.raises(NotFoundError, match="not found on sqlite"):
        reader.get_run("0" * 32)
    (tmp_path / "f.txt").write_text("hi")
    client.log_artifact(first, str(tmp_path / "f.txt"), "d")
    assert [(a.path, a.is_dir) for a in reader.list_artifacts(first)] == [("d", True)]
    got = reader.download_artifacts(first, "d/f.txt", tmp_path / "dl")
    assert got.read_text() == "hi"


def test_a_run_is_found_by_its_short_id_or_its_name_and_an_ambiguous_one_is_refused(store):
    """What users copy from a log line (8 characters) or the UI (the run name) names a run; a name two
    runs share, a prefix nothing has or 3 characters do not guess."""
    uri, client, exp = store
    first = _run(client, exp, "train_ar")
    second = _run(client, exp, "train_ar")  # the same name, train_ar-x
    named = client.create_run(exp, run_name="ar-lr2e3").info.run_id
    reader = TrackingReader(uri)
    assert reader.resolve_run(first).run_id == first
    assert reader.resolve_run(first[:8]).run_id == first
    assert reader.resolve_run(f" {second[:12]} ").run_id == second
    assert reader.resolve_run("ar-lr2e3").run_id == named
    with pytest.raises(AmbiguousRunError, match=r"'train_ar-x' is ambiguous .* 2 runs match that run name") as err:
        reader.resolve_run("train_ar-x")
    assert first in str(err.value) and second in str(err.value)
    missing = next(p for p in ("0000", "ffff", "abcd") if not any(r.startswith(p) for r in (first, second, named)))
    with pytest.raises(NotFoundError, match="no run has that id, id prefix"):
        reader.resolve_run(missing)
    with pytest.raises(NotFoundError, match="needs 4"):
        reader.resolve_run(first[:3])  # too short to be read as an id
    with pytest.raises(NotFoundError):
        reader.resolve_run("it's")  # a quote in a name is escaped, not an injection


@pytest.mark.slow
def test_registry_versions_and_aliases(store):
    uri, client, exp = store
    rid = _run(client, exp, "promote")
    client.create_registered_model("m", tags={names.MANAGED_BY: "harmonica"})
    client.create_model_version("m", f"runs:/{rid}/model", rid, tags={names.DECISION: "candidate"})
    client.set_registered_model_alias("m", "candidate", "1")
    reader = TrackingReader(uri)
    assert reader.registered_model("m").aliases == {"candidate": "1"}
    assert reader.registered_model("nope") is None
    (v,) = reader.model_versions("m")
    assert (v.version, v.run_id, v.tags[names.DECISION], v.aliases) == ("1", rid, "candidate", ("candidate",))
    assert reader.version_by_alias("m", "candidate").version == "1"
    assert reader.version_by_alias("m", "champion") is None
