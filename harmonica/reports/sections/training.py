"""Key curves and the best checkpoint: how training went and what it kept."""

from __future__ import annotations

import math

from harmonica.reports.common import curve_groups, fmt_num, is_training, model_kind
from harmonica.reports.data import ReportData
from harmonica.reports.model import (
    ArtifactLink, Block, Code, Figure, Heading, Inline, Note, Paragraph, Picture, Section, Series, Table, md_link,
)
from harmonica.tracking import names

CURVE_HEADERS = ("metric", "points", "first", "last", "min", "max")


def collapse_marks(d: ReportData, title: str) -> tuple[float | None, list[int]]:
    """The collapse monitor's floor and event steps for the utilisation / attention figures."""
    kind = model_kind(d.run)
    if kind is None or not title.startswith(("Per-codebook", "Attention")):
        return None, []
    which = "codebook" if title.startswith("Per-codebook") else "attention"
    param = f"training.{kind}.collapse.{'util_floor' if which == 'codebook' else 'attn_entropy_floor'}"
    try:
        floor = float(d.run.params[param]) if param in d.run.params else None
    except ValueError:
        floor = None
    steps = [int(e["step"]) for e in d.collapse_events
             if e.get("kind") == which and isinstance(e.get("step"), int)]
    return floor, steps


def _numbers(series: Series) -> tuple[Inline, ...]:
    """first/last/min/max (value @ step) of one history."""
    steps, values = series.steps, series.values
    finite = [(v, st) for st, v in zip(steps, values) if math.isfinite(v)]
    lo = min(finite) if finite else (float("nan"), None)
    hi = max(finite) if finite else (float("nan"), None)
    return (Code(series.key), len(steps), f"{fmt_num(values[0])} @ {steps[0]}", f"{fmt_num(values[-1])} @ {steps[-1]}",
            f"{fmt_num(lo[0])} @ {lo[1]}", f"{fmt_num(hi[0])} @ {hi[1]}")


def key_curves(d: ReportData) -> Section:
    s = Section("Key curves")
    groups = curve_groups(d.run.metrics)
    if not groups:
        return s.add(Note(f"no training curves: this '{d.stage}' run logged no loss, utilisation, attention-entropy "
                          "or gradient-norm metrics"))
    s.add(Paragraph("Interactive plots: [report.html](report.html#key-curves). Key numbers (first/last/min/max over "
                    "the logged steps):", html=""))
    figures = 0
    for title, keys in groups:
        series = [h for k in keys if (h := d.histories.get(k)) is not None and h.steps]
        if not series:
            continue
        floor, events = collapse_marks(d, title)
        s.add(Heading(title), Figure(title, series, Table(CURVE_HEADERS, [_numbers(h) for h in series]), floor, events))
        figures += 1
        if title.startswith("Per-codebook"):
            s.add(*util_heatmap(d))
    if not figures:
        s.add(Note("the curve metrics have no history"))
    return s


def util_heatmap(d: ReportData) -> tuple[Block, ...]:
    """The trainer's last per-codebook utilisation heatmap (one column per validation), if it logged one."""
    kind = model_kind(d.run)
    image = d.images.get(names.util_heatmap(kind)) if kind else None
    if image is None:
        return ()
    caption = (f"`{image.key}` at step {image.step}: validation utilisation per codebook (rows) at every "
               "validation (columns); hatched cells are under the collapse floor, marked on the colour bar")
    return Heading("Per-codebook utilisation at each validation"), Picture(image.path, caption)


def best_checkpoint(d: ReportData) -> Section:
    s = Section("Best checkpoint")
    tags, params, kind = d.run.tags, d.run.params, model_kind(d.run)
    if is_training(d.run):
        meta = d.best_meta
        step = tags.get(names.BEST_STEP) or meta.get("best_step")
        value = tags.get(names.BEST_VALUE) or meta.get("best_value")
        metric = meta.get("best_metric") or (params.get(f"training.{kind}.best_metric") if kind else None)
        mode = params.get(f"training.{kind}.best_mode") if kind else None
        best = next((m for m in d.checkpoint_models if m.model_id == tags.get(names.BEST_MODEL_ID)),
                    d.checkpoint_models[0] if d.checkpoint_models else None)
        if step is None and best is None and not d.has(names.BEST_CHECKPOINT):
            s.add(Note("no best checkpoint recorded (no validation finished with a finite value)"))
        else:
            rows: list[tuple[str, Inline]] = [
                ("metric", f"{metric or 'unknown'}" + (f" ({mode})" if mode else "")),
                ("step", str(step) if step is not None else "—"),
                ("value", fmt_num(value, 6) if value is not None else "—"),
            ]
            if best is not None:
                rows += [("model", best.name), ("model reference", Code(best.uri))]
            elif d.has(names.BEST_CHECKPOINT):  # runs from before checkpoints were models
                rows += [("artifact", ArtifactLink(names.BEST_CHECKPOINT)),
                         ("model reference", Code(f"runs:/{d.run.run_id}/checkpoints/best"))]
            else:
                rows.append(("model", "not logged to the run"))
            if tags.get(names.CHECKPOINT_DIR) and str(step).isdigit():
                rows.append(("local directory", f"{tags[names.CHECKPOINT_DIR]}/ckpt/step_{int(step):07d}"))
            rows += [(label, str(meta[key])) for label, key in (("saved at", "saved_at"),
                                                                 ("code version", "code_version")) if meta.get(key)]
            s.add(Table(["field", "value"], rows, cls="kv"))
        if d.checkpoint_models:
            shown = metric or "val_ema/loss"
            s.add(Paragraph(f"Checkpoint models (EMA weights), best first by {shown}; any of them can be evaluated "
                            "by its reference:"),
                  Table(["model", "step", shown, "reference"],
                        [(m.name, str(m.step), fmt_num(m.metrics.get(shown), 6) if shown in m.metrics else "—",
                          Code(m.uri)) for m in d.checkpoint_models]))
        if d.has(names.LAST_CHECKPOINT):
            s.add(Paragraph(f"Last checkpoint: {md_link('checkpoints/last')} (step {tags.get(names.STEPS) or '?'})."))
        return s
    if d.stage == "evaluate" or tags.get(names.AR_CHECKPOINT):
        rows = [(k.upper(), tags.get(names.kind_run_id(k)) or "—", tags.get(names.kind_step(k)) or "—",
                 tags.get(names.kind_checkpoint(k)) or "—") for k in ("ar", "nar")]
        return s.add(Paragraph(f"This run scored these checkpoints ({tags.get(names.WEIGHTS, 'unknown')} weights):"),
                     Table(["model", "training run", "step", "checkpoint"], rows))
    if d.stage == "promote":
        return s.add(Paragraph(f"Model `{tags.get(names.MODEL_NAME, '?')}` version "
                               f"{tags.get(names.MODEL_VERSION) or 'none'} "
                               f"(decision: {tags.get(names.DECISION, 'unknown')})."))
    return s.add(Note(f"no checkpoint: '{d.stage}' runs do not train a model"))
