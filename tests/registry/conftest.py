"""Registry fixtures: a workdir with the tiny token cache and a ready SQLite store, copies of the tiny checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.registry.fakes import TEST_GATES, FakeStore, copy_checkpoints
from tests.tiny import tiny_cfg


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite database: copying it saves the seconds of schema
    migrations every new store would otherwise pay."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflowdb") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def reg_workdir(tmp_path: Path, tiny_cache_workdir: Path, mlflow_db_template: Path) -> Path:
    """A private workdir holding a copy of the tiny token cache (default prompts come from it) and
    an empty MLflow store (the embedded default, sqlite:///<workdir>/mlflow.db)."""
    workdir = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, workdir)
    shutil.copy2(mlflow_db_template, workdir / "mlflow.db")
    return workdir


@pytest.fixture
def reg_cfg(tiny_corpus: Path):
    # explicit test gates: tests that need a champion never rely on projects/demo.yaml's gates
    return tiny_cfg(tiny_corpus, *TEST_GATES)


@pytest.fixture
def store(reg_cfg, reg_workdir: Path) -> FakeStore:
    return FakeStore(reg_cfg, reg_workdir)


@pytest.fixture
def ckpts(tiny_checkpoints: dict[str, Path], reg_workdir: Path) -> dict[str, Path]:
    return copy_checkpoints(tiny_checkpoints, reg_workdir / "ckpts" / "pair")
