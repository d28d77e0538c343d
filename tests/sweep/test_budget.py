"""The study's trial budget, the storage lock and atomic trial claims, without training (fake trainer)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from harmonica.stages.sweep import run_sweep
from harmonica.sweep import storage as sto
from harmonica.sweep import study as st
from tests.sweep.conftest import write_space
from tests.tiny import tiny_cfg, tiny_steps

ROOT = Path(__file__).resolve().parents[2]


def fake_train(fail_numbers=()):
    """Stands in for run_train: reports two validations, then 'finishes' with metrics from the lr."""
    calls = []

    def train(cfg, kind, workdir, *, parent_run_id, on_validation, run_name, extra_tags):
        number = int(extra_tags["optuna.trial"])
        calls.append(number)
        lr = cfg.training.nar.lr
        metrics = {"val_ema/loss": 1.0 / lr, "val/util_pred_median": 0.5, "val/loss": 1.0}
        for step in (2, 4):
            on_validation(step, metrics)
        if number in fail_numbers:
            raise RuntimeError("boom")
        state = SimpleNamespace(step=8)
        return SimpleNamespace(run_id=None, result=SimpleNamespace(state=state, final_metrics=metrics))

    train.calls = calls
    return train


@pytest.mark.slow
def test_budget_is_the_study_total_and_failed_trials_are_replaced_at_the_next_launch(tmp_path, sweep_workdir, tiny_sweep_cfg):
    space = write_space(tmp_path, pruner="none")
    train = fake_train(fail_numbers=(1,))
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="b", train_fn=train,
                    best_config_dir=tmp_path / "p")
    assert train.calls == [0, 1, 2]
    assert out.counts["COMPLETE"] == 2 and out.counts["FAIL"] == 1
    assert [r.state for r in out.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "RuntimeError: boom" in out.trials[1].error
    # relaunch with the same total: only the failed trial is replaced
    train2 = fake_train()
    out2 = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="b", train_fn=train2,
                     best_config_dir=tmp_path / "p")
    assert train2.calls == [3] and out2.counts["COMPLETE"] == 3
    # a smaller total than what exists: nothing runs
    out3 = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=2, study_name="b", train_fn=fake_train(),
                     best_config_dir=tmp_path / "p")
    assert out3.trials == [] and out3.counts["COMPLETE"] == 3


@pytest.mark.slow
def test_trials_are_seeded_by_their_number(tmp_path, sweep_workdir, tiny_sweep_cfg):
    space = write_space(tmp_path, pruner="none")
    a = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="seed-a", train_fn=fake_train(),
                  best_config_dir=tmp_path / "p")
    run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=1, study_name="seed-b", train_fn=fake_train(),
              best_config_dir=tmp_path / "p")
    b = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="seed-b", train_fn=fake_train(),
                  best_config_dir=tmp_path / "p")
    # a study resumed twice draws what an uninterrupted one drew
    storage = sto.default_storage(sweep_workdir)
    pa = [t.params for t in optuna.load_study(study_name="seed-a", storage=storage).trials]
    pb = [t.params for t in optuna.load_study(study_name="seed-b", storage=storage).trials]
    assert pa == pb and len({json.dumps(p, sort_keys=True) for p in pa}) == 3
    assert [r.number for r in a.trials] == [0, 1, 2] and [r.number for r in b.trials] == [1, 2]


@pytest.mark.slow
def test_storage_lock_is_exclusive_and_stale_locks_are_broken(tmp_path, monkeypatch):
    storage = sto.open_storage(f"sqlite:///{tmp_path / 'l.db'}")
    inside, overlaps = [], []

    def worker():
        with sto.storage_lock(storage, "x"):
            if inside:
                overlaps.append(1)
            inside.append(1)
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and "x" + sto.LOCK_SUFFIX not in optuna.get_all_study_names(storage)
    # a lock left by a dead worker is broken once stale
    lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "y" + sto.LOCK_SUFFIX)
    storage.set_study_user_attr(lock_id, "acquired_at", time.time() - sto.LOCK_STALE_SECONDS - 1)
    with sto.storage_lock(storage, "y", timeout=10):
        pass
    monkeypatch.setattr(sto, "LOCK_STALE_SECONDS", 3600.0)
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "z" + sto.LOCK_SUFFIX)
    with pytest.raises(TimeoutError, match="optuna delete-study"), sto.storage_lock(storage, "z", timeout=0.5):
        pass


POPPER = """
import json, sys, time
import optuna
from optuna.trial import TrialState
from harmonica.sweep.storage import open_storage
from harmonica.sweep.study import pop_trial
url, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
storage = open_storage(url, heartbeat_interval=None)
study = optuna.load_study(study_name="race", storage=storage)
while time.time() < start:
    time.sleep(0.001)
