"""The training loop: steps, diagnostics cadence, validation on raw and EMA, checkpoints, resume.

Audiocraft-style: the trainer owns the loop, checkpoints, best state and EMA; a task step only
returns tensors. Metrics accumulate on the device and reach the host once per `log_every` steps;
the only per-step host sync is the instability guard's one verdict.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harmonica import interrupts
from harmonica.codec import load_codec
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.cache import TokenCache
from harmonica.models import build_model
from harmonica.training import checkpoint as ckpt
from harmonica.training.resume import result_config
from harmonica.training.count_table import fit_table
from harmonica.training.ckpt_check import CheckpointInvalid, check_fits
from harmonica.training.data import (
    BatchStream,
    Example,
    LengthBucketSampler,
    PromptPicker,
    collate_ar,
    collate_nar,
    load_examples,
    speaker_table,
)
from harmonica.training.diagnostics import (
    CodebookUsage,
    attention_entropy_summary,
    grad_norms,
    snapshot_params,
    update_ratios,
)
from harmonica.training.distributed import DistInfo, all_mean, autocast, barrier, broadcast_flag, maybe_no_sync
from harmonica.training.ema import EMA
from harmonica.training.guided import guided_heads
from harmonica.training.figures import util_entry, util_heatmap_image, util_matrix
from harmonica.training.monitor import CollapseMonitor, EarlyStopper, InstabilityGuard, weights_finite
from harmonica.training.optim import build_optimizer, build_scheduler
from harmonica.training.samples import SampleRenderer
from harmonica.training.state import MetricSink, TrainResult, TrainState
from harmonica.training.steps import StepOutput, build_task
from harmonica.training.threads import apply_threads
from harmonica.training.progress import NoProgress, Progress
from harmonica.training.validation import ValidationExtras
from harmonica.training.window import MetricWindow
from harmonica.tracking import names

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        cfg: HarmonicaConfig,
        kind: str,
        cache: TokenCache,
        ckpt_root: Path,
        sink: MetricSink,
        *,
        device: torch.device,
        dist_info: DistInfo = DistInfo(),
        codec: Any = None,
        meta: dict[str, Any] | None = None,
        on_validation: Callable[[int, dict[str, float]], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg, self.kind, self.cache = cfg, kind, cache
        self.tcfg = getattr(cfg.training, kind)
        self.mcfg = getattr(cfg.model, kind)
        self.ckpt_root = Path(ckpt_root)
        self.sink, self.device, self.dist = sink, device, dist_info
        self.meta = meta or {}
        self.on_validation = on_validation  # e.g. a sweep's pruning report; may raise to end the run
        self.progress = progress or NoProgress()  # a terminal bar over optimizer steps (rank 0)
        contract = cache.contract
        self.sink.set_tags({names.THREADS: str(apply_threads(self.tcfg.threads))})  # the count in effect
        torch.manual_seed(self.tcfg.seed)
        self.core: nn.Module = build_model(kind, self.mcfg, contract).to(device)
        self.train_examples = load_examples(cache.load_split("train"), contract["max_audio_frames"])
        # the NAR's floor, fitted once: its prior (if on) and the validation margin over it
        table = fit_table([e.codes for e in self.train_examples], contract["codebook_size"]) if kind == "nar" else None
        if table is not None and self.mcfg.count_prior:  # before the EMA copies the buffers
            self.core.set_count_prior(table)
        stage0 = functools.cache(lambda: load_codec(cfg.codec, cache.codec_dir).stage_embeddings(0).to(device))
        if kind == "ar" and self.mcfg.acoustic_dim:  # likewise: the head's codec table is a buffer
            self.core.acoustic.set_table(stage0())
        self.model: nn.Module = self.core
        if dist_info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            # NAR stages leave the other stages' heads unused in a step
            self.model = nn.parallel.DistributedDataParallel(self.core, device_ids=ids, find_unused_parameters=kind == "nar")
        self.groups = self.core.param_groups()
        self.optimizer = build_optimizer(self.groups, self.tcfg)
        self.scheduler = build_scheduler(self.optimizer, self.tcfg)
        self.ema = EMA(self.core, self.tcfg.ema_decay)
        self.task = build_task(kind, self.tcfg, contract["codebook_size"], contract["n_q"], stage0)
        self.usage = CodebookUsage(contract["n_q"], contract["codebook_size"], device)
        m = self.mcfg  # the AR's guided heads are sharp by design: the collapse floor leaves them out
        self.sharp_heads = guided_heads(self.tcfg, m.text_layers, m.n_layers, m.n_heads) if kind == "ar" else None
        self.collapse = CollapseMonitor(self.tcfg.collapse, warmup_steps=self.tcfg.warmup_steps)
        self.early = EarlyStopper(self.tcfg.collapse.early_stop_window)
        self.guard = InstabilityGuard(self.tcfg.collapse)
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and self.tcfg.precision == "fp16" else None
        self.state = TrainState()
        self._saved_step, self._last_saved = -1, None  # the newest save() of this process: step, directory
        self._resumed_from: Path | None = None  # the checkpoint load() restored
        self.generator = torch.Generator().manual_seed(self.tcfg.seed + 1 + dist_info.rank)

        max_frames = contract["max_audio_frames"]
        self.val_examples = load_examples(cache.load_split("val"), max_frames) if "val" in cache.splits() else []
        self.speakers = speaker_table(self.train_examples)  # index 0 = unknown speaker
        if kind == "nar" and self.mcfg.speaker_condition == "embedding" and len(self.speakers) + 1 > self.mcfg.max_speakers:
            raise ValueError(
                f"{len(self.speakers)} training speakers need model.nar.max_speakers >= {len(self.speakers) + 1}"
            )
        self.picker = (
            PromptPicker(self.train_examples, self.mcfg.prompt_frames, self.tcfg.seed)
            if self.mcfg.speaker_condition == "prompt" else None
        )
        sampler = LengthBucketSampler(
            [e.length for e in self.train_examples], [e.speaker for e in self.train_examples],
            self.tcfg.batch_size, self.tcfg.seed, rank=dist_info.rank, world_size=dist_info.world_size,
        )
        self.stream = BatchStream(self.train_examples, sampler, self._collate, seed=self.tcfg.seed + 7 + dist_info.rank)
        self.extras = ValidationExtras(cfg, kind, cache, table, self.val_examples, self.speakers,
                                       codec if dist_info.is_main else None, dist_info.world_size)
        self.renderer = None
        if codec is not None and dist_info.is_main:
            self.renderer = SampleRenderer(
                kind, codec, self.val_examples or self.train_examples, self.speakers, cfg.eval.decode,
                contract["frame_rate"], max_frames, getattr(self.mcfg, "prompt_frames", 1), seed=self.tcfg.seed,
            )

    # ------------------------------------------------------------------------------ batches

    def _collate(self, examples: list[Example], generator: torch.Generator) -> dict[str, Any]:
        if self.kind == "ar":
            return collate_ar(examples, prompt_picker=self.picker, generator=generator)
        return collate_nar(examples, prompt_picker=self.picker, speaker_index=self.speakers, generator=generator)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------------------ loop

    def fit(self, resume_from: Path | None = None) -> TrainResult:
        if resume_from is not None:
            self.load(resume_from)
        self.progress.start(self.tcfg.total_steps, initial=self.state.step)  # a resumed run starts at its step
        try:
            with interrupts.at_step_boundaries():  # Ctrl-C / SIGTERM land between steps, not in a write
                return self._loop()
        finally:
            self.progress.close()

    def _loop(self) -> TrainResult:
        t = self.tcfg
        window = MetricWindow(self.device)
        last_ckpt: Path | None = ckpt.latest_checkpoint(self.ckpt_root)
        final: dict[str, float] = {}
        if self.renderer is not None and self.state.step == 0 and self.val_examples:
            ref = self.ckpt_root.parent / "samples" / "reference"
            images = self.renderer.render_reference(ref)
            self.sink.log_artifacts(ref, "samples/reference")
            for uid, image in images.items():
                self.sink.log_image(names.reference_spectrogram(uid), image, 0)
        if self._resumed_from is not None:
            self._finish_resumed_step(self._resumed_from)
        self.model.train()
        while self.state.step < t.total_steps and not self.state.stop_reason:
            step = self.state.step  # the schedules' step: updates already taken
            next_step = step + 1
            log_now = next_step % t.log_every == 0 or next_step == t.total_steps
            self.optimizer.zero_grad(set_to_none=True)
            outs: list[StepOutput] = []
            for micro in range(t.grad_accum_steps):
                batch = self._to_device(next(self.stream))
                last_micro = micro == t.grad_accum_steps - 1
                with maybe_no_sync(self.model, not last_micro), autocast(self.device, t.precision):
                    out = self.task.train_step(self.model, batch, step, self.generator, log_now and last_micro)
                loss = out.loss / t.grad_accum_steps
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                outs.append(out)
            step_loss = torch.stack([o.loss.detach() for o in outs]).mean()
            if self._optimizer_step(step_loss, log_now, window):
                for out in outs:  # a skipped step's numbers would only poison the window
                    for u in out.usage:
                        self.usage.update(u.codebook, u.pred, u.target, u.mask, u.ce_sum)
                    window.add(out)
            self.state.step = next_step
            if log_now:
                final.update(self._log_train(window))
                window.reset()
            paused = time.perf_counter()
            if next_step % t.val_every == 0 or next_step == t.total_steps:
                final.update(self._validate())
            if self.renderer is not None and (next_step % t.sample_every == 0 or next_step == t.total_steps):
                self._samples()
            if (self._ckpt_due(next_step) or self.state.stop_reason) and self._saved_step != next_step:
                self._checkpoint_models(self.save())
            last_ckpt = self._last_saved or last_ckpt
            window.excluded += time.perf_counter() - paused  # throughput counts training time only
            self.progress.update(next_step, final)
            interrupts.check()
            if broadcast_flag(self.state.stop_reason is not None, self.dist, self.device):
                self.state.stop_reason = self.state.stop_reason or "stopped by rank 0"
                break
        if self.state.stop_reason and last_ckpt is not None and ckpt.read_meta(last_ckpt)["step"] != self.state.step:
            self._checkpoint_models(self.save())
            last_ckpt = self._last_saved or last_ckpt
        best = ckpt.step_dir(self.ckpt_root, self.state.best_step) if self.state.best_step is not None else None
        return TrainResult(self.state, last_ckpt, best if best and best.is_dir() else None, final)

    def _optimizer_step(self, step_loss: torch.Tensor, log_now: bool, window: MetricWindow) -> bool:
        """Clip, guard, step, EMA; False when the instability guard skipped the update."""
        t = self.tcfg
        params = [p for ps in self.groups.values() for p in ps]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        pre_clip = grad_norms(self.groups) if log_now else None  # per group, before clipping
        total = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        verdict = self.guard.check(all_mean(step_loss, self.dist), total)  # the one per-step sync
        if verdict.skip:
            self.optimizer.zero_grad(set_to_none=True)
            event = {"step": self.state.step + 1, "reason": verdict.reason, "lr_reduced": verdict.reduce_lr}
            self.state.instability_events.append(event)
            log.warning("step %d skipped: %s", event["step"], verdict.reason)
            if verdict.reduce_lr:
                self.scheduler.scale(self.tcfg.collapse.lr_reduce_factor)
                log.warning("repeated instability: LR scaled by %s", self.tcfg.collapse.lr_reduce_factor)
            self.sink.log_metrics({"instability/events": len(self.state.instability_events),
                                   "instability/lr_scale": self.scheduler.lr_scale_factor}, step=self.state.step + 1)
            self.sink.set_tags({names.INSTABILITY: "true"})
            if self.scaler:
                self.scaler.update()
        else:
            before = snapshot_params(self.groups) if log_now else None
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.ema.update(self.core)
            if log_now:
                window.instant.update({f"update_ratio/{k}": v for k, v in update_ratios(self.groups, before).items()})
        self.scheduler.step()
        if log_now and pre_clip is not None and not verdict.skip:
            window.instant.update({f"grad_norm/{k}": v for k, v in pre_clip.items()})
        return not verdict.skip

    # ------------------------------------------------------------------------------ logging

    def _log_train(self, window: MetricWindow) -> dict[str, float]:
        k = self.kind
        metrics: dict[str, torch.Tensor] = {}
        for name, v in window.sums.items():
            key = name if "/" in name else f"{k}/{name}"
            metrics[key] = v / max(window.n, 1)
        metrics.update(window.instant)
        metrics.update(self.usage.summary(k))
        if window.attn is not None:
            metrics.update(attention_entropy_summary(window.attn, k, self.sharp_heads))
        values = {name: float(v) for name, v in metrics.items()}  # the one host sync of the window
        elapsed = max(time.perf_counter() - window.started - window.excluded, 1e-9)
        tokens = float(window.tokens) * self.dist.world_size
        self.state.tokens_seen += int(tokens)
        values["throughput/tokens_per_sec"] = tokens / elapsed
        values["throughput/steps_per_sec"] = window.n / max(self.tcfg.grad_accum_steps, 1) / elapsed
        values.update({f"lr/{g}": lr for g, lr in self.scheduler.current_lrs().items()})
        values["collapse/events"] = float(len(self.state.collapse_events))
        self.usage.reset()
        step = self.state.step
        for event in self.collapse.check(step, values):
            self._record_collapse(event)
        values["collapse/events"] = float(len(self.state.collapse_events))
        self.sink.log_metrics(values, step=step)
        if self.collapse.should_stop and self.tcfg.collapse.stop_on_collapse:
            self.state.stop_reason = f"collapse at step {step}: {sorted(self.collapse.collapsed)}"
        return values

    def _record_collapse(self, event: Any) -> None:
        log.warning("COLLAPSE %s", event.message)
        record = {"step": event.step, "kind": event.kind, "name": event.name, "value": event.value,
                  "floor": event.floor, "message": event.message}
        self.state.collapse_events.append(record)
        tags = {names.COLLAPSE: "true", names.COLLAPSE_LAST_STEP: str(event.step)}
        if len(self.state.collapse_events) == 1:
            tags[names.COLLAPSE_FIRST_STEP] = str(event.step)
        self.sink.set_tags(tags)
        self.sink.log_text(
            "\n".join(json.dumps(e) for e in self.state.collapse_events) + "\n", names.COLLAPSE_EVENTS
        )

    # ------------------------------------------------------------------------------ validation

    def _val_batches(self) -> list[dict[str, Any]]:
        ordered = sorted(self.val_examples, key=lambda e: (e.codes.size(1), e.id))
        gen = torch.Generator().manual_seed(self.tcfg.seed + 999)  # same prompts at every validation
        size = self.tcfg.batch_size
        return [self._to_device(self._collate(ordered[i : i + size], gen)) for i in range(0, len(ordered), size)]

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, prefix: str, batches: list[dict[str, Any]]) -> dict[str, float]:
        model.eval()
        usage = CodebookUsage(self.cache.contract["n_q"], self.cache.contract["codebook_size"], self.device)
        losses, weights = [], []
        for batch in batches:
            out = self.task.val_step(model, batch)
            for u in out.usage:
                usage.update(u.codebook, u.pred, u.target, u.mask, u.ce_sum)
            losses.append(out.loss * batch["audio_lens"].sum())
            weights.append(batch["audio_lens"].sum())
        model.train()
        metrics = {f"{prefix}/loss": torch.stack(losses).sum() / torch.stack(weights).sum()}
        metrics.update(usage.summary(prefix))
        return {k: float(v) for k, v in metrics.items()}

    def _validate(self) -> dict[str, float]:
        if not self.val_examples:
            return {}
        batches = self._val_batches()
        metrics = self._evaluate(self.core, "val", batches)
        with self.ema.swap(self.core):
            metrics.update(self._evaluate(self.core, "val_ema", batches))
        step = self.state.step
        metrics.update(self.extras(self.core, self.ema, batches, metrics, step))
        self.state.util_history.append(util_entry(step, metrics))
        heatmap = util_matrix(self.state.util_history, self.tcfg.collapse.util_floor)
        if self.dist.is_main and heatmap.codebooks:
            image = util_heatmap_image(heatmap, f"{self.kind} validation utilisation per codebook")
            self.sink.log_image(names.util_heatmap(self.kind), image, step)
        # every state change of this validation happens before its checkpoint, which must hold them all
        self.scheduler.on_validation(metrics["val/loss"])
        value = metrics.get(self.tcfg.best_metric)
        better = value is not None and math.isfinite(value) and (self.state.best_value is None or (
            value < self.state.best_value if self.tcfg.best_mode == "min" else value > self.state.best_value))
        if better:
            self.state.best_value, self.state.best_step = value, step
        early_stop = None
        if self.early.update(step, metrics["val/loss"], metrics.get("val/util_pred_median")):
            early_stop = self.state.stop_reason = (
                f"early stop at step {step}: neither val loss nor utilisation improved for "
                f"{self.tcfg.collapse.early_stop_window} steps"
            )
            log.warning(early_stop)
        self.state.last_validation = {"step": step, "metrics": metrics, "better": better, "early_stop": early_stop}
        self._record_validation(self._checkpoint_models(self.save()) if better or self._ckpt_due(step) else {})
        if self.on_validation is not None:
            self.on_validation(step, metrics)
        return metrics

    def _record_validation(self, models: dict[str, str]) -> None:
        """The newest validation in the tracking store: its metrics (val/* scores the raw weights, val_ema/* the
        EMA weights, each linked to the checkpoint model of that step), the best-model and early-stop tags."""
        v = self.state.last_validation
        if v is None:
            return
        links = {"model_ids": {"val_ema/": models.get("ema", ""), "val/": models.get("raw", "")},
                 "dataset": (f"{self.cfg.project}-tokens", self.cache.fingerprint)} if models else {}
        self.sink.log_metrics(v["metrics"], step=v["step"], **links)
        if v["better"]:
            self.sink.set_tags({names.BEST_STEP: str(v["step"]), names.BEST_VALUE: f"{self.state.best_value:.6g}",
                                names.BEST_MODEL_ID: models.get("ema", "")})
        if v["early_stop"]:
            self.sink.set_tags({names.EARLY_STOP: v["early_stop"]})

    def _samples(self) -> None:
        directory = self.ckpt_root.parent / "samples" / f"step_{self.state.step:06d}"
        with self.ema.swap(self.core):  # samples come from the EMA weights
            images = self.renderer.render(self.core, self.state.step, directory, self.device)
        self.sink.log_artifacts(directory, f"samples/step_{self.state.step:06d}")
        for uid, image in images.items():
            self.sink.log_image(names.sample_spectrogram(uid), image, self.state.step)

    # ------------------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "contract": {**self.cache.contract, **self.core.contract(), "kind": self.kind},
            "cache_fingerprint": self.cache.fingerprint,
            "step": self.state.step,
            "best_metric": self.tcfg.best_metric,
            "best_value": self.state.best_value,
            "best_step": self.state.best_step,
            "collapse_events": len(self.state.collapse_events),
            # enough to rebuild the model, the codec and the text frontend from this directory alone
            "model_config": self.mcfg.model_dump(mode="json"),
            "codec_config": self.cfg.codec.model_dump(mode="json"),
            "text_config": self.cfg.text.model_dump(mode="json"),
            "speakers": self.speakers,  # name -> index, for speaker_condition=embedding
            "result_config": result_config(self.cfg, self.kind),  # what --resume compares against
            **self.meta,
        }

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "state": asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "stream": self.stream.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "ema_meta": {k: v for k, v in self.ema.state_dict().items() if k != "shadow"},
            "guard": self.guard.state_dict(),
            "early": self.early.state_dict(),
        }

    def _ckpt_due(self, step: int) -> bool:
        return step % self.tcfg.ckpt_every == 0 or step == self.tcfg.total_steps

    def _checkpoint_models(self, path: Path | None) -> dict[str, str]:
        """Publish a just-saved checkpoint as raw + EMA models of the run, then prune the run's models to the
        checkpoints kept on disk; {weights: model id} ({} on ranks > 0 or when the store is unreachable)."""
        if path is None or not self.dist.is_main:
            return {}
        meta = self._meta()
        params = {"kind": self.kind, "config_hash": meta.get("config_hash", ""), "step": self.state.step,
                  "contract": meta["contract"], "cache_fingerprint": self.cache.fingerprint}
        tags = {names.PROJECT: self.cfg.project, names.CONFIG_HASH: str(meta.get("config_hash", ""))}
        models = self.sink.publish_checkpoint(path, kind=self.kind, step=self.state.step, params=params, tags=tags)
        self.sink.prune_checkpoint_models({ckpt.step_of(p) for p in ckpt.list_checkpoints(self.ckpt_root)})
        return models or {}

    def save(self) -> Path | None:
        """Rank 0 writes; never a checkpoint with non-finite weights."""
        path = None
        self._saved_step = self.state.step
        if self.dist.is_main:
            if not (weights_finite(self.core)):
                log.error("step %d: non-finite weights, checkpoint NOT written", self.state.step)
                self.sink.set_tags({names.NONFINITE_WEIGHTS_STEP: str(self.state.step)})
            else:
                try:
                    path = ckpt.save_checkpoint(
                        self.ckpt_root, self.state.step, model=self.core.state_dict(),
                        ema=self.ema.state_dict()["shadow"], optimizer=self.optimizer.state_dict(),
                        trainer=self._trainer_state(), meta=self._meta(),
                        bundle={"codec": self.cache.codec_dir},
                    )
                except ckpt.NonFiniteWeightsError as exc:
                    log.error("checkpoint refused: %s", exc)
                else:
                    self._last_saved = path
                    best = self.state.best_step  # "best" is a kept step directory, never a copy
                    protect = {ckpt.step_dir(self.ckpt_root, best)} if best is not None else set()
                    ckpt.prune_checkpoints(self.ckpt_root, self.tcfg.keep_last, protect=protect)
        barrier(self.dist)
        return path

    def load(self, path: Path) -> None:
        """Restore everything from a checkpoint. A damaged file or a model that does not fit raises
        CheckpointInvalid before anything changes; optimizer/trainer state that cannot be restored (e.g.
        saved by the other training.optimizer) raises it too, after the weights were loaded: the trainer
        is not to be used after either."""
        c = ckpt.load_checkpoint(path)
        check_fits(c, self.kind, self.core.state_dict())
        tr = c.trainer
        try:
            self.core.load_state_dict(c.model)
            self.optimizer.load_state_dict(c.optimizer)
            self.scheduler.load_state_dict(tr["scheduler"])
            self.stream.load_state_dict(tr["stream"])
            self.generator.set_state(tr["generator"])
            torch.set_rng_state(tr["torch_rng"])
            self.ema.load_state_dict({**tr["ema_meta"], "shadow": c.ema})
            self.guard.load_state_dict(tr["guard"])
            self.early.load_state_dict(tr["early"])
            self.state = TrainState(**tr["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointInvalid(c.path, "optimizer/trainer state", f"cannot be restored: {exc}") from None
        self._resumed_from = c.path
        log.info("resumed from %s at step %d", path, self.state.step)
        if self.state.stop_reason:
            log.warning("the run had already stopped at step %d (%s): nothing left to train", self.state.step,
                        self.state.stop_reason)

    def _finish_resumed_step(self, path: Path) -> None:
        """What the killed process may not have done after writing the checkpoint it is resumed from: publish it
        as models (idempotent) and record the validation of its step (the sink drops what was already logged)."""
        models = self._checkpoint_models(path)
        v = self.state.last_validation
        if v is not None and v["step"] == self.state.step:
            self._record_validation(models)
