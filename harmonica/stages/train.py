"""`harmonica train --model-type ar|nar`: one MLflow run per training, resumable, DDP-aware."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmonica.codec import load_codec
from harmonica.config.load import config_hash, to_yaml
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.cache import TokenCache, find_cache
from harmonica.training.metric_buffer import ResumeDedupMetrics
from harmonica.training.resume import ResumeTarget, check_config, select_checkpoint
from harmonica.training.distributed import DistInfo, init_distributed, shutdown_distributed
from harmonica.training.progress import make_progress, training_postfix
from harmonica.training.trainer import Trainer, TrainResult
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import NullRun, Tracker
from harmonica.tracking.provenance import code_version
from harmonica.tracking import names

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    result: TrainResult
    run_id: str
    tracking_uri: str
    experiment: str
    checkpoint_dir: Path


def checkpoints_root(workdir: Path, project: str, kind: str) -> Path:
    return Path(workdir) / "checkpoints" / project / kind


def describe(cfg: HarmonicaConfig, kind: str, cache: TokenCache) -> str:
    m, t = getattr(cfg.model, kind), getattr(cfg.training, kind)
    parts = [
        f"{kind.upper()} training on project '{cfg.project}':",
        f"d_model {m.d_model} x {m.n_layers} layers ({m.n_heads} heads),",
        f"{t.total_steps} optimizer steps of {t.batch_size}x{t.grad_accum_steps},",
        f"lr {t.lr:g} ({t.scheduler_type}, warmup {t.warmup_steps}, min {t.min_lr:g}),",
        f"codebook entropy reg {t.codebook_entropy_weight:g} -> 0 by step {t.codebook_entropy_warmup_steps},",
        f"usage entropy {t.usage_entropy_weight:g}, label smoothing {t.label_smoothing:g};",
        f"token cache {cache.fingerprint[:12]} ({cache.contract['codec_name']} {cache.contract['n_q']}x{cache.contract['codebook_size']}).",
    ]
    if kind == "nar":
        parts.insert(2, f"speaker condition '{m.speaker_condition}',")
    return " ".join(parts)


def _share_run_id(run_id: str | None, info: DistInfo) -> str | None:
    if not info.enabled:
        return run_id
    import torch.distributed as dist

    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_train(
    cfg: HarmonicaConfig,
    kind: str,
    workdir: Path,
    *,
    resume: bool = False,
    resume_from: str | None = None,
    accept_config_change: bool = False,
    allow_cache_mismatch: bool = False,
    parent_run_id: str | None = None,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    progress: bool = False,
) -> TrainOutcome:
    """One training run. on_validation(step, metrics) is called after every validation (rank 0
    metrics on every rank); an exception it raises ends the run with its `run_status` if it has one.
    progress: progress over optimizer steps on stderr (rank 0): a bar on a terminal, a line a minute elsewhere.

    A resume (resume / resume_from) picks and loads its checkpoint and compares configs before the
    MLflow run is touched: a refused or failed resume leaves the run exactly as it was."""
    tcfg = getattr(cfg.training, kind)
    info, device = init_distributed(tcfg.device)
    try:
        cache, mismatch = find_cache(cfg, workdir, allow_mismatch=allow_cache_mismatch)
        target, changes = None, []
        if resume or resume_from:
            target = select_checkpoint(checkpoints_root(workdir, cfg.project, kind), kind, cfg.project, resume_from)
            changes = check_config(target, cfg, kind, accept_config_change)
        digest = config_hash(cfg)
        tags = {
            names.MODEL_KIND: kind,
            names.BEST_METRIC: getattr(cfg.training, kind).best_metric,
            names.BEST_MODE: getattr(cfg.training, kind).best_mode,
            names.CACHE_FINGERPRINT: cache.fingerprint,
            names.CACHE_MISMATCH: str(bool(mismatch)).lower(),
            names.WORLD_SIZE: str(info.world_size),
            names.DEVICE: str(device),
            "codec.name": cache.contract["codec_name"],
            "codec.pretrained": str(cache.meta["codec"].get("codec.pretrained", False)).lower(),
        }
        if mismatch:
            tags[names.CACHE_MISMATCH_FIELDS] = "; ".join(mismatch)[:5000]
            log.warning("training on a stale token cache (--allow-cache-mismatch):\n  %s", "\n  ".join(mismatch))
        tracker = Tracker(cfg, workdir, tracking_uri) if info.is_main else None
        codec = load_codec(cfg.codec, cache.codec_dir) if info.is_main else None

        def make_trainer(run_id: str, sink: Any) -> Trainer:
            meta = {"config_hash": digest, "run_id": run_id, "project": cfg.project,
                    "code_version": code_version().label, "git_dirty": code_version().git_dirty}
            out = checkpoints_root(workdir, cfg.project, kind) / run_id / "ckpt"
            bar = make_progress(progress and info.is_main, f"train {kind}", postfix=training_postfix(kind))
            return Trainer(cfg, kind, cache, out, sink, device=device, dist_info=info, codec=codec, meta=meta,
                           on_validation=on_validation, progress=bar)

        trainer = None
        if target is not None:
            trainer = make_trainer(target.run_id, NullRun())
            trainer.load(target.path)  # a damaged or unfitting checkpoint fails here, the run untouched
        with contextlib.ExitStack() as stack:
            run: Any = NullRun()
            if tracker is not None:
                run = stack.enter_context(tracker.run(
                    f"train_{kind}", run_name or (None if target else f"train_{kind}-{cfg.project}-{digest[:8]}"),
                    description=describe(cfg, kind, cache), tags={**tags, **(extra_tags or {})},
                    run_id=target.run_id if target else None, parent_run_id=parent_run_id,
                    spool_dir=lambda rid: checkpoints_root(workdir, cfg.project, kind) / rid / "spool",
                ))
            announce_run(run, f"train_{kind}")
            run_id = _share_run_id(run.run_id or None, info)
            out_dir = checkpoints_root(workdir, cfg.project, kind) / run_id
            if tracker is not None:
                if target is None:
                    run.log_config(cfg)
                else:
                    _record_resume(run, cfg, target, changes)
                run.log_dataset(name=f"{cfg.project}-tokens", digest=cache.fingerprint, source=cache.directory,
                                context="training", profile={"splits": cache.meta["splits"]})
                run.set_tags({names.CHECKPOINT_DIR: str(out_dir.resolve())})
            resuming = target is not None and tracker is not None
            metrics = ResumeDedupMetrics(run, run.get_metric_history if resuming else None,
                                         run.image_steps if resuming else None)
            if trainer is None:
                trainer = make_trainer(run_id, metrics)
            trainer.sink = metrics
            result = trainer.fit()
            if tracker is not None:
                _log_result(run, result)
        return TrainOutcome(
            result, run_id, tracker.tracking_uri if tracker else "", tracker.experiment_name if tracker else "", out_dir
        )
    finally:
        shutdown_distributed()


def _record_resume(run: Any, cfg: HarmonicaConfig, target: ResumeTarget, changes: list[str]) -> None:
    """Tags for this resume; an accepted config change goes to config.resume-<n>.yaml, never over
    the original config.yaml / params / config hash."""
    tags = {names.RESUMED_FROM: str(target.path)}
    reached = run.tags().get(names.STEPS, "")
    if reached.isdigit() and int(reached) > target.meta["step"]:
        log.warning("resuming run %s at step %d although it had reached step %s: the metric histories keep the "
                    "first values of steps %d..%s (the newer checkpoints were skipped or not chosen)", run.run_id,
                    target.meta["step"], reached, target.meta["step"] + 1, reached)
        tags[names.RESUME_REWOUND] = f"{reached}->{target.meta['step']}"
    if target.skipped:
        tags[names.RESUME_SKIPPED] = "; ".join(f"{p.name}: {why}" for p, why in target.skipped)[:5000]
    if changes:
        n = 1 + sum(1 for k in run.tags() if k.startswith(names.RESUME_PREFIX) and k.endswith(".changes"))
        run.log_text(to_yaml(cfg), f"config.resume-{n}.yaml")
        tags[names.resume_changes(n)] = "; ".join(changes)[:5000]
        tags[names.resume_step(n)] = str(target.meta["step"])
        log.warning("resuming with a changed config (recorded as config.resume-%d.yaml):\n  %s", n, "\n  ".join(changes))
    run.set_tags(tags)


def _log_result(run: Any, result: TrainResult) -> None:
    state = result.state
    summary = {
        "steps": state.step,
        "stop_reason": state.stop_reason,
        "best_step": state.best_step,
        "best_value": state.best_value,
        "collapse_events": len(state.collapse_events),
        "instability_events": len(state.instability_events),
        "tokens_seen": state.tokens_seen,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "final_metrics": result.final_metrics,
    }
    run.log_dict(summary, "training_summary.json")
    run.log_text("".join(json.dumps(e) + "\n" for e in state.collapse_events), names.COLLAPSE_EVENTS)
    if state.instability_events:
        run.log_text("".join(json.dumps(e) + "\n" for e in state.instability_events), names.INSTABILITY_EVENTS)
    run.set_tags({
        names.STEPS: str(state.step),
        names.STOP_REASON: state.stop_reason or "completed",
        names.COLLAPSE: "true" if state.collapse_events else "false",
    })
