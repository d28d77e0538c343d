"""Everything a run report shows, read from the store through the read side into plain records.

`load_report_data` reads the run, its baseline, the histories of its key curves, its logged events and
tables, its stepped images (each key's image at its last step), the listings of the artifact folders the
sections look into, and the runs it refers to
(the training runs an evaluate/promote run scored, the evaluate runs that scored a training run, the
promotions of an evaluate run). `fetch_media` then embeds the audio and images the sections chose.
A read that fails is logged and recorded in `errors` (the sections that need it say so); a missing
artifact is simply absent. No MLflow type leaves this module.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harmonica.reports.common import curve_groups, eval_rows, get_run, is_training, table_rows
from harmonica.reports.model import Series
from harmonica.tracking import names
from harmonica.tracking.checkpoints import CheckpointModel, CheckpointModelError, CheckpointModels
from harmonica.tracking.read import ArtifactEntry, LoggedImage, RunRecord, StoreError, TrackingReader

log = logging.getLogger(__name__)

MAX_EMBED_BYTES = 8 * 1024 * 1024  # per audio/image file embedded in the HTML
AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg"}
SAMPLES, REFERENCES, AUDIO, PLOTS, CHECKPOINTS = "samples", "samples/reference", "audio", "plots", "checkpoints"
BEST_META = "checkpoints/best/meta.json"
READ_ERRORS = (StoreError, OSError, CheckpointModelError)

# parts of the data whose read can fail as a whole (a store request), and the sections that need them
HISTORIES, SCORED_BY, PROMOTIONS = "metric histories", "evaluate runs of this run", "promote runs of this run"
MODELS = "checkpoint models"
IMAGES = "logged images"

T = TypeVar("T")


@dataclass(frozen=True)
class TrainingRun:
    """A training run the report covers (the run itself, or one an evaluate/promote run refers to)."""

    run: RunRecord
    collapse_events: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ReportData:
    run: RunRecord
    experiment: str  # its name (the id when it cannot be read)
    baseline: RunRecord | None = None
    explicit_baseline: bool = False
    listings: Mapping[str, tuple[ArtifactEntry, ...]] = field(default_factory=dict)  # folder ("" = root) -> entries
    histories: Mapping[str, Series] = field(default_factory=dict)  # the key curves' metric histories
    collapse_events: tuple[dict[str, Any], ...] = ()
    instability_events: tuple[dict[str, Any], ...] = ()
    best_meta: Mapping[str, Any] = field(default_factory=dict)  # the best checkpoint's meta.json
    checkpoint_models: tuple[CheckpointModel, ...] = ()  # a training run's EMA checkpoint models, best first
    eval_rows: tuple[dict[str, Any], ...] = ()  # eval_table.json as row dicts
    baseline_rows: tuple[dict[str, Any], ...] = ()  # an evaluate baseline's eval_table.json (evaluate runs)
    evaluation: RunRecord | None = None  # a promote run's evaluate run
    scored_by: tuple[RunRecord, ...] = ()  # evaluate runs that scored this (training) run, newest first
    training: tuple[TrainingRun, ...] = ()  # this run if it trains, else the training runs it refers to
    unknown_training: tuple[str, ...] = ()  # "AR <ref>" references that are no run of this store
    promotions: tuple[RunRecord, ...] = ()  # promote runs of this evaluate run, newest first
    images: Mapping[str, LoggedImage] = field(default_factory=dict)  # image key -> its image at its last step
    errors: Mapping[str, str] = field(default_factory=dict)  # part -> "ExceptionType: message"

    @property
    def stage(self) -> str:
        return self.run.tags.get(names.STAGE, "unknown")

    def ls(self, folder: str | None = None) -> tuple[ArtifactEntry, ...]:
        key = folder or ""
        if key not in self.listings:
            raise KeyError(f"artifact folder {key!r} of run {self.run.run_id} was not read")
        return self.listings[key]

    def has(self, path: str) -> bool:
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in self.ls(parent))


class _Artifacts:
    """One run's artifacts: listings cached, files downloaded into tmp/<run id>."""

    def __init__(self, reader: TrackingReader, run_id: str, tmp: Path) -> None:
        self.reader, self.run_id, self.tmp = reader, run_id, tmp
        self.listings: dict[str, tuple[ArtifactEntry, ...]] = {}

    def ls(self, folder: str | None = None) -> tuple[ArtifactEntry, ...]:
        key = folder or ""
        if key not in self.listings:
            try:
                self.listings[key] = tuple(self.reader.list_artifacts(self.run_id, folder))
            except READ_ERRORS as exc:
                log.warning("cannot list artifacts %s of run %s: %s", folder, self.run_id, exc)
                self.listings[key] = ()
        return self.listings[key]

    def has(self, path: str) -> bool:
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in self.ls(parent))

    def fetch(self, path: str) -> Path | None:
        if not self.has(path):
            return None
        try:
            dst = self.tmp / self.run_id
            dst.mkdir(parents=True, exist_ok=True)
            return self.reader.download_artifacts(self.run_id, path, dst)
        except READ_ERRORS as exc:
            log.warning("cannot download %s of run %s: %s", path, self.run_id, exc)
            return None

    def text(self, path: str) -> str | None:
        local = self.fetch(path)
        return local.read_text(encoding="utf-8", errors="replace") if local and local.is_file() else None

    def json(self, path: str) -> Any:
        text = self.text(path)
        try:
            return None if text is None else json.loads(text)
        except json.JSONDecodeError:
            return None

    def jsonl(self, path: str) -> tuple[dict[str, Any], ...]:
        out = []
        for line in filter(str.strip, (self.text(path) or "").splitlines()):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return tuple(out)

    def data_uri(self, path: str) -> str | None:
        """The artifact as a base64 data URI (None when absent or too large to embed)."""
        local = self.fetch(path)
        if local is None or not local.is_file() or local.stat().st_size > MAX_EMBED_BYTES:
            return None
        suffix = local.suffix.lower()
        mime = AUDIO_MIME.get(suffix) or IMAGE_MIME.get(suffix, "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(local.read_bytes()).decode('ascii')}"


def latest_sample_dir(entries: Iterable[ArtifactEntry]) -> str | None:
    """samples/step_<n> with the largest n."""
    steps = [a.path for a in entries if a.is_dir and re.search(r"step_\d+$", a.path)]
    return max(steps, key=lambda p: int(p.rsplit("_", 1)[1])) if steps else None


def has_eval_metrics(run: RunRecord) -> bool:
    """An evaluate run's own scores (a promote run holds a copy, linked to its packaged model: its report shows
    them from the evaluate run it names)."""
    return run.tags.get(names.STAGE) != "promote" and any(k.startswith("eval/") for k in run.metrics)


def has_gates(run: RunRecord) -> bool:
    return any(k.startswith("gate.") for k in run.tags)


def load_report_data(reader: TrackingReader, run_id: str, baseline_run_id: str | None, tmp: Path) -> ReportData:
    """Read what the report of `run_id` shows. Raises ReportError when the run or the given baseline is
    not in the store; baseline_run_id None: the previous finished run of the same stage, if any."""
    run = get_run(reader, run_id)
    run_id = run.run_id  # what a short id or a run name named
    explicit = baseline_run_id is not None
    baseline = get_run(reader, baseline_run_id, what="baseline run") if explicit else reader.previous_run(run)
    errors: dict[str, str] = {}

    def part(name: str, read: Callable[[], T], default: T) -> T:
        try:
            return read()
        except READ_ERRORS as exc:
            log.warning("report of run %s: cannot read the %s: %s", run_id, name, exc, exc_info=True)
            errors[name] = f"{type(exc).__name__}: {exc}"
            return default

    art = _Artifacts(reader, run_id, tmp)
    rows = tuple(table_rows(art.json(names.EVAL_TABLE)))
    for folder in (CHECKPOINTS, PLOTS, SAMPLES, AUDIO, *sorted({str(Path(r["audio"]).parent) for r in rows
                                                                if r.get("audio") and "/" in str(r["audio"])})):
        art.ls(folder)
    if (latest := latest_sample_dir(art.ls(SAMPLES))) is not None:
        art.ls(latest)
        art.ls(REFERENCES)
    keys = [k for _, group in curve_groups(run.metrics) for k in group]
    training, unknown = _training_runs(reader, run, art, tmp)
    stage = run.tags.get(names.STAGE)
    evaluation_id = run.tags.get(names.EVALUATION_RUN_ID)
    models = part(MODELS, lambda: _checkpoint_models(reader, run), ()) if is_training(run) else ()
    best_meta = art.json(BEST_META)  # runs from before checkpoints were models
    if not isinstance(best_meta, dict) and models:
        best_meta = part(MODELS, lambda: CheckpointModels(reader.tracking_uri).read_meta(models[0], tmp / "best"), {})
    return ReportData(
        run=run, experiment=reader.experiment_name(run.experiment_id), baseline=baseline, explicit_baseline=explicit,
        histories=part(HISTORIES, lambda: {k: _history(reader, run_id, k) for k in keys}, {}),
        collapse_events=art.jsonl(names.COLLAPSE_EVENTS), instability_events=art.jsonl(names.INSTABILITY_EVENTS),
        best_meta=best_meta if isinstance(best_meta, dict) else {}, checkpoint_models=models, eval_rows=rows,
        baseline_rows=tuple(eval_rows(reader, baseline.run_id) or ()) if rows and baseline is not None
        and baseline.stage == "evaluate" else (),
        evaluation=reader.find_run(evaluation_id) if stage == "promote" and evaluation_id else None,
        scored_by=part(SCORED_BY, lambda: _scored_by(reader, run), ())
        if not has_eval_metrics(run) and not (stage == "promote" and evaluation_id) else (),
        training=training, unknown_training=unknown,
        promotions=part(PROMOTIONS, lambda: tuple(reader.find_runs(
            tags={names.EVALUATION_RUN_ID: run_id}, experiment_ids=[run.experiment_id], max_results=5)), ())
        if stage == "evaluate" and not has_gates(run) else (),
        images=part(IMAGES, lambda: _latest_images(reader, run_id), {}),
        listings=dict(art.listings), errors=errors,
    )


def _history(reader: TrackingReader, run_id: str, key: str) -> Series:
    by_step: dict[int, float] = {}
    for p in sorted(reader.metric_history(run_id, key), key=lambda p: (p.step, p.timestamp, p.value)):
        by_step[p.step] = p.value  # the last value logged at a step wins (resumed runs re-log)
    steps = sorted(by_step)
    return Series(key, tuple(steps), tuple(by_step[s] for s in steps))


def _latest_images(reader: TrackingReader, run_id: str) -> dict[str, LoggedImage]:
    """Every image key the run logged (Run.log_image) -> its image at the last step."""
    return {image.key: image for image in reader.logged_images(run_id)}  # sorted by key, step, time: last wins


def _scored_by(reader: TrackingReader, run: RunRecord) -> tuple[RunRecord, ...]:
    """Evaluate runs in the run's experiment whose AR or NAR came from this run, newest first."""
    found: dict[str, RunRecord] = {}
    for key in (names.AR_RUN_ID, names.NAR_RUN_ID):
        for ev in reader.find_runs(tags={key: run.run_id}, experiment_ids=[run.experiment_id], max_results=20):
            if ev.tags.get(names.STAGE) == "evaluate":
                found[ev.run_id] = ev
    return tuple(sorted(found.values(), key=lambda e: e.start_time or 0, reverse=True))


def _training_runs(reader: TrackingReader, run: RunRecord, art: _Artifacts,
                   tmp: Path) -> tuple[tuple[TrainingRun, ...], tuple[str, ...]]:
    """This run if it trains; else the training runs it refers to (evaluate/promote runs), and the
    references that are no run of this store (checkpoint directories, foreign ids)."""
    if is_training(run):
        return (TrainingRun(run, art.jsonl(names.COLLAPSE_EVENTS)),), ()
    out, unknown = [], []
    for kind in ("ar", "nar"):
        rid = run.tags.get(names.kind_run_id(kind))
        if not rid:
            continue
        found = reader.find_run(rid) if re.fullmatch(r"[0-9a-f]{32}", rid) else None
        if found is None:
            unknown.append(f"{kind.upper()} {rid}")
        else:
            out.append(TrainingRun(found, _Artifacts(reader, rid, tmp).jsonl(names.COLLAPSE_EVENTS)))
    return tuple(out), tuple(unknown)


def fetch_media(reader: TrackingReader, data: ReportData, paths: Iterable[str], tmp: Path) -> dict[str, str | None]:
    """Artifact path -> base64 data URI of the reported run's audio and images (None: absent, unreadable
    or over MAX_EMBED_BYTES)."""
    art = _Artifacts(reader, data.run.run_id, tmp)
    art.listings.update(data.listings)
    return {p: art.data_uri(p) for p in dict.fromkeys(paths)}


def _checkpoint_models(reader: TrackingReader, run: RunRecord) -> tuple[CheckpointModel, ...]:
    """The run's EMA checkpoint models, best first by the metric its training chose best by."""
    metric = run.tags.get(names.BEST_METRIC) or "val_ema/loss"
    mode = run.tags.get(names.BEST_MODE) or "min"
    ranked = CheckpointModels(reader.tracking_uri).of_run(run.run_id, weights="ema", order_by=metric,
                                                          ascending=mode == "min")
    return tuple(ranked)
