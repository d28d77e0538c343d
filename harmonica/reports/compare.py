"""`harmonica compare RUN_A RUN_B ...`: what differs between runs, as a fixed-width terminal table.

Rows: the tags that matter (stage, status, config hash, git commit, dirty flag), every param whose
value is not the same in all runs (identical ones are counted, not shown; a param a run lacks shows as
"—"), and the final values of the key metrics any of the runs has (training loss, val/val_ema loss,
predicted-utilisation median, eval WER/CER/SIM/failure rate, collapse and instability events), the
best of each row marked with `*`; an eval metric with a logged 95% bootstrap interval shows it as
`value [low, high]`. Comparing evaluate runs that scored different AR or NAR runs, the params that
differ between those training runs get their own sections (what trained the checkpoints); the
evaluate runs' own training.* params, which act on no evaluation, are counted, not shown. Runs are named by full id, a unique id prefix (the 8 characters the logs print) or
a unique run name.

Evaluate runs are also compared pairwise with the first one (A) on the utterances both scored: the
difference B - A of the model's WER, CER, SIM and failure rate with its 95% paired-bootstrap interval
(the utterances resampled once for both runs, so how hard each utterance is cancels), and whether the
interval shows a difference at all -- two evaluations of one model differ by several points of WER from
sampling and ASR noise alone, so an unmarked difference is not evidence. The interval holds that noise only:
when B scored other training runs than A, the table says so, because the same recipe trained twice (another
seed, another thread count) differs by more than it (stop 35: 0.569 / 0.645 / 0.606 WER for one demo recipe).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harmonica.evaluation.bootstrap import PairedDifference
from harmonica.reports.common import better_is_higher, eval_rows, fmt_num, get_run, key_metric_names, truncate
from harmonica.reports.paired import PAIRED_SAMPLES, paired_rows, verdict
from harmonica.tracking import names
from harmonica.tracking.read import NotFoundError, RunRecord, TrackingReader, quiet_downloads

MISSING = "—"


@dataclass(frozen=True)
class ComparedRun:
    run_id: str
    name: str
    stage: str
    status: str


@dataclass
class CompareResult:
    runs: list[ComparedRun]
    tags: list[tuple[str, list[str]]] = field(default_factory=list)
    params: list[tuple[str, list[str | None]]] = field(default_factory=list)  # only those that differ
    identical_params: int = 0
    # evaluate runs only: the training.* params of their own config, which act on no evaluation
    evaluate_training_params: int = 0
    # evaluate runs: ("ar run" | "nar run", the params that differ between the training runs they scored)
    trained: list[tuple[str, list[tuple[str, list[str | None]]]]] = field(default_factory=list)
    metrics: list[tuple[str, list[float | None]]] = field(default_factory=list)
    intervals: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)  # metric -> per run
    # metric -> per run: B - A on the utterances both scored (None for A and runs without a table)
    paired: list[tuple[str, list[PairedDifference | None]]] = field(default_factory=list)

    def param(self, key: str) -> list[str | None] | None:
        return dict(self.params).get(key)

    def metric(self, key: str) -> list[float | None] | None:
        return dict(self.metrics).get(key)


def compare_runs(run_ids: Sequence[str], *, tracking_uri: str, paired_samples: int = PAIRED_SAMPLES) -> CompareResult:
    if len(run_ids) < 2:
        raise ValueError("compare needs at least two run ids")
    reader = TrackingReader(tracking_uri)
    runs = [get_run(reader, rid) for rid in run_ids]
    out = CompareResult([ComparedRun(r.run_id, r.name, r.tags.get(names.STAGE, "?"), r.status) for r in runs])
    out.tags = [
        ("stage", [r.tags.get(names.STAGE, MISSING) for r in runs]),
        ("status", [r.status for r in runs]),
        ("config_hash", [r.tags.get(names.CONFIG_HASH, MISSING) for r in runs]),
        ("git_commit", [r.tags.get(names.GIT_COMMIT, MISSING)[:8] for r in runs]),
        ("dirty", [r.tags.get(names.GIT_DIRTY, MISSING) for r in runs]),
    ]
    # what an evaluate run scored: two evaluations of different pairs can share every param
    for label, tag in (("ar run", names.AR_RUN_ID), ("nar run", names.NAR_RUN_ID)):
        if any(tag in r.tags for r in runs):
            out.tags.append((label, [r.tags.get(tag, MISSING)[:12] for r in runs]))
    keys = sorted(set().union(*(r.params for r in runs)))
    all_evaluate = all(r.tags.get(names.STAGE) == "evaluate" for r in runs)
    own = [key for key in keys if not (all_evaluate and key.startswith("training."))]
    out.evaluate_training_params = len(keys) - len(own)  # the evaluate's project config trained nothing
    out.params = _differing([r.params for r in runs], own)
    out.identical_params = len(own) - len(out.params)
    out.trained = _trained_differences(reader, runs)
    metric_keys = key_metric_names(set().union(*(r.metrics for r in runs)))
    out.metrics = [(k, [r.metrics.get(k) for r in runs]) for k in metric_keys]
    for key in metric_keys:
        bounds = [(r.metrics.get(f"{key}_ci_low"), r.metrics.get(f"{key}_ci_high")) for r in runs]
        if any(lo is not None and hi is not None for lo, hi in bounds):
            out.intervals[key] = [(lo, hi) if lo is not None and hi is not None else None for lo, hi in bounds]
    if paired_samples > 0 and sum(r.stage == "evaluate" for r in runs) >= 2:
        with quiet_downloads():  # one small table per run: no per-file bar in the printed comparison
            rows = [eval_rows(reader, r.run_id) if r.stage == "evaluate" else None for r in runs]
        out.paired = paired_rows(rows, samples=paired_samples)
    return out


def _trained_differences(reader: TrackingReader, runs: Sequence[RunRecord]) -> list[tuple[str, list[tuple[str, list[str | None]]]]]:
    """For evaluate runs that scored different AR (NAR) runs: the params that differ between those
    training runs -- what trained the checkpoints, which the evaluate runs' own params do not say.
    A training run no longer in the store shows as missing. The other model's training.* / model.* params
    are left out: an AR run's training.nar.* trained nothing it holds."""
    out = []
    for label, tag, other in (("ar run", names.AR_RUN_ID, "nar"), ("nar run", names.NAR_RUN_ID, "ar")):
        ids = [r.tags.get(tag) for r in runs]
        if sum(i is not None for i in ids) < 2 or len(set(ids)) < 2:
            continue
        trained: dict[str, RunRecord | None] = {}
        for rid in {i for i in ids if i is not None}:
            try:
                trained[rid] = reader.resolve_run(rid)
            except NotFoundError:
                trained[rid] = None
        params = [trained[i].params if i is not None and trained[i] is not None else {} for i in ids]
        keys = sorted(k for k in set().union(*params) if not k.startswith((f"training.{other}.", f"model.{other}.")))
        out.append((label, _differing(params, keys)))
    return out


