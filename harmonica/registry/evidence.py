"""Evidence that matches what was trained: checks on the AR and NAR training runs behind an
evaluate run, before any gate.

* Unfinished runs: a checkpoint from a training run whose status is not FINISHED (killed, still
  running, failed) is refused with that status; `allow_unfinished` turns the refusal into a note and
  the version records `harmonica.allow_unfinished=true`. Its collapse evidence then ends where the
  run stopped: `training_progress` returns an "unfinished" pseudo-event that the collapse gate
  counts as "tail not observed" when the run never reached the last share of its planned steps.
* Coherent pairs: an AR and a NAR trained in different projects, or on different data / codec /
  text settings (the `data.*`, `codec.*`, `text.*` params of the two runs), are refused unless
  `allow_mixed_pair`; the version records both projects and both config hashes either way.
  Training-only settings (e.g. `training.nar.lr`) may differ: the pipeline retrains one model alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from harmonica.registry.gates import collapse_metric_key, persisting_events
from harmonica.tracking import names

SHARED_SECTIONS = ("data.", "codec.", "text.")


def _int(value: Any) -> int | None:
    try:
        out = int(float(value))
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def last_logged_step(client: Any, run: Any, kind: str) -> int | None:
    """The last step the run logged its training loss at (what it actually trained), None if unknown."""
    try:
        history = client.get_metric_history(run.info.run_id, f"{kind}/loss")
    except Exception:  # noqa: BLE001  (no history is "unknown", which the gate treats as unobserved)
        return None
    return max((int(m.step) for m in history), default=None)


def training_progress(client: Any, run: Any, kind: str) -> tuple[int | None, dict[str, Any] | None]:
    """(end step of the collapse window, an "unfinished" pseudo-event or None).

    FINISHED: the executed steps (`harmonica.steps`), else the planned total. Otherwise the last
    logged step, and an event the collapse gate fails as "tail not observed" unless that step is
    inside the tail of the planned total."""
    tags, params = run.data.tags, run.data.params
    planned = _int(params.get(f"training.{kind}.total_steps"))
    if run.info.status == "FINISHED":
        return _int(tags.get(names.STEPS)) or planned, None
    last = last_logged_step(client, run, kind) or _int(tags.get(names.STEPS))
    event = {"model": kind, "kind": "unfinished", "name": "unfinished run", "step": last, "planned": planned,
             "status": run.info.status}
    return last, event


def read_collapse(client: Any, run: Any, kind: str, tmp: Path) -> tuple[list[dict], int | None, str]:
    """(collapse events of a training run tagged with model=kind, plus their persisting spans and an
    "unfinished" pseudo-event; the end step of its collapse window; a note)."""
    if run is None:
        return [{"model": kind, "step": None, "kind": "unknown", "name": "training run not found"}], None, \
            f"{kind.upper()} training run not found: the collapse gate cannot be checked"
    tags = run.data.tags
    end, unfinished = training_progress(client, run, kind)  # an unfinished run: its tail may be unobserved
    pending = [unfinished] if unfinished else []
    try:
        path = Path(client.download_artifacts(run.info.run_id, "collapse_events.jsonl", str(tmp / kind)))
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        events = [{**json.loads(ln), "model": kind} for ln in lines]
    except (MlflowException, OSError) as exc:
        if tags.get(names.COLLAPSE) == "true":
            unplaced = {"model": kind, "step": None, "kind": "unknown", "name": "collapse_events.jsonl unreadable"}
            return [unplaced, *pending], end, (f"{kind.upper()} run {run.info.run_id} reports a collapse but its "
                                               f"events are unreadable: {exc}")
        return pending, end, (f"{kind.upper()} run {run.info.run_id} has no collapse_events.jsonl (and "
                              f"{names.COLLAPSE} is {tags.get(names.COLLAPSE, 'unset')}): treated as no events")
    # a collapse lasts until its metric recovers: add its span's last step (see persisting_events)
    histories: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for key in sorted({k for k in map(collapse_metric_key, events) if k}):
        try:
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        except MlflowException:
            history = []
        if history:
            histories[(kind, key)] = history
    return events + persisting_events(events, histories) + pending, end, ""


def checkpoint_utilisation(client: Any, run: Any, kind: str, checkpoint_step: Any) -> dict[str, Any]:
    """The checkpoint's own validation utilisation: the lowest per-codebook `val_ema/cb<k>/util_pred`
    (the EMA weights are served; else `val/cb<k>/...`, else the medians) at the last validation step
    at or before the checkpoint's step, with the run's collapse floor (for gates.utilisation_gate)."""
    record: dict[str, Any] = {"model": kind, "checkpoint_step": checkpoint_step, "metric": None, "value": None,
                              "at": None, "floor": None, "collapsed_tag": False}
    if run is None:
        return record
    record["collapsed_tag"] = run.data.tags.get(names.COLLAPSE) == "true"
    record["floor"] = float(run.data.params.get(f"training.{kind}.collapse.util_floor", 0.10))
    step = _int(checkpoint_step)
    def per_codebook(prefix: str) -> list[str]:
        return sorted(k for k in run.data.metrics if k.startswith(f"{prefix}/cb") and k.endswith("/util_pred"))

    # the served weights are the EMA's: their own validation first, then the raw weights'
    for group in (per_codebook("val_ema"), per_codebook("val"), ["val_ema/util_pred_median"],
                  ["val/util_pred_median"]):
        readings = []
        for key in group:
            try:
                history = client.get_metric_history(run.info.run_id, key)
            except MlflowException:
                continue
            before = [m for m in history if step is None or m.step <= step]
            if before:
                last = max(before, key=lambda m: m.step)
                readings.append((float(last.value), key, int(last.step)))
        if readings:
            value, key, at = min(readings)
            record.update(value=value, metric=key, at=at)
            return record
    return record


def status_refusals(runs: Mapping[str, Any], allow_unfinished: bool) -> tuple[list[str], list[str]]:
    """(refusals, notes) for training runs (label -> MLflow run or None) that are not FINISHED."""
    problems = []
    for label, run in runs.items():
        if run is None or run.info.status == "FINISHED":
            continue  # an unknown run is refused by the provenance check
        steps = run.data.tags.get(names.STEPS, "unknown")
        problems.append(f"{label} {run.info.run_id} is {run.info.status}, not FINISHED (executed steps: {steps}): "
                        "its checkpoint is not the model it was configured to train")
    if not problems:
        return [], []
    if allow_unfinished:
        return [], [f"unfinished run (allowed by --allow-unfinished, recorded as {names.ALLOW_UNFINISHED}): {p}"
                    for p in problems]
    return [f"unfinished: {p}" for p in problems] + [
        "unfinished: let the training finish (or resume it), or pass --allow-unfinished to promote the checkpoint "
        "anyway (recorded on the version; the collapse gate then checks only what was trained)"], []


def _project(run: Any) -> str:
    return run.data.tags.get(names.PROJECT, "unknown")


def pair_refusals(ar_run: Any, nar_run: Any, allow_mixed: bool) -> tuple[list[str], list[str]]:
    """(refusals, notes) when the AR and NAR come from different projects or shared settings."""
    if ar_run is None or nar_run is None:
        return [], []
    problems = []
    if _project(ar_run) != _project(nar_run):
        problems.append(f"the AR run {ar_run.info.run_id} is from project '{_project(ar_run)}' but the NAR run "
                        f"{nar_run.info.run_id} from '{_project(nar_run)}'")
    a, n = ar_run.data.params, nar_run.data.params
    keys = sorted(k for k in set(a) | set(n) if k.startswith(SHARED_SECTIONS) and a.get(k) != n.get(k))
    if keys:
        shown = ", ".join(f"{k}: AR {a.get(k, '—')} vs NAR {n.get(k, '—')}" for k in keys[:5])
        more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
        problems.append(f"the AR and NAR were trained on different data/codec/text settings: {shown}{more}")
    if not problems:
        return [], []
    hashes = (f"config hashes AR {ar_run.data.tags.get(names.CONFIG_HASH, 'unknown')}, "
              f"NAR {nar_run.data.tags.get(names.CONFIG_HASH, 'unknown')}")
    if allow_mixed:
        return [], [f"mixed pair (allowed by --allow-mixed-pair, recorded as {names.ALLOW_MIXED_PAIR}): {p}; {hashes}"
                    for p in problems]
    return [f"mixed pair: {p}; {hashes}" for p in problems] + [
        "mixed pair: evaluate an AR and a NAR trained by the same project, or pass --allow-mixed-pair "
        "(recorded on the version)"], []


def pair_tags(ar_run: Any, nar_run: Any, allow_unfinished: bool, allow_mixed: bool) -> dict[str, str]:
    """Version tags recording both halves of the pair and the overrides used."""
    def of(run: Any, key: str) -> str:
        return run.data.tags.get(key, "unknown") if run is not None else "unknown"

    return {
        names.AR_PROJECT: of(ar_run, names.PROJECT),
        names.NAR_PROJECT: of(nar_run, names.PROJECT),
        names.AR_RUN_STATUS: ar_run.info.status if ar_run is not None else "unknown",
        names.NAR_RUN_STATUS: nar_run.info.status if nar_run is not None else "unknown",
        names.ALLOW_UNFINISHED: str(allow_unfinished).lower(),
        names.ALLOW_MIXED_PAIR: str(allow_mixed).lower(),
    }
