"""`harmonica report RUN_ID`: a Markdown and a self-contained HTML report of one run.

Sections (always all of them, each saying so when it has nothing to show):

* Overview: name, stage, project, status, start/duration, description, code version, dirty-tree warning;
* Config diff: the params that differ from a baseline run (default: the previous finished run of the
  same stage in the same experiment);
* Key curves: loss and validation loss, per-codebook predicted utilisation, attention entropy per layer
  (mean and min), gradient norms per group; plotly figures in the HTML (plotly.js inlined once), the key
  numbers as tables in the Markdown; the trainer's last per-codebook utilisation heatmap (a stepped image);
* Best checkpoint: step, value and metric, artifact path (evaluate runs: the checkpoints evaluated);
* Eval summary: model vs ground-truth/resynthesis baselines and the worst utterances with their audio
  (training runs: the evaluate runs of this checkpoint);
* Audio samples: the latest training samples next to their references (evaluate runs: every file);
* Collapse events: the training monitor's events (evaluate/promote runs: those of the trained runs);
* Failure reasons: run status, stop reason, instability events, failing eval detectors, gate results.

The Markdown has no images; it links `report.html`, which plays audio offline (base64 data URIs).
Both are logged back to the run as `report/report.md` and `report/report.html`.

How: data.py reads the store (through harmonica.tracking.read) into a ReportData; sections/ turns it into
Sections (pure functions); render.py fills the templates in templates/ with them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harmonica.reports.common import ReportError, curve_groups
from harmonica.reports.data import fetch_media, load_report_data
from harmonica.reports.render import render_html, render_markdown
from harmonica.reports.sections import SECTIONS, build_sections
from harmonica.reports.sections.evaluation import EMPTY_AUDIO
from harmonica.tracking import names
from harmonica.tracking.adapter import attach
from harmonica.tracking.read import TrackingReader, quiet_downloads

ARTIFACT_DIR = names.REPORT_DIR


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    run_id: str
    baseline_run_id: str | None = None
    logged: bool = False


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
    reader = TrackingReader(tracking_uri)
    out = Path(out_dir)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    # MLflow draws a progress bar per download; a report downloads dozens of small files
    with quiet_downloads(), tempfile.TemporaryDirectory(prefix="harmonica-report-") as tmp:
        data = load_report_data(reader, run_id, baseline_run_id, Path(tmp))
        run_id = data.run.run_id  # what a short id or a run name named, read once by load_report_data
        sections = build_sections(data)
        media = fetch_media(reader, data, (p for s in sections for p in s.media()), Path(tmp))
        title = f"Run report: {data.run.name} ({data.stage})"
        out.mkdir(parents=True, exist_ok=True)
        md_path, html_path = out / "report.md", out / "report.html"
        md_path.write_text(render_markdown(title, sections, generated), encoding="utf-8")
        html_path.write_text(render_html(title, sections, generated, media), encoding="utf-8")
    if log_to_run:
        run = attach(tracking_uri, run_id)
        run.log_artifact(md_path, ARTIFACT_DIR)
        run.log_artifact(html_path, ARTIFACT_DIR)
    return ReportPaths(md_path, html_path, run_id, data.baseline.run_id if data.baseline else None, log_to_run)


__all__ = ["EMPTY_AUDIO", "SECTIONS", "ReportError", "ReportPaths", "build_report", "curve_groups"]