def _differing(params: Sequence[dict[str, str]], keys: Sequence[str]) -> list[tuple[str, list[str | None]]]:
    """(key, value per run) for each of `keys` whose value is not the same in every run (missing = None)."""
    rows = [(key, [p.get(key) for p in params]) for key in keys]
    return [(key, values) for key, values in rows if len(set(values)) > 1]


def paired_cell(diff: PairedDifference | None) -> str:
    if diff is None:
        return MISSING
    return (f"{diff.difference:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] {verdict(diff)} "
            f"({diff.utterances} utterances)")


def _best(metric: str, values: list[float | None]) -> int | None:
    finite = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(finite) < 2 or len({v for v, _ in finite}) == 1:
        return None
    return (max if better_is_higher(metric) else min)(finite)[1]


def _letter(i: int) -> str:
    """The column label of the i-th run: A, B, ... then 27, 28, ..."""
    return chr(ord("A") + i) if i < 26 else str(i + 1)


def format_table(result: CompareResult, *, col_width: int = 24, key_width: int = 48) -> str:
    """The comparison as fixed-width text: one column per run, long values truncated with "…"."""
    n = len(result.runs)
    all_keys = ["run", "run id"] + [k for k, _ in result.tags] + [k for k, _ in result.params] + \
        [k for k, _ in result.metrics] + [k for _, diffs in result.trained for k, _ in diffs]
    kw = min(max(len(k) for k in all_keys) + 2, key_width)
    metric_rows = []
    for key, values in result.metrics:
        best = _best(key, values)
        ci = result.intervals.get(key, [None] * n)
        metric_rows.append((key, [MISSING if v is None else fmt_num(v) + (
            f" [{fmt_num(ci[i][0], 3)}, {fmt_num(ci[i][1], 3)}]" if ci[i] else "") + (" *" if i == best else "")
            for i, v in enumerate(values)]))
    # a metric cell (value, interval, best mark) is never cut: the "*" is the point of the row
    cw = max([col_width] + [len(c) + 2 for _, cells in metric_rows for c in cells])

    def row(key: str, cells: Sequence[Any]) -> str:
        line = truncate(key, kw - 2).ljust(kw)
        line += "".join(truncate(MISSING if c is None else str(c), cw - 2).ljust(cw) for c in cells)
        return line.rstrip()

    def rule(title: str) -> str:
        text = f"-- {title} "
        return text + "-" * max(kw + cw * n - len(text), 3)

    lines = [row("", [_letter(i) for i in range(n)]),
             row("run", [r.name for r in result.runs]),
             row("run id", [r.run_id[:12] for r in result.runs]),
             rule("tags")]
    lines += [row(k, v) for k, v in result.tags]
    total = len(result.params) + result.identical_params
    lines.append(rule(f"params that differ ({len(result.params)} of {total}; "
                      f"{result.identical_params} identical hidden)"))
    if result.params:
        lines += [row(k, v) for k, v in result.params]
    else:
        lines.append("(no param differs)")
    if result.evaluate_training_params:
        lines.append(f"({result.evaluate_training_params} training.* params of the evaluate runs' config hidden: "
                     "they act on no evaluation)")
    for label, diffs in result.trained:
        lines.append(rule(f"params that differ between the {label}s scored ({len(diffs)})"))
        lines += [row(k, v) for k, v in diffs] if diffs else ["(no param differs)"]
    lines.append(rule("key metrics (final value [95% interval]; * best)"))
    if metric_rows:
        lines += [row(key, cells) for key, cells in metric_rows]
    else:
        lines.append("(none of the key metrics logged)")
    if result.paired:
        lines.append(rule("evaluate runs vs A, paired over the utterances both scored (B - A, 95% interval; "
                          "~ = within the noise)"))
        for i in range(1, n):
            for key, diffs in result.paired:
                if diffs[i] is not None:
                    lines.append(f"{truncate(f'{_letter(i)}: {key}', kw - 2).ljust(kw)}{paired_cell(diffs[i])}")
        retrained = [_letter(i) for i in range(1, n) if _scored_other_models(result, i)
                     and any(diffs[i] is not None for _, diffs in result.paired)]
        if retrained:
            lines.append(f"({', '.join(retrained)} scored other training runs than A: these intervals hold the "
                         "decoding and ASR noise over the utterances, not the training run's own -- the same recipe "
                         "retrained with another seed or thread count can differ as much; retrain it to see)")
    return "\n".join(lines) + "\n"


def _scored_other_models(result: CompareResult, i: int) -> bool:
    """Whether evaluate run i scored another AR or NAR training run than run A (0)."""
    tags = dict(result.tags)
    return any(label in tags and tags[label][i] != tags[label][0] for label in ("ar run", "nar run"))


__all__ = ["CompareResult", "ComparedRun", "compare_runs", "format_table"]
