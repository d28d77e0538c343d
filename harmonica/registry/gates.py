"""Promotion gates: pure functions from an evaluate run's metrics (and training collapse events) to
pass/fail verdicts. No MLflow here, so every path is unit-testable.

Semantics (kept in sync with mlruns_config/gates.yaml):

* ``max_wer`` / ``max_failure_rate``: the model's ``eval/wer`` / ``eval/fail/any`` must be
  ``<= effective threshold``; ``absolute``: effective = threshold; relative to a baseline
  (``ground_truth`` | ``resynthesis``): effective = baseline + threshold (the baseline is
  ``baseline/<relative_to>/wer`` resp. ``.../fail/any`` of the *same* evaluate run).
* ``min_sim``: ``eval/sim`` must be ``>= effective``; absolute: effective = threshold; relative:
  effective = baseline * threshold (``baseline/<relative_to>/sim``).
* ``bound`` (optional): the loosest effective threshold a gate may reach, whatever its baseline:
  max gates use ``min(effective, bound)``, min gates ``max(effective, bound)``. A relative gate
  follows the codec / recordings but can never be looser than the bound (e.g. a broken ASR that
  inflates the resynthesis WER cannot lift the WER gate past it).
* Every metric gate reports its ``margin``: ``effective - value`` for max gates, ``value - effective``
  for min gates; >= 0 passes, < 0 says by how much the gate was missed.
* ``collapse_free_tail``: no collapse in the last ``collapse_free_tail`` share of each training run,
  i.e. at a step ``> end * (1 - share)`` where ``end`` is the run's executed steps (planned total
  when unknown). Collapses are the events of the run's ``collapse_events.jsonl`` *and* their spans:
  an event whose metric is still below its floor later on counts at the last such step
  (`persisting_events`, from the run's metric history). A training run that is not FINISHED adds
  an "unfinished" event (step = its last logged step, planned = its configured total): its window
  ends at that step, and when that step is not inside the planned tail the gate FAILS with "tail
  not observed" (harmonica.registry.evidence). ``0`` disables the gate.
* ``checkpoint_utilisation``: each evaluated checkpoint's own validation utilisation -- the lowest
  ``val_ema/cb<k>/util_pred`` (else ``val/cb<k>/...``, else the medians) at the last validation at or before the
  checkpoint's step -- must be ``>=`` its training run's collapse floor
  (``training.<kind>.collapse.util_floor``). A run tagged ``harmonica.collapse=true`` whose
  checkpoint is above the floor passes (it recovered; the tag is named in the reason); one below
  it fails naming the tag. No utilisation at or before the checkpoint's step FAILS.
* A metric (or baseline) that is missing or not finite makes its gate FAIL with a reason: a gate
  never passes for lack of evidence. A disabled gate is reported as passed with reason "disabled".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from harmonica.config.schema import GateConfig, GatesConfig
from harmonica.tracking import names

# gate name -> (metric suffix under eval/ and baseline/<source>/, direction)
METRIC_GATES: dict[str, tuple[str, str]] = {
    "max_wer": ("wer", "max"),
    "min_sim": ("sim", "min"),
    "max_failure_rate": ("fail/any", "max"),
}
COLLAPSE_GATE = "collapse_free_tail"
UTILISATION_GATE = "checkpoint_utilisation"
GATE_NAMES: tuple[str, ...] = (*METRIC_GATES, COLLAPSE_GATE, UTILISATION_GATE)


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None  # the measured value (collapse gate: events inside the tail window)
    threshold: float | None  # as configured (collapse gate: the tail share)
    effective_threshold: float | None  # what `value` was compared with (after the baseline)
    relative_to: str  # absolute | ground_truth | resynthesis | tail
    passed: bool
    reason: str
    skipped: bool = False
    margin: float | None = None  # headroom (>= 0) or shortfall (< 0) against effective_threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _bounded(effective: float, how: str, bound: float | None, direction: str) -> tuple[float, str]:
    if bound is None:
        return effective, how
    capped = min(effective, bound) if direction == "max" else max(effective, bound)
    return capped, f"{'min' if direction == 'max' else 'max'}({how}, bound {_fmt(bound)})"


def metric_gate(name: str, gate: GateConfig, metrics: Mapping[str, float]) -> GateResult:
    suffix, direction = METRIC_GATES[name]
    key = f"eval/{suffix}"
    value = _finite(metrics.get(key))
    if not gate.enabled:
        return GateResult(name, value, gate.threshold, None, gate.relative_to, True,
                          f"disabled (gates.{name}.enabled=false)", skipped=True)
    if gate.relative_to == "absolute":
        effective: float = gate.threshold
        how = "absolute"
    else:
        base_key = f"baseline/{gate.relative_to}/{suffix}"
        baseline = _finite(metrics.get(base_key))
        if baseline is None:
            return GateResult(
                name, value, gate.threshold, None, gate.relative_to, False,
                f"baseline metric {base_key} is missing or not finite in the evaluate run, so the "
                f"{gate.relative_to}-relative threshold cannot be computed",
            )
        if direction == "max":
            effective = baseline + gate.threshold
            how = f"{gate.relative_to} {_fmt(baseline)} + {_fmt(gate.threshold)}"
        else:
            effective = baseline * gate.threshold
            how = f"{gate.relative_to} {_fmt(baseline)} x {_fmt(gate.threshold)}"
    effective, how = _bounded(effective, how, gate.bound, direction)
    if value is None:
        return GateResult(name, None, gate.threshold, effective, gate.relative_to, False,
                          f"metric {key} is missing or not finite in the evaluate run")
    margin = effective - value if direction == "max" else value - effective
    passed = margin >= 0
    op = ("<=" if passed else ">") if direction == "max" else (">=" if passed else "<")
    by = f"headroom {_fmt(margin)}" if passed else f"MISSED BY {_fmt(-margin)}"
    return GateResult(name, value, gate.threshold, effective, gate.relative_to, passed,
                      f"{key} {_fmt(value)} {op} {_fmt(effective)} ({how}); {by}", margin=margin)


def tail_window_start(end_step: int, share: float) -> float:
    """Events at steps strictly greater than this are inside the tail."""
    return end_step * (1.0 - share)


def collapse_gate(share: float, collapse_events: Iterable[Mapping[str, Any]],
                  total_steps: int | Mapping[str, int]) -> GateResult:
    """collapse_events: dicts with "step" (and "model": ar|nar when several runs are checked;
    total_steps is then a mapping model -> end step; an int applies to every event)."""
    events = list(collapse_events)
    if share <= 0:
        return GateResult(COLLAPSE_GATE, float(len(events)), share, 0.0, "tail", True,
                          "disabled (collapse_free_tail = 0)", skipped=True)
    ends = total_steps if isinstance(total_steps, Mapping) else None
    inside: list[Mapping[str, Any]] = []
    unknown: list[str] = []
    for event in events:
        model = str(event.get("model", ""))
        if event.get("kind") == "unfinished":  # a run that stopped early: did it reach its planned tail?
            last, planned = _finite(event.get("step")), _finite(event.get("planned"))
            if last is None or planned is None or last <= tail_window_start(int(planned), share):
                inside.append(event)
            continue
        end = ends.get(model) if ends is not None else total_steps
        step = _finite(event.get("step"))
        if end is None or not end or step is None:
            unknown.append(model or "?")
            inside.append(event)  # an event that cannot be placed counts against the candidate
            continue
        if step > tail_window_start(int(end), share):
            inside.append(event)
    windows = (
        ", ".join(f"{m.upper()} steps > {tail_window_start(int(e), share):g} of {e}" for m, e in sorted(ends.items()) if e)
        if ends is not None else f"steps > {tail_window_start(int(total_steps), share):g} of {total_steps}"
    )
    if not inside:
        earlier = sum(1 for e in events if e.get("kind") not in ("persisting", "unfinished"))
        reason = f"no collapse in the last {share:.0%} of training ({windows}); {earlier} earlier event(s)"
        return GateResult(COLLAPSE_GATE, 0.0, share, 0.0, "tail", True, reason)
    def describe(e: Mapping[str, Any]) -> str:
        model = str(e.get("model", "")).upper() or "?"
        if e.get("kind") == "unfinished":
            planned = _finite(e.get("planned"))
            tail = f"steps > {tail_window_start(int(planned), share):g} of {int(planned)}" if planned else "unknown"
            return (f"{model} tail not observed: the run is {e.get('status', 'not FINISHED')} and its last logged step "
                    f"({e.get('step') if e.get('step') is not None else 'unknown'}) never reached the last "
                    f"{share:.0%} of its planned training ({tail})")
        if e.get("kind") == "persisting" and e.get("step") is not None:
            return f"{model} {e.get('name')} still collapsed at step {e.get('step')} (since step {e.get('collapsed_since')})"
        if e.get("kind") == "persisting":
            return f"{model} {e.get('message', e.get('name'))}"
        return f"{model} step {e.get('step')} {e.get('kind', '')}:{e.get('name', '')}"

    listed = "; ".join(describe(e) for e in inside[:5])
    more = f" (+{len(inside) - 5} more)" if len(inside) > 5 else ""
    why = f"; end step unknown for {sorted(set(unknown))}" if unknown else ""
    reason = (f"{len(inside)} collapse(s) in the last {share:.0%} of training ({windows}): "
              f"{listed}{more}{why}")
    return GateResult(COLLAPSE_GATE, float(len(inside)), share, 0.0, "tail", False, reason)


def collapse_metric_key(event: Mapping[str, Any]) -> str | None:
    """The training metric behind a collapse event (harmonica.training.monitor naming)."""
    name = event.get("name")
    if not name:
        return None
    if event.get("kind") == "codebook":
        return f"{name}/util_pred"
    if event.get("kind") == "attention":
        return f"{name}_min"
    return None


def persisting_events(events: Iterable[Mapping[str, Any]],
                      histories: Mapping[tuple[str, str], list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Collapse *spans* as extra events: the monitor fires once when a metric enters collapse (then
    at most every 1000 steps), so a run collapsed at step 50 and still collapsed at its end has a
    single event at 50. For each event, the last step at or after it where its metric (history
    keyed by (model, metric key)) is still below the event's floor becomes an event of its own
    (kind "persisting"). No history for a known metric -> an event with step None: recovery cannot
    be shown, so it counts against the candidate (the gate never passes for lack of evidence)."""
    out: list[dict[str, Any]] = []
    for event in events:
        key = collapse_metric_key(event)
        floor = _finite(event.get("floor"))
        start = _finite(event.get("step"))
        if key is None or floor is None or start is None:
            continue
        history = histories.get((str(event.get("model", "")), key))
        if history is None:
            out.append({**event, "step": None, "kind": "persisting",
                        "message": f"{event.get('name')}: no {key} history to show a recovery from the collapse "
                                   f"at step {int(start)}"})
            continue
        below = [(int(step), float(v)) for step, v in history if step >= start and float(v) < floor]
        if below:
            last_step, last_value = max(below)
            if last_step > start:
                out.append({**event, "step": last_step, "value": last_value, "kind": "persisting",
                            "collapsed_since": int(start),
                            "message": f"{event.get('name')} still below its floor at step {last_step} "
                                       f"(collapsed since step {int(start)})"})
    return out


