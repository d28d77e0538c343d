"""Everything a promotion reads, as one typed `Evidence`: the evaluate run (its metrics, baselines
included, and tags), the AR and NAR training runs behind it, the evaluated checkpoints (the local
directories the evaluate run recorded, else the training runs' `checkpoints/best` artifacts,
downloaded), their codec state, the training runs' collapse events and metric histories, the
checkpoints' own validation utilisation and the decode settings the candidate was evaluated with.
`read_champion` reads the current champion's side of the comparison (under the registry lock).

Reads go through a TrackingReader; nothing here decides (harmonica.registry.decision) or writes.

Unfinished runs: a training run whose status is not FINISHED (killed, still running, failed) ends its
collapse evidence where it stopped: `training_progress` returns an "unfinished" pseudo-event that the
collapse gate counts as "tail not observed" when the run never reached the last share of its planned
steps.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harmonica.config.schema import GatesConfig, HarmonicaConfig
from harmonica.registry.decision import PromotionError, primary_suffix
from harmonica.registry.gates import collapse_metric_key, persisting_events
from harmonica.reports.common import eval_rows
from harmonica.tracking import names
from harmonica.tracking.read import AmbiguousRunError, NotFoundError, RunRecord, StoreError, TrackingReader
from harmonica.tracking.registry import CHAMPION, ModelRegistry

KINDS = ("ar", "nar")


@dataclass
class Evidence:
    """What was read before deciding; build one directly to test a decision without a store."""

    eval_run: RunRecord
    ar_run: RunRecord | None = None
    nar_run: RunRecord | None = None
    ar_dir: Path = Path("")
    nar_dir: Path = Path("")
    ar_meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's meta.json ({} when not found)
    nar_meta: dict[str, Any] = field(default_factory=dict)
    ema_present: dict[str, bool] = field(default_factory=dict)  # kind -> <dir>/ema.safetensors exists
    codec_fingerprint: str | None = None  # of the codec state the NAR bundles
    codec_problem: str = ""  # why that codec cannot serve ("" = fine or not checked)
    collapse_events: list[dict[str, Any]] = field(default_factory=list)
    end_steps: dict[str, int] = field(default_factory=dict)  # kind -> end of its collapse window
    utilisation: list[dict[str, Any]] = field(default_factory=list)  # per kind, see checkpoint_utilisation
    weights_key: str = ""  # sha256 over both EMA files and contracts ("" when a file is missing)
    evaluated_decode: dict[str, Any] | None = None  # eval.decode of the evaluate run's config.yaml
    decode_problem: str = ""  # why it could not be read
    notes: list[str] = field(default_factory=list)

    @property
    def evaluation_run_id(self) -> str:
        return self.eval_run.run_id

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.eval_run.metrics)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.eval_run.tags)

    @property
    def project(self) -> str:
        return self.eval_run.tags.get(names.PROJECT, "demo")

    def directory(self, kind: str) -> Path:
        return self.ar_dir if kind == "ar" else self.nar_dir

    def meta(self, kind: str) -> dict[str, Any]:
        return self.ar_meta if kind == "ar" else self.nar_meta

    def run(self, kind: str) -> RunRecord | None:
        return self.ar_run if kind == "ar" else self.nar_run


@dataclass(frozen=True)
class ChampionEvidence:
    """The current champion as the champion rule needs it (version None: there is none)."""

    version: str | None
    value: float | None = None  # its primary metric, None when not comparable
    rows: list[dict[str, Any]] | None = None  # its evaluate run's per-utterance table
    candidate_rows: list[dict[str, Any]] | None = None  # the candidate's


# ------------------------------------------------------------------------------------- the promotion


def find_run(reader: TrackingReader, run_id: str) -> RunRecord | None:
    return reader.find_run(run_id) if run_id else None


def evaluate_run(reader: TrackingReader, evaluation_run_id: str, hint: str = "") -> RunRecord:
    """The evaluate run; PromotionError when it does not exist or is another stage's run."""
    try:  # a full id, a unique id prefix or a unique run name
        run = reader.resolve_run(evaluation_run_id, what="evaluate run") if evaluation_run_id else None
    except AmbiguousRunError as exc:
        raise PromotionError(str(exc)) from None
    except NotFoundError:
        run = None
    if run is None:
        raise PromotionError(f"evaluate run {evaluation_run_id} not found on {reader.tracking_uri}{hint}")
    if run.stage != "evaluate":
        raise PromotionError(
            f"run {run.run_id} is a '{run.stage or 'unknown'}' run, not an evaluate run: "
            "pass the run id printed by `harmonica evaluate`"
        )
    return run


