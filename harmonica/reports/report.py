"""`harmonica report RUN_ID`: a Markdown and a self-contained HTML report of one run.

Sections (always all of them, each saying so when it has nothing to show):

* Overview: name, stage, project, status, start/duration, description, code version, dirty-tree warning;
* Config diff: the params that differ from a baseline run (default: the previous finished run of the
  same stage in the same experiment);
* Key curves: loss and validation loss, per-codebook predicted utilisation, attention entropy per layer
  (mean and min), gradient norms per group; plotly figures in the HTML (plotly.js inlined once), the key
  numbers as tables in the Markdown;
* Best checkpoint: step, value and metric, artifact path (evaluate runs: the checkpoints evaluated);
* Eval summary: model vs ground-truth/resynthesis baselines and the worst utterances with their audio
  (training runs: the evaluate runs of this checkpoint);
* Audio samples: the latest training samples next to their references (evaluate runs: every file);
* Collapse events: the training monitor's events (evaluate/promote runs: those of the trained runs);
* Failure reasons: run status, stop reason, instability events, failing eval detectors, gate results.

The Markdown has no images; it links `report.html`, which plays audio offline (base64 data URIs).
Both are logged back to the run as `report/report.md` and `report/report.html`.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.reports.common import (
    CONFIG_HASH, FAIL_KINDS, GIT_COMMIT, NOTE, PROJECT, SOURCE_HASH, STAGE, VERSION, ReportError, client_for,
    fmt_duration, fmt_num, fmt_time, get_run, is_dirty, model_kind, previous_run, run_name, runs_tagged, truncate,
)
from harmonica.reports import decomposition
from harmonica.reports.common import table_rows as _table_rows
from harmonica.tracking import names
from harmonica.tracking.read import quiet_downloads

log = logging.getLogger(__name__)

SECTIONS: tuple[str, ...] = (
    "Overview", "Config diff", "Key curves", "Best checkpoint", "Eval summary", "Audio samples",
    "Collapse events", "Failure reasons",
)
ARTIFACT_DIR = "report"
EMPTY_AUDIO = "(no audio: the model decoded 0 samples)"
MAX_EMBED_BYTES = 8 * 1024 * 1024  # per audio/image file embedded in the HTML
MAX_SAMPLES = 8
WORST_N = 5
AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    run_id: str
    baseline_run_id: str | None = None
    logged: bool = False


# ------------------------------------------------------------------------------------------ rendering


@dataclass
class Cell:
    """A table cell: plain text, optionally with its own Markdown and HTML renderings."""

    text: str
    md: str | None = None
    html: str | None = None


CellLike = Cell | str | float | int | None


def _cell(value: CellLike) -> Cell:
    if isinstance(value, Cell):
        return value
    if value is None or isinstance(value, (int, float)):
        return Cell(fmt_num(value))
    return Cell(str(value))


def md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[CellLike]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(c) for c in row]
        lines.append("| " + " | ".join(c.md if c.md is not None else md_escape(c.text) for c in cells) + " |")
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[CellLike]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [_cell(c) for c in row]
        body.append("<tr>" + "".join(
            f"<td>{c.html if c.html is not None else html.escape(c.text)}</td>" for c in cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


@dataclass
class Section:
    title: str
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def para(self, md_text: str, html_text: str | None = None) -> None:
        """A paragraph: Markdown as given; HTML as given or the escaped Markdown text."""
        self.md.append(md_text)
        self.html.append(f"<p>{html_text if html_text is not None else inline_html(md_text)}</p>")

    def note(self, text: str) -> None:
        """A plain sentence (for "nothing to show" and similar)."""
        self.md.append(f"_{text}_")
        self.html.append(f'<p class="none">{inline_html(text)}</p>')

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[CellLike]], cls: str = "") -> None:
        self.md.append(md_table(headers, rows))
        self.html.append(html_table(headers, rows, cls))

    def bullets(self, items: Sequence[tuple[str, str]]) -> None:
        """(markdown, html) pairs."""
        self.md.append("\n".join(f"- {m}" for m, _ in items))
        self.html.append("<ul>" + "".join(f"<li>{h}</li>" for _, h in items) + "</ul>")

    def heading(self, text: str) -> None:
        self.md.append(f"### {text}")
        self.html.append(f"<h3>{html.escape(text)}</h3>")

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def inline_html(md_text: str) -> str:
    """The little inline Markdown the report writes (`code`, **bold**, [text](href)) as HTML."""
    out = html.escape(md_text, quote=False).replace("\\|", "|")
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def _audio_html(uri: str | None, label: str) -> str:
    if uri is None:
        return html.escape(label)
    return (f'<audio controls preload="metadata" src="{uri}" title="{html.escape(label)}"></audio>'
            f'<br><span class="path">{html.escape(label)}</span>')


# ------------------------------------------------------------------------------------------ the report


class _RunData:
    """Lazy access to one run's artifacts (downloaded into a temporary directory) and histories."""

    def __init__(self, client: MlflowClient, run: Run, tmp: Path) -> None:
        self.client = client
        self.run = run
        self.id = run.info.run_id
        self.tags = run.data.tags
        self.params = run.data.params
        self.metrics = run.data.metrics
        self.tmp = tmp
        self._listing: dict[str, list[Any]] = {}

    @property
    def stage(self) -> str:
        return self.tags.get(STAGE, "unknown")

    def ls(self, path: str | None = None) -> list[Any]:
        key = path or ""
        if key not in self._listing:
            try:
                self._listing[key] = list(self.client.list_artifacts(self.id, path))
            except (MlflowException, OSError) as exc:
                log.warning("cannot list artifacts %s of run %s: %s", path, self.id, exc)
                self._listing[key] = []
        return self._listing[key]

    def has(self, path: str) -> bool:
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in self.ls(parent))

    def fetch(self, path: str) -> Path | None:
        if not self.has(path):
            return None
        try:
            dst = self.tmp / self.id
            dst.mkdir(parents=True, exist_ok=True)
            return Path(self.client.download_artifacts(self.id, path, str(dst)))
        except (MlflowException, OSError) as exc:
            log.warning("cannot download %s of run %s: %s", path, self.id, exc)
            return None

    def text(self, path: str) -> str | None:
        local = self.fetch(path)
        return local.read_text(encoding="utf-8", errors="replace") if local and local.is_file() else None

    def json(self, path: str) -> Any:
        text = self.text(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None

    def jsonl(self, path: str) -> list[dict[str, Any]]:
        text = self.text(path) or ""
        out = []
        for line in text.splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def data_uri(self, path: str) -> str | None:
        """The artifact as a base64 data URI (None when absent or too large to embed)."""
        local = self.fetch(path)
        if local is None or not local.is_file() or local.stat().st_size > MAX_EMBED_BYTES:
            return None
        suffix = local.suffix.lower()
        mime = AUDIO_MIME.get(suffix) or {".png": "image/png", ".jpg": "image/jpeg"}.get(suffix,
                                                                                    "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(local.read_bytes()).decode('ascii')}"

    def history(self, key: str) -> tuple[list[int], list[float]]:
        points = sorted((m.step, m.timestamp, m.value) for m in self.client.get_metric_history(self.id, key))
        by_step: dict[int, float] = {}
        for step, _, value in points:  # the last value logged at a step wins (resumed runs re-log)
            by_step[step] = value
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]


def _artifact_link(path: str) -> tuple[str, str]:
    """Markdown and HTML links to a run artifact, relative to `report/` (where the report is logged)."""
    return f"[{md_escape(path)}](../{path})", f'<a href="../{html.escape(path)}">{html.escape(path)}</a>'


def _run_ref(run: Run) -> tuple[str, str]:
    name = run_name(run)
    return (f"{md_escape(name)} (`{run.info.run_id}`)",
            f"{html.escape(name)} (<code>{html.escape(run.info.run_id)}</code>)")


# ---------------------------------------------------------------------------------- 1. overview


def section_overview(r: _RunData) -> Section:
    s = Section("Overview")
    run = r.run
    exp = None
    try:
        exp = r.client.get_experiment(run.info.experiment_id)
    except MlflowException:
        pass
    commit = r.tags.get(GIT_COMMIT, "")
    code = ", ".join(p for p in (
        f"git {commit[:12]}" if commit else "",
        f"source {r.tags.get(SOURCE_HASH)}" if r.tags.get(SOURCE_HASH) else "",
        f"harmonica {r.tags.get(VERSION)}" if r.tags.get(VERSION) else "",
    ) if p) or "unknown (no code-version tags)"
    rows: list[tuple[str, CellLike]] = [
        ("Run", run_name(run)),
        ("Run id", Cell(run.info.run_id, md=f"`{run.info.run_id}`", html=f"<code>{run.info.run_id}</code>")),
        ("Experiment", exp.name if exp else run.info.experiment_id),
        ("Stage", r.stage),
        ("Project", r.tags.get(PROJECT, "unknown")),
        ("Status", run.info.status),
        ("Started", fmt_time(run.info.start_time)),
        ("Duration", fmt_duration(run.info.start_time, run.info.end_time)
         if run.info.end_time else "still running" if run.info.status == "RUNNING" else "—"),
        ("Config hash", r.tags.get(CONFIG_HASH, "—")),
        ("Code version", code),
        ("Git dirty", "yes" if is_dirty(run) else ("no" if r.tags.get(names.GIT_DIRTY) else "unknown")),
    ]
    if r.tags.get("mlflow.parentRunId"):
        rows.append(("Parent run", r.tags["mlflow.parentRunId"]))
    rows.append(("Artifacts", run.info.artifact_uri))
    s.table(["field", "value"], rows, cls="kv")
    if is_dirty(run):
        text = ("Warning: this run was made from a working tree with uncommitted changes "
                f"(git_dirty=true): commit {commit[:12] or '?'} does not fully describe the code; "
                f"source hash {r.tags.get(SOURCE_HASH, '?')} does.")
        s.md.append(f"> **{text}**")
        s.html.append(f'<p class="warn">&#9888; {html.escape(text)}</p>')
    desc = r.tags.get(NOTE, "").strip()
    if desc:
        s.md.append("**Description:** " + " ".join(desc.split()))
        s.html.append(f'<p><b>Description:</b> {html.escape(desc)}</p>')
    else:
        s.note("no description")
    return s


# ---------------------------------------------------------------------------------- 2. config diff


def section_config_diff(r: _RunData, baseline: Run | None, explicit: bool) -> Section:
    s = Section("Config diff")
    if baseline is None:
        s.note(f"no baseline: no earlier finished '{r.stage}' run in this experiment "
               "(pass a baseline run id to compare with one)")
        return s
    how = "given baseline" if explicit else f"previous finished '{r.stage}' run"
    bm, bh = _run_ref(baseline)
    s.para(f"Baseline ({how}): {bm}, stage `{baseline.data.tags.get(STAGE, 'unknown')}`, "
           f"config hash `{baseline.data.tags.get(CONFIG_HASH, '—')}`.",
           f"Baseline ({html.escape(how)}): {bh}, stage <code>{html.escape(baseline.data.tags.get(STAGE, 'unknown'))}"
           f"</code>, config hash <code>{html.escape(baseline.data.tags.get(CONFIG_HASH, '—'))}</code>.")
    mine, theirs = r.params, baseline.data.params
    keys = sorted(set(mine) | set(theirs))
    diff = [k for k in keys if mine.get(k) != theirs.get(k)]
    if not diff:
        s.note(f"no param differs from the baseline ({len(keys)} params compared)")
        return s
    s.para(f"{len(diff)} of {len(keys)} params differ:")
    s.table(["param", "baseline", "this run"],
            [(Cell(k, md=f"`{k}`", html=f"<code>{html.escape(k)}</code>"),
              truncate(theirs.get(k, "(absent)"), 200), truncate(mine.get(k, "(absent)"), 200)) for k in diff])
    return s


# ---------------------------------------------------------------------------------- 3. key curves


def curve_groups(metric_names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(title, metric keys) of the key-curve figures, only the groups that have metrics."""
    names = sorted(set(metric_names))

    def order(pattern: str) -> list[str]:
        rx = re.compile(pattern)
        found = [n for n in names if rx.match(n)]
        return sorted(found, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])

    loss = [n for n in ("ar/loss", "nar/loss", "val/loss", "val_ema/loss") if n in names]
    util = order(r"^(ar|nar)/cb\d+/util_pred$") + [n for n in ("ar/util_pred_median", "nar/util_pred_median")
                                                 if n in names]
    attn = order(r"^(ar|nar)/attn_entropy/layer\d+(_min)?$")
    grad = order(r"^grad_norm/.+$")
    groups = [("Loss", loss), ("Per-codebook predicted utilisation", util),
              ("Attention entropy per layer (mean and min)", attn), ("Gradient norms per group", grad)]
    return [(t, keys) for t, keys in groups if keys]


def _figure(title: str, series: list[tuple[str, list[int], list[float]]], floor: float | None = None,
            events: Sequence[int] = ()) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, steps, values in series:
        dash = "dash" if key.endswith("_min") or key.startswith(("val/", "val_ema/")) else None
        if key.endswith("util_pred_median"):
            dash = "dot"
        width = 3 if key.endswith("/total") else 2
        fig.add_trace(go.Scatter(x=steps, y=values, name=key, mode="lines+markers",
                                 line={"dash": dash, "width": width}, marker={"size": 4}))
    positive = all(v > 0 for _, _, vals in series for v in vals)
    fig.update_layout(title=title, height=380, template="plotly_white", margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      xaxis_title="step", legend={"font": {"size": 10}})
    if title.startswith("Gradient") and positive:
        fig.update_yaxes(type="log")
    if floor is not None:
        fig.add_hline(y=floor, line={"dash": "dash", "color": "#999"}, annotation_text=f"collapse floor {floor:g}",
                      annotation_position="bottom right")
    for step in sorted(set(events)):
        fig.add_vline(x=step, line={"dash": "dot", "color": "#d62728"}, annotation_text="collapse",
                      annotation_position="top")
    return fig


def _collapse_marks(r: _RunData, title: str) -> tuple[float | None, list[int]]:
    """The collapse monitor's floor and event steps for the utilisation / attention figures."""
    kind = model_kind(r.run)
    if kind is None or not title.startswith(("Per-codebook", "Attention")):
        return None, []
    which = "codebook" if title.startswith("Per-codebook") else "attention"
    param = f"training.{kind}.collapse.{'util_floor' if which == 'codebook' else 'attn_entropy_floor'}"
    try:
        floor = float(r.params[param]) if param in r.params else None
    except ValueError:
        floor = None
    steps = [int(e["step"]) for e in r.jsonl("collapse_events.jsonl")
             if e.get("kind") == which and isinstance(e.get("step"), int)]
    return floor, steps


def section_key_curves(r: _RunData) -> tuple[Section, list[str]]:
    """The section and the plotly divs (already in section.html; returned for counting)."""
    s = Section("Key curves")
    groups = curve_groups(r.metrics)
    if not groups:
        s.note(f"no training curves: this '{r.stage}' run logged no loss, utilisation, attention-entropy or "
               "gradient-norm metrics")
        return s, []
    s.md.append("Interactive plots: [report.html](report.html#key-curves). Key numbers (first/last/min/max over "
                "the logged steps):")
    divs = []
    for title, keys in groups:
        series = []
        rows = []
        for key in keys:
            steps, values = r.history(key)
            if not steps:
                continue
            series.append((key, steps, values))
            finite = [(v, st) for st, v in zip(steps, values) if math.isfinite(v)]
            lo = min(finite) if finite else (float("nan"), None)
            hi = max(finite) if finite else (float("nan"), None)
            rows.append((Cell(key, md=f"`{key}`", html=f"<code>{html.escape(key)}</code>"), len(steps),
                         f"{fmt_num(values[0])} @ {steps[0]}", f"{fmt_num(values[-1])} @ {steps[-1]}",
                         f"{fmt_num(lo[0])} @ {lo[1]}", f"{fmt_num(hi[0])} @ {hi[1]}"))
        if not series:
            continue
        s.heading(title)
        s.md.append(md_table(["metric", "points", "first", "last", "min", "max"], rows))
        floor, events = _collapse_marks(r, title)
        fig = _figure(title, series, floor, events)
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
        divs.append(div)
        s.html.append(f'<div class="figure">{div}</div>')
        s.html.append("<details><summary>numbers</summary>"
                      + html_table(["metric", "points", "first", "last", "min", "max"], rows) + "</details>")
    if not divs:
        s.note("the curve metrics have no history")
    return s, divs


# ---------------------------------------------------------------------------------- 4. best checkpoint


def section_best_checkpoint(r: _RunData) -> Section:
    s = Section("Best checkpoint")
    stage = r.stage
    kind = model_kind(r.run)
    if stage.startswith("train") or kind:
        meta = r.json("checkpoints/best/meta.json") or {}
        step = r.tags.get(names.BEST_STEP) or meta.get("best_step")
        value = r.tags.get(names.BEST_VALUE) or meta.get("best_value")
        metric = meta.get("best_metric") or (r.params.get(f"training.{kind}.best_metric") if kind else None)
        mode = r.params.get(f"training.{kind}.best_mode") if kind else None
        if step is None and not r.has("checkpoints/best"):
            s.note("no best checkpoint recorded (no validation finished with a finite value)")
        else:
            rows: list[tuple[str, CellLike]] = [
                ("metric", f"{metric or 'unknown'}" + (f" ({mode})" if mode else "")),
                ("step", str(step) if step is not None else "—"),
                ("value", fmt_num(value, 6) if value is not None else "—"),
            ]
            if r.has("checkpoints/best"):
                m, h = _artifact_link("checkpoints/best")
                rows.append(("artifact", Cell("checkpoints/best", md=m, html=h)))
                uri = f"runs:/{r.id}/checkpoints/best"
                rows.append(("model reference", Cell(uri, md=f"`{uri}`", html=f"<code>{html.escape(uri)}</code>")))
            else:
                rows.append(("artifact", "not logged to the run"))
            if r.tags.get(names.CHECKPOINT_DIR):
                rows.append(("local directory", f"{r.tags[names.CHECKPOINT_DIR]}/ckpt/best"))
            if meta.get("saved_at"):
                rows.append(("saved at", str(meta["saved_at"])))
            if meta.get("code_version"):
                rows.append(("code version", str(meta["code_version"])))
            s.table(["field", "value"], rows, cls="kv")
        last_steps = r.tags.get(names.STEPS)
        if r.has("checkpoints/last"):
            m, h = _artifact_link("checkpoints/last")
            s.para(f"Last checkpoint: {m} (step {last_steps or '?'}).",
                   f"Last checkpoint: {h} (step {html.escape(last_steps or '?')}).")
        return s
    if stage == "evaluate" or r.tags.get(names.AR_CHECKPOINT):
        rows = []
        for k in ("ar", "nar"):
            rows.append((k.upper(), r.tags.get(names.kind_run_id(k)) or "—",
                         r.tags.get(names.kind_step(k)) or "—",
                         r.tags.get(names.kind_checkpoint(k)) or "—"))
        s.para("This run scored these checkpoints "
               f"({r.tags.get(names.WEIGHTS, 'unknown')} weights):")
        s.table(["model", "training run", "step", "checkpoint"], rows)
        return s
    if stage == "promote":
        version = r.tags.get(names.MODEL_VERSION)
        s.para(f"Model `{r.tags.get(names.MODEL_NAME, '?')}` version {version or 'none'} "
               f"(decision: {r.tags.get(names.DECISION, 'unknown')}).")
        return s
    s.note(f"no checkpoint: '{stage}' runs do not train a model")
    return s


# ---------------------------------------------------------------------------------- 5. eval summary


def _baseline_table(s: Section, metrics: dict[str, float]) -> None:
    headers, rows = decomposition.table(metrics)  # ground truth | resynthesis | oracles | model, with intervals
    if not rows:
        s.note("no eval metrics logged")
        return
    s.table(headers, rows)
    if (line := decomposition.reading(metrics)) is not None:
        s.para(line)


def _worst(rows: list[dict[str, Any]], n: int = WORST_N) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[float, float, int]:
        wer = row.get("model_wer")
        sim = row.get("model_sim")
        fails = sum(bool(row.get(f"model_fail_{k}")) for k in FAIL_KINDS)
        wer_v = float(wer) if isinstance(wer, (int, float)) and math.isfinite(wer) else -1.0
        sim_v = float(sim) if isinstance(sim, (int, float)) and math.isfinite(sim) else 2.0
        return (-wer_v, -fails, sim_v)

    return sorted(rows, key=key)[:n]


def section_eval_summary(r: _RunData) -> Section:
    s = Section("Eval summary")
    if any(k.startswith("eval/") for k in r.metrics):
        n, seeds = r.metrics.get("eval/utterances"), int(r.metrics.get("eval/num_seeds") or 1)
        per = f" x {seeds} decoding seeds" if seeds > 1 else ""
        s.para(f"{fmt_num(n) if n is not None else '?'} utterances{per} of split "
               f"`{r.tags.get(names.EVAL_SPLIT, '?')}`, {r.tags.get(names.WEIGHTS, '?')} weights; "
               "from what the codec can say to what the model says (95% bootstrap intervals):")
        _baseline_table(s, r.metrics)
        if r.has("plots/eval_distributions.html"):
            m, h = _artifact_link("plots/eval_distributions.html")
            s.para(f"Distributions: {m}.", f"Distributions: {h}.")
        rows = _table_rows(r.json("eval_table.json"))
        s.heading(f"Worst {WORST_N} utterances (highest WER, then most failures, then lowest SIM)")
        if not rows:
            s.note("no per-utterance table (eval_table.json) logged")
            return s
        table = []
        for row in _worst(rows):
            fails = ", ".join(k for k in FAIL_KINDS if row.get(f"model_fail_{k}")) or "none"
            audio = str(row.get("audio") or "")
            if audio and r.has(audio):
                m, _ = _artifact_link(audio)
                cell = Cell(audio, md=m, html=_audio_html(r.data_uri(audio), audio))
            elif audio:
                cell = Cell(audio, html=html.escape(audio) + " (not logged)")
            else:  # the model decoded zero samples: nothing to play
                cell = Cell(EMPTY_AUDIO, html=html.escape(EMPTY_AUDIO))
            seed_note = f" (seed #{row['seed_index']})" if row.get("seed_index") else ""
            table.append((str(row.get("id", "?")) + seed_note, truncate(row.get("text", ""), 80),
                          truncate(row.get("model_hypothesis", "") or "(empty)", 80),
                          row.get("model_wer"), row.get("model_sim"), fails, cell))
        s.table(["id", "text", "model hypothesis", "WER", "SIM", "failures", "audio"], table)
        return s
    if r.stage == "promote" and r.tags.get(names.EVALUATION_RUN_ID):
        try:
            ev = r.client.get_run(r.tags[names.EVALUATION_RUN_ID])
        except MlflowException:
            s.note(f"evaluate run {r.tags[names.EVALUATION_RUN_ID]} not found")
            return s
        m, h = _run_ref(ev)
        s.para(f"Evaluate run {m}:", f"Evaluate run {h}:")
        _baseline_table(s, ev.data.metrics)
        return s
    evals: dict[str, Run] = {}
    for key in (names.AR_RUN_ID, names.NAR_RUN_ID):
        for ev in runs_tagged(r.client, r.run.info.experiment_id, key, r.id):
            if ev.data.tags.get(STAGE) == "evaluate":
                evals[ev.info.run_id] = ev
    if not evals:
        s.note("no evaluation: no evaluate run in this experiment scored this run's checkpoints")
        return s
    s.para(f"Evaluate runs that scored this run's checkpoints ({len(evals)}):")
    rows = []
    for ev in sorted(evals.values(), key=lambda e: e.info.start_time or 0, reverse=True):
        em = ev.data.metrics
        rows.append((run_name(ev), Cell(ev.info.run_id, md=f"`{ev.info.run_id}`",
                                        html=f"<code>{ev.info.run_id}</code>"),
                     em.get("eval/wer"), em.get("eval/cer"), em.get("eval/sim"), em.get("eval/fail/any"),
                     em.get("baseline/resynthesis/wer")))
    s.table(["evaluate run", "run id", "WER", "CER", "SIM", "fail rate", "resynthesis WER"], rows)
    return s


# ---------------------------------------------------------------------------------- 6. audio samples


def _latest_sample_dir(r: _RunData) -> str | None:
    steps = [a.path for a in r.ls("samples") if a.is_dir and re.search(r"step_\d+$", a.path)]
    return max(steps, key=lambda p: int(p.rsplit("_", 1)[1])) if steps else None


def section_audio(r: _RunData) -> Section:
    s = Section("Audio samples")
    latest = _latest_sample_dir(r)
    if latest:
        wavs = sorted(a.path for a in r.ls(latest) if not a.is_dir and Path(a.path).suffix.lower() in AUDIO_MIME)
        step = int(latest.rsplit("_", 1)[1])
        s.para(f"Latest samples (step {step}, EMA weights) next to their references; "
               f"playable in [report.html](report.html#audio-samples).",
               f"Latest samples (step {step}, EMA weights) next to their references.")
        rows = []
        for path in wavs[:MAX_SAMPLES]:
            name = Path(path).name
            ref = f"samples/reference/{name}"
            sm, _ = _artifact_link(path)
            sample = Cell(path, md=sm, html=_audio_html(r.data_uri(path), path))
            if r.has(ref):
                rm, _ = _artifact_link(ref)
                reference = Cell(ref, md=rm, html=_audio_html(r.data_uri(ref), ref))
            else:
                reference = Cell("—")
            png = str(Path(path).with_suffix(".png"))
            spec_html = ""
            if r.has(png):
                uri = r.data_uri(png)
                spec_html = f'<img class="spec" alt="{html.escape(png)}" src="{uri}">' if uri else html.escape(png)
            rows.append((Path(path).stem, sample, reference,
                         Cell(png if spec_html else "—", md="(in report.html)" if spec_html else "—",
                              html=spec_html or "—")))
        if rows:
            s.table(["utterance", "sample", "reference", "spectrogram"], rows)
        else:
            s.note(f"{latest} holds no audio files")
        if len(wavs) > MAX_SAMPLES:
            s.note(f"{len(wavs) - MAX_SAMPLES} more samples under {latest}")
        return s
    audio = sorted(a.path for a in r.ls("audio") if not a.is_dir and Path(a.path).suffix.lower() in AUDIO_MIME)
    if audio:
        s.para(f"{len(audio)} generated utterances under `audio/` (the worst {WORST_N} play in the eval summary):",
               f"{len(audio)} generated utterances under <code>audio/</code> (the worst {WORST_N} play in the "
               "eval summary):")
        s.bullets([_artifact_link(p) for p in audio])
        return s
    s.note("no audio artifacts (no samples/ or audio/ in this run)")
    return s


# ---------------------------------------------------------------------------------- 7. collapse events


def _training_runs(r: _RunData) -> tuple[list[_RunData], list[str]]:
    """This run if it trains; else the training runs it refers to (evaluate/promote runs), and the
    references that are no run of this store (checkpoint directories, foreign ids)."""
    if r.stage.startswith("train") or model_kind(r.run):
        return [r], []
    out, unknown = [], []
    for kind in ("ar", "nar"):
        rid = r.tags.get(names.kind_run_id(kind))
        if not rid:
            continue
        try:
            if not re.fullmatch(r"[0-9a-f]{32}", rid):
                raise LookupError(rid)
            out.append(_RunData(r.client, r.client.get_run(rid), r.tmp))
        except (MlflowException, LookupError):
            unknown.append(f"{kind.upper()} {rid}")
    return out, unknown


def section_collapse(r: _RunData) -> Section:
    s = Section("Collapse events")
    runs, unknown = _training_runs(r)
    if not runs and not unknown:
        s.note("no collapse events: this run trains nothing and refers to no training run")
        return s
    for ref in unknown:
        s.note(f"collapse events unknown for {ref}: not a run of this tracking store")
    for t in runs:
        events = t.jsonl("collapse_events.jsonl")
        label = "this run" if t is r else f"training run {run_name(t.run)} ({t.id})"
        if not events:
            if t.tags.get(names.COLLAPSE) == "true":
                s.note(f"{label}: collapse tagged (first at step {t.tags.get(names.COLLAPSE_FIRST_STEP, '?')})"
                       " but collapse_events.jsonl is missing")
            else:
                s.note(f"no collapse events in {label}")
            continue
        affected = sorted({str(e.get("name")) for e in events})
        s.para(f"{label}: {len(events)} collapse event(s), first at step {events[0].get('step')}, "
               f"affecting {', '.join(affected)}:")
        s.table(["step", "kind", "metric", "value", "floor", "message"],
                [(e.get("step"), e.get("kind", "?"), e.get("name", "?"), e.get("value"), e.get("floor"),
                  truncate(e.get("message", ""), 160)) for e in events[:200]])
        if len(events) > 200:
            s.note(f"{len(events) - 200} more events in collapse_events.jsonl")
    return s


# ---------------------------------------------------------------------------------- 8. failure reasons


def _gate_rows(tags: dict[str, str]) -> list[tuple[CellLike, ...]]:
    names = sorted({k.split(".")[1] for k in tags if k.startswith("gate.") and k.count(".") >= 2})
    rows = []
    for g in names:
        t = {k.split(".", 2)[2]: v for k, v in tags.items() if k.startswith(f"gate.{g}.")}
        verdict = "SKIP" if t.get("skipped") == "true" else ("PASS" if t.get("passed") == "true" else "FAIL")
        rows.append((g, verdict, t.get("value", "—"), t.get("threshold", "—"), t.get("configured", "—"),
                     truncate(t.get("reason", ""), 200)))
    return rows


def section_failures(r: _RunData) -> Section:
    s = Section("Failure reasons")
    items: list[tuple[str, str]] = []

    def add(text: str) -> None:
        items.append((md_escape(text), html.escape(text)))

    status = r.run.info.status
    if status != "FINISHED":
        add(f"run status {status}" + (" (the report shows a run still in progress)" if status == "RUNNING" else ""))
    stop = r.tags.get(names.STOP_REASON)
    if stop and stop != "completed":
        add(f"stop reason: {stop}")
    if r.tags.get(names.EARLY_STOP) and r.tags.get(names.EARLY_STOP) != stop:
        add(f"early stop: {r.tags[names.EARLY_STOP]}")
    if not (r.stage.startswith("train") or model_kind(r.run)):
        for t in _training_runs(r)[0]:
            if t.tags.get(names.COLLAPSE) == "true":
                add(f"the evaluated training run {run_name(t.run)} ({t.id}) collapsed (first at step "
                    f"{t.tags.get(names.COLLAPSE_FIRST_STEP, '?')}); see Collapse events")
    if r.tags.get(names.COLLAPSE) == "true":
        add(f"codebook/attention collapse detected (first at step {r.tags.get(names.COLLAPSE_FIRST_STEP, '?')}, "
            f"{fmt_num(r.metrics.get('collapse/events'))} event(s)); see Collapse events")
    if r.tags.get(names.CACHE_MISMATCH) == "true":
        add("trained on a stale token cache (--allow-cache-mismatch): "
            + r.tags.get(names.CACHE_MISMATCH_FIELDS, "fields unknown"))
    instab = r.jsonl("instability_events.jsonl")
    n_instab = r.metrics.get("instability/events") or len(instab)
    if n_instab:
        add(f"{fmt_num(n_instab)} instability event(s) (skipped optimizer steps"
            f"{', LR reduced' if any(e.get('lr_reduced') for e in instab) else ''})")

    # evaluate: failing detectors
    detector_rows = []
    for k in FAIL_KINDS:
        rate = r.metrics.get(f"eval/fail/{k}")
        if rate:
            detector_rows.append((k, rate, r.metrics.get(f"baseline/resynthesis/fail/{k}"),
                                  r.metrics.get(f"baseline/ground_truth/fail/{k}")))
    if detector_rows:
        add(f"eval failure detectors fired on {fmt_num(100 * r.metrics.get('eval/fail/any', 0), 3)}% of the "
            f"utterances: " + ", ".join(f"{k} {fmt_num(100 * v, 3)}%" for k, v, _, _ in detector_rows))
    for key, label in (("eval/length_bound_rate", "AR hit the length bound"), ("eval/loop_cut_rate",
                                                                                 "AR loops were cut")):
        if r.metrics.get(key):
            add(f"{label} on {fmt_num(100 * r.metrics[key], 3)}% of the utterances")

    # gates: on this run (promote) or on promote runs of this evaluate run
    gate_sources: list[tuple[str, dict[str, str]]] = []
    if any(k.startswith("gate.") for k in r.tags):
        gate_sources.append(("this run", r.tags))
    elif r.stage == "evaluate":
        for p in runs_tagged(r.client, r.run.info.experiment_id, names.EVALUATION_RUN_ID, r.id, 5):
            if any(k.startswith("gate.") for k in p.data.tags):
                gate_sources.append((f"promote run {run_name(p)} ({p.info.run_id})", p.data.tags))
                break  # the latest promotion
    for label, tags in gate_sources:
        failing = tags.get(names.FAILING_GATES)
        if failing and failing != "none":
            add(f"promotion gates failed ({label}): {failing}")
        if tags.get(names.DECISION) in ("refused",):
            add(f"promotion refused ({label}): {tags.get('mlflow.note.content', '')[:300]}")

    if items:
        s.bullets(items)
    else:
        s.note("no failure recorded: the run finished, no early stop, no collapse, no instability, "
               "no eval detector fired, no gate failed")
    if instab:
        s.heading("Instability events")
        s.table(["step", "reason", "LR reduced"],
                [(e.get("step"), truncate(e.get("reason", ""), 160), str(bool(e.get("lr_reduced"))).lower())
                 for e in instab[:200]])
    if detector_rows:
        s.heading("Failing eval detectors (share of utterances)")
        s.table(["detector", "model", "codec resynthesis", "ground truth"], detector_rows)
    for label, tags in gate_sources:
        s.heading(f"Gate results ({label})")
        decision = tags.get(names.DECISION)
        if decision:
            s.para(f"Decision: **{md_escape(decision)}**; gates passed: {tags.get(names.GATES_PASSED, '?')}.",
                   f"Decision: <b>{html.escape(decision)}</b>; gates passed: "
                   f"{html.escape(tags.get(names.GATES_PASSED, '?'))}.")
        s.table(["gate", "verdict", "value", "threshold", "configured", "reason"], _gate_rows(tags))
    if not gate_sources and r.stage in ("evaluate", "promote"):
        s.note("no gate results (this run has not been through `harmonica promote`)")
    return s


# ---------------------------------------------------------------------------------- assembly

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}table.kv td:first-child{font-weight:600;white-space:nowrap}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}.none{color:#777;font-style:italic}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em;border-radius:4px}
.path{color:#777;font-size:.8em}img.spec{max-width:320px}nav a{margin-right:1em}audio{width:260px}
"""


def _render_md(title: str, sections: list[Section], generated: str) -> str:
    out = [f"# {title}", "", f"_Generated {generated} by `harmonica report`; interactive curves and playable "
                              "audio in [report.html](report.html)._", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for block in s.md:
            out += [block, ""]
    return "\n".join(out).rstrip() + "\n"


def _render_html(title: str, sections: list[Section], generated: str) -> str:
    from plotly.offline import get_plotlyjs

    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="path">Generated {html.escape(generated)} by <code>harmonica report</code>.</p>',
            f"<nav>{nav}</nav>"]
    for s in sections:
        body.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.html)}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            # plotly.js once, inline, so the file works offline; every figure div uses it
            f'<script type="text/javascript">{get_plotlyjs()}</script>'
            f"</head><body>{''.join(body)}</body></html>\n")


def build_report(
    run_id: str,
    *,
    tracking_uri: str,
    baseline_run_id: str | None = None,
    out_dir: Path | str,
    log_to_run: bool = True,
) -> ReportPaths:
    """Write `report.md` and `report.html` for `run_id` into out_dir and (by default) log both to the
    run under `report/`. baseline_run_id None: the previous finished run of the same stage, if any."""
    with quiet_downloads():  # MLflow draws a progress bar per download; a report downloads dozens
        return _build(run_id, tracking_uri=tracking_uri, baseline_run_id=baseline_run_id, out_dir=out_dir,
                      log_to_run=log_to_run)


def _build(run_id: str, *, tracking_uri: str, baseline_run_id: str | None, out_dir: Path | str,
           log_to_run: bool) -> ReportPaths:
    client = client_for(tracking_uri)
    run = get_run(client, run_id)
    explicit = baseline_run_id is not None
    baseline = get_run(client, baseline_run_id, what="baseline run") if explicit else previous_run(client, run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    with tempfile.TemporaryDirectory(prefix="harmonica-report-") as tmp:
        r = _RunData(client, run, Path(tmp))
        builders: list[Callable[[], Section]] = [
            lambda: section_overview(r),
            lambda: section_config_diff(r, baseline, explicit),
            lambda: section_key_curves(r)[0],
            lambda: section_best_checkpoint(r),
            lambda: section_eval_summary(r),
            lambda: section_audio(r),
            lambda: section_collapse(r),
            lambda: section_failures(r),
        ]
        sections = []
        for title, build in zip(SECTIONS, builders):
            try:
                sections.append(build())
            except (MlflowException, OSError, ValueError, KeyError, TypeError) as exc:
                # one broken section must not cost the whole report
                log.warning("report section %s failed: %s", title, exc, exc_info=True)
                s = Section(title)
                s.note(f"could not be built: {type(exc).__name__}: {exc}")
                sections.append(s)
        title = f"Run report: {run_name(run)} ({r.stage})"
        md_path, html_path = out / "report.md", out / "report.html"
        md_path.write_text(_render_md(title, sections, generated), encoding="utf-8")
        html_path.write_text(_render_html(title, sections, generated), encoding="utf-8")
    if log_to_run:
        client.log_artifact(run_id, str(md_path), ARTIFACT_DIR)
        client.log_artifact(run_id, str(html_path), ARTIFACT_DIR)
    return ReportPaths(md_path, html_path, run_id, baseline.info.run_id if baseline else None, log_to_run)


__all__ = ["SECTIONS", "ReportError", "ReportPaths", "build_report", "curve_groups"]
