"""The report's sections, in order: pure functions of the ReportData (no store, no rendering).

A new section: a function `(ReportData) -> Section` in one of these modules (or a new one), listed in
BUILDERS with the parts of the data whose failed read it cannot do without; the data it needs goes into
reports/data.py, the way it is drawn (if it needs a new kind of block) into reports/model.py and the two
templates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from harmonica.reports.data import HISTORIES, PROMOTIONS, SCORED_BY, ReportData
from harmonica.reports.model import Note, Section
from harmonica.reports.sections.evaluation import audio_samples, eval_summary
from harmonica.reports.sections.failures import collapse_events, failure_reasons
from harmonica.reports.sections.run import config_diff, overview
from harmonica.reports.sections.training import best_checkpoint, key_curves

log = logging.getLogger(__name__)

# (title, builder, data parts it needs)
BUILDERS: tuple[tuple[str, Callable[[ReportData], Section], tuple[str, ...]], ...] = (
    ("Overview", overview, ()),
    ("Config diff", config_diff, ()),
    ("Key curves", key_curves, (HISTORIES,)),
    ("Best checkpoint", best_checkpoint, ()),
    ("Eval summary", eval_summary, (SCORED_BY,)),
    ("Audio samples", audio_samples, ()),
    ("Collapse events", collapse_events, ()),
    ("Failure reasons", failure_reasons, (PROMOTIONS,)),
)
SECTIONS: tuple[str, ...] = tuple(title for title, _, _ in BUILDERS)


def build_sections(data: ReportData) -> list[Section]:
    """Every section; one that cannot be built (its data unreadable, or malformed) says so instead of
    costing the whole report."""
    out = []
    for title, build, needs in BUILDERS:
        missing = [data.errors[p] for p in needs if p in data.errors]
        if missing:
            out.append(Section(title).add(Note(f"could not be built: {missing[0]}")))
            continue
        try:
            out.append(build(data))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("report section %s failed: %s", title, exc, exc_info=True)
            out.append(Section(title).add(Note(f"could not be built: {type(exc).__name__}: {exc}")))
    return out