def gather_evidence(reader: TrackingReader, evaluation_run_id: str, workdir: Path) -> Evidence:
    """Read everything the decision needs; PromotionError when the evaluate run is unusable."""
    from harmonica.inference.synthesize import read_checkpoint_meta

    run = evaluate_run(reader, evaluation_run_id)
    ev = Evidence(eval_run=run, ar_run=find_run(reader, run.tags.get(names.AR_RUN_ID, "")),
                  nar_run=find_run(reader, run.tags.get(names.NAR_RUN_ID, "")))
    for kind in KINDS:
        directory, note = locate_checkpoint(reader, kind, run.tags, Path(workdir) / "downloads")
        if note:
            ev.notes.append(note)
        meta = read_checkpoint_meta(directory) if directory else {}
        setattr(ev, f"{kind}_dir", directory or Path(""))
        setattr(ev, f"{kind}_meta", meta)
        ev.ema_present[kind] = bool(directory) and (directory / names.CKPT_EMA).is_file()
    if ev.ar_meta and ev.nar_meta:
        ev.codec_fingerprint, ev.codec_problem = codec_state(ev.nar_dir, ev.nar_meta)
    if all(ev.ema_present.values()):
        ev.weights_key = weights_key(ev.ar_dir, ev.nar_dir, ev.ar_meta, ev.nar_meta)
    with tempfile.TemporaryDirectory(prefix="harmonica-promote-") as tmp:
        for kind in KINDS:
            events, end, note = read_collapse(reader, ev.run(kind), kind, Path(tmp))
            ev.collapse_events += events
            if end:
                ev.end_steps[kind] = end
            if note:
                ev.notes.append(note)
        ev.evaluated_decode, ev.decode_problem = evaluated_decode(reader, run.run_id, Path(tmp) / "cfg")
    ev.utilisation = [checkpoint_utilisation(reader, ev.run(kind), kind, ev.meta(kind).get("step")) for kind in KINDS]
    return ev


def locate_checkpoint(reader: TrackingReader, kind: str, tags: dict[str, str] | Any,
                      downloads: Path) -> tuple[Path | None, str]:
    """The evaluated checkpoint dir: the evaluate run's local path, else the training run's artifact."""
    from harmonica.tracking.refs import resolve_checkpoint

    local = tags.get(names.kind_checkpoint(kind), "")
    if local and (Path(local) / names.CKPT_META).is_file():
        return Path(local), ""
    run_id = tags.get(names.kind_run_id(kind), "")
    if run_id:
        try:
            path = resolve_checkpoint(tags.get(names.kind_model_id(kind)) or run_id, reader.tracking_uri,
                                      downloads).path
            note = (f"{kind.upper()} checkpoint {local or '(no path)'} is not on this machine; used the "
                    f"training run's artifact ({path})")
            return path, note
        except (StoreError, OSError) as exc:
            return None, f"{kind.upper()} checkpoint {local or '(no path)'} missing and run {run_id}: {exc}"
    return None, f"{kind.upper()} checkpoint {local or '(no path)'} missing and no training run id is recorded"


