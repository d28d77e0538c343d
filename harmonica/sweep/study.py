"""Optuna side of `harmonica sweep`: the study, its trial budget, and one trial = one training.

Budget semantics (`--n-trials N`): N is the study's *total* of COMPLETE + PRUNED trials, over every
worker and every launch; FAIL trials are recorded but never counted. At launch, under a short
storage-wide lock (harmonica/sweep/storage.py), a worker tops the study up to N live trials by
enqueueing WAITING trials (live = COMPLETE, PRUNED, RUNNING or WAITING). Workers then only *pop*
WAITING trials - Optuna's WAITING -> RUNNING transition is atomic in the RDB storage (a row lock on
PostgreSQL, BEGIN IMMEDIATE on SQLite) - so two workers asked for N run exactly N trials between them,
none twice and none lost. Rerunning the same command resumes: finished trials are kept, nothing new is
enqueued unless N grew. (`optuna.study.MaxTrialsCallback` counts finished trials only and lets
concurrent workers overshoot, hence this.)

Dead workers (harmonica/sweep/retry.py): before every claim a worker fails stale trials (no heartbeat
for `sweep.grace_period` s) with `optuna.storages.fail_stale_trials`; each is replaced at once by a
WAITING retry with the same parameters (up to `sweep.max_retries` times), so the live count - and the
budget - is unchanged: a killed trial is one FAIL row plus its retry, never a lost or a double-counted
trial. A worker with nothing to claim stays while other workers' trials run, to take over one whose
worker dies. A trial that *raises* is FAIL and not retried (it would fail again); like a trial whose
retries are used up, it is replaced by the next launch's top-up.

Trial 0 of a new study is the project's own config (`sweep.baseline_trial`): the values the project
gives the searched knobs, enqueued once (under the lock, only into an empty study) and never pruned,
so the report can say whether the sweep's best beats it.

Trials are seeded: trial n samples with `sweep.sampler_seed + n`, so a study resumed or spread over
workers draws the same parameters as one uninterrupted run given the same history, and two workers
never draw from the same random stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from harmonica.config.load import ConfigError
from harmonica.config.schema import HarmonicaConfig, TrainingConfig
from harmonica.sweep.retry import find_child, retry_of
from harmonica.sweep.space import PrunerSpec, SweepSpace, apply_overrides
from harmonica.sweep.storage import worker_id
from harmonica.tracking import names
from harmonica.tracking.adapter import active_run_id

log = logging.getLogger(__name__)

LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
ATTR_PREFIX = names.ATTR_PREFIX


class TrialPrunedRun(optuna.TrialPruned):
    """Raised from the trainer's validation hook: ends the MLflow child run as KILLED, the trial as PRUNED."""

    run_status = "KILLED"


class StudyMismatchError(ConfigError):
    """The named study exists but was made for another search (other space, project or objectives)."""


# ------------------------------------------------------------------------------ sampler and pruner


def make_sampler(space: SweepSpace, seed: int) -> optuna.samplers.BaseSampler:
    kind = space.sampler.type or ("nsga2" if space.multi else "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        kwargs = {"population_size": space.sampler.population_size} if space.sampler.population_size else {}
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    # constant_liar: trials running on other workers count as bad, so parallel workers spread out
    kwargs: dict[str, Any] = {"seed": seed, "multivariate": True, "constant_liar": True}
    if space.sampler.n_startup_trials is not None:
        kwargs["n_startup_trials"] = space.sampler.n_startup_trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # multivariate TPE is "experimental" since 2.2
        return optuna.samplers.TPESampler(**kwargs)


def pruner_spec(space: SweepSpace, cfg: HarmonicaConfig) -> PrunerSpec:
    """The space file's pruner, else `sweep.pruner` of the config; multi-objective: never prunes."""
    if space.multi:
        return PrunerSpec(type="none")
    return space.pruner or PrunerSpec(type=cfg.sweep.pruner)


def make_pruner(spec: PrunerSpec, tcfg: TrainingConfig) -> optuna.pruners.BasePruner:
    """Reports happen at validation steps (multiples of val_every, and the last step)."""
    if spec.type == "median":
        warmup = spec.n_warmup_steps if spec.n_warmup_steps is not None else tcfg.val_every
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=warmup)
    first_rung = spec.n_warmup_steps or tcfg.val_every
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first_rung, max_resource=tcfg.total_steps, reduction_factor=spec.reduction_factor
        )
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------------------------------- study


