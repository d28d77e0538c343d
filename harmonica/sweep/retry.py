"""Trials whose worker died: failed through Optuna's heartbeats, retried, and their MLflow runs closed.

A running trial beats every `sweep.heartbeat_interval` seconds (harmonica/sweep/study.py). Before every
claim, a worker calls `optuna.storages.fail_stale_trials`: a RUNNING trial without a beat for
`sweep.grace_period` seconds is failed (one worker wins that transition) and the storage's
`heartbeat_stale_trial_callback` - `StaleTrialRetry` below - runs in that worker only:

* Optuna's `RetryHeartbeatStaleTrialCallback(max_retry=sweep.max_retries)` adds a WAITING copy of the
  trial (same parameters, system attrs `failed_trial` = the original number and `retry_history`), which
  the next free worker claims like any other; per-attempt user attrs (worker, MLflow run, steps, error)
  are not copied;
* the dead trial's MLflow child run - which its own worker can no longer end - is ended FAILED and tagged
  `optuna.state=FAIL`, `harmonica.sweep_retried_as=<the new trial's number>` ("none" when the retries
  are used up) and `harmonica.sweep_failed_by=<this worker>`.

The retry's own child run is tagged `harmonica.sweep_retry_of=<the trial it retries>` by run_one_trial.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from harmonica.sweep.storage import worker_id
from harmonica.tracking import names

log = logging.getLogger(__name__)

# user attrs that describe one attempt, not the trial's identity: a retry starts without them
PER_ATTEMPT_ATTRS = frozenset({f"{names.ATTR_PREFIX}worker", names.MLFLOW_RUN_ID, f"{names.ATTR_PREFIX}steps",
                               f"{names.ATTR_PREFIX}error"})


def retry_of(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (the latest in its retry history), None for a first try."""
    history = trial.system_attrs.get("retry_history", [])  # RetryHeartbeatStaleTrialCallback.retry_history
    return int(history[-1]) if history else None


@dataclass
class StaleTrialRetry:
    """The storage's `heartbeat_stale_trial_callback` (see the module doc).

    `tracker` and `study_name` are set once the worker has opened its MLflow store; `events` lists
    (stale trial number, retry number or None) for what this worker handled.
    """

    max_retries: int
    study_name: str = ""
    tracker: Any = None
    events: list[tuple[int, int | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=self.max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attempt = copy.deepcopy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in PER_ATTEMPT_ATTRS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry(study, attempt)
        new = next((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                    if t.system_attrs.get("retry_history", [])[-1:] == [trial.number]), None)
        self.events.append((trial.number, new))
        if new is None:
            log.warning("trial %d: its worker (%s) died; failed it, no retry left (sweep.max_retries=%d)",
                        trial.number, trial.user_attrs.get(f"{names.ATTR_PREFIX}worker", "?"), self.max_retries)
        else:
            log.warning("trial %d: its worker (%s) died; failed it and enqueued its retry, trial %d",
                        trial.number, trial.user_attrs.get(f"{names.ATTR_PREFIX}worker", "?"), new)
        self._close_run(trial, new)

    def _close_run(self, trial: FrozenTrial, new: int | None) -> None:
        if self.tracker is None:
            return
        try:
            run_id = trial.user_attrs.get(names.MLFLOW_RUN_ID) or find_child(self.tracker, self.study_name, trial.number)
            if run_id is None:
                return  # the worker died before its trial's run started
            self.tracker.handle(run_id).set_tags({
                "optuna.state": TrialState.FAIL.name, names.SWEEP_RETRIED_AS: "none" if new is None else str(new),
                names.SWEEP_FAILED_BY: worker_id(),
            })
            self.tracker.set_status(run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the Optuna side is done; MLflow is best effort here
            log.error("trial %d: could not end its MLflow run as FAILED: %s", trial.number, exc)


def find_child(tracker: Any, study_name: str, number: int) -> str | None:
    """The MLflow child run of trial `number` (by its optuna.* tags), newest first."""
    try:
        runs = tracker.find_runs(f"tags.`optuna.study` = '{study_name}' and tags.`optuna.trial` = '{number}'", 1)
    except Exception:  # noqa: BLE001
        return None
    return runs[0].run_id if runs else None
