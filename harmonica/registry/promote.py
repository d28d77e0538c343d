"""`harmonica promote`: gated, idempotent, race-safe registration of an evaluated AR + NAR EMA pair.

Order of checks (the first three refuse: nothing is registered, the refusal is recorded on a
`promote` run and raised as PromotionRefused):
  1. the evaluate run: exists, is an evaluate run, FINISHED, scored EMA weights; its checkpoint
     directories still hold the evaluated steps (local paths from its tags, else the training
     runs' `checkpoints/best` artifacts); the AR and NAR training runs are FINISHED and from the
     same project and data/codec/text settings (harmonica.registry.evidence; --allow-unfinished,
     --allow-mixed-pair override, recorded as version tags);
  2. the AR/NAR/codec contract (`require_compatible` on both meta.json contracts and the codec
     the NAR bundles);
  3. code provenance: the AR and NAR training runs and the evaluate run must come from a clean git
     tree (`harmonica.git_dirty == "false"`); dirty or unknown -> refused unless allow_dirty
     (then recorded on the version as harmonica.allow_dirty=true);
  4. the gates (harmonica.registry.gates) -> every registered version carries them as tags.

Idempotency: the candidate key is sha256 over both EMA weight files, both meta contracts and the
evaluate run id. Decision: the same checkpoints scored by *another* evaluate run are a *new*
candidate (new evidence: another eval slice, decode settings or ASR may give other gate values),
so a version = (weights, evidence). Versions with the same weights share `harmonica.weights_key`
and the decision names the earlier version. Promoting the same evaluate run again registers
nothing and reports the existing version.

Race safety: the "find version by key -> register -> compare with champion -> move aliases"
section runs under a registry lock (harmonica.registry.lock) held by exactly one process at a time,
so the same candidate is registered once and a champion move always compares with the champion
that is current at that moment (a worse candidate never overwrites a better one that won the race).
The slow part (packaging and uploading the pyfunc model) happens before the lock; a process that
then finds the candidate already registered by a concurrent twin marks its promote run as a
duplicate.

Champion rule: alias `candidate` -> every newly registered version; alias `champion` moves to it
only when all gates pass AND (there is no champion OR it beats the champion on gates.primary_metric
per gates.primary_mode by a paired bootstrap over the shared utterances at
gates.champion_confidence -- harmonica.registry.decision; 0 = strictly better point estimate). The champion's value is
its `harmonica.primary_value` tag when it was measured on the same metric, else read from its
evaluate run; when it cannot be compared the champion stays (use `harmonica registry rollback`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Run as MlflowRun
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.config.schema import GatesConfig, HarmonicaConfig
from harmonica.registry.decision import champion_verdict, eval_rows
from harmonica.registry.evidence import (
    checkpoint_utilisation,
    pair_refusals,
    pair_tags,
    read_collapse,
    status_refusals,
)
from harmonica.registry.gates import (
    GateResult,
    all_passed,
    evaluate_gates,
    failing,
    gate_tags,
)
from harmonica.registry.lock import NOT_FOUND, RegistryLock, lock_name
from harmonica.registry.pyfunc import MODEL_NAME
from harmonica.tracking import names

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
HISTORY_TAG = names.CHAMPION_HISTORY
HISTORY_KEEP = 30
DESCRIPTION_LIMIT = 4900  # registered model / version descriptions are VARCHAR(5000) in the registry DB


class PromotionError(ValueError):
    """A promotion that cannot even start (unknown run, not an evaluate run)."""


class PromotionRefused(PromotionError):
    """Contract or provenance refusal; `.decision` holds the recorded decision."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.text())