def open_study(
    storage: RDBStorage, name: str, space: SweepSpace, space_digest: str, project: str, pruner: optuna.pruners.BasePruner,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Create the study or load it; an existing study must have been made for the same search."""
    directions = space.directions
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise StudyMismatchError(
            f"study '{name}' exists with directions {have}, the space file asks for {directions}: "
            "use another --study name"
        )
    attrs = study.user_attrs
    expected = {f"{ATTR_PREFIX}space_digest": space_digest, f"{ATTR_PREFIX}project": project,
                f"{ATTR_PREFIX}kind": space.kind}
    if not any(k in attrs for k in expected):
        for key, value in expected.items():
            study.set_user_attr(key, value)
        study.set_user_attr(f"{ATTR_PREFIX}objectives", [m.name for m in space.metrics])
    else:
        diff = [f"{k.removeprefix(ATTR_PREFIX)}: study has {attrs.get(k)!r}, this launch {v!r}"
                for k, v in expected.items() if attrs.get(k) != v]
        if diff:
            raise StudyMismatchError(
                f"study '{name}' was made for another search ({'; '.join(diff)}); a study resumes only with "
                "the same project, space file and fixed overrides: use another --study name"
            )
    return study


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's: fail RUNNING trials without a heartbeat for the grace period, run the storage's
    stale-trial callback (harmonica/sweep/retry.py) on those this process failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def top_up(study: optuna.Study, n_total: int, baseline: dict[str, Any] | None = None,
           off_space: list[str] | None = None) -> int:
    """Enqueue WAITING trials until the study has n_total live trials; call under storage_lock.

    `baseline`: the project's values of the searched knobs, enqueued as trial 0 if the study has no
    trial at all (`off_space`: the knobs left to the sampler, recorded on the trial)."""
    trials = study.get_trials(deepcopy=False)
    live = sum(1 for t in trials if t.state in LIVE_STATES)
    missing = max(0, n_total - live)
    budget = {f"{ATTR_PREFIX}budget": n_total}
    for i in range(missing):
        if i == 0 and not trials and baseline is not None:
            study.enqueue_trial(baseline, user_attrs={**budget, names.BASELINE_ATTR: True,
                                                      names.BASELINE_OFF_SPACE_ATTR: list(off_space or [])})
        else:
            study.enqueue_trial({}, user_attrs=budget)
    return missing


def pop_trial(study: optuna.Study, storage: RDBStorage, n_total: int) -> int | None:
    """Claim one WAITING trial (atomic); None when the budget is used up or nothing is waiting.

    The claimed trial's first heartbeat is recorded at once: Optuna never counts a RUNNING trial
    without one as stale, so a worker that died before its heartbeat thread started would hold it."""
    trials = study.get_trials(deepcopy=False)
    started = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    if started >= n_total:
        return None
    for t in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                if storage.get_heartbeat_interval() is not None:
                    storage.record_heartbeat(t._trial_id)
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def next_trial(study: optuna.Study, storage: RDBStorage, n_total: int, poll: float | None = None) -> int | None:
    """Fail stale trials (retrying them), then claim a WAITING one. With nothing to claim, wait (every
    `poll` s, default the heartbeat interval) while other workers' trials still run - one of them may go
    stale and come back as a retry; None once none runs (or the budget is used up)."""
    interval = storage.get_heartbeat_interval()
    while True:
        fail_stale_trials(study)
        trial_id = pop_trial(study, storage, n_total)
        if trial_id is not None:
            return trial_id
        counts = state_counts(study)
        if interval is None or counts["RUNNING"] == 0 or counts["COMPLETE"] + counts["PRUNED"] >= n_total:
            return None
        time.sleep(poll if poll is not None else interval)


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial_id: int) -> Iterator[None]:
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is not worth killing a trial
                log.debug("heartbeat of trial %s failed: %s", trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------- trial


@dataclass
class TrialReport:
    number: int
    state: str
    values: list[float] | None
    steps: int
    run_id: str | None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class ValidationReporter:
    """The trainer's `on_validation` hook: report the objective to Optuna and prune.

    A pruned run is tagged `optuna.pruned=true` (and the step) *before* the exception ends it, so the
    child run never looks like a success even if the process dies right after.
    """

    def __init__(self, trial: optuna.Trial, space: SweepSpace, tracker: Any, prune: bool,
                 constraint_aware: bool = True) -> None:
        self.trial = trial
        self.space = space
        self.tracker = tracker
        self.prune = prune
        self.constraint_aware = constraint_aware
        self.run_id: str | None = None
        self.last_step = 0
        self.last_metrics: dict[str, float] = {}
        self.pruned_step: int | None = None
        self.final_step: int | None = None  # the trial's total_steps: no pruning decision there (it is done)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.run_id is None:
            self.run_id = active_run_id()  # the trial's child run, opened by run_train
            if self.run_id:  # on the trial at once: whoever finds it stale closes this run
                self.trial.set_user_attr(names.MLFLOW_RUN_ID, self.run_id)
        self.last_step, self.last_metrics = step, dict(metrics)
        if self.space.multi:
            return  # Optuna prunes single-objective studies only
        name = self.space.objective.metric
        if name not in metrics:
            raise ConfigError(f"objective metric '{name}' is not among the validation metrics ({', '.join(sorted(metrics))})")
        value = float(metrics[name])
        self.trial.report(self.pruner_value(value, metrics), step)
        if self.final_step is not None and step >= self.final_step:
            return  # the trial is done: nothing to decide
        # asked even when this trial may not be pruned (the baseline): rung-based pruners (successive
        # halving, hyperband) record a trial's rungs only here, and the baseline must compete in them
        if self.trial.should_prune() and self.prune:
            self.pruned_step = step
            if self.run_id and self.tracker is not None:
                self.tracker.handle(self.run_id).set_tags(
                    {"optuna.pruned": "true", "optuna.pruned_step": str(step), "optuna.state": "PRUNED"})
            raise TrialPrunedRun(f"pruned at step {step}: {name}={value:.4f}")

    def pruner_value(self, value: float, metrics: dict[str, float]) -> float:
        """What the pruner sees: the objective, or the worst value while the constraint is violated."""
        c = self.space.objective.constraint
        if not self.constraint_aware or c is None or c.metric not in metrics:
            return value
        current = float(metrics[c.metric])
        if math.isfinite(current) and c.violation(current) <= 0:
            return value
        return math.inf if self.space.metrics[0].direction == "minimize" else -math.inf


def objective_values(space: SweepSpace, metrics: dict[str, float]) -> list[float]:
    missing = [m.name for m in space.metrics if m.name not in metrics]
    if missing:
        raise ConfigError(f"objective metric(s) {missing} missing from the trial's final metrics "
                          f"(validation metrics: {sorted(k for k in metrics if k.startswith('val'))})")
    return [float(metrics[m.name]) for m in space.metrics]


def set_constraint(trial: optuna.Trial, space: SweepSpace, metrics: dict[str, float]) -> float | None:
    c = space.objective.constraint
    if c is None:
        return None
    value = metrics.get(c.metric)
    violation = c.violation(float(value)) if value is not None and math.isfinite(value) else 1.0
    trial.set_constraint(c.key, violation)
    return violation


TrainFn = Callable[..., Any]


def run_one_trial(
    study: optuna.Study,
    storage: RDBStorage,
    trial_id: int,
    *,
    space: SweepSpace,
    base_cfg: HarmonicaConfig,
    workdir: Path,
    seed: int,
    parent_run_id: str,
    tracker: Any,
    train_fn: TrainFn,
    study_name: str,
) -> TrialReport:
    """Sample, build the trial's config, train it as a child run, tell Optuna how it ended."""
    claimed = storage.get_trial(trial_id)
    number = claimed.number
    study.sampler = make_sampler(space, seed + number)
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr(f"{ATTR_PREFIX}worker", worker_id())
    baseline = bool(claimed.user_attrs.get(names.BASELINE_ATTR))  # the reference: always runs to the end
    prune = not isinstance(study.pruner, optuna.pruners.NopPruner) and not baseline
    reporter = ValidationReporter(trial, space, tracker, prune, pruner_spec(space, base_cfg).constraint_aware)
    tags = {"optuna.study": study_name, "optuna.trial": str(number), names.SWEEP_WORKER: worker_id()}
    if (retried := retry_of(claimed)) is not None:
        tags[names.SWEEP_RETRY_OF] = str(retried)
        log.info("trial %d retries trial %d (its worker died)", number, retried)
    state, values, steps, error, run_id = TrialState.FAIL, None, 0, None, None
    params: dict[str, Any] = {}
    with heartbeat(storage, trial_id):
        try:
            params = space.suggest(trial)
            log.info("trial %d: %s", number, json.dumps(params))
            tags["optuna.params"] = json.dumps(params)[:5000]
            trial_cfg = apply_overrides(base_cfg, params, f"trial {number}")
            reporter.final_step = getattr(trial_cfg.training, space.kind).total_steps
            out = train_fn(trial_cfg, space.kind, workdir, parent_run_id=parent_run_id, on_validation=reporter,
                           run_name=f"trial-{number}", extra_tags=tags)
            run_id, steps = out.run_id, out.result.state.step
            values = objective_values(space, out.result.final_metrics)
            set_constraint(trial, space, out.result.final_metrics)
            state = TrialState.COMPLETE
        except TrialPrunedRun as exc:
            state, steps, error = TrialState.PRUNED, reporter.last_step, str(exc)
            set_constraint(trial, space, reporter.last_metrics)
        except KeyboardInterrupt:
            _tell(study, trial, TrialState.FAIL, None)
            raise
        except Exception as exc:
            log.exception("trial %d failed", number)
            state, steps, error = TrialState.FAIL, reporter.last_step, f"{exc.__class__.__name__}: {exc}"
        run_id = run_id or reporter.run_id or find_child(tracker, study_name, number)
        try:
            trial.set_user_attr(f"{ATTR_PREFIX}steps", steps)
            if run_id:
                trial.set_user_attr(names.MLFLOW_RUN_ID, run_id)
            if error:
                trial.set_user_attr(f"{ATTR_PREFIX}error", error[:2000])
            frozen = _tell(study, trial, state, values)
        except UpdateFinishedTrialError:  # another worker found it stale (no beat for the grace period)
            frozen = storage.get_trial(trial_id)
            error = f"failed as stale by another worker (no heartbeat for the grace period); {error or ''}".rstrip("; ")
            log.error("trial %d: %s", number, error)
    report = TrialReport(number, frozen.state.name, frozen.values, steps, run_id, params, error)
    if run_id:
        _annotate_child(tracker, run_id, report, space)
    log.info("trial %d %s after %d steps%s", number, report.state, steps,
             f": {report.values}" if report.values else (f" ({error})" if error else ""))
    return report


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None) -> Any:
    if state == TrialState.COMPLETE:
        if values is not None and not all(math.isfinite(v) for v in values):
            log.warning("trial %d: non-finite objective %s; recorded as FAIL", trial.number, values)
            return study.tell(trial, state=TrialState.FAIL)
        return study.tell(trial, values)
    return study.tell(trial, state=state)


def _annotate_child(tracker: Any, run_id: str, report: TrialReport, space: SweepSpace) -> None:
    run = tracker.handle(run_id)
    run.set_tags({"optuna.state": report.state, "optuna.pruned": str(report.state == "PRUNED").lower()})
    if report.state == TrialState.FAIL.name:
        tracker.set_status(run_id, "FAILED")  # e.g. a non-finite objective after a FINISHED training
    metrics: dict[str, float] = {"optuna/steps": float(report.steps)}
    if report.values:
        for m, v in zip(space.metrics, report.values, strict=True):
            metrics[f"optuna/value/{m.name}"] = v
    run.log_metrics(metrics, step=report.steps)
