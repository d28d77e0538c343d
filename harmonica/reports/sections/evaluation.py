"""Eval summary and audio samples: what the model's speech scores, and how it sounds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harmonica.evaluation.seeds import describe_by_seed
from harmonica.reports import decomposition
from harmonica.reports.common import FAIL_KINDS, fmt_num, truncate
from harmonica.reports.paired import PAIRED_SAMPLES, paired_rows, verdict
from harmonica.reports.data import AUDIO, AUDIO_MIME, SAMPLES, ReportData, has_eval_metrics, latest_sample_dir
from harmonica.reports.model import (
    ArtifactLink, Audio, Bullets, Code, Heading, Inline, Note, NotLogged, Paragraph, Section, Spectrogram, Table,
    md_link, run_ref,
)
from harmonica.tracking import names

EMPTY_AUDIO = "(no audio: the model decoded 0 samples)"
MAX_SAMPLES = 8
WORST_N = 5


def _decomposition(s: Section, metrics: Mapping[str, float]) -> Section:
    headers, rows = decomposition.table(metrics)  # ground truth | resynthesis | oracles | model, with intervals
    if not rows:
        return s.add(Note("no eval metrics logged"))
    s.add(Table(headers, rows))
    if (line := decomposition.reading(metrics)) is not None:
        s.add(Paragraph(line))
    return s


def worst(rows: Iterable[Mapping[str, Any]], n: int = WORST_N) -> list[Mapping[str, Any]]:
    """The n worst utterances: highest WER, then most failures, then lowest SIM."""
    def key(row: Mapping[str, Any]) -> tuple[float, float, int]:
        wer, sim = row.get("model_wer"), row.get("model_sim")
        fails = sum(bool(row.get(f"model_fail_{k}")) for k in FAIL_KINDS)
        wer_v = float(wer) if isinstance(wer, (int, float)) and math.isfinite(wer) else -1.0
        sim_v = float(sim) if isinstance(sim, (int, float)) and math.isfinite(sim) else 2.0
        return (-wer_v, -fails, sim_v)

    return sorted(rows, key=key)[:n]


def _worst_table(d: ReportData) -> Table:
    rows = []
    for row in worst(d.eval_rows):
        fails = ", ".join(k for k in FAIL_KINDS if row.get(f"model_fail_{k}")) or "none"
        audio = str(row.get("audio") or "")
        # an empty path: the model decoded zero samples, nothing to play
        cell: Inline = (Audio(audio) if d.has(audio) else NotLogged(audio)) if audio else EMPTY_AUDIO
        seed_note = f" (seed #{row['seed_index']})" if row.get("seed_index") else ""
        rows.append((str(row.get("id", "?")) + seed_note, truncate(row.get("text", ""), 80),
                     truncate(row.get("model_hypothesis", "") or "(empty)", 80),
                     row.get("model_wer"), row.get("model_sim"), fails, cell))
    return Table(["id", "text", "model hypothesis", "WER", "SIM", "failures", "audio"], rows)


def _versus_baseline(s: Section, d: ReportData) -> None:
    """This evaluate run against its baseline evaluate run, paired over the utterances both scored."""
    if not d.eval_rows or not d.baseline_rows or d.baseline is None:
        return
    paired = paired_rows([d.baseline_rows, d.eval_rows], samples=PAIRED_SAMPLES)
    if not paired:
        return
    base, rows = d.baseline, []
    for metric, (_, diff) in paired:
        if diff is not None:
            rows.append((metric, fmt_num(base.metrics.get(metric)), fmt_num(d.run.metrics.get(metric)),
                         f"{diff.difference:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]", verdict(diff)))
    n = next(diff.utterances for _, (_, diff) in paired if diff is not None)
    s.add(Paragraph(f"Against the baseline {run_ref(base.name, base.run_id)}, paired over the {n} utterances "
                    "both scored (this run - baseline, 95% paired-bootstrap interval; ~ = within the noise):"))
    s.add(Table(["metric", "baseline", "this run", "difference [95%]", "verdict"], rows))


def eval_summary(d: ReportData) -> Section:
    s = Section("Eval summary")
    tags, metrics = d.run.tags, d.run.metrics
    if has_eval_metrics(d.run):
        n, seeds = metrics.get("eval/utterances"), int(metrics.get("eval/num_seeds") or 1)
        per = f" x {seeds} decoding seeds" if seeds > 1 else ""
        s.add(Paragraph(f"{fmt_num(n) if n is not None else '?'} utterances{per} of split "
                        f"`{tags.get(names.EVAL_SPLIT, '?')}`, {tags.get(names.WEIGHTS, '?')} weights; "
                        "from what the codec can say to what the model says (95% bootstrap intervals):"))
        _decomposition(s, metrics)
        if spread := describe_by_seed(d.eval_rows):
            s.add(Paragraph(f"The model's {spread}; compare recipes by the pooled figure, not one seed."))
        _versus_baseline(s, d)
        if d.has("plots/eval_distributions.html"):
            s.add(Paragraph(f"Distributions: {md_link('plots/eval_distributions.html')}."))
        s.add(Heading(f"Worst {WORST_N} utterances (highest WER, then most failures, then lowest SIM)"))
        if not d.eval_rows:
            return s.add(Note(f"no per-utterance table ({names.EVAL_TABLE}) logged"))
        return s.add(_worst_table(d))
    evaluation_id = tags.get(names.EVALUATION_RUN_ID)
    if d.stage == "promote" and evaluation_id:
        if d.evaluation is None:
            return s.add(Note(f"evaluate run {evaluation_id} not found"))
        s.add(Paragraph(f"Evaluate run {run_ref(d.evaluation.name, d.evaluation.run_id)}:"))
        return _decomposition(s, d.evaluation.metrics)
    if not d.scored_by:
        return s.add(Note("no evaluation: no evaluate run in this experiment scored this run's checkpoints"))
    rows = [(ev.name, Code(ev.run_id), *(ev.metrics.get(k) for k in (
        "eval/wer", "eval/cer", "eval/sim", "eval/fail/any", "baseline/resynthesis/wer"))) for ev in d.scored_by]
    return s.add(Paragraph(f"Evaluate runs that scored this run's checkpoints ({len(d.scored_by)}):"),
                 Table(["evaluate run", "run id", "WER", "CER", "SIM", "fail rate", "resynthesis WER"], rows))


def _audio_files(d: ReportData, folder: str) -> list[str]:
    return sorted(a.path for a in d.ls(folder) if not a.is_dir and Path(a.path).suffix.lower() in AUDIO_MIME)


def audio_samples(d: ReportData) -> Section:
    s = Section("Audio samples")
    latest = latest_sample_dir(d.ls(SAMPLES))
    if latest:
        wavs = _audio_files(d, latest)
        step = int(latest.rsplit("_", 1)[1])
        s.add(Paragraph(f"Latest samples (step {step}, EMA weights) next to their references; "
                        "playable in [report.html](report.html#audio-samples).",
                        html=f"Latest samples (step {step}, EMA weights) next to their references."))
        rows = []
        for path in wavs[:MAX_SAMPLES]:
            ref = f"samples/reference/{Path(path).name}"
            png = str(Path(path).with_suffix(".png"))  # runs before the spectrograms became stepped images
            image = d.images.get(names.sample_spectrogram(Path(path).stem))
            spec = Spectrogram(png) if d.has(png) else Spectrogram(image.path) if image else "—"
            rows.append((Path(path).stem, Audio(path), Audio(ref) if d.has(ref) else "—", spec))
        s.add(Table(["utterance", "sample", "reference", "spectrogram"], rows) if rows
              else Note(f"{latest} holds no audio files"))
        if len(wavs) > MAX_SAMPLES:
            s.add(Note(f"{len(wavs) - MAX_SAMPLES} more samples under {latest}"))
        return s
    audio = _audio_files(d, AUDIO)
    if audio:
        return s.add(Paragraph(f"{len(audio)} generated utterances under `audio/` (the worst {WORST_N} play in the "
                               "eval summary):"),
                     Bullets([ArtifactLink(p) for p in audio]))
    return s.add(Note("no audio artifacts (no samples/ or audio/ in this run)"))
