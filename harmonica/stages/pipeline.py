"""`harmonica pipeline`: preprocess -> train_ar -> train_nar -> evaluate -> promote under one parent run.

A step is skipped when a FINISHED run of the same stage has the same step key: a hash of the
config sections the step depends on, its inputs (token cache fingerprint, upstream run ids) and the
code version. Re-running the pipeline after changing only `training.nar.*` re-trains only the NAR
(and what depends on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonica.config.load import flatten
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.cache import cache_settings, find_cache
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import Tracker
from harmonica.tracking.provenance import code_version
from harmonica.tracking.read import RunRecord
from harmonica.tracking import names

log = logging.getLogger(__name__)

STEPS = ("preprocess", "train_ar", "train_nar", "evaluate", "promote")
STEP_KEY_TAG = names.STEP_KEY

# config sections each step's result depends on (besides its upstream inputs)
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "train_ar": ("model.ar", "training.ar"),
    "train_nar": ("model.nar", "training.nar"),
    "evaluate": ("eval",),
    "promote": ("gates",),
}


@dataclass
class StepResult:
    name: str
    run_id: str
    skipped: bool
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineOutcome:
    parent_run_id: str
    steps: list[StepResult]
    tracking_uri: str
    experiment: str
    report: Path | None = None
    decisions: list[Any] = field(default_factory=list)  # the promote step's Decision (none when reused)


def step_key(stage: str, cfg: HarmonicaConfig, inputs: dict[str, Any]) -> str:
    flat = flatten(cfg.model_dump(mode="json"))
    sections = STEP_SECTIONS.get(stage, ())
    relevant = {k: v for k, v in flat.items() if any(k == s or k.startswith(s + ".") for s in sections)}
    if stage == "preprocess":
        relevant = cache_settings(cfg)
    blob = json.dumps({"stage": stage, "config": relevant, "inputs": inputs,
                       "code": code_version().source_hash}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def find_finished(tracker: Tracker, stage: str, key: str) -> RunRecord | None:
    runs = tracker.find_runs(
        f"tags.`{names.STAGE}` = '{stage}' and tags.`{STEP_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def run_pipeline(
    cfg: HarmonicaConfig,
    workdir: Path,
    *,
    force: bool = False,
    progress: bool = True,
    allow_dirty: bool = False,
    promote: bool = True,
) -> PipelineOutcome:
    """promote=False stops after evaluate; allow_dirty lets promote register models from a dirty tree."""
    from harmonica.reports import build_report
    from harmonica.stages.evaluate import run_evaluate
    from harmonica.stages.preprocess import run_preprocess
    from harmonica.stages.promote import promote_step
    from harmonica.stages.train import run_train

    workdir = Path(workdir)
    tracker = Tracker(cfg, workdir)  # resolves the tracking URI once; every step gets it
    uri = tracker.tracking_uri
    results: list[StepResult] = []
    description = (
        f"Pipeline for project '{cfg.project}': preprocess -> train_ar -> train_nar -> evaluate -> promote; "
        "steps whose identical run already finished are reused (tags pipeline.<step>.*)."
    )
    with tracker.run("pipeline", f"pipeline-{cfg.project}", description=description) as parent:
        announce_run(parent, "pipeline")
        parent.log_config(cfg)

        def step(name: str, inputs: dict[str, Any], run: Callable[[dict[str, str]], tuple[str, dict[str, Any]]],
                 reuse: Callable[[Any], dict[str, Any] | None]) -> StepResult:
            key = step_key(name, cfg, inputs)
            previous = None if force else find_finished(tracker, name, key)
            outputs = reuse(previous) if previous is not None else None
            if previous is not None and outputs is not None:
                log.info("pipeline: %s skipped, identical run %s already finished", name, previous.run_id)
                result = StepResult(name, previous.run_id, True, outputs)
            else:
                log.info("pipeline: running %s", name)
                run_id, outputs = run({STEP_KEY_TAG: key})
                result = StepResult(name, run_id, False, outputs)
            parent.set_tags({f"pipeline.{name}.run_id": result.run_id,
                             f"pipeline.{name}.skipped": str(result.skipped).lower()})
            results.append(result)
            return result

        # preprocess: the local cache must exist too (a finished run elsewhere is not enough)
        def reuse_cache(_: Any) -> dict[str, Any] | None:
            try:
                cache, _ = find_cache(cfg, workdir)
            except (FileNotFoundError, ValueError):
                return None
            return {"fingerprint": cache.fingerprint}

        def do_preprocess(tags: dict[str, str]) -> tuple[str, dict[str, Any]]:
            out = run_preprocess(cfg, workdir, progress=progress, parent_run_id=parent.run_id, extra_tags=tags,
                                 tracking_uri=uri)
            return out.run_id, {"fingerprint": out.result.cache.fingerprint}

        pre = step("preprocess", {}, do_preprocess, reuse_cache)
        trained: dict[str, StepResult] = {}
        for kind in ("ar", "nar"):
            def do_train(tags: dict[str, str], kind: str = kind) -> tuple[str, dict[str, Any]]:
                out = run_train(cfg, kind, workdir, parent_run_id=parent.run_id, extra_tags=tags, tracking_uri=uri,
                                progress=progress)
                return out.run_id, {"best": str(out.result.best_checkpoint or out.result.last_checkpoint)}

            def reuse_run(run: Any) -> dict[str, Any]:
                return {"best": run.run_id}  # a run id resolves to its logged best checkpoint

            trained[kind] = step(f"train_{kind}", {"cache": pre.outputs["fingerprint"]}, do_train, reuse_run)

        def do_evaluate(tags: dict[str, str]) -> tuple[str, dict[str, Any]]:
            out = run_evaluate(cfg, workdir, trained["ar"].outputs["best"], trained["nar"].outputs["best"],
                               progress=progress, parent_run_id=parent.run_id, extra_tags=tags, tracking_uri=uri)
            return out.run_id, {"metrics": out.result.metrics}

        evaluation = step("evaluate", {"ar": trained["ar"].run_id, "nar": trained["nar"].run_id},
                          do_evaluate, lambda run: {"metrics": dict(run.metrics)})
        decisions: list[Any] = []

        def do_promote(tags: dict[str, str]) -> tuple[str, dict[str, Any]]:
            d = promote_step(cfg, evaluation.run_id, workdir, tracking_uri=uri, parent_run_id=parent.run_id,
                             allow_dirty=allow_dirty, extra_tags=tags)
            decisions.append(d)
            return d.promote_run_id or "", {"decision": d.decision, "version": d.version}

        if promote:
            step("promote", {"evaluation": evaluation.run_id}, do_promote, lambda run: {"tags": dict(run.tags)})
        report = build_report(evaluation.run_id, tracking_uri=tracker.tracking_uri,
                              out_dir=workdir / "outputs" / "reports" / evaluation.run_id)
        parent.log_artifact(report.html, names.REPORT_DIR)
        parent.log_artifact(report.markdown, names.REPORT_DIR)
        return PipelineOutcome(parent.run_id, results, tracker.tracking_uri, tracker.experiment_name, report.html,
                               decisions)
