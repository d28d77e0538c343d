"""The study's trial budget, the storage lock and atomic trial claims, without training (fake trainer)."""

import json
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
from harmonica.sweep import study as st
from tests.sweep.conftest import write_space

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


def test_trials_are_seeded_by_their_number(tmp_path, sweep_workdir, tiny_sweep_cfg):
    space = write_space(tmp_path, pruner="none")
    a = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="seed-a", train_fn=fake_train(),
                  best_config_dir=tmp_path / "p")
    run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=1, study_name="seed-b", train_fn=fake_train(),
              best_config_dir=tmp_path / "p")
    b = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="seed-b", train_fn=fake_train(),
                  best_config_dir=tmp_path / "p")
    # a study resumed twice draws what an uninterrupted one drew
    storage = st.default_storage(sweep_workdir)
    pa = [t.params for t in optuna.load_study(study_name="seed-a", storage=storage).trials]
    pb = [t.params for t in optuna.load_study(study_name="seed-b", storage=storage).trials]
    assert pa == pb and len({json.dumps(p, sort_keys=True) for p in pa}) == 3
    assert [r.number for r in a.trials] == [0, 1, 2] and [r.number for r in b.trials] == [1, 2]


def test_storage_lock_is_exclusive_and_stale_locks_are_broken(tmp_path, monkeypatch):
    storage = st.open_storage(f"sqlite:///{tmp_path / 'l.db'}")
    inside, overlaps = [], []

    def worker():
        with st.storage_lock(storage, "x"):
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
    assert not overlaps and "x" + st.LOCK_SUFFIX not in optuna.get_all_study_names(storage)
    # a lock left by a dead worker is broken once stale
    lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "y" + st.LOCK_SUFFIX)
    storage.set_study_user_attr(lock_id, "acquired_at", time.time() - st.LOCK_STALE_SECONDS - 1)
    with st.storage_lock(storage, "y", timeout=10):
        pass
    monkeypatch.setattr(st, "LOCK_STALE_SECONDS", 3600.0)
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "z" + st.LOCK_SUFFIX)
    with pytest.raises(TimeoutError, match="optuna delete-study"), st.storage_lock(storage, "z", timeout=0.5):
        pass


POPPER = """
import json, sys, time
import optuna
from optuna.trial import TrialState
from harmonica.sweep.study import open_storage, pop_trial
url, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
storage = open_storage(url, heartbeat=False)
study = optuna.load_study(study_name="race", storage=storage)
while time.time() < start:
    time.sleep(0.001)
got = []
while (tid := pop_trial(study, storage, 10**6)) is not None:
    got.append(tid)
    storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.0])
json.dump(got, open(out, "w"))
"""


def test_two_processes_never_claim_the_same_sqlite_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=st.open_storage(url, heartbeat=False))
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
    assert st.redact("postgresql://u:secret@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"
    assert st.redact("sqlite:///x.db") == "sqlite:///x.db"


def test_hyperband_pruner_from_the_space_file(tmp_path, sweep_workdir, tiny_sweep_cfg):
    space = write_space(tmp_path, pruner={"type": "hyperband", "reduction_factor": 2})
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=4, study_name="hb", train_fn=fake_train(),
                    best_config_dir=tmp_path / "p")
    study = optuna.load_study(study_name="hb", storage=st.default_storage(sweep_workdir))
    assert out.counts["COMPLETE"] + out.counts["PRUNED"] == 4 and out.counts["FAIL"] == 0
    assert all(t.intermediate_values for t in study.trials)


def test_a_dead_workers_trial_is_failed_by_its_heartbeat_and_replaced(tmp_path, sweep_workdir, tiny_sweep_cfg, monkeypatch):
    monkeypatch.setattr(st, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(st, "HEARTBEAT_GRACE", 1)
    space = write_space(tmp_path, pruner="none")
    run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=1, study_name="dead", train_fn=fake_train(),
              best_config_dir=tmp_path / "p")
    storage = st.open_storage(st.default_storage(sweep_workdir))
    study = optuna.load_study(study_name="dead", storage=storage)
    with st.storage_lock(storage, "dead"):
        st.top_up(study, 2)
    claimed = st.pop_trial(study, storage, 2)  # a worker claims trial 1, beats once, dies
    storage.record_heartbeat(claimed)
    time.sleep(2.5)
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=2, study_name="dead", train_fn=fake_train(),
                    best_config_dir=tmp_path / "p")
    states = {t.number: t.state.name for t in optuna.load_study(study_name="dead", storage=storage).trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}
    assert [r.number for r in out.trials] == [2]
