"""The champion rule that knows noise: a candidate replaces the champion only when it is better on
the primary metric by a paired bootstrap over the utterances both evaluate runs scored.

`champion_verdict` is pure (per-utterance rows in, decision and reason out); `eval_rows` reads an
evaluate run's `eval_table.json` through the MLflow client (the registry's only I/O here).

Rule (gates.champion_confidence = c > 0, gates.primary_mode = min|max): resample the shared
utterances eval.bootstrap_samples times (seed eval.seed), compute candidate - champion on the
primary metric for each resample; the champion moves only when the one-sided bound at confidence c
is an improvement (mode min: the c-quantile of the difference < 0; mode max: the (1-c)-quantile
> 0). Otherwise: "not significantly better", with the two-sided c interval. Without per-utterance
evidence (no table, no shared utterance, a metric with no per-utterance form, no resamples) the
champion stays -- a champion never moves for lack of evidence. c = 0 compares point estimates
(strictly better; a tie keeps the champion).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harmonica.config.schema import GatesConfig
from harmonica.evaluation.bootstrap import paired_difference
from harmonica.registry.gates import beats
from harmonica.reports.common import table_rows


def primary_suffix(metric: str) -> str | None:
    """eval/wer -> wer, eval/fail/any -> fail/any; None for a metric with no per-utterance form."""
    if not metric.startswith("eval/"):
        return None
    suffix = metric[len("eval/"):]
    return suffix if suffix in ("wer", "cer", "sim") or suffix.startswith("fail/") else None


def eval_rows(client: Any, run_id: str) -> list[dict[str, Any]] | None:
    """The per-utterance table of an evaluate run, None when it cannot be read."""
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="harmonica-table-") as tmp:
            path = Path(client.download_artifacts(run_id, "eval_table.json", tmp))
            rows = table_rows(json.loads(path.read_text(encoding="utf-8")))
    except Exception:  # noqa: BLE001  (any unreadable table is "no per-utterance evidence")
        return None
    return rows or None


def champion_verdict(value: float, champion: float, champion_version: str, gates: GatesConfig,
                     candidate_rows: Sequence[Mapping[str, Any]] | None,
                     champion_rows: Sequence[Mapping[str, Any]] | None,
                     *, samples: int, seed: int) -> tuple[bool, str]:
    """-> (move the champion, reason) for a gate-passing candidate against the current champion."""
    metric, mode, confidence = gates.primary_metric, gates.primary_mode, gates.champion_confidence
    versus = f"{metric} {value:.4g} vs champion v{champion_version} {champion:.4g} (mode {mode})"
    if confidence <= 0:
        if beats(value, champion, mode):
            return True, f"{versus}: better (point estimates, gates.champion_confidence = 0) -> champion"
        return False, f"{versus}: not better (point estimates; a tie keeps the champion): candidate only"
    stays = f"champion v{champion_version} stays"
    suffix = primary_suffix(metric)
    if suffix is None:
        return False, (f"{versus}: {metric} has no per-utterance form, so significance cannot be tested at "
                       f"{confidence:.0%}: {stays} (set gates.champion_confidence=0 to compare point estimates)")
    if not candidate_rows or not champion_rows:
        which = "the candidate's" if not candidate_rows else "the champion's"
        return False, (f"{versus}: {which} evaluate run has no readable per-utterance table (eval_table.json), so "
                       f"significance cannot be tested: {stays}")
    if samples <= 0:
        return False, f"{versus}: eval.bootstrap_samples = 0, so significance cannot be tested: {stays}"
    diff = paired_difference(candidate_rows, champion_rows, suffix, mode=mode, level=confidence,
                             samples=samples, seed=seed, metric=metric)
    if diff is None:
        return False, (f"{versus}: the two evaluate runs share no utterance (different eval slices), so they "
                       f"cannot be compared pairwise: {stays}; evaluate both on the same slice")
    bound = "upper" if mode == "min" else "lower"
    detail = (f"{diff.describe()}; one-sided {confidence:.0%} {bound} bound {diff.one_sided:+.4g} "
              f"({samples} paired resamples)")
    if diff.significant:
        return True, f"{versus}: significantly better -- {detail} -> champion"
    return False, f"{versus}: not significantly better -- {detail}: candidate only"
