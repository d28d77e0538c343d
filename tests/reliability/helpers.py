"""Shared bits of the reliability tests: the CLI as a subprocess on a tiny corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.tiny import TINY, tiny_steps


def cli_args(corpus: Path, kind: str = "ar", *extra: str) -> list[str]:
    return [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *tiny_steps(kind), *extra]


def harmonica(*args: str) -> list[str]:
    return [sys.executable, "-m", "harmonica.cli", *args]


def run(cmd: list[str], cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def runs_of(workdir: Path, stage: str):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harmonica/demo")
    return client, client.search_runs([exp.experiment_id], f"tags.`harmonica.stage` = '{stage}'")
