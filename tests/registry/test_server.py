"""The registry on an MLflow tracking server over HTTP with a PostgreSQL backend store (real
servers on loopback, see tests/servers.py): promote, gates, idempotency, rollback, a two-process
race and loading the champion over HTTP."""

from __future__ import annotations

import shutil
import time

import mlflow
import pandas as pd
import pytest

from harmonica.registry.cli_ops import list_versions, rollback
from harmonica.registry.promote import PromotionRefused, promote
from tests.registry.fakes import TEST_GATES, FakeStore, copy_checkpoints, with_metrics
from tests.registry.race import race
from tests.registry.test_concurrency import check_two_candidates
from tests.servers import mlflow_server, postgres_url  # noqa: F401  (fixtures used by name)
from tests.tiny import tiny_cfg

pytestmark = pytest.mark.slow


@pytest.fixture
def http_store(mlflow_server, tmp_path, tiny_cache_workdir, tiny_corpus, tiny_checkpoints):  # noqa: F811
    workdir = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, workdir)
    store = FakeStore(tiny_cfg(tiny_corpus, *TEST_GATES), workdir, tracking_uri=mlflow_server)
    assert store.tracking_uri.startswith("http://127.0.0.1:")
    return store, copy_checkpoints(tiny_checkpoints, workdir / "ckpts")


def test_promote_gates_idempotency_rollback_and_load_over_http(http_store, monkeypatch):
    store, ckpts = http_store
    name = "harmonica-tts"
    kw = {"tracking_uri": store.tracking_uri, "workdir": store.workdir, "cfg": store.cfg, "model_name": name}
    started = time.perf_counter()
    first = promote(store.candidate(ckpts, metrics=with_metrics(eval__wer=0.3)), **kw)  # with the smoke test
    first_seconds = time.perf_counter() - started
    assert first.champion_moved and first.version == "1"
    better = promote(store.candidate(ckpts, metrics=with_metrics(eval__wer=0.1)), smoke_test=False, **kw)
    assert better.champion_moved and better.previous_champion == "1"
    again = promote(better.evaluation_run_id, smoke_test=False, **kw)
    assert again.decision == "existing" and again.version == "2"
    collapsed = promote(store.candidate(ckpts, metrics=with_metrics(eval__wer=0.05),
                                        ar_events=[{"step": 990, "name": "ar/cb0"}]),
                        smoke_test=False, **kw)
    assert collapsed.failing_gates == ["collapse_free_tail"] and not collapsed.champion_moved
    with pytest.raises(PromotionRefused, match="dirty git tree"):
        promote(store.candidate(ckpts, train_dirty="true"), smoke_test=False, **kw)
    rows = list_versions(name, tracking_uri=store.tracking_uri)
    assert [(r["version"], r["aliases"]) for r in rows] == [("3", ["candidate"]), ("2", ["champion"]), ("1", [])]
    assert rows[0]["failing_gates"] == "collapse_free_tail"
    rollback(name, "1", "regression found in listening test", tracking_uri=store.tracking_uri)
    assert str(store.client.get_registered_model(name).aliases["champion"]) == "1"
    tags = store.client.get_model_version(name, "1").tags
    assert tags["harmonica.rolled_back_from"] == "2" and tags["gate.max_wer.passed"] == "true"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        out = model.predict(pd.DataFrame({"text": ["a quiet river", "hello world"]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert (out["sample_rate"] == 24000).all() and (out["duration_sec"] > 0).any()
    print(f"\npromote over HTTP with smoke test: {first_seconds:.1f} s; without: {better.seconds['total']:.1f} s")


def test_two_processes_race_over_http(http_store, tiny_corpus, tmp_path):
    store, ckpts = http_store
    name = "harmonica-tts-race"
    good = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.25))
    best = store.candidate(ckpts, metrics=with_metrics(eval__wer=0.10))
    decisions = race(store.tracking_uri, store.workdir, tiny_corpus, [good, best], tmp_path, model_name=name)
    check_two_candidates(store.client, decisions, best, name=name)