def utilisation_gate(enabled: bool, records: Iterable[Mapping[str, Any]] | None) -> GateResult:
    """records: per model {"model", "checkpoint_step", "metric", "value" (None = no evidence), "at" (the
    validation step read), "floor", "collapsed_tag"}; value = the lowest utilisation across records."""
    if not enabled:
        return GateResult(UTILISATION_GATE, None, None, None, "floor", True,
                          f"disabled (gates.{UTILISATION_GATE}=false)", skipped=True)
    records = list(records or [])
    if not records:
        return GateResult(UTILISATION_GATE, None, None, None, "floor", False,
                          "no checkpoint utilisation evidence: the training runs' validation utilisation is unknown")
    problems, fine = [], []
    for r in records:
        model, value, floor = str(r.get("model", "?")).upper(), _finite(r.get("value")), _finite(r.get("floor"))
        tagged = f" (run tagged {names.COLLAPSE}=true)" if r.get("collapsed_tag") else ""
        if value is None or floor is None:
            problems.append(f"{model}: no validation utilisation at or before checkpoint step {r.get('checkpoint_step')}"
                            f"{tagged}")
        elif value < floor:
            problems.append(f"{model} {r.get('metric')} {_fmt(value)} < floor {_fmt(floor)} at step {r.get('at')} "
                            f"(checkpoint step {r.get('checkpoint_step')}){tagged}: MISSED BY {_fmt(floor - value)}")
        else:
            fine.append(f"{model} {r.get('metric')} {_fmt(value)} >= floor {_fmt(floor)} at step {r.get('at')}"
                        + (" (tagged collapsed earlier, recovered)" if tagged else ""))
    values = [v for v in (_finite(r.get("value")) for r in records) if v is not None]
    floors = [f for f in (_finite(r.get("floor")) for r in records) if f is not None]
    low, floor = (min(values) if values else None), (max(floors) if floors else None)
    margin = min((_finite(r.get("value")) or 0.0) - (_finite(r.get("floor")) or 0.0) for r in records)
    if problems:
        return GateResult(UTILISATION_GATE, low, floor, floor, "floor", False, "; ".join(problems + fine),
                          margin=margin)
    return GateResult(UTILISATION_GATE, low, floor, floor, "floor", True, "; ".join(fine), margin=margin)


