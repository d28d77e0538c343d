"""What a sweep leaves behind: the trials table, the study plots, the best trial and its ready config."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from harmonica.config.load import (
    ConfigError,
    deep_merge,
    find_root,
    flatten,
    load_config,
    project_path,
)
from harmonica.config.schema import HarmonicaConfig
from harmonica.sweep.space import SweepSpace, apply_overrides, nest
from harmonica.sweep.study import ATTR_PREFIX
from harmonica.tracking import names

log = logging.getLogger(__name__)

# config sections that say where/how a run is recorded, not what it trains: never pinned in a best config
UNPINNED = ("project", "description", "tracking", "sweep")


@dataclass
class Best:
    trial: FrozenTrial | None
    feasible: bool
    pareto: list[FrozenTrial] = field(default_factory=list)
    note: str = ""


def _constraint(t: FrozenTrial) -> float | None:
    values = list(t.constraints.values()) if t.constraints else []
    return max(values) if values else None


def trial_rows(study: optuna.Study, space: SweepSpace) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, m in enumerate(space.metrics):
            row[m.name] = t.values[i] if t.values is not None and i < len(t.values) else None
        c = _constraint(t)
        row["constraint_violation"] = c
        row["feasible"] = None if c is None else c <= 0
        row["steps"] = t.user_attrs.get(f"{ATTR_PREFIX}steps")
        row["last_reported_step"] = t.last_step
        row["duration_s"] = round(t.duration.total_seconds(), 1) if t.duration else None
        row["mlflow_run_id"] = t.user_attrs.get(f"{ATTR_PREFIX}mlflow_run_id")
        row["worker"] = t.user_attrs.get(f"{ATTR_PREFIX}worker")
        for name in space.params:
            row[f"params.{name}"] = t.params.get(name)
        row["error"] = t.user_attrs.get(f"{ATTR_PREFIX}error")
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or ["number"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def as_table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return {c: [row.get(c) for row in rows] for c in columns}


# ------------------------------------------------------------------------------------------- best


def select_best(study: optuna.Study, space: SweepSpace) -> Best:
    """Single: the best COMPLETE feasible trial (Optuna's best_trial honours constraints); if none is
    feasible, the least-violating one, flagged. Multi: the Pareto front, and its best trial by the first
    objective."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return Best(None, False, note="no trial completed")
    first = space.metrics[0]
    sign = 1.0 if first.direction == "minimize" else -1.0
    if space.multi:
        pareto = sorted(study.best_trials, key=lambda t: t.number)
        feasible = bool(pareto)
        pool = pareto or complete
        best = min(pool, key=lambda t: sign * t.values[0])
        return Best(best, feasible, pareto, "" if feasible else "no feasible trial: best by the first objective")
    try:
        return Best(study.best_trial, True)
    except ValueError:
        best = min(complete, key=lambda t: ((_constraint(t) or 0.0), sign * t.values[0]))
        c = space.objective.constraint
        return Best(best, False, note=f"no trial met the constraint {c.key if c else ''}: the least-violating one")


@dataclass
class BaselineVerdict:
    """Whether the best trial beats the baseline (trial 0: the project's own config). beats None: unknown."""

    trial: FrozenTrial | None
    beats: bool | None
    note: str


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The baseline trial: the latest attempt of it (a dead worker's baseline is retried with its attrs)."""
    found = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(names.BASELINE_ATTR)]
    done = [t for t in found if t.state == TrialState.COMPLETE]
    return (done or found or [None])[-1]


def compare_baseline(study: optuna.Study, space: SweepSpace, best: Best) -> BaselineVerdict:
    """Single objective: the best trial beats the baseline if it is feasible while the baseline is not, or
    strictly better on the objective; multi: if the baseline is not on the Pareto front."""
    base = baseline_trial(study)
    if base is None:
        return BaselineVerdict(None, None, "no baseline trial in this study (sweep.baseline_trial was off at its start)")
    off = base.user_attrs.get(names.BASELINE_OFF_SPACE_ATTR) or []
    label = f"trial {base.number} (the project's config{', except ' + ', '.join(off) + ' outside the space' if off else ''})"
    if base.state != TrialState.COMPLETE:
        return BaselineVerdict(base, None, f"{label} has not completed ({base.state.name}): no comparison")
    if best.trial is None:
        return BaselineVerdict(base, None, f"no best trial to compare with {label}")
    if space.multi:
        on_front = any(t.number == base.number for t in best.pareto)
        return BaselineVerdict(base, not on_front, f"{label} is {'on' if on_front else 'dominated, not on'} the Pareto front")
    if best.trial.number == base.number:
        return BaselineVerdict(base, False, f"the best trial is {label}: the sweep did not beat it")
    c_base, c_best = _constraint(base), _constraint(best.trial)
    feasible = lambda c: c is None or c <= 0  # noqa: E731
    m = space.metrics[0]
    sign = 1.0 if m.direction == "minimize" else -1.0
    if feasible(c_best) and not feasible(c_base):
        beats = True
    elif feasible(c_base) and not feasible(c_best):
        beats = False
    else:
        beats = sign * best.trial.values[0] < sign * base.values[0]
    verdict = "beats" if beats else "does not beat"
    return BaselineVerdict(base, beats, f"best trial {best.trial.number} {verdict} {label}: {m.name} "
                                        f"{best.trial.values[0]:.4f} vs {base.values[0]:.4f}"
                                        + ("" if feasible(c_base) else " (the baseline misses the constraint)"))


def describe_values(t: FrozenTrial, space: SweepSpace) -> str:
    return ", ".join(f"{m.name}={v:.4f}" for m, v in zip(space.metrics, t.values or [], strict=False))


def summary_metrics(study: optuna.Study, space: SweepSpace, best: Best,
                    baseline: BaselineVerdict | None = None) -> dict[str, float]:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    out = {
        "sweep/n_trials": float(len(trials)),
        "sweep/n_complete": float(counts[TrialState.COMPLETE]),
        "sweep/n_pruned": float(counts[TrialState.PRUNED]),
        "sweep/n_failed": float(counts[TrialState.FAIL]),
        "sweep/n_running": float(counts[TrialState.RUNNING] + counts[TrialState.WAITING]),
        "sweep/trainer_steps": float(sum(int(t.user_attrs.get(f"{ATTR_PREFIX}steps") or 0) for t in trials)),
    }
    if best.trial is not None:
        out["sweep/best_trial"] = float(best.trial.number)
        for m, v in zip(space.metrics, best.trial.values or [], strict=False):
            out[f"sweep/best/{m.name}"] = float(v)
        if not space.multi:
            out["sweep/best_value"] = float(best.trial.values[0])
        out["sweep/best_feasible"] = 1.0 if best.feasible else 0.0
    if space.multi:
        out["sweep/n_pareto"] = float(len(best.pareto))
    if baseline is not None and baseline.trial is not None and baseline.trial.values and not space.multi:
        out["sweep/baseline_value"] = float(baseline.trial.values[0])
    if baseline is not None and baseline.beats is not None:
        out["sweep/beats_baseline"] = 1.0 if baseline.beats else 0.0
    return {k: v for k, v in out.items() if math.isfinite(v)}


# ------------------------------------------------------------------------------------------ plots


def study_plots(study: optuna.Study, space: SweepSpace, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Self-contained plotly HTML files (plotly.js inlined: the MLflow UI may be offline)."""
    from optuna import visualization as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [m.name for m in space.metrics]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]

    def value(i: int) -> Any:
        return lambda t: t.values[i]

    plots: list[tuple[str, Any]] = []
    if space.multi:
        plots.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=names)))
        for i, name in enumerate(names):
            plots.append((f"optimization_history_{i}", partial(vis.plot_optimization_history, study,
                                                               target=value(i), target_name=name)))
        plots.append(("parallel_coordinate", partial(vis.plot_parallel_coordinate, study, target=value(0),
                                                     target_name=names[0])))
        plots.append(("param_importances", partial(vis.plot_param_importances, study, target=value(0),
                                                   target_name=names[0])))
    else:
        plots.append(("optimization_history", partial(vis.plot_optimization_history, study, target_name=names[0])))
        plots.append(("intermediate_values", partial(vis.plot_intermediate_values, study)))
        plots.append(("parallel_coordinate", partial(vis.plot_parallel_coordinate, study, target_name=names[0])))
        plots.append(("param_importances", partial(vis.plot_param_importances, study, target_name=names[0])))
    files, notes = [], []
    for name, make in plots:
        if name.startswith("param_importances") and len(complete) < 2:
            notes.append(f"{name}: skipped, needs >= 2 completed trials (have {len(complete)})")
            continue
        if not complete and name != "intermediate_values":
            notes.append(f"{name}: skipped, no completed trial yet")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            path = out_dir / f"{name}.html"
            fig.write_html(path, include_plotlyjs=True, full_html=True)
            files.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw must not fail the sweep
            notes.append(f"{name}: not drawn ({exc.__class__.__name__}: {exc})")
    return files, notes


# ------------------------------------------------------------------------------------ best config


def _project_layer(cfg: HarmonicaConfig, root: Path) -> tuple[dict[str, Any], str]:
    """The project's own yaml plus whatever the launch's command-line overrides changed."""
    try:
        path = project_path(cfg.project, root)
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        reference = load_config(cfg.project, root=root)
    except ConfigError:
        full = cfg.model_dump(mode="json")
        return {k: v for k, v in full.items() if k not in UNPINNED}, "the full resolved config"
    mine, theirs = flatten(cfg.model_dump(mode="json")), flatten(reference.model_dump(mode="json"))
    changed = {k: v for k, v in mine.items() if theirs.get(k) != v and k.split(".")[0] not in UNPINNED}
    data = {k: v for k, v in data.items() if k not in ("project", "description")}
    return deep_merge(data, nest(changed)), f"projects/{path.name}" + (" + command-line overrides" if changed else "")


def best_config(
    cfg: HarmonicaConfig, space: SweepSpace, space_path: Path, best: Best, study_name: str, storage: str,
    out_dir: Path | None = None, root: Path | None = None,
) -> tuple[Path, str] | None:
    """Write `<project>_best.yaml`: a project file that `load_config` accepts and that resolves to the
    best trial's config (project yaml + launch overrides + fixed + the trial's values)."""
    if best.trial is None:
        return None
    root = root or find_root()
    out_dir = out_dir or root / "projects"
    layer, source = _project_layer(cfg, root)
    params = dict(best.trial.params)
    data = deep_merge(deep_merge(layer, nest(space.fixed)), nest(params))
    name = f"{cfg.project}_best"
    data = {"description": f"{cfg.project} with the best trial ({best.trial.number}) of sweep study '{study_name}'", **data}
    t = best.trial
    c = space.objective.constraint
    feasibility = f"  (NOT feasible: {best.note})" if not best.feasible else (f"  (meets {c.key})" if c else "")
    header = [
        f"# Generated by `harmonica sweep` from Optuna study '{study_name}' ({storage}): trial {t.number}.",
        f"# Objective: {describe_values(t, space)}{feasibility}",
        f"# Layers: {source} + from {space_path.name} the searched values",
        *(f"#   {k} = {v!r}" for k, v in params.items()),
        "# and the fixed overrides every trial ran with (e.g. shortened trials: raise them for a full run)",
        *(f"#   {k} = {v!r}" for k, v in space.fixed.items()),
        f"# Train it: harmonica train --model-type {space.kind} --project {name}",
    ]
    if best.pareto:
        header.append("# Pareto-optimal trials (the file holds the best of them by the first objective):")
        header.extend(f"#   trial {p.number}: {describe_values(p, space)}; {p.params}" for p in best.pareto)
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    _verify(path, cfg, space, params, root)
    return path, text


def _verify(path: Path, cfg: HarmonicaConfig, space: SweepSpace, params: dict[str, Any], root: Path) -> None:
    """The written file must resolve to exactly the trial's config (apart from where runs are recorded)."""
    trial_cfg = apply_overrides(apply_overrides(cfg, space.fixed, "fixed"), params, "best trial")
    loaded = load_config(str(path), root=root)
    a, b = flatten(trial_cfg.model_dump(mode="json")), flatten(loaded.model_dump(mode="json"))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[0] not in UNPINNED)
    if diff:
        raise ConfigError(f"{path} does not reproduce the best trial's config; differs in {diff}")