got = []
while (tid := pop_trial(study, storage, 10**6)) is not None:
    got.append(tid)
    storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.0])
json.dump(got, open(out, "w"))
"""


@pytest.mark.slow
def test_two_processes_never_claim_the_same_sqlite_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=sto.open_storage(url, heartbeat_interval=None))
    for _ in range(60):
        study.enqueue_trial({})
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", POPPER, url, str(tmp_path / f"{i}.json"), str(start)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    a, b = (json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2))
    assert not set(a) & set(b) and len(a) + len(b) == 60
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())


def test_redacted_storage_url():
    assert sto.redact("postgresql://u:secret@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"
    assert sto.redact("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.slow
def test_hyperband_pruner_from_the_space_file(tmp_path, sweep_workdir, tiny_sweep_cfg):
    space = write_space(tmp_path, pruner={"type": "hyperband", "reduction_factor": 2})
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=4, study_name="hb", train_fn=fake_train(),
                    best_config_dir=tmp_path / "p")
    study = optuna.load_study(study_name="hb", storage=sto.default_storage(sweep_workdir))
    assert out.counts["COMPLETE"] + out.counts["PRUNED"] == 4 and out.counts["FAIL"] == 0
    assert all(t.intermediate_values for t in study.trials)


def _dead_worker_claims_trial(sweep_workdir, name: str, n_total: int) -> int:
    """What a worker leaves behind when it is killed mid-trial: a RUNNING trial, one heartbeat, a RUNNING
    MLflow child run tagged like a trial's."""
    storage = sto.open_storage(sto.default_storage(sweep_workdir), 1, 2)
    study = optuna.load_study(study_name=name, storage=storage)
    with sto.storage_lock(storage, name):
        st.top_up(study, n_total)
    claimed = st.pop_trial(study, storage, n_total)  # records the first heartbeat
    number = storage.get_trial(claimed).number
    return number


def test_successive_halving_pruner_and_the_heartbeat_knobs():
    from harmonica.config.load import ConfigError
    from harmonica.config import load_config
    from harmonica.sweep.space import PrunerSpec

    nar = load_config("demo").training.nar
    pruner = st.make_pruner(PrunerSpec(type="successive_halving", reduction_factor=4), nar)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == nar.val_every and pruner._reduction_factor == 4
    with pytest.raises(ConfigError, match="grace_period"):
        load_config("demo", ["sweep.heartbeat_interval=30", "sweep.grace_period=30"])


@pytest.mark.slow
def test_a_dead_workers_trial_is_failed_by_its_heartbeat_retried_and_its_run_closed(tmp_path, sweep_workdir, tiny_corpus):
    from harmonica.tracking.adapter import Tracker
    from harmonica.tracking import names

    cfg = tiny_cfg(tiny_corpus, *tiny_steps("nar"), "sweep.heartbeat_interval=1", "sweep.grace_period=2")
    space = write_space(tmp_path, pruner="none")
    run_sweep(cfg, sweep_workdir, space, n_trials=1, study_name="dead", train_fn=fake_train(),
              best_config_dir=tmp_path / "p")
    number = _dead_worker_claims_trial(sweep_workdir, "dead", 2)
    tracker = Tracker(cfg, sweep_workdir)
    run_id = tracker.create_run(f"trial-{number}", {"optuna.study": "dead", "optuna.trial": str(number)})
    time.sleep(3.5)  # > grace period: stale
    train = fake_train()
    out = run_sweep(cfg, sweep_workdir, space, n_trials=2, study_name="dead", train_fn=train,
                    best_config_dir=tmp_path / "p")
    study = optuna.load_study(study_name="dead", storage=sto.default_storage(sweep_workdir))
    trials = {t.number: t for t in study.trials}
    assert {n: t.state.name for n, t in trials.items()} == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    assert trials[2].system_attrs["failed_trial"] == 1 and trials[2].system_attrs["retry_history"] == [1]
    assert trials[2].params == trials[1].params or not trials[1].params  # a retry re-runs the same values
    assert out.retried == [(1, 2)] and train.calls == [2] and out.counts["COMPLETE"] == 2
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[names.SWEEP_RETRIED_AS] == "2" and run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags[names.SWEEP_FAILED_BY].endswith(f":{os.getpid()}")


