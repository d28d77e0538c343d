"""`harmonica sweep`: an Optuna study over the anti-collapse knobs, one MLflow child run per trial.

One worker = one call of `run_sweep`; any number of workers on any number of machines may run the same
study (same --study and --storage, and the same MLflow tracking store): see harmonica/sweep/study.py for
the trial budget, the locking and resuming. MLflow layout:

* a parent run per study (tag `harmonica.sweep_study`), created by the first worker and recorded in the
  study (user attr `harmonica.mlflow_parent_run_id`); later workers and relaunches attach to it. Under
  `mlflow run` the launcher's run *is* the parent when it is the study's first launch in the project's
  experiment; otherwise the launcher's run is tagged with the parent's id and gets the same summary.
* a child run per trial (`trial-<n>`, tags `optuna.study`, `optuna.trial`, `optuna.state`), opened by the
  trainer; a pruned trial's run ends KILLED with `optuna.pruned=true`, never FINISHED. A trial whose
  worker died is ended FAILED by the worker that finds its heartbeat stale, tagged
  `harmonica.sweep_retried_as` (its retry's run: `harmonica.sweep_retry_of`); see harmonica/sweep/retry.py.
* the parent's summary compares the best trial with trial 0, the project's own config
  (`harmonica.sweep_beats_baseline`, metric `sweep/baseline_value`).
* on the parent after each worker: `trials.csv` (+ an MLflow table), `plots/*.html` (self-contained
  plotly), `sweep/*` metrics, and the best trial's ready config `projects/<project>_best.yaml`
  (also under `best/`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from functools import partial
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonica.config.load import ConfigError, find_root, flatten
from harmonica.config.schema import HarmonicaConfig
from harmonica.sweep import report as rep
from harmonica.sweep import storage as sto
from harmonica.sweep import study as st
from harmonica.sweep.retry import StaleTrialRetry
from harmonica.sweep.space import SweepSpace, apply_overrides, baseline_values, format_value, load_space
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import Run, Tracker
from harmonica.training.progress import BarProgress, make_progress
from harmonica.tracking import names

log = logging.getLogger(__name__)

PARENT_ATTR = names.MLFLOW_PARENT_RUN_ID


@dataclass
class SweepOutcome:
    study_name: str
    storage: str  # password redacted
    n_total: int
    parent_run_id: str
    tracking_uri: str
    experiment: str
    trials: list[st.TrialReport]  # the ones this worker ran
    counts: dict[str, int]
    best_trial: int | None
    best_values: list[float] | None
    best_feasible: bool
    best_run_id: str | None
    best_config: Path | None
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_trial: int | None = None  # trial 0: the project's config
    beats_baseline: bool | None = None  # None: unknown (no baseline, or it did not complete)
    retried: list[tuple[int, int | None]] = field(default_factory=list)  # (dead trial, its retry) this worker handled
    launcher_run_id: str | None = None


def default_study_name(cfg: HarmonicaConfig, space_path: Path) -> str:
    return f"{cfg.project}-{space_path.stem}"


def run_sweep(
    cfg: HarmonicaConfig,
    workdir: Path,
    space_path: Path | str,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    *,
    pruner: Any = None,
    best_config_dir: Path | None = None,
    train_fn: Callable[..., Any] | None = None,
    progress: bool = False,
) -> SweepOutcome:
    """Run this worker's share of the study until its total of `n_trials` trials is reached.

    `pruner` (an optuna pruner) replaces the space file's/config's one (tests, benchmarks);
    `best_config_dir` defaults to the checkout's projects/; `train_fn` defaults to run_train.
    `progress`: on a terminal, a bar over the study's trials (best so far) and each trial's step bar
    under it (train_fn then gets `progress=True`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    space_path = _space_file(Path(space_path))
    space = load_space(space_path, cfg)
    n_total = n_trials if n_trials is not None else space.trials_default
    if n_total is None or n_total < 1:
        raise ConfigError(f"--n-trials must be >= 1 (or set trials_default in {space_path})")
    name = study_name or cfg.sweep.study_name or default_study_name(cfg, space_path)
    url = storage or cfg.sweep.storage or sto.default_storage(workdir)
    base = apply_overrides(cfg, space.fixed, f"{space_path}: fixed")
    if base.sweep.storage:  # trials and the parent log their config as params: no database password there
        base = base.model_copy(update={"sweep": base.sweep.model_copy(update={"storage": sto.redact(base.sweep.storage)})})
    tcfg = getattr(base.training, space.kind)
    if train_fn is None:
        from harmonica.stages.train import run_train as train_fn

    with _without_env("MLFLOW_RUN_ID") as launcher:  # trial runs must not adopt the launcher's run
        _ensure_cache(base, workdir)
        retry = StaleTrialRetry(cfg.sweep.max_retries, name)
        storage_obj = sto.open_storage(url, cfg.sweep.heartbeat_interval, cfg.sweep.grace_period, on_stale=retry)
        the_pruner = pruner if pruner is not None else st.make_pruner(st.pruner_spec(space, cfg), tcfg)
        baseline, off_space = baseline_values(space, base) if cfg.sweep.baseline_trial else (None, [])
        with sto.storage_lock(storage_obj, name):
            # first touch of the MLflow store under the lock: two workers must not create a fresh
            # SQLite store's tables at the same time
            tracker = Tracker(cfg, workdir)
            retry.tracker = tracker  # a dead worker's trial: this worker ends its MLflow run
            study = st.open_study(storage_obj, name, space, space.digest(), cfg.project, the_pruner,
                                  st.make_sampler(space, cfg.sweep.sampler_seed))
            st.fail_stale_trials(study)
            parent_id, created = _parent_run(study, tracker, launcher, name)
            enqueued = st.top_up(study, n_total, baseline, off_space)
        log.info("study '%s' (%s): total %d trials, %d newly enqueued; parent run %s",
                 name, sto.redact(url), n_total, enqueued, parent_id)

        reports: list[st.TrialReport] = []
        files = workdir / "sweeps" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        with tracker.run("sweep", f"sweep-{name}", description=_describe(cfg, space, space_path, name, url, study),
                         tags=_parent_tags(space, space_path, name, url), run_id=parent_id) as parent:
            announce_run(parent, "sweep")
            if created:
                parent.log_config(base)
                parent.log_params(_sweep_params(space, space_path, name, url, cfg, the_pruner))
            parent.log_artifact(space_path, "space")
            parent.log_metrics({"sweep/budget": float(n_total)}, step=n_total)
            bar = make_progress(progress, f"sweep {name}", unit="trial", every=True)
            train = partial(train_fn, progress=True) if isinstance(bar, BarProgress) else train_fn
            bar.start(n_total, initial=_finished(study, n_total))
            try:
                while (trial_id := st.next_trial(study, storage_obj, n_total)) is not None:
                    reports.append(st.run_one_trial(
                        study, storage_obj, trial_id, space=space, base_cfg=base, workdir=workdir,
                        seed=cfg.sweep.sampler_seed, parent_run_id=parent_id, tracker=tracker, train_fn=train,
                        study_name=name,
                    ))
                    bar.update(_finished(study, n_total), _bar_fields(study, space, reports[-1]))
            finally:
                bar.close()
            summary = _summarise(study, space, space_path, cfg, name, url, files, best_config_dir, tracker)
            _publish(parent, summary)
        _settle_parent(tracker, study, parent_id)
        if launcher and launcher != parent_id:
            pointer = tracker.handle(launcher)
            pointer.set_tags({names.STAGE: "sweep", names.SWEEP_WORKER_OF: name,
                              names.SWEEP_PARENT_RUN_ID: parent_id,
                              "mlflow.note.content": f"Worker of sweep study '{name}': the study's parent run "
                                                     f"is {parent_id} in experiment '{tracker.experiment_name}'."})
            _publish(pointer, summary)

    best = summary["best"]
    return SweepOutcome(
        study_name=name, storage=sto.redact(url), n_total=n_total, parent_run_id=parent_id,
        tracking_uri=tracker.tracking_uri, experiment=tracker.experiment_name, trials=reports,
        counts=st.state_counts(study),
        best_trial=best.trial.number if best.trial else None,
        best_values=list(best.trial.values) if best.trial else None, best_feasible=best.feasible,
        best_run_id=best.trial.user_attrs.get(names.MLFLOW_RUN_ID) if best.trial else None,
        best_config=summary["best_config"], plots=[p.name for p in summary["plots"]], notes=summary["notes"],
        baseline_trial=summary["baseline"].trial.number if summary["baseline"].trial else None,
        beats_baseline=summary["baseline"].beats, retried=list(retry.events),
        launcher_run_id=launcher if launcher != parent_id else None,
    )


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _without_env(key: str) -> Iterator[str | None]:
    value = os.environ.pop(key, None)
    try:
        yield value
    finally:
        if value is not None:
            os.environ[key] = value


def _finished(study: Any, n_total: int) -> int:
    """Trials of the study that ended (any worker's), for the trial bar."""
    counts = st.state_counts(study)
    return min(counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"], n_total)


def _bar_fields(study: Any, space: SweepSpace, last: st.TrialReport) -> dict[str, str]:
    """The trial bar's postfix: the best trial so far and how this worker's last one ended."""
    best = rep.select_best(study, space)
    shown = {"best": f"#{best.trial.number} {rep.describe_values(best.trial, space)}" if best.trial else "none"}
    return {**shown, "last": f"#{last.number} {last.state.lower()} @{last.steps}"}


def _space_file(path: Path) -> Path:
    """A relative space path that is not found from the current directory is looked up in the checkout."""
    if path.is_file() or path.is_absolute():
        return path
    with contextlib.suppress(ConfigError):
        candidate = find_root() / path
        if candidate.is_file():
            return candidate
    return path


def _ensure_cache(cfg: HarmonicaConfig, workdir: Path) -> None:
    """Trials train on the project's token cache; a first sweep in a fresh workdir builds it."""
    from harmonica.data.cache import find_cache

    try:
        find_cache(cfg, workdir)
    except FileNotFoundError:
        from harmonica.stages.preprocess import run_preprocess

        log.info("no token cache for project '%s' under %s: running preprocess first", cfg.project, workdir)
        run_preprocess(cfg, workdir, progress=False)


def _parent_run(study: Any, tracker: Tracker, launcher: str | None, name: str) -> tuple[str, bool]:
    """The study's parent run in this tracking store (found via the study, else created); call under the lock."""
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        run = tracker.get_run(existing)
        if run is not None and not run.deleted:
            return existing, False
        if run is not None:
            log.warning("the study's parent run %s was deleted; starting a new one", existing)
        else:  # not in this store: the worker logs to another tracking store
            log.warning("the study's parent run %s is not in %s; this worker gets its own parent run",
                        existing, tracker.tracking_uri)
            existing = "elsewhere"
    exp_id = tracker.experiment_id()
    parent_id = None
    if launcher:
        run = tracker.get_run(launcher)
        if run is not None and run.experiment_id == exp_id:
            parent_id = launcher  # `mlflow run --experiment-name <the project's experiment>`
    if parent_id is None:
        parent_id = tracker.create_run(f"sweep-{name}", {names.SWEEP_STUDY: name})
    if existing != "elsewhere":
        study.set_user_attr(PARENT_ATTR, parent_id)
        study.set_user_attr(names.MLFLOW_TRACKING_URI, tracker.tracking_uri)
    return parent_id, True


def _parent_tags(space: SweepSpace, space_path: Path, name: str, url: str) -> dict[str, str]:
    return {
        names.SWEEP_STUDY: name, "optuna.study": name, "optuna.storage": sto.redact(url),
        names.SWEEP_SPACE: space_path.name, names.MODEL_KIND: space.kind,
        names.SWEEP_OBJECTIVE: "; ".join(f"{m.direction} {m.name}" for m in space.metrics),
    }


def _sweep_params(space: SweepSpace, space_path: Path, name: str, url: str, cfg: HarmonicaConfig,
                  pruner: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "sweep.study": name, "sweep.storage": sto.redact(url), "sweep.space": str(space_path),
        "sweep.kind": space.kind, "sweep.objective": space.objective.model_dump(mode="json"),
        "sweep.sampler": st.make_sampler(space, cfg.sweep.sampler_seed).__class__.__name__,
        "sweep.sampler_seed": cfg.sweep.sampler_seed, "sweep.pruner": pruner.__class__.__name__,
    }
    for key, spec in space.params.items():
        params[f"space.{key}"] = spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"type": spec.type}
    for key, value in flatten(space.fixed).items():
        params[f"fixed.{key}"] = format_value(value)
    return params


def _describe(cfg: HarmonicaConfig, space: SweepSpace, space_path: Path, name: str, url: str, study: Any) -> str:
    obj = " vs ".join(f"{m.direction} {m.name}" for m in space.metrics)
    c = space.objective.constraint
    return (
        f"Optuna sweep of the {space.kind.upper()} on project '{cfg.project}' ({space_path.name}): "
        f"{'multi-objective ' if space.multi else ''}{obj}"
        + (f" subject to {c.key}" if c else "")
        + f"; searching {', '.join(space.params)}. Study '{name}' in {sto.redact(url)}, "
        f"{study.sampler.__class__.__name__} (seed {cfg.sweep.sampler_seed}), {study.pruner.__class__.__name__}. "
        "Each trial is a child run."
    )


def _summarise(study: Any, space: SweepSpace, space_path: Path, cfg: HarmonicaConfig, name: str, url: str,
               files: Path, best_config_dir: Path | None, tracker: Tracker) -> dict[str, Any]:
    rows = rep.trial_rows(study, space)
    csv_path = rep.write_csv(rows, files / "trials.csv")
    plots, notes = rep.study_plots(study, space, files / "plots")
    best = rep.select_best(study, space)
    if best.note:
        notes.append(f"best trial: {best.note}")
    try:
        written = rep.best_config(cfg, space, space_path, best, name, sto.redact(url), out_dir=best_config_dir)
    except (ConfigError, OSError) as exc:  # the sweep's results are still worth publishing
        log.error("could not write the best config: %s", exc)
        notes.append(f"best config: not written ({exc})")
        written = None
    baseline = rep.compare_baseline(study, space, best)
    notes.append(f"baseline: {baseline.note}")
    metrics = rep.summary_metrics(study, space, best, baseline)
    counts = st.state_counts(study)
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    log.info("study '%s': %d complete, %d pruned, %d failed; best %s", name, counts["COMPLETE"], counts["PRUNED"],
             counts["FAIL"], f"trial {best.trial.number} ({rep.describe_values(best.trial, space)})" if best.trial else "none")
    return {"rows": rows, "csv": csv_path, "plots": plots, "notes": notes, "best": best,
            "best_config": written[0] if written else None, "metrics": metrics, "step": finished,
            "baseline": baseline}


def _publish(run: Run, summary: dict[str, Any]) -> None:
    run.log_artifact(summary["csv"])
    if summary["rows"]:
        run.log_table(rep.as_table(summary["rows"]), "trials.json")
    for path in summary["plots"]:
        run.log_artifact(path, "plots")
    if summary["notes"]:
        run.log_text("\n".join(summary["notes"]) + "\n", "plots/NOTES.txt")
    if summary["best_config"] is not None:
        run.log_artifact(summary["best_config"], "best")
    run.log_metrics(summary["metrics"], step=summary["step"])
    best = summary["best"]
    tags = {names.SWEEP_N_FINISHED: summary["step"]}
    if best.trial is not None:
        tags.update({names.SWEEP_BEST_TRIAL: best.trial.number,
                     names.SWEEP_BEST_FEASIBLE: str(best.feasible).lower(),
                     names.SWEEP_BEST_RUN_ID: best.trial.user_attrs.get(names.MLFLOW_RUN_ID, "")})
    if summary["best_config"] is not None:
        tags[names.SWEEP_BEST_CONFIG] = str(summary["best_config"])
    baseline = summary["baseline"]
    if baseline.trial is not None:
        tags[names.SWEEP_BASELINE_TRIAL] = baseline.trial.number
        tags[names.SWEEP_BEATS_BASELINE] = "unknown" if baseline.beats is None else str(baseline.beats).lower()
    run.set_tags(tags)


def _settle_parent(tracker: Tracker, study: Any, parent_id: str) -> None:
    """Our exit marked the parent FINISHED; while other workers still run trials it is RUNNING again.
    Set-then-recheck, so the last worker's FINISHED wins whichever order the two exits happen in."""
    if st.state_counts(study)["RUNNING"] == 0:
        return
    tracker.set_status(parent_id, "RUNNING")
    if st.state_counts(study)["RUNNING"] == 0:
        tracker.set_status(parent_id, "FINISHED")
