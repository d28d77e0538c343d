"""Collapse events and failure reasons: what went wrong, from the training monitor to the gates."""

from __future__ import annotations

from collections.abc import Mapping

from harmonica.reports.common import FAIL_KINDS, fmt_num, is_training, truncate
from harmonica.reports.data import ReportData, has_gates
from harmonica.reports.model import Bullets, Heading, Inline, Note, Paragraph, Section, Table, md_escape
from harmonica.tracking import names
from harmonica.tracking.read import RunRecord

MAX_EVENTS = 200


def collapse_events(d: ReportData) -> Section:
    s = Section("Collapse events")
    if not d.training and not d.unknown_training:
        return s.add(Note("no collapse events: this run trains nothing and refers to no training run"))
    s.add(*(Note(f"collapse events unknown for {ref}: not a run of this tracking store") for ref in d.unknown_training))
    for t in d.training:
        events, tags = t.collapse_events, t.run.tags
        label = "this run" if t.run.run_id == d.run.run_id else f"training run {t.run.name} ({t.run.run_id})"
        if not events:
            s.add(Note(f"{label}: collapse tagged (first at step {tags.get(names.COLLAPSE_FIRST_STEP, '?')}) but "
                       f"{names.COLLAPSE_EVENTS} is missing") if tags.get(names.COLLAPSE) == "true"
                  else Note(f"no collapse events in {label}"))
            continue
        affected = sorted({str(e.get("name")) for e in events})
        s.add(Paragraph(f"{label}: {len(events)} collapse event(s), first at step {events[0].get('step')}, "
                        f"affecting {', '.join(affected)}:"),
              Table(["step", "kind", "metric", "value", "floor", "message"],
                    [(e.get("step"), e.get("kind", "?"), e.get("name", "?"), e.get("value"), e.get("floor"),
                      truncate(e.get("message", ""), 160)) for e in events[:MAX_EVENTS]]))
        if len(events) > MAX_EVENTS:
            s.add(Note(f"{len(events) - MAX_EVENTS} more events in {names.COLLAPSE_EVENTS}"))
    return s


def gate_rows(tags: Mapping[str, str]) -> list[tuple[Inline, ...]]:
    """One row per gate.<name>.* tag group: name, verdict, value, threshold, configured, reason."""
    gates = sorted({k.split(".")[1] for k in tags if k.startswith("gate.") and k.count(".") >= 2})
    rows: list[tuple[Inline, ...]] = []
    for g in gates:
        t = {k.split(".", 2)[2]: v for k, v in tags.items() if k.startswith(f"gate.{g}.")}
        verdict = "SKIP" if t.get("skipped") == "true" else ("PASS" if t.get("passed") == "true" else "FAIL")
        rows.append((g, verdict, t.get("value", "—"), t.get("threshold", "—"), t.get("configured", "—"),
                     truncate(t.get("reason", ""), 200)))
    return rows


def _gate_sources(d: ReportData) -> list[tuple[str, RunRecord]]:
    """The gates on this run (promote), or on the latest promotion of this evaluate run."""
    if has_gates(d.run):
        return [("this run", d.run)]
    if d.stage == "evaluate":
        for p in d.promotions:
            if has_gates(p):
                return [(f"promote run {p.name} ({p.run_id})", p)]
    return []


def _reasons(d: ReportData, detectors: list[tuple[str, float, float | None, float | None]],
             gates: list[tuple[str, RunRecord]]) -> list[str]:
    tags, metrics, out = d.run.tags, d.run.metrics, []
    status = d.run.status
    if status != "FINISHED":
        running = " (the report shows a run still in progress)" if status == "RUNNING" else ""
        out.append(f"run status {status}{running}")
    stop = tags.get(names.STOP_REASON)
    if stop and stop != "completed":
        out.append(f"stop reason: {stop}")
    if tags.get(names.EARLY_STOP) and tags.get(names.EARLY_STOP) != stop:
        out.append(f"early stop: {tags[names.EARLY_STOP]}")
    if not is_training(d.run):
        out += [f"the evaluated training run {t.run.name} ({t.run.run_id}) collapsed (first at step "
                f"{t.run.tags.get(names.COLLAPSE_FIRST_STEP, '?')}); see Collapse events"
                for t in d.training if t.run.tags.get(names.COLLAPSE) == "true"]
    if tags.get(names.COLLAPSE) == "true":
        out.append(f"codebook/attention collapse detected (first at step {tags.get(names.COLLAPSE_FIRST_STEP, '?')}, "
                   f"{fmt_num(metrics.get('collapse/events'))} event(s)); see Collapse events")
    if tags.get(names.CACHE_MISMATCH) == "true":
        out.append("trained on a stale token cache (--allow-cache-mismatch): "
                   + tags.get(names.CACHE_MISMATCH_FIELDS, "fields unknown"))
    n_instab = metrics.get("instability/events") or len(d.instability_events)
    if n_instab:
        lr = ", LR reduced" if any(e.get("lr_reduced") for e in d.instability_events) else ""
        out.append(f"{fmt_num(n_instab)} instability event(s) (skipped optimizer steps{lr})")
    if detectors:
        out.append(f"eval failure detectors fired on {fmt_num(100 * metrics.get('eval/fail/any', 0), 3)}% of the "
                   "utterances: " + ", ".join(f"{k} {fmt_num(100 * v, 3)}%" for k, v, _, _ in detectors))
    for key, label in (("eval/length_bound_rate", "AR hit the length bound"), ("eval/loop_cut_rate",
                                                                                 "AR loops were cut")):
        if metrics.get(key):
            out.append(f"{label} on {fmt_num(100 * metrics[key], 3)}% of the utterances")
    for label, run in gates:
        failing = run.tags.get(names.FAILING_GATES)
        if failing and failing != "none":
            out.append(f"promotion gates failed ({label}): {failing}")
        if run.tags.get(names.DECISION) == "refused":
            out.append(f"promotion refused ({label}): {run.note[:300]}")
    return out


def failure_reasons(d: ReportData) -> Section:
    s = Section("Failure reasons")
    detectors = [(k, rate, d.run.metrics.get(f"baseline/resynthesis/fail/{k}"),
                  d.run.metrics.get(f"baseline/ground_truth/fail/{k}"))
                 for k in FAIL_KINDS if (rate := d.run.metrics.get(f"eval/fail/{k}"))]
    gates = _gate_sources(d)
    reasons = _reasons(d, detectors, gates)
    s.add(Bullets(reasons) if reasons else Note(
        "no failure recorded: the run finished, no early stop, no collapse, no instability, no eval detector "
        "fired, no gate failed"))
    if d.instability_events:
        s.add(Heading("Instability events"),
              Table(["step", "reason", "LR reduced"],
                    [(e.get("step"), truncate(e.get("reason", ""), 160), str(bool(e.get("lr_reduced"))).lower())
                     for e in d.instability_events[:MAX_EVENTS]]))
    if detectors:
        s.add(Heading("Failing eval detectors (share of utterances)"),
              Table(["detector", "model", "codec resynthesis", "ground truth"], detectors))
    for label, run in gates:
        s.add(Heading(f"Gate results ({label})"))
        if decision := run.tags.get(names.DECISION):
            s.add(Paragraph(f"Decision: **{md_escape(decision)}**; gates passed: "
                            f"{run.tags.get(names.GATES_PASSED, '?')}."))
        s.add(Table(["gate", "verdict", "value", "threshold", "configured", "reason"], gate_rows(run.tags)))
    if not gates and d.stage in ("evaluate", "promote"):
        s.add(Note("no gate results (this run has not been through `harmonica promote`)"))
    return s
