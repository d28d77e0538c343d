"""Registration: what a promotion writes, and the critical section that writes the registry.

The tags a promotion records on its promote run and on the registered version are built here from the
evidence and the judgement (pure); `register` is the "find the version by key -> register -> compare
with the champion -> move aliases" section, run under the registry lock (harmonica.tracking.lock)
held by exactly one process at a time, so the same candidate is registered once and a champion move
always compares with the champion that is current at that moment (a worse candidate never overwrites
a better one that won the race). A process that finds the candidate already registered by a
concurrent twin marks its promote run as a duplicate; a version left by a promotion that died before
finishing is completed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harmonica.config.schema import GatesConfig
from harmonica.registry.decision import Decision, Judgement, champion_rule, existing_decision
from harmonica.registry.evidence import Evidence, read_champion
from harmonica.registry.gates import gate_tags
from harmonica.registry.refusals import Flags
from harmonica.tracking import names
from harmonica.tracking.adapter import Run
from harmonica.tracking.models import LoggedModel
from harmonica.tracking.read import NOTE, RunRecord
from harmonica.tracking.registry import CANDIDATE, CHAMPION, ModelRegistry, actor, now_iso

NOTE_LIMIT = 5000
TAG_LIMIT = 4900


def _of(run: RunRecord | None, key: str) -> str:
    return run.tags.get(key, "unknown") if run is not None else "unknown"


def pair_tags(ev: Evidence, flags: Flags) -> dict[str, str]:
    """Tags recording both halves of the pair and the overrides used."""
    return {
        names.AR_PROJECT: _of(ev.ar_run, names.PROJECT),
        names.NAR_PROJECT: _of(ev.nar_run, names.PROJECT),
        names.AR_RUN_STATUS: ev.ar_run.status if ev.ar_run is not None else "unknown",
        names.NAR_RUN_STATUS: ev.nar_run.status if ev.nar_run is not None else "unknown",
        names.ALLOW_UNFINISHED: str(flags.allow_unfinished).lower(),
        names.ALLOW_MIXED_PAIR: str(flags.allow_mixed_pair).lower(),
    }


def run_tags(ev: Evidence, model_name: str, flags: Flags, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The promote run's tags, set when it starts."""
    return {
        names.EVALUATION_RUN_ID: ev.evaluation_run_id,
        names.AR_RUN_ID: ev.tags.get(names.AR_RUN_ID, ""),
        names.NAR_RUN_ID: ev.tags.get(names.NAR_RUN_ID, ""),
        names.MODEL_NAME: model_name,
        names.ALLOW_DIRTY: str(flags.allow_dirty).lower(),
        **pair_tags(ev, flags),
        **(extra or {}),
    }


def code_tags(ev: Evidence) -> dict[str, str]:
    """Code provenance of the training and evaluate runs, and of the code packaged for serving."""
    from harmonica.tracking.provenance import code_version

    runs = {"ar": ev.ar_run, "nar": ev.nar_run, "evaluate": ev.eval_run}
    out: dict[str, str] = {}
    for tag in (names.GIT_COMMIT, names.SOURCE_HASH):
        values = {k: _of(r, tag) for k, r in runs.items()}
        trained = {values["ar"], values["nar"]}
        out[tag] = values["ar"] if len(trained) == 1 else f"ar={values['ar']},nar={values['nar']}"
    states = [_of(r, names.GIT_DIRTY) for r in runs.values()]
    out[names.GIT_DIRTY] = "true" if "true" in states else ("unknown" if "unknown" in states else "false")
    for k, r in runs.items():
        out[names.code_of(k)] = (f"{_of(r, names.GIT_COMMIT)[:12]} dirty={_of(r, names.GIT_DIRTY)} "
                                 f"source={_of(r, names.SOURCE_HASH)}")
    served = code_version()
    out[names.SERVING_SOURCE_HASH] = served.source_hash
    out[names.CODE_SERVING] = f"{served.git_commit[:12]} dirty={str(served.git_dirty).lower()} source={served.source_hash}"
    return out


def version_tags(ev: Evidence, j: Judgement, gates: GatesConfig, flags: Flags, *, promote_run_id: str,
                 model_id: str, code: Mapping[str, str]) -> dict[str, str]:
    """The tags a new version is created with: gates, provenance, identity, the primary metric."""
    return {
        **gate_tags(j.gates),
        names.AR_RUN_ID: ev.tags.get(names.AR_RUN_ID, ""),
        names.NAR_RUN_ID: ev.tags.get(names.NAR_RUN_ID, ""),
        names.EVALUATION_RUN_ID: ev.evaluation_run_id,
        names.PROMOTE_RUN_ID: promote_run_id,
        names.PROJECT: ev.project,
        names.AR_STEP: str(ev.ar_meta.get("step")),
        names.NAR_STEP: str(ev.nar_meta.get("step")),
        names.CONFIG_HASH: ev.tags.get(names.CONFIG_HASH, "unknown"),
        names.AR_CONFIG_HASH: _of(ev.ar_run, names.CONFIG_HASH),
        names.NAR_CONFIG_HASH: _of(ev.nar_run, names.CONFIG_HASH),
        **code,
        names.ALLOW_DIRTY: str(flags.allow_dirty).lower(),
        **pair_tags(ev, flags),
        names.PRIMARY_METRIC: gates.primary_metric,
        names.PRIMARY_MODE: gates.primary_mode,
        names.PRIMARY_VALUE: "n/a" if j.primary_value is None else repr(float(j.primary_value)),
        names.CANDIDATE_KEY: j.candidate_key,
        names.WEIGHTS_KEY: j.weights_key,
        names.GATES_PASSED: str(j.passed).lower(),
        names.FAILING_GATES: ",".join(j.failing) or "none",
        names.MODEL_ID: model_id,
    }


