"""Preprocessing quality filter: per-utterance metrics, pass/fail checks and the report files.

Metrics are pure functions of (samples, sample rate[, text]); thresholds live in `QualityConfig`.
Run the checks after trimming but *before* level normalization: clipping is only visible at the
recording's own scale (peak normalization would move flat tops below `clip_level`). The silence
threshold is absolute dBFS, so a very quiet recording can read as one long silence; the SNR
estimate is a level difference and does not depend on gain.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonica.config.schema import QualityConfig
from harmonica.data.audio import frame_rms_db
from harmonica.data.manifest import Rejection

logger = logging.getLogger(__name__)

FRAME_MS = 20.0
# Check names produced by `assess`; load-time reasons (missing_file, ...) come from recipes/audio.
CHECKS: tuple[str, ...] = (
    "empty_text", "too_short", "too_long", "long_silence", "clipping", "low_snr",
    "text_too_fast", "text_too_slow",
)
_SPACES = re.compile(r"\s+")


def longest_silence_sec(wav: np.ndarray, sr: int, silence_db: float) -> float:
    """Longest run of frames below `silence_db` dBFS between the first and last non-silent frame.

    Leading/trailing silence is ignored (trimming handles it). An all-silent signal returns its
    full duration, so a blank recording fails the check rather than passing as "no pauses".
    """
    db = frame_rms_db(wav, sr, FRAME_MS)
    if db.size == 0:
        return 0.0
    voiced = np.flatnonzero(db >= silence_db)
    if voiced.size == 0:
        return len(wav) / sr
    gaps = np.diff(voiced) - 1  # silent frames between consecutive voiced frames
    longest = int(gaps.max()) if gaps.size else 0
    return longest * FRAME_MS / 1000


def clipping_ratio(wav: np.ndarray, clip_level: float) -> float:
    """Share of samples whose magnitude reaches `clip_level` (full scale = 1.0)."""
    wav = np.asarray(wav)
    if wav.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(wav) >= clip_level) / wav.size)


def estimate_snr_db(
    wav: np.ndarray, sr: int, speech_pct: float = 95.0, noise_pct: float = 3.0, frame_ms: float = 10.0
) -> float:
    """Heuristic SNR: the 95th- minus the 3rd-percentile of 10 ms frame levels (dB).

    Speech alternates loud vowels with pauses, closures and weak consonants, so the quiet tail of
    the frame-level distribution approximates the noise floor and the loud tail the speech level;
    stationary noise lifts the floor and shrinks the gap. Short frames and a low percentile catch
    the brief closures that trimmed utterances without pauses still have. Measured on the demo
    corpus with added white noise (global SNR -> estimate): clean -> 35..88, 20 dB -> ~25,
    10 dB -> ~16, 5 dB -> ~12. Limits: no reference is used; a signal without quiet frames
    (continuous tone/music) reads as low SNR; digital silence floors frames at -100 dBFS.
    """
    db = frame_rms_db(wav, sr, frame_ms)
    if db.size < 2:
        return 0.0
    return float(np.percentile(db, speech_pct) - np.percentile(db, noise_pct))


def count_chars(text: str) -> int:
    """Characters in the text with runs of whitespace counted as one (they are short pauses)."""
    return len(_SPACES.sub(" ", text.strip()))


def chars_per_sec(text: str, duration: float) -> float:
    if duration <= 0:
        return math.inf
    return count_chars(text) / duration


@dataclass
class QualityResult:
    metrics: dict[str, float]
    failed: list[str]

    @property
    def passed(self) -> bool:
        return not self.failed


def assess(
    wav: np.ndarray,
    sr: int,
    text: str,
    cfg: QualityConfig,
    min_duration: float,
    max_duration: float,
) -> QualityResult:
    """All metrics plus the checks that failed. With cfg.enabled False only the duration bounds
    and the empty-text check apply (metrics are still reported)."""
    duration = len(wav) / sr if sr > 0 else 0.0
    metrics = {
        "duration": duration,
        "longest_silence_sec": longest_silence_sec(wav, sr, cfg.silence_db),
        "clipping_ratio": clipping_ratio(wav, cfg.clip_level),
        "snr_db": estimate_snr_db(wav, sr),
        "chars_per_sec": chars_per_sec(text, duration),
    }
    failed = []
    empty = not text.strip()
    if empty:
        failed.append("empty_text")
    if duration < min_duration:
        failed.append("too_short")
    if duration > max_duration:
        failed.append("too_long")
    if cfg.enabled:
        if metrics["longest_silence_sec"] > cfg.max_silence_sec:
            failed.append("long_silence")
        if metrics["clipping_ratio"] > cfg.max_clipping_ratio:
            failed.append("clipping")
        if metrics["snr_db"] < cfg.min_snr_db:
            failed.append("low_snr")
        if not empty:
            if metrics["chars_per_sec"] > cfg.max_chars_per_sec:
                failed.append("text_too_fast")
            if metrics["chars_per_sec"] < cfg.min_chars_per_sec:
                failed.append("text_too_slow")
    return QualityResult(metrics, failed)


# -------------------------------------------------------------------------------------------- report


@dataclass
class QualityRow:
    id: str
    speaker: str
    duration: float | None
    metrics: dict[str, float]
    status: str  # "kept" | "rejected"
    reasons: list[str]
    detail: str = ""


def _json_safe(x: Any) -> Any:
    # Strict JSON has no NaN/inf; a rate over a zero duration would otherwise corrupt the file.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


@dataclass
class QualityReport:
    """Per-utterance outcome of preprocessing: quality checks and load-time rejections alike."""

    rows: list[QualityRow] = field(default_factory=list)

    def add_result(self, utt_id: str, speaker: str, result: QualityResult) -> QualityRow:
        row = QualityRow(
            id=utt_id,
            speaker=speaker,
            duration=result.metrics.get("duration"),
            metrics=dict(result.metrics),
            status="kept" if result.passed else "rejected",
            reasons=list(result.failed),
        )
        self.rows.append(row)
        return row

    def add_rejection(
        self, utt_id: str, reason: str, *, speaker: str = "", detail: str = "",
        duration: float | None = None,
    ) -> QualityRow:
        row = QualityRow(utt_id, speaker, duration, {}, "rejected", [reason], detail)
        self.rows.append(row)
        return row

    def add_rejections(self, rejected: Iterable[Rejection]) -> None:
        for r in rejected:
            self.add_rejection(r.id, r.reason, speaker=r.speaker, detail=r.detail)

    @property
    def kept_ids(self) -> list[str]:
        return [r.id for r in self.rows if r.status == "kept"]

    @property
    def rejected_rows(self) -> list[QualityRow]:
        return [r for r in self.rows if r.status == "rejected"]

    def counts(self) -> dict[str, int]:
        """total, kept, rejected, then one entry per reason (a row can carry several reasons)."""
        reasons = Counter(reason for r in self.rejected_rows for reason in r.reasons)
        kept = sum(r.status == "kept" for r in self.rows)
        out = {"total": len(self.rows), "kept": kept, "rejected": len(self.rows) - kept}
        out.update(sorted(reasons.items()))
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": out / "quality_report.json",
            "csv": out / "quality_report.csv",
            "blacklist": out / "blacklist.txt",
        }
        rows = [
            {"id": r.id, "speaker": r.speaker, "duration": r.duration, "status": r.status,
             "reasons": r.reasons, "detail": r.detail, "metrics": r.metrics}
            for r in self.rows
        ]
        paths["json"].write_text(
            json.dumps(_json_safe({"summary": self.counts(), "rows": rows}), indent=1,
                       ensure_ascii=False, allow_nan=False),
            encoding="utf-8",
        )
        metric_names = sorted({k for r in self.rows for k in r.metrics})
        with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "speaker", "duration", "status", "reasons", "detail", *metric_names])
            for r in self.rows:
                w.writerow([
                    r.id, r.speaker, "" if r.duration is None else f"{r.duration:.4f}", r.status,
                    ";".join(r.reasons), r.detail,
                    *(_fmt(r.metrics.get(m)) for m in metric_names),
                ])
        with open(paths["blacklist"], "w", encoding="utf-8", newline="\n") as f:
            for r in self.rejected_rows:
                f.write(f"{r.id}\t{','.join(r.reasons)}\n")
        logger.info("quality report: %s", self.counts())
        return paths


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"