def codec_state(nar_dir: Path, nar_meta: dict[str, Any]) -> tuple[str | None, str]:
    """(fingerprint of the codec the NAR bundles, why it cannot serve or "")."""
    from harmonica.codec import load_codec
    from harmonica.config.schema import CodecConfig

    codec_dir = nar_dir / "codec"
    if not codec_dir.is_dir():
        return None, f"{nar_dir} has no codec/ directory, so the served model could not decode"
    try:
        return load_codec(CodecConfig.model_validate(nar_meta["codec_config"]), codec_dir).fingerprint(), ""
    except Exception as exc:  # noqa: BLE001  (any failure to restore the codec refuses)
        return None, f"the NAR's codec state in {codec_dir} cannot be loaded: {exc}"


def _sha_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def weights_key(ar_dir: Path, nar_dir: Path, ar_meta: dict[str, Any], nar_meta: dict[str, Any]) -> str:
    """sha256 over the AR EMA file, the AR contract, the NAR EMA file and the NAR contract."""
    digest = hashlib.sha256()
    for directory, meta in ((ar_dir, ar_meta), (nar_dir, nar_meta)):
        _sha_file(digest, Path(directory) / names.CKPT_EMA)
        digest.update(json.dumps(meta.get("contract", {}), sort_keys=True).encode())
    return digest.hexdigest()


def evaluated_decode(reader: TrackingReader, run_id: str, tmp: Path) -> tuple[dict[str, Any] | None, str]:
    """(eval.decode of the evaluate run's config.yaml, why it is unreadable or "")."""
    try:
        path = reader.download_artifacts(run_id, "config.yaml", tmp)
        evaluated = HarmonicaConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        return evaluated.eval.decode.model_dump(mode="json"), ""
    except Exception as exc:  # noqa: BLE001  (any unreadable config falls back to the project's decode)
        return None, str(exc)


# ------------------------------------------------------------------------------------- training runs


def _int(value: Any) -> int | None:
    try:
        out = int(float(value))
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def last_logged_step(reader: TrackingReader, run: RunRecord, kind: str) -> int | None:
    """The last step the run logged its training loss at (what it actually trained), None if unknown."""
    try:
        history = reader.metric_history(run.run_id, f"{kind}/loss")
    except Exception:  # noqa: BLE001  (no history is "unknown", which the gate treats as unobserved)
        return None
    return max((p.step for p in history), default=None)


def training_progress(reader: TrackingReader, run: RunRecord, kind: str) -> tuple[int | None, dict[str, Any] | None]:
    """(end step of the collapse window, an "unfinished" pseudo-event or None).

    FINISHED: the executed steps (`harmonica.steps`), else the planned total. Otherwise the last
    logged step, and an event the collapse gate fails as "tail not observed" unless that step is
    inside the tail of the planned total."""
    planned = _int(run.params.get(f"training.{kind}.total_steps"))
    if run.status == "FINISHED":
        return _int(run.tags.get(names.STEPS)) or planned, None
    last = last_logged_step(reader, run, kind) or _int(run.tags.get(names.STEPS))
    event = {"model": kind, "kind": "unfinished", "name": "unfinished run", "step": last, "planned": planned,
             "status": run.status}
    return last, event