def record_on_run(run: Run, decision: Decision, model_id: str = "",
                  evaluation: Mapping[str, float] | None = None) -> None:
    """The decision on the promote run: tags, gate metrics and decision.json. With the packaged model's
    `model_id`, the gate metrics and the `evaluation` metrics (eval/*) are linked to that model, so its
    registry version shows them."""
    run.set_tags({
        names.DECISION: decision.decision,
        names.MODEL_VERSION: decision.version or "none",
        names.CHAMPION_MOVED: str(decision.champion_moved).lower(),
        names.GATES_PASSED: str(decision.passed).lower(),
        names.FAILING_GATES: ",".join(decision.failing_gates) or "none",
        names.CANDIDATE_KEY: decision.candidate_key,
        NOTE: decision.text()[:NOTE_LIMIT],
        **gate_tags(decision.gates),
    })
    metrics = {f"gate/{g.name}/value": g.value for g in decision.gates
               if g.value is not None and math.isfinite(g.value)}
    metrics.update({f"gate/{g.name}/passed": float(g.passed) for g in decision.gates})
    if model_id:
        metrics.update({k: v for k, v in (evaluation or {}).items() if k.startswith("eval/")})
    run.log_metrics(metrics, step=0, model_ids={"": model_id})
    run.log_dict(decision.as_dict(), "decision.json")


@dataclass(frozen=True)
class Candidate:
    """A packaged, logged candidate ready to register."""

    model_name: str
    judgement: Judgement
    logged: LoggedModel
    tags: Mapping[str, str]  # version_tags
    base: Mapping[str, Any]  # the Decision fields every answer shares
    notes: list[str]


def register(registry: ModelRegistry, run: Run, c: Candidate, gates: GatesConfig, *, samples: int, seed: int,
             lock_timeout: float, lock_stale_after: float, seconds: dict[str, float]) -> Decision:
    """Register the candidate (or find it) and move the aliases, under the registry lock."""
    name, eid = c.model_name, c.base["evaluation_run_id"]
    notes = list(c.notes)
    lock = registry.lock(name, purpose=f"promote {eid}", timeout=lock_timeout, stale_after=lock_stale_after)
    with lock:
        seconds["lock_wait"] = lock.waited
        registry.ensure_model(name)
        existing = registry.find_versions(name, names.CANDIDATE_KEY, c.judgement.candidate_key)
        if existing and existing[0].tags.get(names.PROMOTION_COMPLETE) == "true":
            mv = existing[0]
            decision = existing_decision(c.base, mv, "concurrent duplicate", registry.alias(name, CHAMPION))
            decision.promote_run_id = run.run_id
            run.set_tags({names.DECISION: "duplicate", names.DUPLICATE_OF: mv.version})
            return decision
        if existing:
            version, registered_new = existing[0].version, False
            notes.append(f"version {version} was registered by an interrupted promotion; completed now")
        else:
            version = registry.create_version(name, source=c.logged.model_uri, run_id=run.run_id, tags=c.tags,
                                              description="(promotion in progress)",
                                              model_id=c.logged.model_id).version
            registered_new = True
        champion = read_champion(registry, name, gates, eid)
        move, previous, reason = champion_rule(c.judgement, gates, champion, samples=samples, seed=seed)
        registry.set_alias(name, CANDIDATE, version)
        if move:
            lock.assert_held()
            registry.set_alias(name, CHAMPION, version)
            registry.record_champion_event(name, {
                "at": now_iso(), "to": version, "from": previous, "via": "promote", "by": actor(),
                "reason": reason, "evaluation_run_id": eid})
            if previous:
                registry.set_version_tags(name, previous, {names.SUPERSEDED_BY: version})
        decision = Decision(
            **c.base, version=version, registered_new=registered_new, champion_moved=move,
            decision=CHAMPION if move else CANDIDATE, reasons=[reason, *notes], previous_champion=previous,
            champion_version=version if move else previous, promote_run_id=run.run_id,
        )
        registry.set_version_tags(name, version, {
            names.DECISION: decision.decision,
            names.PREVIOUS_CHAMPION: previous or "none",
            names.DECISION_REASONS: "\n".join(decision.reasons)[:TAG_LIMIT],
            names.PROMOTED_AT: now_iso(),
            names.PROMOTED_BY: actor(),
        })
        registry.describe_version(name, version, decision.text())
        registry.set_version_tags(name, version, {names.PROMOTION_COMPLETE: "true"})
    return decision
