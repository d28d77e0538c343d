"""Real processes: two sweep workers on one SQLite study, one SIGKILLed in the middle of a trial. The
survivor fails the dead trial by its stale heartbeat, retries it, and closes its MLflow run; the study
still ends with exactly the budget of COMPLETE trials (the dead attempt is one extra FAIL row)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harmonica.tracking import names
from tests.sweep.conftest import write_space

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 3

WORKER = """
import json, sys
from pathlib import Path
from harmonica.stages.sweep import run_sweep
from tests.tiny import tiny_cfg, tiny_steps

corpus, workdir, space, best_dir = sys.argv[1:5]
cfg = tiny_cfg(Path(corpus), *tiny_steps("nar"), "sweep.heartbeat_interval=1", "sweep.grace_period=3")
out = run_sweep(cfg, Path(workdir), Path(space), n_trials=N_TRIALS, study_name="kill", best_config_dir=Path(best_dir))
print("RESULT " + json.dumps({"trials": [[r.number, r.state] for r in out.trials], "retried": out.retried}))
""".replace("N_TRIALS", str(N_TRIALS))


@pytest.mark.slow
def test_a_sigkilled_worker_s_trial_is_retried_by_the_other_worker(tmp_path, tiny_corpus, sweep_workdir):
    space = write_space(tmp_path, pruner="none", fixed={"training.nar.val_every": 2, "training.nar.ckpt_every": 8,
                                                        "training.nar.total_steps": 16})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = lambda: subprocess.Popen(  # noqa: E731
        [sys.executable, "-c", WORKER, str(tiny_corpus), str(sweep_workdir), str(space), str(tmp_path / "projects")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = start()
    time.sleep(1.0)
    survivor = start()
    url = f"sqlite:///{sweep_workdir / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    # wait until the victim is inside a trial: RUNNING, its MLflow child run open (the run id is on the trial)
    deadline, dead = time.time() + 120, None
    while dead is None and time.time() < deadline and victim.poll() is None:
        try:
            study = optuna.load_study(study_name="kill", storage=storage)
            dead = next((t for t in study.get_trials() if t.state.name == "RUNNING"
                         and t.user_attrs.get("harmonica.worker", "").endswith(f":{victim.pid}")
                         and names.MLFLOW_RUN_ID in t.user_attrs), None)
        except (KeyError, optuna.exceptions.StorageInternalError):
            pass  # the study is not created yet
        if dead is None:
            time.sleep(0.05)
    assert dead is not None, f"the victim never got into a trial: {victim.communicate(timeout=30)[1][-3000:]}"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)

    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-4000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    study = optuna.load_study(study_name="kill", storage=url)
    trials = {t.number: t for t in study.trials}
    retry = next(t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number)
    assert trials[dead.number].state.name == "FAIL"
    assert result["retried"] == [[dead.number, retry.number]]  # the survivor failed it and enqueued the retry
    assert retry.state.name == "COMPLETE" and retry.params == trials[dead.number].params
    assert retry.system_attrs["retry_history"] == [dead.number]
    # the trial count is intact: the budget of COMPLETE trials, plus the one dead attempt; none run twice
    states = sorted(t.state.name for t in trials.values())
    assert states == ["COMPLETE"] * N_TRIALS + ["FAIL"], states
    assert sum(bool(t.user_attrs.get(names.BASELINE_ATTR)) for t in trials.values() if t.state.name == "COMPLETE") == 1

    client = MlflowClient(f"sqlite:///{sweep_workdir / 'mlflow.db'}")
    dead_run = client.get_run(dead.user_attrs[names.MLFLOW_RUN_ID])
    assert dead_run.info.status == "FAILED"
    assert dead_run.data.tags[names.SWEEP_RETRIED_AS] == str(retry.number)
    assert dead_run.data.tags["optuna.state"] == "FAIL"
    assert dead_run.data.tags[names.SWEEP_FAILED_BY].endswith(f":{survivor.pid}")
    retry_run = client.get_run(retry.user_attrs[names.MLFLOW_RUN_ID])
    assert retry_run.info.status == "FINISHED" and retry_run.data.tags[names.SWEEP_RETRY_OF] == str(dead.number)
    exp = client.get_experiment_by_name("harmonica/demo")
    trial_runs = client.search_runs([exp.experiment_id], "tags.`optuna.study` = 'kill' and tags.`harmonica.stage` = 'train_nar'")
    assert sorted(r.info.status for r in trial_runs) == ["FAILED"] + ["FINISHED"] * N_TRIALS
