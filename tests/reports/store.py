"""A populated MLflow store for report, compare and UI tests: real tiny runs in a sqlite workdir.

* `nar_a`: an 8-step NAR training run (the baseline);
* `nar_b`: the same config but `training.nar.collapse.util_floor=0.99`, so it differs from `nar_a` in
  exactly one param and its collapse monitor fires (collapse events, per-codebook metrics, samples);
* `evaluate`: a real evaluate run of the tiny AR checkpoint + `nar_b` on the `val` split (audio,
  eval_table.json, baselines).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harmonica.stages.evaluate import run_evaluate
from harmonica.stages.train import run_train
from tests.tiny import tiny_cfg, tiny_steps

DIFFERING_PARAM = "training.nar.collapse.util_floor"


@dataclass(frozen=True)
class Store:
    workdir: Path
    tracking_uri: str
    experiment_id: str
    nar_a: str
    nar_b: str
    evaluate: str


_SHARED: dict[int, Store] = {}


def shared_store(tmp_path_factory, corpus: Path, cache_workdir: Path, checkpoints: dict[str, Path]) -> Store:
    """One store per pytest session (keyed by its tmp_path_factory), shared by the report and UI tests:
    building it costs ~30 s of real training and evaluation."""
    key = id(tmp_path_factory)
    if key not in _SHARED:
        _SHARED[key] = build_store(tmp_path_factory.mktemp("reportstore") / "work", corpus, cache_workdir,
                                   checkpoints)
    return _SHARED[key]


def build_store(workdir: Path, corpus: Path, cache_workdir: Path, checkpoints: dict[str, Path]) -> Store:
    from mlflow.tracking import MlflowClient

    shutil.copytree(cache_workdir, workdir)
    a = run_train(tiny_cfg(corpus, *tiny_steps("nar")), "nar", workdir, run_name="nar-baseline")
    b = run_train(tiny_cfg(corpus, *tiny_steps("nar"), f"{DIFFERING_PARAM}=0.99"), "nar", workdir,
                  run_name="nar-collapsing")
    ev = run_evaluate(tiny_cfg(corpus, "eval.split=val"), workdir, str(checkpoints["ar"]), b.run_id, progress=False)
    exp = MlflowClient(a.tracking_uri).get_run(a.run_id).info.experiment_id
    return Store(workdir, a.tracking_uri, exp, a.run_id, b.run_id, ev.run_id)
