"""The promotion decision: pure functions of what was read (harmonica.registry.evidence), the gates
and the override flags; no store, no files, so every path is unit-testable.

`judge(evidence, gates, flags)` -> Judgement: the refusals (harmonica.registry.refusals), the gate
results (harmonica.registry.gates), the primary value and the candidate's identity.
`champion_rule(judgement, gates, champion, ...)` -> (move, current champion, reason), decided under the
registry lock against the champion current at that moment. `Decision` is what a promotion answers
and records.

Champion rule: alias `candidate` -> every newly registered version; alias `champion` moves to it only
when all gates pass AND (there is no champion OR it beats the champion on gates.primary_metric).
The comparison knows noise: with gates.champion_confidence = c > 0 (gates.primary_mode = min|max),
resample the utterances both evaluate runs scored eval.bootstrap_samples times (seed eval.seed),
compute candidate - champion on the primary metric for each resample; the champion moves only when the
one-sided bound at confidence c is an improvement (mode min: the c-quantile of the difference < 0;
mode max: the (1-c)-quantile > 0). Otherwise: "not significantly better", with the two-sided c
interval. Without per-utterance evidence (no table, no shared utterance, a metric with no
per-utterance form, no resamples) the champion stays -- a champion never moves for lack of evidence.
c = 0 compares point estimates (strictly better; a tie keeps the champion). A champion with no
comparable value stays (move it by hand with `harmonica registry rollback`).

Identity: the candidate key is sha256 over both EMA weight files, both meta contracts (the weights
key) and the evaluate run id: the same checkpoints scored by another evaluate run are a new candidate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harmonica.config.schema import GatesConfig
from harmonica.evaluation.bootstrap import paired_difference
from harmonica.registry.gates import GateResult, all_passed, beats, evaluate_gates, failing
from harmonica.registry.refusals import Flags, refusal_reasons
from harmonica.tracking import names

if TYPE_CHECKING:
    from harmonica.registry.evidence import ChampionEvidence, Evidence
    from harmonica.tracking.read import VersionRecord


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


@dataclass(frozen=True)
class Judgement:
    """Everything decided before the registry is touched."""

    refusals: list[str]
    notes: list[str]
    gates: list[GateResult]
    passed: bool
    primary_metric: str
    primary_value: float | None
    weights_key: str  # "" when refused
    candidate_key: str  # "" when refused

    @property
    def failing(self) -> list[str]:
        return [g.name for g in failing(self.gates)]


def key_for(weights: str, evaluation_run_id: str) -> str:
    """The candidate key: sha256(weights key | evaluate run id)."""
    digest = hashlib.sha256(weights.encode())
    digest.update(b"|" + evaluation_run_id.encode())
    return digest.hexdigest()


def judge(ev: Evidence, gates: GatesConfig, flags: Flags = Flags()) -> Judgement:
    """Refusals, gate results and identity of the candidate the evidence describes."""
    refusals, notes = refusal_reasons(ev, flags)
    results = evaluate_gates(ev.metrics, gates, ev.collapse_events, ev.end_steps, ev.utilisation)
    wkey = "" if refusals else ev.weights_key
    return Judgement(refusals=refusals, notes=ev.notes + notes, gates=results, passed=all_passed(results),
                     primary_metric=gates.primary_metric, primary_value=ev.metrics.get(gates.primary_metric),
                     weights_key=wkey, candidate_key=key_for(wkey, ev.evaluation_run_id) if wkey else "")


def champion_rule(judgement: Judgement, gates: GatesConfig, champion: ChampionEvidence, *, samples: int,
                  seed: int) -> tuple[bool, str | None, str]:
    """-> (move the champion to the candidate, the current champion version, reason)."""
    current, metric, value = champion.version, gates.primary_metric, judgement.primary_value
    if not judgement.passed:
        return False, current, (f"champion unchanged ({'v' + current if current else 'none yet'}): gate(s) failed: "
                                f"{', '.join(judgement.failing)}")
    if value is None:
        return False, current, f"champion unchanged: the evaluate run has no {metric} (the primary metric)"
    if current is None:
        return True, None, f"no champion yet: all gates pass, {metric} = {value:.4g} -> champion"
    if champion.value is None:
        return False, current, (f"champion v{current} has no comparable {metric}: it stays; move it by hand with "
                                "`harmonica registry rollback` if this candidate should serve")
    move, reason = champion_verdict(value, champion.value, current, gates, champion.candidate_rows, champion.rows,
                                    samples=samples, seed=seed)
    return move, current, reason


def existing_decision(base: Mapping[str, Any], version: VersionRecord, why: str, current: str | None) -> Decision:
    """The answer when the candidate is already registered (`why`: idempotent | concurrent duplicate)."""
    tags = version.tags
    reasons = [
        (f"{why}: evaluation {base['evaluation_run_id']} is already version {version.version} (decision: "
         f"{tags.get(names.DECISION, 'unknown')}, promote run {tags.get(names.PROMOTE_RUN_ID, 'unknown')}); "
         "nothing registered, no alias moved"),
        f"current champion: v{current}" if current else "there is no champion yet",
    ]
    if not current and tags.get(names.DECISION) != "champion":
        reasons.append(f"to serve v{version.version} anyway: harmonica registry rollback --to {version.version} --force "
                       "--reason '...' (recorded on the version)")
    return Decision(**base, version=version.version, registered_new=False, champion_moved=False,
                    decision="existing" if why == "idempotent" else "duplicate", reasons=reasons,
                    champion_version=current, registered_decision=tags.get(names.DECISION, ""))


def primary_suffix(metric: str) -> str | None:
    """eval/wer -> wer, eval/fail/any -> fail/any; None for a metric with no per-utterance form."""
    if not metric.startswith("eval/"):
        return None
    suffix = metric[len("eval/"):]
    return suffix if suffix in ("wer", "cer", "sim") or suffix.startswith("fail/") else None


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
