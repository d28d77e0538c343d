"""The evaluation decomposition of a report: which half of the model is broken.

Columns, from what the codec can say to what the model says: the recordings (ground truth), the
codec resynthesis of all codebooks, of the first k codebooks only (`oracle/resynthesis_k<k>`,
what the AR's target carries), the ground truth's first codebook completed by the model's NAR
(`oracle/gt_coarse`, a perfect AR), the AR's teacher-forced argmax first codebook completed by the NAR
(`oracle/tf_coarse`, an AR that never drifts; when scored), and the model (AR + NAR). Every cell shows its 95% bootstrap
interval over utterances when the evaluate run logged one (`<metric>_ci_low|_ci_high`).
Plain data in, strings out: report.py and compare.py render them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from harmonica.reports.common import FAIL_KINDS, fmt_num

METRICS: tuple[tuple[str, str], ...] = (
    ("WER", "wer"), ("CER", "cer"), ("SIM", "sim"), ("fail rate (any)", "fail/any"),
    *((f"fail: {k}", f"fail/{k}") for k in FAIL_KINDS),
)
_STAGES = re.compile(r"^oracle/resynthesis_k(\d+)/wer$")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def with_interval(metrics: Mapping[str, float], key: str, digits: int = 3) -> str | None:
    """'0.82 [0.71, 0.93]' (value and its interval), the value alone without one, None when absent."""
    value = metrics.get(key)
    if value is None:
        return None
    lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if _finite(lo) and _finite(hi):
        return f"{fmt_num(value, digits)} [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"
    return fmt_num(value, digits)


def columns(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    """(header, metric prefix) of the sources this evaluate run scored, in decomposition order."""
    out = [("ground truth", "baseline/ground_truth"), ("codec resynthesis", "baseline/resynthesis")]
    stages = sorted(int(m.group(1)) for m in map(_STAGES.match, metrics) if m)
    out += [(f"resynthesis, codebooks 0-{k - 1}" if k > 1 else "resynthesis, codebook 0 alone",
             f"oracle/resynthesis_k{k}") for k in stages]
    if "oracle/gt_coarse/wer" in metrics:
        out.append(("gt codebook 0 + model NAR", "oracle/gt_coarse"))
    if "oracle/tf_coarse/wer" in metrics:
        out.append(("AR teacher-forced codebook 0 + NAR", "oracle/tf_coarse"))
    out.append(("model (AR + NAR)", "eval"))
    return out


def table(metrics: Mapping[str, float]) -> tuple[list[str], list[list[str | None]]]:
    """(headers, rows): one row per metric family any source has, one column per source."""
    cols = columns(metrics)
    rows: list[list[str | None]] = []
    for label, suffix in METRICS:
        cells = [with_interval(metrics, f"{prefix}/{suffix}") for _, prefix in cols]
        if any(c is not None for c in cells):
            rows.append([label, *cells])
    return ["metric", *(h for h, _ in cols)], rows


def reading(metrics: Mapping[str, float]) -> str | None:
    """One sentence splitting the model's WER gap to the codec into its NAR and AR shares."""
    model, resyn, coarse = (metrics.get(k) for k in ("eval/wer", "baseline/resynthesis/wer", "oracle/gt_coarse/wer"))
    if not (_finite(model) and _finite(resyn) and _finite(coarse)):
        return None
    gap, nar, ar = model - resyn, coarse - resyn, model - coarse  # type: ignore[operator]
    tf = metrics.get("oracle/tf_coarse/wer")
    split = (f" = per-frame prediction {tf - coarse:+.3f} (its teacher-forced argmax codebook 0 vs the ground "
             f"truth's) + drift {model - tf:+.3f} (free-running vs teacher-forced)") if _finite(tf) else ""
    return (f"WER gap to the codec resynthesis: {gap:+.3f} = NAR {nar:+.3f} (ground-truth codebook 0 + the model's "
            f"NAR vs resynthesis) + AR {ar:+.3f} (the model vs ground-truth codebook 0 + its NAR){split}. "
            "Intervals are 95% bootstrap intervals over utterances.")
