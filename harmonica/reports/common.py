"""Shared helpers of run reports and run comparison: fetching a run (a clear error when it is not
there), what kind of run it is, picking its key metrics and formatting numbers."""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from harmonica.tracking import names
from harmonica.tracking.read import NotFoundError, RunRecord, TrackingReader

KIND_LOSS = re.compile(r"^(ar|nar)/loss$")
FAIL_KINDS = ("silence", "clipping", "looping", "noise", "too_long", "too_short")


class ReportError(LookupError):
    """A run (or baseline) that cannot be found or used; the message names what was looked up."""


def table_rows(table: Any) -> list[dict[str, Any]]:
    """A logged MLflow table ({"columns": [...], "data": [[...]]}, e.g. eval_table.json) -> row dicts
    ([] when malformed)."""
    if not isinstance(table, dict):
        return []
    cols, data = table.get("columns"), table.get("data")
    if not isinstance(cols, list) or not isinstance(data, list):
        return []
    return [dict(zip(cols, row, strict=False)) for row in data if isinstance(row, list)]


def eval_rows(reader: TrackingReader, run_id: str) -> list[dict[str, Any]] | None:
    """The per-utterance table of an evaluate run, None when it cannot be read."""
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="harmonica-table-") as tmp:
            path = reader.download_artifacts(run_id, names.EVAL_TABLE, tmp)
            rows = table_rows(json.loads(path.read_text(encoding="utf-8")))
    except Exception:  # noqa: BLE001  (any unreadable table is "no per-utterance evidence")
        return None
    return rows or None


def resolve_run_id(tracking_uri: str, ref: str, *, what: str = "run") -> str:
    """The full id of the run a full id, a unique id prefix or a unique run name names; ReportError otherwise."""
    return get_run(TrackingReader(tracking_uri), ref, what=what).run_id


def get_run(reader: TrackingReader, run_id: str, *, what: str = "run") -> RunRecord:
    """The run by its full id, a unique id prefix or a unique run name; ReportError otherwise."""
    try:
        return reader.resolve_run(run_id, what=what)
    except NotFoundError as exc:
        raise ReportError(str(exc)) from None


def model_kind(run: RunRecord) -> str | None:
    """'ar' / 'nar' for a training run (from its tag, else from its `<kind>/loss` metric)."""
    kind = run.tags.get(names.MODEL_KIND)
    if kind in ("ar", "nar"):
        return kind
    for key in run.metrics:
        m = KIND_LOSS.match(key)
        if m:
            return m.group(1)
    return None


def is_training(run: RunRecord) -> bool:
    """A run that trains a model (its stage says so, or it logged a training loss)."""
    return (run.stage or "").startswith("train") or model_kind(run) is not None


def is_dirty(run: RunRecord) -> bool:
    return run.tags.get(names.GIT_DIRTY, "").lower() == "true"


def curve_groups(metric_names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(title, metric keys) of the key-curve figures, only the groups that have metrics."""
    keys = sorted(set(metric_names))

    def order(pattern: str) -> list[str]:
        rx = re.compile(pattern)
        found = [n for n in keys if rx.match(n)]
        return sorted(found, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])

    loss = [n for n in ("ar/loss", "nar/loss", "val/loss", "val_ema/loss") if n in keys]
    util = order(r"^(ar|nar)/cb\d+/util_pred$") + [n for n in ("ar/util_pred_median", "nar/util_pred_median")
                                                 if n in keys]
    attn = order(r"^(ar|nar)/attn_entropy/layer\d+(_min)?$")
    grad = order(r"^grad_norm/.+$")
    groups = [("Loss", loss), ("Per-codebook predicted utilisation", util),
              ("Attention entropy per layer (mean and min)", attn), ("Gradient norms per group", grad)]
    return [(t, found) for t, found in groups if found]


def key_metric_names(metrics: Iterable[str]) -> list[str]:
    """The comparison metrics a run has, in a fixed order: final training loss, validation losses,
    what the model reads (the AR's text gain, the NAR's margin over its count table, the free-running
    check's WER), predicted-utilisation median, eval WER/SIM/failure rate and collapse events."""
    names = set(metrics)
    out = [k for k in ("ar/loss", "nar/loss", "val/loss", "val_ema/loss",
                       "val_ema/text_gain", "val_ema/ce_margin", "val/asr_wer",
                       "ar/util_pred_median", "nar/util_pred_median", "val/util_pred_median",
                       "eval/wer", "eval/cer", "eval/sim", "eval/fail/any", "baseline/resynthesis/wer",
                       "oracle/gt_coarse/wer", "collapse/events",
                       "instability/events") if k in names]
    return out


# lower is better unless listed here
HIGHER_IS_BETTER = re.compile(r"(util_pred|/sim$|/acc$|usage_entropy|text_gain$|ce_margin$)")


def better_is_higher(metric: str) -> bool:
    return bool(HIGHER_IS_BETTER.search(metric))


def fmt_num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e12:
        return str(int(x))
    return f"{x:.{digits}g}"


def fmt_time(ms: int | None) -> str:
    if not ms:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms or not end_ms or end_ms < start_ms:
        return "—"
    s = (end_ms - start_ms) / 1000
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