@dataclass
class Decision:
    model_name: str
    evaluation_run_id: str
    version: str | None
    registered_new: bool
    gates: list[GateResult]
    passed: bool
    champion_moved: bool
    reasons: list[str]
    candidate_key: str
    decision: str  # champion | candidate | existing | duplicate | refused
    previous_champion: str | None = None
    champion_version: str | None = None  # the champion after this decision
    primary_metric: str = ""
    primary_value: float | None = None
    promote_run_id: str | None = None
    tracking_uri: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    registered_decision: str = ""  # for existing/duplicate: what the version was registered as

    @property
    def failing_gates(self) -> list[str]:
        return [g.name for g in failing(self.gates)]

    def headline(self) -> str:
        name = f"{self.model_name} v{self.version}" if self.version else self.model_name
        if self.decision == "refused":
            return f"{self.model_name}: REFUSED evaluation {self.evaluation_run_id}"
        if self.decision in ("existing", "duplicate"):
            return (f"{name}: already registered for evaluation {self.evaluation_run_id} (as {self.registered_decision or 'unknown'}); "
                "nothing changed")
        if self.champion_moved:
            prev = f"v{self.previous_champion}" if self.previous_champion else "none"
            return f"{name}: CHAMPION (previous champion {prev})"
        gates = "all gates passed" if self.passed else f"gates failed: {', '.join(self.failing_gates)}"
        return f"{name}: candidate only ({gates})"

    def text(self) -> str:
        lines = [self.headline()]
        if self.gates and self.decision in ("existing", "duplicate"):
            lines.append("  gates re-checked with today's thresholds, for information only: the version keeps the "
                         "decision it got when it was registered")
        for g in self.gates:
            lines.append(f"  {g.verdict} {g.name}: {g.reason}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "evaluation_run_id": self.evaluation_run_id, "version": self.version,
            "registered_new": self.registered_new, "passed": self.passed, "champion_moved": self.champion_moved,
            "decision": self.decision, "previous_champion": self.previous_champion,
            "champion_version": self.champion_version, "primary_metric": self.primary_metric,
            "primary_value": self.primary_value, "candidate_key": self.candidate_key,
            "promote_run_id": self.promote_run_id, "failing_gates": self.failing_gates,
            "gates": [g.as_dict() for g in self.gates], "reasons": self.reasons, "text": self.text(),
            "seconds": self.seconds,
        }


# ------------------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """Everything read before deciding."""

    eval_run: MlflowRun
    ar_run: MlflowRun | None
    nar_run: MlflowRun | None
    ar_dir: Path
    nar_dir: Path
    ar_meta: dict[str, Any]
    nar_meta: dict[str, Any]
    collapse_events: list[dict[str, Any]]
    end_steps: dict[str, int]
    notes: list[str]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.eval_run.data.metrics)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.eval_run.data.tags)


def _code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", ""))


def _get_run(client: MlflowClient, run_id: str) -> MlflowRun | None:
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        # a malformed id ("--allow-unfinished" given as the run id) is no run either
        if _code(exc) in NOT_FOUND | {"INVALID_PARAMETER_VALUE"} or "not found" in str(exc).lower():
            return None
        raise


def _locate_checkpoint(client: MlflowClient, tracking_uri: str, kind: str, tags: dict[str, str],
                       downloads: Path) -> tuple[Path | None, str]:
    """The evaluated checkpoint dir: the evaluate run's local path, else the training run's artifact."""
    from harmonica.tracking.refs import resolve_checkpoint

    local = tags.get(names.kind_checkpoint(kind), "")
    if local and (Path(local) / "meta.json").is_file():
        return Path(local), ""
    run_id = tags.get(names.kind_run_id(kind), "")
    if run_id:
        try:
            path, _ = resolve_checkpoint(run_id, tracking_uri, downloads)
            note = (f"{kind.upper()} checkpoint {local or '(no path)'} is not on this machine; used the "
                    f"training run's artifact ({path})")
            return path, note
        except (FileNotFoundError, MlflowException, OSError) as exc:
            return None, f"{kind.upper()} checkpoint {local or '(no path)'} missing and run {run_id}: {exc}"
    return None, f"{kind.upper()} checkpoint {local or '(no path)'} missing and no training run id is recorded"


def gather_evidence(client: MlflowClient, tracking_uri: str, evaluation_run_id: str, workdir: Path) -> Evidence:
    from harmonica.inference.synthesize import read_checkpoint_meta

    run = _get_run(client, evaluation_run_id)
    if run is None:
        raise PromotionError(f"evaluate run {evaluation_run_id} not found on {tracking_uri}")
    tags = dict(run.data.tags)
    if tags.get(names.STAGE) != "evaluate":
        raise PromotionError(
            f"run {evaluation_run_id} is a '{tags.get(names.STAGE, 'unknown')}' run, not an evaluate run: "
            "pass the run id printed by `harmonica evaluate`"
        )
    notes: list[str] = []
    ar_dir, note_ar = _locate_checkpoint(client, tracking_uri, "ar", tags, Path(workdir) / "downloads")
    nar_dir, note_nar = _locate_checkpoint(client, tracking_uri, "nar", tags, Path(workdir) / "downloads")
    notes += [n for n in (note_ar, note_nar) if n]
    ar_meta = read_checkpoint_meta(ar_dir) if ar_dir else {}
    nar_meta = read_checkpoint_meta(nar_dir) if nar_dir else {}
    ar_run = _get_run(client, tags.get(names.AR_RUN_ID, ""))
    nar_run = _get_run(client, tags.get(names.NAR_RUN_ID, ""))
    events: list[dict[str, Any]] = []
    ends: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="harmonica-promote-") as tmp:
        for kind, trun in (("ar", ar_run), ("nar", nar_run)):
            ev, end, note = read_collapse(client, trun, kind, Path(tmp))
            events += ev
            if end:
                ends[kind] = end
            if note:
                notes.append(note)
    return Evidence(run, ar_run, nar_run, ar_dir or Path(""), nar_dir or Path(""), ar_meta, nar_meta, events,
                    ends, notes)


