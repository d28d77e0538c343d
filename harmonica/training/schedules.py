"""Step-indexed schedules of the training knobs (pure functions, float in / float out).

Unit convention (the whole module): ``step`` is the **optimizer step** -- the number of parameter
updates already taken, 0 for the first update. One optimizer step consumes ``grad_accum_steps``
micro-batches, so inside a micro-batch loop call these with ``micro_step // cfg.grad_accum_steps``,
never with the micro-batch counter. Every step count in `TrainingConfig` (warmup_steps,
total_steps, label_smoothing_decay_steps, codebook_entropy_warmup_steps, scheduled_sampling_start)
is in the same unit, so a schedule reaches its end value at the configured optimizer step whatever
``grad_accum_steps`` is.

`lr_lambda` is the single place that interprets ``scheduler_type``; `optim.build_scheduler` uses it
for every type, so a configured scheduler type cannot be silently ignored (RCA cause 4).
"""

from __future__ import annotations

import math

from harmonica.config.schema import TrainingConfig

__all__ = [
    "codebook_entropy_weight_at",
    "decay_factor",
    "label_smoothing_at",
    "linear_ramp",
    "lr_lambda",
    "min_lr_ratio",
    "scheduled_sampling_ratio_at",
    "warmup_factor",
]


def linear_ramp(step: int, start_step: int, end_step: int, start: float, end: float) -> float:
    """`start` up to `start_step`, linear to `end` at `end_step`, `end` afterwards."""
    if end_step <= start_step:
        return end if step >= end_step else start
    t = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start + (end - start) * t


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear LR warmup multiplier: (step+1)/warmup_steps, i.e. 1/W for the first update and 1.0
    from update W-1 on. Starting at 1/W rather than 0 keeps the first update from being wasted."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def min_lr_ratio(cfg: TrainingConfig) -> float:
    """min_lr as a multiplier of lr (the floor of every decaying schedule)."""
    return cfg.min_lr / cfg.lr


def decay_factor(step: int, cfg: TrainingConfig) -> float:
    """Post-warmup decay multiplier in [min_lr/lr, 1]: 1.0 during warmup, then cosine or linear down
    to exactly min_lr/lr at ``total_steps`` (and held there); 1.0 forever for constant/plateau
    (plateau reductions are validation-driven and live in the scheduler, not here)."""
    kind = cfg.scheduler_type
    if kind in ("constant", "plateau"):
        return 1.0
    floor = min_lr_ratio(cfg)
    span = cfg.total_steps - cfg.warmup_steps  # > 0, the schema guarantees warmup < total
    progress = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    else:  # the schema's Literal makes this unreachable; fail loudly rather than fall back
        raise ValueError(f"unknown scheduler_type {kind!r}")
    if progress >= 1.0:
        return floor  # exact, not 1e-17 off through cos(pi)
    return floor + (1.0 - floor) * shape


def lr_lambda(step: int, cfg: TrainingConfig) -> float:
    """LR multiplier (relative to cfg.lr, i.e. to each group's lr_scale * lr) at optimizer `step`:
    warmup_factor * decay_factor. cosine/linear end at exactly min_lr at total_steps; constant and
    plateau stay at lr after warmup."""
    return warmup_factor(step, cfg.warmup_steps) * decay_factor(step, cfg)


def label_smoothing_at(step: int, cfg: TrainingConfig) -> float:
    """label_smoothing -> label_smoothing_end linearly over the first label_smoothing_decay_steps
    optimizer steps, then held at the end value. decay_steps == 0: constant `label_smoothing`."""
    if cfg.label_smoothing_decay_steps <= 0:
        return cfg.label_smoothing
    return linear_ramp(step, 0, cfg.label_smoothing_decay_steps, cfg.label_smoothing,
                       cfg.label_smoothing_end)


def codebook_entropy_weight_at(step: int, cfg: TrainingConfig) -> float:
    """Prediction-entropy bonus weight: codebook_entropy_weight at step 0 decaying linearly to 0 at
    codebook_entropy_warmup_steps (explore early, sharpen late -- RCA fix 'decays to 0 by 10k').
    warmup_steps == 0 means no decay (constant weight), like label_smoothing_decay_steps == 0;
    a weight of 0 turns the term off."""
    w = cfg.codebook_entropy_weight
    if w <= 0:
        return 0.0
    if cfg.codebook_entropy_warmup_steps <= 0:
        return w
    return linear_ramp(step, 0, cfg.codebook_entropy_warmup_steps, w, 0.0)


def scheduled_sampling_ratio_at(step: int, cfg: TrainingConfig) -> float:
    """Teacher-forcing ratio (probability of feeding the gold token). 1.0 when scheduled sampling is
    disabled or before scheduled_sampling_start; from there ratio_start linearly to ratio_end at
    total_steps."""
    if not cfg.scheduled_sampling or step < cfg.scheduled_sampling_start:
        return 1.0
    return linear_ramp(step, cfg.scheduled_sampling_start, cfg.total_steps,
                       cfg.scheduled_sampling_ratio_start, cfg.scheduled_sampling_ratio_end)
