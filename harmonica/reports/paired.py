"""Two evaluate runs of the same utterances, paired: the difference of the model's WER, CER, SIM and
failure rate with its 95% paired-bootstrap interval, and whether that interval shows a difference at
all (`harmonica compare` and the report of an evaluate run against its baseline)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harmonica.evaluation.bootstrap import PairedDifference, paired_difference

# (metric, per-utterance suffix, mode) compared pairwise between evaluate runs
PAIRED = (("eval/wer", "wer", "min"), ("eval/cer", "cer", "min"), ("eval/sim", "sim", "max"),
          ("eval/fail/any", "fail/any", "min"))
PAIRED_SAMPLES = 2000


def paired_rows(tables: Sequence[Sequence[dict[str, Any]] | None], *, samples: int,
                seed: int = 0) -> list[tuple[str, list[PairedDifference | None]]]:
    """For each PAIRED metric, every run's per-utterance table against the first's (None where either
    has no table or they share no utterance); [] when the first run has no table."""
    reference = tables[0] if tables else None
    if not reference:
        return []
    out = []
    for metric, suffix, mode in PAIRED:
        diffs = [None] + [paired_difference(t, reference, suffix, mode=mode, level=0.95, samples=samples,
                                            seed=seed, metric=metric) if t else None for t in tables[1:]]
        if any(d is not None for d in diffs):
            out.append((metric, diffs))
    return out


def verdict(diff: PairedDifference) -> str:
    """'better' / 'worse' when the two-sided interval excludes 0, else '~' (within the noise)."""
    if not (math.isfinite(diff.low) and math.isfinite(diff.high)) or diff.low <= 0 <= diff.high:
        return "~"
    lower = diff.high < 0
    return "better" if lower == (diff.mode == "min") else "worse"


__all__ = ["PAIRED", "PAIRED_SAMPLES", "paired_rows", "verdict"]
