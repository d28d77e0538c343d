"""A new SQLite store migrated by another MLflow client at the same moment (`mlflow ui`, a notebook, a test's
client): harmonica waits for it instead of dying half-way through the migration."""

import subprocess
import sys
import time

import pytest
import sqlalchemy.exc
from mlflow.tracking import MlflowClient

from harmonica.tracking import adapter
from harmonica.tracking.adapter import open_embedded_store


def _existing(tmp_path) -> str:
    """A store another client has created (its migration maybe still running)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def test_a_migration_race_lost_is_waited_out(tmp_path, monkeypatch):
    uri = _existing(tmp_path)
    calls = []

    def racing(tracking_uri):
        calls.append(tracking_uri)
        if len(calls) == 1:  # what alembic raises when the other client created the table first
            raise sqlalchemy.exc.OperationalError("CREATE TABLE mcp_servers", {}, Exception("table mcp_servers already exists"))
        return MlflowClient(tracking_uri)

    monkeypatch.setattr(adapter, "MlflowClient", racing)
    client = open_embedded_store(uri, wait=0.01)
    assert len(calls) == 2 and client.get_experiment_by_name("Default") is not None


def test_an_error_from_inside_alembic_is_the_migration_s_whatever_its_type(tmp_path, monkeypatch):
    """alembic's batch operations raise a plain ValueError ("No such constraint", found by CI)."""
    calls = []

    def racing(tracking_uri):
        calls.append(tracking_uri)
        if len(calls) == 1:
            exec(compile("raise ValueError(\"No such constraint: 'uq_registered_models_name'\")",
                         "/site-packages/alembic/operations/batch.py", "exec"))
        return MlflowClient(tracking_uri)

    uri = _existing(tmp_path)
    monkeypatch.setattr(adapter, "MlflowClient", racing)
    open_embedded_store(uri, wait=0.01)
    assert len(calls) == 2


def test_errors_other_than_the_migration_s_are_not_retried(tmp_path, monkeypatch):
    calls = []

    def broken(tracking_uri):
        calls.append(tracking_uri)
        raise PermissionError(f"cannot write {tracking_uri}")

    uri = _existing(tmp_path)
    monkeypatch.setattr(adapter, "MlflowClient", broken)
    with pytest.raises(PermissionError, match="cannot write"):
        open_embedded_store(uri, wait=0.01)
    assert len(calls) == 1


def test_a_new_store_is_migrated_privately_and_linked_into_place(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    seen = []

    def watching(tracking_uri):
        seen.append((tracking_uri, db.exists()))
        return MlflowClient(tracking_uri)

    monkeypatch.setattr(adapter, "MlflowClient", watching)
    client = open_embedded_store(f"sqlite:///{db}")
    assert seen[0][0].endswith(".new") and seen[0][1] is False  # migrated beside, mlflow.db not there yet
    assert seen[1] == (f"sqlite:///{db}", True)
    assert client.get_experiment_by_name("Default") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]  # the private file is gone


def test_a_store_created_by_another_client_meanwhile_is_kept(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"

    def other_client_first(tracking_uri):
        if tracking_uri.endswith(".new") and not db.exists():
            MlflowClient(f"sqlite:///{db}").create_experiment("theirs", artifact_location=tmp_path.as_uri())
        return MlflowClient(tracking_uri)

    monkeypatch.setattr(adapter, "MlflowClient", other_client_first)
    client = open_embedded_store(f"sqlite:///{db}")
    assert client.get_experiment_by_name("theirs") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]


CREATE = """
import sys, time
from mlflow.tracking import MlflowClient
{setup}
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
{open}(f"sqlite:///{{sys.argv[1]}}").search_experiments()
"""


@pytest.mark.slow  # real processes migrating one new file at once: ~20 s
def test_harmonica_opens_a_store_that_a_plain_client_migrates_at_the_same_moment(tmp_path):
    """A plain MLflow client (`mlflow ui`, a notebook) and harmonica start on one new file at the same
    instant, three times. Before open_embedded_store harmonica lost this race every time here
    ("duplicate column name: step", alembic's "expected to match one row") and died; now it waits for
    the winner's migration and opens the store."""
    plain = CREATE.format(setup="", open="MlflowClient")
    ours = CREATE.format(setup="from harmonica.tracking.adapter import open_embedded_store", open="open_embedded_store")
    for round_ in range(3):
        db = tmp_path / f"mlflow{round_}.db"
        start = str(time.time() + 3.0 + 0.1 * round_)  # after both interpreters have imported mlflow
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db), start], stderr=subprocess.PIPE, text=True)
                 for code in (plain, ours)]
        (_, _), (rc, err) = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert rc == 0, err[-3000:]
        client = MlflowClient(f"sqlite:///{db}")
        client.create_experiment("after-the-race", artifact_location=(tmp_path / "art").as_uri())
