"""Shared read-side helpers for run reports and run comparison: fetching runs, finding related runs,
picking the key metrics of a run and formatting numbers. Nothing here writes to the store."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from harmonica.tracking import names

STAGE = names.STAGE
PROJECT = names.PROJECT
CONFIG_HASH = names.CONFIG_HASH
GIT_COMMIT = names.GIT_COMMIT
GIT_DIRTY = names.GIT_DIRTY
SOURCE_HASH = names.SOURCE_HASH
VERSION = names.VERSION
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"

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


def client_for(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


def get_run(client: MlflowClient, run_id: str, *, what: str = "run") -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise ReportError(f"{what} {run_id!r} not found on {client.tracking_uri}: {exc.message}") from None


def run_name(run: Run) -> str:
    return run.info.run_name or run.data.tags.get(RUN_NAME) or run.info.run_id[:8]


def model_kind(run: Run) -> str | None:
    """'ar' / 'nar' for a training run (from its tag, else from its `<kind>/loss` metric)."""
    kind = run.data.tags.get(names.MODEL_KIND)
    if kind in ("ar", "nar"):
        return kind
    for key in run.data.metrics:
        m = KIND_LOSS.match(key)
        if m:
            return m.group(1)
    return None


def is_dirty(run: Run) -> bool:
    return run.data.tags.get(GIT_DIRTY, "").lower() == "true"


def previous_run(client: MlflowClient, run: Run) -> Run | None:
    """The latest FINISHED run of the same stage in the same experiment that started before `run`."""
    stage = run.data.tags.get(STAGE)
    if not stage:
        return None
    flt = (f"tags.`{STAGE}` = '{stage}' and attributes.status = 'FINISHED' "
           f"and attributes.start_time < {int(run.info.start_time)}")
    found = client.search_runs([run.info.experiment_id], filter_string=flt, max_results=5,
                               order_by=["attributes.start_time DESC"])
    found = [r for r in found if r.info.run_id != run.info.run_id]
    return found[0] if found else None


def runs_tagged(client: MlflowClient, experiment_id: str, key: str, value: str, max_results: int = 20) -> list[Run]:
    if not value:
        return []
    return list(client.search_runs([experiment_id], filter_string=f"tags.`{key}` = '{value}'",
                                   max_results=max_results, order_by=["attributes.start_time DESC"]))


def key_metric_names(metrics: Iterable[str]) -> list[str]:
    """The comparison metrics a run has, in a fixed order: final training loss, validation losses,
    predicted-utilisation median, eval WER/SIM/failure rate and collapse events."""
    names = set(metrics)
    out = [k for k in ("ar/loss", "nar/loss", "val/loss", "val_ema/loss",
                       "ar/util_pred_median", "nar/util_pred_median", "val/util_pred_median",
                       "eval/wer", "eval/cer", "eval/sim", "eval/fail/any", "baseline/resynthesis/wer",
                       "oracle/gt_coarse/wer", "collapse/events",
                       "instability/events") if k in names]
    return out


# lower is better unless listed here
HIGHER_IS_BETTER = re.compile(r"(util_pred|/sim$|/acc$|usage_entropy)")


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


def differing(values_by_run: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """Keys whose values are not all identical (a missing value counts as a value)."""
    return {k: v for k, v in values_by_run.items() if len({repr(x) for x in v}) > 1}
