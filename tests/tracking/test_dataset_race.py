"""Two processes logging the same new dataset at once: the loser of MLflow's lookup-then-insert race links it."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.tracking.run import Run


def _run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    return client, Run(client, client.create_run(exp).info.run_id, async_logging=False)


def test_a_dataset_inserted_meanwhile_is_linked(tmp_path, monkeypatch):
    client, run = _run(tmp_path)
    real, calls = client.log_inputs, []

    def racing(run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:  # what MLflow's SQLAlchemy store raises when the other process inserted first
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(run_id, datasets, models)

    monkeypatch.setattr(client, "log_inputs", racing)
    run.log_dataset(name="demo-tokens", digest="ab" * 20, source=tmp_path, context="preprocess")
    assert len(calls) == 2
    assert [d.dataset.name for d in client.get_run(run.run_id).inputs.dataset_inputs] == ["demo-tokens"]


def test_other_dataset_errors_still_raise(tmp_path, monkeypatch):
    client, run = _run(tmp_path)
    monkeypatch.setattr(client, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(MlflowException("boom")))
    with pytest.raises(MlflowException, match="boom"):
        run.log_dataset(name="demo-tokens", digest="ab" * 20, source=tmp_path, context="preprocess")