def evaluation_project(tracking_uri: str, evaluation_run_id: str) -> str | None:
    """The `harmonica.project` tag of an evaluate run; PromotionError when the run does not exist."""
    run = _get_run(MlflowClient(tracking_uri), evaluation_run_id)
    if run is None:
        raise PromotionError(f"evaluate run {evaluation_run_id} not found on {tracking_uri} "
                             "(check --workdir / MLFLOW_TRACKING_URI)")
    return run.data.tags.get(names.PROJECT)


def refusal_reasons(ev: Evidence, allow_dirty: bool, allow_unfinished: bool = False,
                    allow_mixed_pair: bool = False) -> tuple[list[str], list[str]]:
    """(refusals, notes): evaluate-run validity, unfinished training runs and mixed pairs
    (harmonica.registry.evidence), the contract, provenance."""
    from harmonica.codec import load_codec
    from harmonica.config.schema import CodecConfig
    from harmonica.models.contract import check_pair

    refusals: list[str] = []
    notes: list[str] = []
    tags = ev.tags
    eid = ev.eval_run.info.run_id
    if ev.eval_run.info.status != "FINISHED":
        refusals.append(f"evaluate run {eid} is {ev.eval_run.info.status}, not FINISHED: its metrics may be partial")
    for refused, noted in (status_refusals({"AR training run": ev.ar_run, "NAR training run": ev.nar_run},
                                           allow_unfinished),
                           pair_refusals(ev.ar_run, ev.nar_run, allow_mixed_pair)):
        refusals += refused
        notes += noted
    weights = tags.get(names.WEIGHTS, "unknown")
    if weights != "ema":
        refusals.append(f"evaluate run {eid} scored '{weights}' weights but the registry serves EMA weights: "
                        "re-run `harmonica evaluate --weights ema`")
    for kind, meta in (("ar", ev.ar_meta), ("nar", ev.nar_meta)):
        if not meta:
            refusals.append(f"the evaluated {kind.upper()} checkpoint cannot be found "
                            f"({tags.get(names.kind_checkpoint(kind), 'no path recorded')})")
            continue
        want = tags.get(names.kind_step(kind))
        if want not in (None, "", "None") and str(meta.get("step")) != want:
            refusals.append(f"{kind.upper()} checkpoint {ev.ar_dir if kind == 'ar' else ev.nar_dir} now holds step "
                            f"{meta.get('step')} but evaluate run {eid} scored step {want} (it was overwritten, e.g. "
                            "by a resumed training): evaluate it again")
        directory = ev.ar_dir if kind == "ar" else ev.nar_dir
        if not (directory / "ema.safetensors").is_file():
            refusals.append(f"{directory} has no ema.safetensors: the registry serves EMA weights only")
    if ev.ar_meta and ev.nar_meta:
        fingerprint = None
        codec_dir = ev.nar_dir / "codec"
        if not codec_dir.is_dir():
            refusals.append(f"contract: {ev.nar_dir} has no codec/ directory, so the served model could not decode")
        else:
            try:
                codec = load_codec(CodecConfig.model_validate(ev.nar_meta["codec_config"]), codec_dir)
                fingerprint = codec.fingerprint()
            except Exception as exc:  # noqa: BLE001  (any failure to restore the codec refuses)
                refusals.append(f"contract: the NAR's codec state in {codec_dir} cannot be loaded: {exc}")
        for m in check_pair(ev.ar_meta.get("contract", {}), ev.nar_meta.get("contract", {}), fingerprint):
            refusals.append(f"contract: {m.message}")
    # provenance
    dirty = []
    for label, run, run_id in (
        ("AR training run", ev.ar_run, tags.get(names.AR_RUN_ID, "")),
        ("NAR training run", ev.nar_run, tags.get(names.NAR_RUN_ID, "")),
        ("evaluate run", ev.eval_run, eid),
    ):
        if run is None:
            dirty.append(f"{label} {run_id or '(none recorded)'} is unknown to the tracking server, so its code is unknown")
            continue
        t = run.data.tags
        state = t.get(names.GIT_DIRTY, "unknown")
        if state != "false":
            kind = "a dirty git tree" if state == "true" else "an unknown tree (no git metadata)"
            dirty.append(f"{label} {run.info.run_id} ran from {kind} (commit {t.get(names.GIT_COMMIT, 'unknown')[:12]}, "
                         f"source hash {t.get(names.SOURCE_HASH, 'unknown')})")
    if dirty:
        if allow_dirty:
            notes += [f"provenance (allowed by --allow-dirty): {d}" for d in dirty]
        else:
            refusals += [f"provenance: {d}" for d in dirty]
            refusals.append("provenance: commit the code and retrain/re-evaluate, or pass --allow-dirty to promote "
                            f"anyway (recorded on the version as {names.ALLOW_DIRTY}=true)")
    return refusals, notes