def read_collapse(reader: TrackingReader, run: RunRecord | None, kind: str,
                  tmp: Path) -> tuple[list[dict], int | None, str]:
    """(collapse events of a training run tagged with model=kind, plus their persisting spans and an
    "unfinished" pseudo-event; the end step of its collapse window; a note)."""
    if run is None:
        return [{"model": kind, "step": None, "kind": "unknown", "name": "training run not found"}], None, \
            f"{kind.upper()} training run not found: the collapse gate cannot be checked"
    end, unfinished = training_progress(reader, run, kind)  # an unfinished run: its tail may be unobserved
    pending = [unfinished] if unfinished else []
    try:
        path = reader.download_artifacts(run.run_id, names.COLLAPSE_EVENTS, tmp / kind)
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        events = [{**json.loads(ln), "model": kind} for ln in lines]
    except (StoreError, OSError) as exc:
        if run.tags.get(names.COLLAPSE) == "true":
            unplaced = {"model": kind, "step": None, "kind": "unknown", "name": "collapse_events.jsonl unreadable"}
            return [unplaced, *pending], end, (f"{kind.upper()} run {run.run_id} reports a collapse but its "
                                               f"events are unreadable: {exc}")
        return pending, end, (f"{kind.upper()} run {run.run_id} has no collapse_events.jsonl (and "
                              f"{names.COLLAPSE} is {run.tags.get(names.COLLAPSE, 'unset')}): treated as no events")
    # a collapse lasts until its metric recovers: add its span's last step (see persisting_events)
    histories: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for key in sorted({k for k in map(collapse_metric_key, events) if k}):
        try:
            history = [(p.step, p.value) for p in reader.metric_history(run.run_id, key)]
        except StoreError:
            history = []
        if history:
            histories[(kind, key)] = history
    return events + persisting_events(events, histories) + pending, end, ""


def checkpoint_utilisation(reader: TrackingReader, run: RunRecord | None, kind: str,
                           checkpoint_step: Any) -> dict[str, Any]:
    """The checkpoint's own validation utilisation: the lowest per-codebook `val_ema/cb<k>/util_pred`
    (the EMA weights are served; else `val/cb<k>/...`, else the medians) at the last validation step
    at or before the checkpoint's step, with the run's collapse floor (for gates.utilisation_gate)."""
    record: dict[str, Any] = {"model": kind, "checkpoint_step": checkpoint_step, "metric": None, "value": None,
                              "at": None, "floor": None, "collapsed_tag": False}
    if run is None:
        return record
    record["collapsed_tag"] = run.tags.get(names.COLLAPSE) == "true"
    record["floor"] = float(run.params.get(f"training.{kind}.collapse.util_floor", 0.10))
    step = _int(checkpoint_step)

    def per_codebook(prefix: str) -> list[str]:
        return sorted(k for k in run.metrics if k.startswith(f"{prefix}/cb") and k.endswith("/util_pred"))

    # the served weights are the EMA's: their own validation first, then the raw weights'
    for group in (per_codebook("val_ema"), per_codebook("val"), ["val_ema/util_pred_median"],
                  ["val/util_pred_median"]):
        readings = []
        for key in group:
            try:
                history = reader.metric_history(run.run_id, key)
            except StoreError:
                continue
            before = [p for p in history if step is None or p.step <= step]
            if before:
                last = max(before, key=lambda p: p.step)
                readings.append((float(last.value), key, int(last.step)))
        if readings:
            value, key, at = min(readings)
            record.update(value=value, metric=key, at=at)
            return record
    return record


# ------------------------------------------------------------------------------------- the champion


def read_champion(registry: ModelRegistry, name: str, gates: GatesConfig, evaluation_run_id: str) -> ChampionEvidence:
    """The current champion of `name`, its value on gates.primary_metric (its `harmonica.primary_value`
    tag when measured on the same metric, else its evaluate run's metric) and, when the rule tests
    significance, both per-utterance tables. Read under the registry lock."""
    current = registry.alias(name, CHAMPION)
    if current is None:
        return ChampionEvidence(None)
    version = registry.version(name, current)
    metric, value = gates.primary_metric, None
    if version.tags.get(names.PRIMARY_METRIC) == metric:
        try:
            value = float(version.tags[names.PRIMARY_VALUE])
        except (KeyError, ValueError):
            pass
    if value is None:
        run = find_run(registry.reader, version.tags.get(names.EVALUATION_RUN_ID, ""))
        value = float(run.metrics[metric]) if run is not None and metric in run.metrics else None
    if value is None or gates.champion_confidence <= 0 or primary_suffix(metric) is None:
        return ChampionEvidence(current, value)
    return ChampionEvidence(current, value, eval_rows(registry.reader, version.tags.get(names.EVALUATION_RUN_ID, "")),
                            eval_rows(registry.reader, evaluation_run_id))