@pytest.mark.slow
def test_the_stale_trial_callback_retries_once_per_dead_trial_up_to_max_retries(tmp_path, tiny_sweep_cfg):
    """Two workers' storages on one study: the one whose FAIL transition wins retries the trial (same
    values and user attrs, Optuna's retry system attrs) and ends the dead trial's MLflow run FAILED."""
    from harmonica.sweep.retry import StaleTrialRetry
    from harmonica.tracking import names
    from harmonica.tracking.adapter import Tracker

    url = f"sqlite:///{tmp_path / 'o.db'}"
    tracker = Tracker(tiny_sweep_cfg, tmp_path)
    workers = [StaleTrialRetry(1, "cb", tracker) for _ in range(2)]
    studies = [optuna.create_study(study_name="cb", storage=sto.open_storage(url, 1, 2, on_stale=w), load_if_exists=True)
               for w in workers]
    storage = studies[0]._storage
    st.top_up(studies[0], 1, {"x": 1.5})
    dead = st.pop_trial(studies[0], storage, 1)
    optuna.Trial(studies[0], dead).suggest_float("x", 0.0, 2.0)
    storage.set_trial_user_attr(dead, names.MLFLOW_RUN_ID, tracker.create_run("trial-0", {"optuna.study": "cb"}))
    run_id = storage.get_trial(dead).user_attrs[names.MLFLOW_RUN_ID]
    assert st.next_trial(studies[1], studies[1]._storage, 1, poll=0.5) is not None  # waits, fails it, claims the retry
    assert workers[1].events == [(0, 1)] and workers[0].events == []
    st.fail_stale_trials(studies[0])  # the other worker finds nothing left to fail
    trials = studies[0].get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING"]
    assert trials[1].params == {"x": 1.5} and trials[1].system_attrs["failed_trial"] == 0
    assert trials[1].user_attrs[names.BASELINE_ATTR] is True and names.MLFLOW_RUN_ID not in trials[1].user_attrs
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[names.SWEEP_RETRIED_AS] == "1"
    # the retry dies too: max_retries=1 is used up, no third attempt, nothing left to wait for
    assert st.next_trial(studies[0], storage, 1, poll=0.5) is None
    assert workers[0].events == [(1, None)] and [t.state.name for t in studies[0].get_trials()] == ["FAIL", "FAIL"]


@pytest.mark.slow
def test_trial_0_is_the_projects_config_and_the_report_compares_the_best_with_it(tmp_path, sweep_workdir, tiny_sweep_cfg):
    from mlflow.tracking import MlflowClient

    from harmonica.tracking import names

    space = write_space(tmp_path, pruner={"type": "median", "n_startup_trials": 0})
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=4, study_name="base", train_fn=fake_train(),
                    best_config_dir=tmp_path / "p")
    study = optuna.load_study(study_name="base", storage=sto.default_storage(sweep_workdir))
    t0 = study.trials[0]
    nar = tiny_sweep_cfg.training.nar
    assert t0.user_attrs[names.BASELINE_ATTR] is True and t0.state == TrialState.COMPLETE
    assert t0.params == {"training.nar.lr": nar.lr, "training.nar.usage_entropy_weight": nar.usage_entropy_weight,
                         "training.nar.scheduler_type": nar.scheduler_type}
    assert sum(bool(t.user_attrs.get(names.BASELINE_ATTR)) for t in study.trials) == 1
    # fake_train scores 1/lr: the baseline beats the sweep unless a trial drew a larger lr
    best_lr = max(t.params["training.nar.lr"] for t in study.trials if t.state == TrialState.COMPLETE)
    assert out.baseline_trial == 0 and out.beats_baseline == (best_lr > nar.lr)
    assert any(n.startswith("baseline: ") for n in out.notes)
    parent = MlflowClient(out.tracking_uri).get_run(out.parent_run_id)
    assert parent.data.tags[names.SWEEP_BEATS_BASELINE] == str(out.beats_baseline).lower()
    assert parent.data.metrics["sweep/baseline_value"] == pytest.approx(1.0 / nar.lr)
    # a relaunch with a larger budget enqueues no second baseline
    run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=5, study_name="base", train_fn=fake_train(),
              best_config_dir=tmp_path / "p")
    study = optuna.load_study(study_name="base", storage=sto.default_storage(sweep_workdir))
    assert len(study.trials) == 5 and sum(bool(t.user_attrs.get(names.BASELINE_ATTR)) for t in study.trials) == 1


def test_a_project_value_outside_the_space_is_left_to_the_sampler(tmp_path, tiny_sweep_cfg):
    from harmonica.sweep.space import baseline_values, load_space

    space = load_space(write_space(tmp_path, params={
        "training.nar.lr": {"type": "float", "low": 0.5, "high": 0.9},
        "training.nar.scheduler_type": {"type": "categorical", "choices": ["cosine", "constant"]},
        "training.nar.warmup_steps": {"type": "int", "low": 0, "high": 6, "step": 3},
    }), tiny_sweep_cfg)
    values, off = baseline_values(space, tiny_sweep_cfg)
    nar = tiny_sweep_cfg.training.nar
    assert "training.nar.lr" in off and "training.nar.lr" not in values
    assert values["training.nar.scheduler_type"] == nar.scheduler_type
    assert ("training.nar.warmup_steps" in values) == (nar.warmup_steps in (0, 3, 6)) != ("training.nar.warmup_steps" in off)
