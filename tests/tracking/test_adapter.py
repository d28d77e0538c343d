import subprocess
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient
import pytest

from harmonica.config import config_hash, load_config
from harmonica.tracking.adapter import Tracker, resolve_tracking_uri
from harmonica.tracking.provenance import code_version, source_hash


def test_embedded_default_is_sqlite_under_workdir(workdir: Path, monkeypatch):
    cfg = load_config("demo")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(cfg.tracking, workdir) == f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(cfg.tracking, workdir) == "http://127.0.0.1:5999"


@pytest.mark.slow
def test_run_carries_config_provenance_metrics_and_dataset(workdir: Path):
    cfg = load_config("demo", ["tracking.system_metrics=false"])
    tracker = Tracker(cfg, workdir)
    with tracker.run("unit", "unit-run", description="a test run") as run:
        digest = run.log_config(cfg)
        run.log_metrics({"a/b": 1.0, "nan": float("nan")}, step=3)
        src = workdir / "data"
        src.mkdir()
        run.log_dataset(name="tokens", digest="f" * 32, source=src, context="train", profile={"n": 2})
        run_id = run.run_id
    assert (workdir / "mlflow.db").is_file()
    client = MlflowClient(tracker.tracking_uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["harmonica.config_hash"] == digest == config_hash(cfg)
    assert got.data.tags["harmonica.source_hash"] == code_version().source_hash
    assert got.data.tags["harmonica.git_dirty"] in ("true", "false", "unknown")
    assert got.data.tags["harmonica.stage"] == "unit"
    assert got.data.tags["mlflow.note.content"] == "a test run"
    assert got.data.params["training.ar.lr"] == str(cfg.training.ar.lr)
    assert got.data.metrics == {"a/b": 1.0}  # non-finite dropped, not logged
    [ds] = got.inputs.dataset_inputs
    assert ds.dataset.digest == "f" * 32 and ds.dataset.name == "tokens"
    artifacts = client.download_artifacts(run_id, "config.yaml", str(workdir))
    assert yaml.safe_load(Path(artifacts).read_text())["project"] == "demo"
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "harmonica/demo"
    assert exp.artifact_location.startswith((workdir / "mlartifacts").resolve().as_uri())


@pytest.mark.slow
def test_failed_stage_marks_run_failed(workdir: Path):
    cfg = load_config("demo", ["tracking.system_metrics=false"])
    tracker = Tracker(cfg, workdir)
    run_id = None
    try:
        with tracker.run("unit", "boom") as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert MlflowClient(tracker.tracking_uri).get_run(run_id).info.status == "FAILED"


def test_source_hash_sees_code_changes(tmp_path: Path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    first = source_hash(pkg)
    assert source_hash(pkg) == first
    (pkg / "a.py").write_text("x = 2\n")
    assert source_hash(pkg) != first


def test_dirty_flag_from_git(tmp_path: Path):
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("y = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    code_version.cache_clear()
    clean = code_version(pkg)
    assert clean.git_commit != "unknown" and clean.git_dirty is False
    (pkg / "m.py").write_text("y = 2\n")
    code_version.cache_clear()
    dirty = code_version(pkg)
    assert dirty.git_dirty is True and dirty.source_hash != clean.source_hash
    code_version.cache_clear()


@pytest.mark.slow
def test_trackers_do_not_leak_their_uri_into_the_environment(tmp_path: Path, monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config("demo", ["tracking.system_metrics=false"])
    first = Tracker(cfg, tmp_path / "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = Tracker(cfg, tmp_path / "b")
    assert first.tracking_uri != second.tracking_uri
    assert second.tracking_uri.endswith(str((tmp_path / "b" / "mlflow.db").resolve()))


@pytest.mark.slow
def test_a_store_error_while_ending_an_interrupted_run_does_not_replace_the_interrupt(workdir: Path, monkeypatch):
    """Found by CI: after a Ctrl-C, ending the run met SQLite's "database is locked" and that error replaced the
    KeyboardInterrupt, so `harmonica train` exited 1 without its resume command instead of 130."""
    import mlflow
    import pytest
    from mlflow.exceptions import MlflowException

    cfg = load_config("demo", ["tracking.system_metrics=false"])
    tracker = Tracker(cfg, workdir)
    real_end = mlflow.end_run

    def locked(status="FINISHED"):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(mlflow, "end_run", locked)
    with pytest.raises(KeyboardInterrupt):
        with tracker.run("unit", "interrupted") as run:
            raise KeyboardInterrupt
    # the store answered again: the run was marked KILLED directly (CI saw it left RUNNING)
    assert tracker.client.get_run(run.run_id).info.status == "KILLED"
    with pytest.raises(MlflowException, match="locked"):  # any other ending still reports the store's error
        with tracker.run("unit", "finished"):
            pass
    monkeypatch.setattr(mlflow, "end_run", real_end)
    while mlflow.active_run():
        mlflow.end_run()
