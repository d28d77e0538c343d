"""Tiny sweeps: the tiny token cache of tests/tiny.py, 8-step NAR trials, SQLite stores in tmp dirs."""

import shutil
from pathlib import Path

import pytest
import yaml

from tests.tiny import TINY, tiny_cfg, tiny_steps


def tiny_sweep_overrides(corpus: Path) -> list[str]:
    return [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *tiny_steps("nar"),
            *tiny_steps("ar")]


TINY_SPACE = {
    "kind": "nar",
    "objective": {"type": "single", "metric": "val_ema/loss", "direction": "minimize",
                  "constraint": {"metric": "val/util_pred_median", "min": 0.01}},
    "params": {
        "training.nar.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
        "training.nar.usage_entropy_weight": {"type": "float", "low": 0.0, "high": 0.5},
        "training.nar.scheduler_type": {"type": "categorical", "choices": ["cosine", "constant"]},
    },
    "fixed": {"training.nar.val_every": 2, "training.nar.ckpt_every": 8},
    "pruner": {"type": "median", "n_startup_trials": 1},
}


def write_space(directory: Path, name: str = "tiny.yaml", **changes) -> Path:
    data = {**TINY_SPACE, **changes}
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def sweep_workdir(tmp_path: Path, tiny_cache_workdir: Path) -> Path:
    """A fresh workdir holding a copy of the tiny token cache."""
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir / "cache", work / "cache")
    return work


@pytest.fixture
def tiny_sweep_cfg(tiny_corpus: Path):
    return tiny_cfg(tiny_corpus, *tiny_steps("nar"))