def evaluate_gates(metrics: Mapping[str, float], gates: GatesConfig, collapse_events: list[dict[str, Any]],
                   total_steps: int | Mapping[str, int],
                   utilisation: Iterable[Mapping[str, Any]] | None = None) -> list[GateResult]:
    """Every gate, in GATE_NAMES order (utilisation None: no evidence, that gate FAILS)."""
    out = [metric_gate(name, getattr(gates, name), metrics) for name in METRIC_GATES]
    out.append(collapse_gate(gates.collapse_free_tail, collapse_events, total_steps))
    out.append(utilisation_gate(gates.checkpoint_utilisation, utilisation))
    return out


def all_passed(results: Iterable[GateResult]) -> bool:
    return all(r.passed for r in results)


def failing(results: Iterable[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.passed]


def beats(candidate_value: float | None, champion_value: float | None, mode: str) -> bool:
    """Strictly better on the primary metric; no champion value -> True; no candidate value -> False.
    A tie keeps the current champion (moving it would churn deployments for no gain)."""
    cand = _finite(candidate_value)
    champ = _finite(champion_value)
    if cand is None:
        return False
    if champ is None:
        return True
    if mode == "min":
        return cand < champ
    if mode == "max":
        return cand > champ
    raise ValueError(f"primary_mode must be min or max, got {mode!r}")


def gate_tags(results: Iterable[GateResult]) -> dict[str, str]:
    """Model-version tags: gate.<name>.value/.threshold/.passed (+ configured threshold, basis, reason)."""
    tags: dict[str, str] = {}
    for r in results:
        prefix = f"gate.{r.name}"
        tags[f"{prefix}.value"] = _fmt(r.value)
        tags[f"{prefix}.threshold"] = _fmt(r.effective_threshold)
        tags[f"{prefix}.configured"] = f"{_fmt(r.threshold)} ({r.relative_to})"
        tags[f"{prefix}.passed"] = str(r.passed).lower()
        if r.margin is not None:
            tags[f"{prefix}.margin"] = _fmt(r.margin)
        if r.skipped:
            tags[f"{prefix}.skipped"] = "true"
        tags[f"{prefix}.reason"] = r.reason[:4900]
    return tags
