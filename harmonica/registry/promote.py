"""`harmonica promote`: gated, idempotent, race-safe registration of an evaluated AR + NAR EMA pair,
as evidence -> decision -> registration.

  1. evidence (harmonica.registry.evidence): the evaluate run, the AR and NAR training runs, the
     evaluated checkpoints (local, else downloaded), collapse events and histories, utilisation;
  2. decision (harmonica.registry.decision, pure): the refusals (harmonica.registry.refusals: the
     evaluate run, unfinished training runs, mixed pairs, the AR/NAR/codec contract, code provenance;
     --allow-unfinished, --allow-mixed-pair, --allow-dirty override them and are recorded on the
     version), then the gates (harmonica.registry.gates), which every registered version carries as
     tags. A refusal registers nothing: it is recorded on a `promote` run and raised as PromotionRefused;
  3. packaging (harmonica.registry.package): the EMA-only pyfunc model is staged, smoke-tested and
     logged into the promote run -- the slow part, before the lock;
  4. registration (harmonica.registry.registration): under the registry lock, register the version
     (alias `candidate`) and move `champion` by the champion rule (harmonica.registry.decision).

Idempotency: the candidate key is sha256 over both EMA weight files, both meta contracts and the
evaluate run id. The same checkpoints scored by *another* evaluate run are a *new* candidate (new
evidence: another eval slice, decode settings or ASR may give other gate values), so a version =
(weights, evidence); versions with the same weights share `harmonica.weights_key` and the decision
names the earlier version. Promoting the same evaluate run again registers nothing and reports the
existing version.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from harmonica.config.schema import GatesConfig, HarmonicaConfig
from harmonica.registry.decision import Decision, PromotionError, PromotionRefused, existing_decision, judge
from harmonica.registry.evidence import gather_evidence
from harmonica.registry.package import MODEL_NAME, package_candidate
from harmonica.registry.refusals import Flags
from harmonica.registry.registration import Candidate, code_tags, record_on_run, register, run_tags, version_tags
from harmonica.tracking import names
from harmonica.tracking.adapter import Tracker, launched_run_id
from harmonica.tracking.registry import CHAMPION, ModelRegistry

__all__ = ["Decision", "PromotionError", "PromotionRefused", "promote"]


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
    parent_run_id: str | None = None,
) -> Decision:
    """Gate, register and maybe crown the candidate scored by `evaluation_run_id` on `tracking_uri`.

    cfg: the project config (None = `load_config(<the evaluate run's harmonica.project>)`);
    gates: overrides cfg.gates; parent_run_id: the run the promote run nests under (a pipeline's).
    Raises PromotionError / PromotionRefused; returns the Decision.
    """
    t0 = time.perf_counter()
    workdir = Path(workdir)
    registry = ModelRegistry(tracking_uri)
    ev = gather_evidence(registry.reader, evaluation_run_id, workdir)
    evaluation_run_id = ev.evaluation_run_id  # the full id of what a short one or a run name named
    if cfg is None:
        from harmonica.config.load import load_config

        cfg = load_config(ev.project)
    gates = gates or cfg.gates
    flags = Flags(allow_dirty, allow_unfinished, allow_mixed_pair)
    seconds = {"read": time.perf_counter() - t0}
    j = judge(ev, gates, flags)
    base: dict[str, Any] = {
        "model_name": model_name, "evaluation_run_id": evaluation_run_id, "gates": j.gates, "passed": j.passed,
        "candidate_key": j.candidate_key, "primary_metric": j.primary_metric, "primary_value": j.primary_value,
        "tracking_uri": tracking_uri, "seconds": seconds,
    }
    run_name = f"promote-{ev.project}-{evaluation_run_id[:8]}"
    open_run = partial(_tracker(cfg, workdir, tracking_uri).run, "promote", run_name,
                       tags=run_tags(ev, model_name, flags, extra_tags), parent_run_id=parent_run_id)

    if j.refusals:
        decision = Decision(**base, version=None, registered_new=False, champion_moved=False, decision="refused",
                            reasons=j.refusals + j.notes, champion_version=registry.alias(model_name, CHAMPION))
        with open_run(description=decision.text()[:5000]) as run:
            decision.promote_run_id = run.run_id
            record_on_run(run, decision)
        raise PromotionRefused(decision)

    # ---- idempotency fast path: no run, no packaging
    existing = registry.find_versions(model_name, names.CANDIDATE_KEY, j.candidate_key)
    complete = [v for v in existing if v.tags.get(names.PROMOTION_COMPLETE) == "true"]
    if complete:
        decision = existing_decision(base, complete[0], "idempotent", registry.alias(model_name, CHAMPION))
        seconds["total"] = time.perf_counter() - t0
        if launched_run_id():  # launched by `mlflow run`: its run records the answer
            with open_run() as run:
                decision.promote_run_id = run.run_id
                record_on_run(run, decision)
        return decision

    notes = list(j.notes)
    same_weights = registry.find_versions(model_name, names.WEIGHTS_KEY, j.weights_key)
    if same_weights:
        notes.append(f"the same weights are already version(s) {', '.join('v' + v.version for v in same_weights)} "
                     "(scored by another evaluate run): registered as a new candidate because the evidence differs")

    with open_run() as run, tempfile.TemporaryDirectory(prefix="harmonica-promote-") as tmp:
        t = time.perf_counter()
        code = code_tags(ev)
        logged = package_candidate(run, ev, cfg, workdir, Path(tmp), model_name=model_name,
                                   candidate_key=j.candidate_key, code=code, smoke=smoke_test, notes=notes,
                                   seconds=seconds)
        seconds["package"] = time.perf_counter() - t
        tags = version_tags(ev, j, gates, flags, promote_run_id=run.run_id, model_id=logged.model_id, code=code)
        t = time.perf_counter()
        decision = register(registry, run, Candidate(model_name, j, logged, tags, base, notes), gates,
                            samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed, lock_timeout=lock_timeout,
                            lock_stale_after=lock_stale_after, seconds=seconds)
        seconds["register"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        decision.seconds = seconds
        record_on_run(run, decision, model_id=logged.model_id, evaluation=ev.metrics)
        return decision


def _tracker(cfg: HarmonicaConfig, workdir: Path, tracking_uri: str) -> Tracker:
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.system_metrics = False  # a promotion takes seconds; no monitor thread
    cfg.tracking.async_logging = False
    return Tracker(cfg, workdir, tracking_uri=tracking_uri)