# ------------------------------------------------------------------------------------- identity


def _sha_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def weights_key(ar_dir: Path, nar_dir: Path, ar_meta: dict[str, Any], nar_meta: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for directory, meta in ((ar_dir, ar_meta), (nar_dir, nar_meta)):
        _sha_file(digest, Path(directory) / "ema.safetensors")
        digest.update(json.dumps(meta.get("contract", {}), sort_keys=True).encode())
    return digest.hexdigest()


def key_for(weights: str, evaluation_run_id: str) -> str:
    digest = hashlib.sha256(weights.encode())
    digest.update(b"|" + evaluation_run_id.encode())
    return digest.hexdigest()


def candidate_key(ar_dir: Path, nar_dir: Path, ar_meta: dict[str, Any], nar_meta: dict[str, Any],
                  evaluation_run_id: str) -> str:
    """sha256(AR EMA file, AR contract, NAR EMA file, NAR contract, evaluate run id)."""
    return key_for(weights_key(ar_dir, nar_dir, ar_meta, nar_meta), evaluation_run_id)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def find_versions_by_tag(client: MlflowClient, name: str, key: str, value: str) -> list[Any]:
    """Versions of `name` with tag key=value, oldest first (the search filter, else a full listing)."""
    try:
        found = list(client.search_model_versions(f"name='{_quote(name)}' and tags.`{key}`='{_quote(value)}'"))
    except MlflowException as exc:
        if _code(exc) in NOT_FOUND:
            return []
        found = [v for v in client.search_model_versions(f"name='{_quote(name)}'") if v.tags.get(key) == value]
    return sorted(found, key=lambda v: int(v.version))


def _registered(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _code(exc) in NOT_FOUND:
            return None
        raise


def ensure_registered_model(client: MlflowClient, name: str) -> Any:
    rm = _registered(client, name)
    if rm is not None:
        return rm
    try:
        client.create_registered_model(name, tags={names.MANAGED_BY: "harmonica promote"},
                                       description=describe_model(name, []))
    except MlflowException as exc:
        if _code(exc) not in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}:
            raise
    return client.get_registered_model(name)


def champion_alias(client: MlflowClient, name: str) -> str | None:
    rm = _registered(client, name)
    if rm is None:
        return None
    version = (rm.aliases or {}).get(CHAMPION)
    return str(version) if version is not None else None


# ------------------------------------------------------------------------------------- history


def read_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    rm = _registered(client, name)
    if rm is None:
        return []
    try:
        return list(json.loads(rm.tags.get(HISTORY_TAG, "[]")))
    except ValueError:
        return []


def describe_model(name: str, history: list[dict[str, Any]]) -> str:
    lines = [
        f"{name}: harmonica text-to-speech (AR + NAR EMA weights, codec state, text frontend, contract).",
        ("Aliases: `champion` = the version to serve (moved only by `harmonica promote` when all gates pass "
         "and it beats the champion on the primary metric, or by `harmonica registry rollback`); "
         "`candidate` = the latest registered version."),
        "Load: mlflow.pyfunc.load_model('models:/" + name + "@champion').predict(pd.DataFrame({'text': [...]}))",
    ]
    if history:
        lines += ["", "Champion history (newest last):"]
        events = [f"- {h.get('at', '')} v{h.get('from') or '-'} -> v{h.get('to')} by {h.get('via')} "
                  f"({h.get('by', '')}): {str(h.get('reason', ''))[:300]}" for h in history[-HISTORY_KEEP:]]
        while events and len("\n".join(lines + events)) > DESCRIPTION_LIMIT:
            events = events[1:]  # the registry column holds 5000 characters: oldest first out
        lines += events
    return "\n".join(lines)[:DESCRIPTION_LIMIT]


def record_champion_event(client: MlflowClient, name: str, event: dict[str, Any]) -> None:
    """Append to the registered model's history tag (bounded) and re-render its description."""
    history = read_history(client, name) + [event]
    history = history[-HISTORY_KEEP:]
    blob = json.dumps(history)
    while len(blob) > 4900 and len(history) > 1:
        history = history[1:]
        blob = json.dumps(history)
    client.set_registered_model_tag(name, HISTORY_TAG, blob)
    client.set_registered_model_tag(name, names.CHAMPION, str(event.get("to")))
    client.update_registered_model(name, description=describe_model(name, history))


def actor() -> str:
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------- champion rule


def champion_value(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    mv = client.get_model_version(name, version)
    if mv.tags.get(names.PRIMARY_METRIC) == metric:
        try:
            return float(mv.tags[names.PRIMARY_VALUE])
        except (KeyError, ValueError):
            pass
    run = _get_run(client, mv.tags.get(names.EVALUATION_RUN_ID, ""))
    if run is not None and metric in run.data.metrics:
        return float(run.data.metrics[metric])
    return None


def champion_step(client: MlflowClient, name: str, passed: bool, value: float | None, gates: GatesConfig,
                  failing_names: list[str], evaluation_run_id: str = "", samples: int = 1000,
                  seed: int = 0) -> tuple[bool, str | None, str]:
    """-> (move, current champion version, reason). Call under the lock. The comparison with a
    current champion is harmonica.registry.decision.champion_verdict (paired bootstrap)."""
    current = champion_alias(client, name)
    metric, mode = gates.primary_metric, gates.primary_mode
    if not passed:
        return False, current, f"champion unchanged ({'v' + current if current else 'none yet'}): gate(s) failed: {', '.join(failing_names)}"
    if value is None:
        return False, current, f"champion unchanged: the evaluate run has no {metric} (the primary metric)"
    if current is None:
        return True, None, f"no champion yet: all gates pass, {metric} = {value:.4g} -> champion"
    cval = champion_value(client, name, current, metric)
    if cval is None:
        return False, current, (f"champion v{current} has no comparable {metric}: it stays; move it by hand with "
                                "`harmonica registry rollback` if this candidate should serve")
    rows = (eval_rows(client, evaluation_run_id),
            eval_rows(client, client.get_model_version(name, current).tags.get(names.EVALUATION_RUN_ID, "")))
    move, reason = champion_verdict(value, cval, current, gates, *rows, samples=samples, seed=seed)
    return move, current, reason


# ------------------------------------------------------------------------------------- promote


@contextlib.contextmanager
def _env_tracking_uri(uri: str) -> Iterator[None]:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _tracker(cfg: HarmonicaConfig, workdir: Path, tracking_uri: str) -> Any:
    from harmonica.tracking.adapter import Tracker

    cfg = cfg.model_copy(deep=True)
    cfg.tracking.system_metrics = False  # a promotion takes seconds; no monitor thread
    cfg.tracking.async_logging = False
    with _env_tracking_uri(tracking_uri):
        return Tracker(cfg, workdir)


def _decode_settings(client: MlflowClient, run_id: str, cfg: HarmonicaConfig, tmp: Path) -> tuple[dict[str, Any], str]:
    """The decode settings the candidate was evaluated with (its config.yaml), else the project's."""
    try:
        path = Path(client.download_artifacts(run_id, "config.yaml", str(tmp)))
        evaluated = HarmonicaConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        return evaluated.eval.decode.model_dump(mode="json"), "the evaluate run's config.yaml"
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot read the evaluate run's config.yaml (%s): using the project's eval.decode", exc)
        return cfg.eval.decode.model_dump(mode="json"), "the project's eval.decode (config.yaml unreadable)"


def _code_tags(ev: Evidence) -> dict[str, str]:
    from harmonica.tracking.provenance import code_version

    def of(run: MlflowRun | None, key: str) -> str:
        return run.data.tags.get(key, "unknown") if run is not None else "unknown"

    runs = {"ar": ev.ar_run, "nar": ev.nar_run, "evaluate": ev.eval_run}
    out: dict[str, str] = {}
    for tag in (names.GIT_COMMIT, names.SOURCE_HASH):
        values = {k: of(r, tag) for k, r in runs.items()}
        trained = {values["ar"], values["nar"]}
        out[tag] = values["ar"] if len(trained) == 1 else f"ar={values['ar']},nar={values['nar']}"
    states = [of(r, names.GIT_DIRTY) for r in runs.values()]
    out[names.GIT_DIRTY] = "true" if "true" in states else ("unknown" if "unknown" in states else "false")
    for k, r in runs.items():
        out[names.code_of(k)] = (f"{of(r, names.GIT_COMMIT)[:12]} dirty={of(r, names.GIT_DIRTY)} "
                                      f"source={of(r, names.SOURCE_HASH)}")
    served = code_version()
    out[names.SERVING_SOURCE_HASH] = served.source_hash
    out[names.CODE_SERVING] = f"{served.git_commit[:12]} dirty={str(served.git_dirty).lower()} source={served.source_hash}"
    return out


def _smoke_test(artifacts: dict[str, str]) -> tuple[float, int]:
    """Load the staged model as the server would and synthesise one short text -> (seconds, samples)."""
    from harmonica.registry.pyfunc import HarmonicaTTS

    class _Ctx:
        def __init__(self, arts: dict[str, str]) -> None:
            self.artifacts = arts
            self.model_config: dict[str, Any] = {}

    import pandas as pd

    started = time.perf_counter()
    model = HarmonicaTTS()
    model.load_context(_Ctx(artifacts))
    out = model.predict(None, pd.DataFrame({"text": ["hello"]}))
    return time.perf_counter() - started, round(float(out["duration_sec"].iloc[0]) * int(out["sample_rate"].iloc[0]))


def _existing_decision(client: MlflowClient, name: str, mv: Any, base: dict[str, Any], why: str) -> Decision:
    tags = mv.tags
    current = champion_alias(client, name)
    reasons = [
        (f"{why}: evaluation {base['evaluation_run_id']} is already version {mv.version} (decision: "
         f"{tags.get(names.DECISION, 'unknown')}, promote run {tags.get(names.PROMOTE_RUN_ID, 'unknown')}); "
         "nothing registered, no alias moved"),
        f"current champion: v{current}" if current else "there is no champion yet",
    ]
    if not current and tags.get(names.DECISION) != "champion":
        reasons.append(f"to serve v{mv.version} anyway: harmonica registry rollback --to {mv.version} --force "
                       "--reason '...' (recorded on the version)")
    return Decision(**base, version=str(mv.version), registered_new=False, champion_moved=False,
                    decision="existing" if why == "idempotent" else "duplicate", reasons=reasons,
                    champion_version=current, registered_decision=tags.get(names.DECISION, ""))


def promote(
    evaluation_run_id: str,
    *,
    tracking_uri: str,
    workdir: Path | str,
    allow_dirty: bool = False,
    allow_unfinished: bool = False,
    allow_mixed_pair: bool = False,
    model_name: str = MODEL_NAME,
    cfg: HarmonicaConfig | None = None,
    gates: GatesConfig | None = None,
    smoke_test: bool = True,
    lock_timeout: float = 600.0,
    lock_stale_after: float = 300.0,
    extra_tags: dict[str, str] | None = None,
) -> Decision:
    """Gate, register and maybe crown the candidate scored by `evaluation_run_id`.

    cfg: the project config (None = `load_config(<the evaluate run's harmonica.project>)`);
    gates: overrides cfg.gates. Raises PromotionError / PromotionRefused; returns the Decision.
    """
    from harmonica.config.load import load_config

    t0 = time.perf_counter()
    workdir = Path(workdir)
    client = MlflowClient(tracking_uri)
    ev = gather_evidence(client, tracking_uri, evaluation_run_id, workdir)
    project = ev.tags.get(names.PROJECT, "demo")
    if cfg is None:
        cfg = load_config(project)
    gates = gates or cfg.gates
    seconds = {"read": time.perf_counter() - t0}

    refusals, notes = refusal_reasons(ev, allow_dirty, allow_unfinished, allow_mixed_pair)
    notes = ev.notes + notes
    utilisation = [checkpoint_utilisation(client, run, kind, meta.get("step"))
                   for kind, run, meta in (("ar", ev.ar_run, ev.ar_meta), ("nar", ev.nar_run, ev.nar_meta))]
    results = evaluate_gates(ev.metrics, gates, ev.collapse_events, ev.end_steps, utilisation)
    passed = all_passed(results)
    primary_value = ev.metrics.get(gates.primary_metric)
    wkey = weights_key(ev.ar_dir, ev.nar_dir, ev.ar_meta, ev.nar_meta) if not refusals else ""
    key = key_for(wkey, evaluation_run_id) if not refusals else ""
    base: dict[str, Any] = {
        "model_name": model_name, "evaluation_run_id": evaluation_run_id, "gates": results, "passed": passed,
        "candidate_key": key, "primary_metric": gates.primary_metric, "primary_value": primary_value,
        "tracking_uri": tracking_uri, "seconds": seconds,
    }
    tracker = _tracker(cfg, workdir, tracking_uri)
    run_tags = {
        names.EVALUATION_RUN_ID: evaluation_run_id,
        names.AR_RUN_ID: ev.tags.get(names.AR_RUN_ID, ""),
        names.NAR_RUN_ID: ev.tags.get(names.NAR_RUN_ID, ""),
        names.MODEL_NAME: model_name,
        names.ALLOW_DIRTY: str(allow_dirty).lower(),
        **pair_tags(ev.ar_run, ev.nar_run, allow_unfinished, allow_mixed_pair),
        **(extra_tags or {}),
    }
    run_name = f"promote-{project}-{evaluation_run_id[:8]}"

    if refusals:
        decision = Decision(**base, version=None, registered_new=False, champion_moved=False,
                            decision="refused", reasons=refusals + notes,
                            champion_version=champion_alias(client, model_name))
        with tracker.run("promote", run_name, description=decision.text()[:5000], tags=run_tags) as run:
            decision.promote_run_id = run.run_id
            _record_on_run(run, decision)
        raise PromotionRefused(decision)

    # ---- idempotency fast path: no run, no packaging
    existing = find_versions_by_tag(client, model_name, names.CANDIDATE_KEY, key)
    complete = [v for v in existing if v.tags.get(names.PROMOTION_COMPLETE) == "true"]
    if complete:
        decision = _existing_decision(client, model_name, complete[0], base, "idempotent")
        decision.seconds["total"] = time.perf_counter() - t0
        if os.environ.get("MLFLOW_RUN_ID"):  # launched by `mlflow run`: its run records the answer
            with tracker.run("promote", run_name, tags=run_tags) as run:
                decision.promote_run_id = run.run_id
                _record_on_run(run, decision)
        return decision

    same_weights = find_versions_by_tag(client, model_name, names.WEIGHTS_KEY, wkey)
    if same_weights:
        notes.append(f"the same weights are already version(s) {', '.join('v' + str(v.version) for v in same_weights)} "
                     "(scored by another evaluate run): registered as a new candidate because the evidence differs")

    with tracker.run("promote", run_name, tags=run_tags) as run, \
            tempfile.TemporaryDirectory(prefix="harmonica-promote-") as tmp:
        from harmonica.registry.pyfunc import (
            build_artifacts,
            find_prompt_cache,
            log_tts_model,
            stage_code,
        )

        t = time.perf_counter()
        decode, decode_source = _decode_settings(client, evaluation_run_id, cfg, Path(tmp) / "cfg")
        prompt_cache = find_prompt_cache(ev.nar_meta, workdir, cfg)
        if prompt_cache is None and ev.nar_meta.get("model_config", {}).get("speaker_condition") == "prompt":
            notes.append("no token cache of this model's codec under the workdir: the model bundles no default "
                         "voice prompts, so requests must carry prompt_audio_b64")
        code_tags = _code_tags(ev)
        trained = {ev.tags.get(names.SOURCE_HASH)} | {
            r.data.tags.get(names.SOURCE_HASH) for r in (ev.ar_run, ev.nar_run) if r is not None}
        if code_tags[names.SERVING_SOURCE_HASH] not in trained:
            notes.append(f"the packaged harmonica code (source hash {code_tags[names.SERVING_SOURCE_HASH]}) is not "
                         f"the code the candidate was trained/evaluated with ({', '.join(sorted(t or '?' for t in trained))}): "
                         "the served model runs this checkout's inference code")
        settings = {"model_name": model_name, "evaluation_run_id": evaluation_run_id, "decode_source": decode_source,
                    "project": project, "candidate_key": key, **code_tags}
        artifacts = build_artifacts(ev.ar_dir, ev.nar_dir, Path(tmp) / "model", decode=decode, settings=settings,
                                    prompt_cache=prompt_cache)
        code_dir = stage_code(Path(tmp) / "code")
        if smoke_test:
            smoke_s, samples = _smoke_test(artifacts)
            seconds["smoke_test"] = smoke_s
            notes.append(f"smoke test: the packaged model loaded and said 'hello' ({samples} samples) in {smoke_s:.1f} s")
        info = log_tts_model(model_name, artifacts, decode=decode, code_dir=code_dir,
                             codec_name=ev.nar_meta.get("codec_config", {}).get("name", "mel_rvq"),
                             metadata={"harmonica_evaluation_run_id": evaluation_run_id, "candidate_key": key})
        seconds["package"] = time.perf_counter() - t

        version_tags = {
            **gate_tags(results),
            names.AR_RUN_ID: ev.tags.get(names.AR_RUN_ID, ""),
            names.NAR_RUN_ID: ev.tags.get(names.NAR_RUN_ID, ""),
            names.EVALUATION_RUN_ID: evaluation_run_id,
            names.PROMOTE_RUN_ID: run.run_id,
            names.PROJECT: project,
            names.AR_STEP: str(ev.ar_meta.get("step")),
            names.NAR_STEP: str(ev.nar_meta.get("step")),
            names.CONFIG_HASH: ev.tags.get(names.CONFIG_HASH, "unknown"),
            names.AR_CONFIG_HASH: ev.ar_run.data.tags.get(names.CONFIG_HASH, "unknown") if ev.ar_run else "unknown",
            names.NAR_CONFIG_HASH: ev.nar_run.data.tags.get(names.CONFIG_HASH, "unknown") if ev.nar_run else "unknown",
            **code_tags,
            names.ALLOW_DIRTY: str(allow_dirty).lower(),
            **pair_tags(ev.ar_run, ev.nar_run, allow_unfinished, allow_mixed_pair),
            names.PRIMARY_METRIC: gates.primary_metric,
            names.PRIMARY_MODE: gates.primary_mode,
            names.PRIMARY_VALUE: "n/a" if primary_value is None else repr(float(primary_value)),
            names.CANDIDATE_KEY: key,
            names.WEIGHTS_KEY: wkey,
            names.GATES_PASSED: str(passed).lower(),
            names.FAILING_GATES: ",".join(g.name for g in failing(results)) or "none",
            names.MODEL_ID: str(getattr(info, "model_id", "") or ""),
        }

        t = time.perf_counter()
        lock = RegistryLock(client, lock_name(model_name), purpose=f"promote {evaluation_run_id}",
                            timeout=lock_timeout, stale_after=lock_stale_after)
        with lock:
            seconds["lock_wait"] = lock.waited
            ensure_registered_model(client, model_name)
            existing = find_versions_by_tag(client, model_name, names.CANDIDATE_KEY, key)
            if existing:
                mv = existing[0]
                if mv.tags.get(names.PROMOTION_COMPLETE) == "true":
                    decision = _existing_decision(client, model_name, mv, base, "concurrent duplicate")
                    decision.promote_run_id = run.run_id
                    run.set_tags({names.DECISION: "duplicate", names.DUPLICATE_OF: str(mv.version)})
                    _record_on_run(run, decision)
                    return decision
                version = str(mv.version)  # registered by a promotion that died before finishing
                notes.append(f"version {version} was registered by an interrupted promotion; completed now")
                registered_new = False
            else:
                mv = client.create_model_version(
                    model_name, source=info.model_uri, run_id=run.run_id, tags=version_tags,
                    description="(promotion in progress)", model_id=getattr(info, "model_id", None),
                )
                version = str(mv.version)
                registered_new = True
            move, previous, champ_reason = champion_step(client, model_name, passed, primary_value, gates,
                                                         [g.name for g in failing(results)], evaluation_run_id,
                                                         cfg.eval.bootstrap_samples, cfg.eval.seed)
            client.set_registered_model_alias(model_name, CANDIDATE, version)
            if move:
                lock.assert_held()
                client.set_registered_model_alias(model_name, CHAMPION, version)
                record_champion_event(client, model_name, {
                    "at": now_iso(), "to": version, "from": previous, "via": "promote", "by": actor(),
                    "reason": champ_reason, "evaluation_run_id": evaluation_run_id})
                if previous:
                    client.set_model_version_tag(model_name, previous, names.SUPERSEDED_BY, version)
            decision = Decision(
                **base, version=version, registered_new=registered_new, champion_moved=move,
                decision=CHAMPION if move else CANDIDATE, reasons=[champ_reason, *notes],
                previous_champion=previous, champion_version=version if move else previous,
                promote_run_id=run.run_id,
            )
            final_tags = {
                names.DECISION: decision.decision,
                names.PREVIOUS_CHAMPION: previous or "none",
                names.DECISION_REASONS: "\n".join(decision.reasons)[:4900],
                names.PROMOTED_AT: now_iso(),
                names.PROMOTED_BY: actor(),
            }
            for k, v in final_tags.items():
                client.set_model_version_tag(model_name, version, k, v)
            client.update_model_version(model_name, version, description=decision.text()[:DESCRIPTION_LIMIT])
            client.set_model_version_tag(model_name, version, names.PROMOTION_COMPLETE, "true")
        seconds["register"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        decision.seconds = seconds
        _record_on_run(run, decision)
        return decision


def _record_on_run(run: Any, decision: Decision) -> None:
    from harmonica.registry.gates import _finite

    tags = {
        names.DECISION: decision.decision,
        names.MODEL_VERSION: decision.version or "none",
        names.CHAMPION_MOVED: str(decision.champion_moved).lower(),
        names.GATES_PASSED: str(decision.passed).lower(),
        names.FAILING_GATES: ",".join(decision.failing_gates) or "none",
        names.CANDIDATE_KEY: decision.candidate_key,
        "mlflow.note.content": decision.text()[:5000],
        **gate_tags(decision.gates),
    }
    run.set_tags(tags)
    metrics = {f"gate/{g.name}/value": g.value for g in decision.gates if _finite(g.value) is not None}
    metrics.update({f"gate/{g.name}/passed": float(g.passed) for g in decision.gates})
    run.log_metrics(metrics, step=0)
    run.log_dict(decision.as_dict(), "decision.json")
