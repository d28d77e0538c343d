"""Schedules are functions of the optimizer step; grad accumulation must not rescale them."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from harmonica.config.schema import TrainingConfig
from harmonica.training.optim import build_optimizer, build_scheduler
from harmonica.training.schedules import (
    codebook_entropy_weight_at,
    label_smoothing_at,
    lr_lambda,
    scheduled_sampling_ratio_at,
    warmup_factor,
)


def cfg(**kw) -> TrainingConfig:
    base = dict(lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=100, log_every=1, val_every=1,
                ckpt_every=1, sample_every=1)
    base.update(kw)
    return TrainingConfig(**base)


def test_warmup_factor():
    assert warmup_factor(0, 10) == pytest.approx(0.1)
    assert warmup_factor(4, 10) == pytest.approx(0.5)
    assert warmup_factor(9, 10) == 1.0
    assert warmup_factor(50, 10) == 1.0
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_lr_lambda_decays_to_exactly_min_lr(kind):
    c = cfg(scheduler_type=kind)
    ratio = c.min_lr / c.lr
    assert lr_lambda(c.warmup_steps, c) == pytest.approx(1.0)
    assert lr_lambda(c.total_steps, c) == ratio  # exact
    assert lr_lambda(c.total_steps + 50, c) == ratio
    vals = [lr_lambda(s, c) for s in range(c.warmup_steps, c.total_steps + 1)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone after warmup
    assert min(vals) >= ratio


def test_lr_lambda_types_differ_midway():
    mid = 55  # halfway through the decay span 10..100
    cos, lin, const = (lr_lambda(mid, cfg(scheduler_type=k)) for k in ("cosine", "linear", "constant"))
    ratio = 1e-2
    assert lin == pytest.approx(ratio + (1 - ratio) * 0.5)
    assert cos == pytest.approx(ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert const == 1.0
    # away from the midpoint cosine and linear differ
    assert lr_lambda(30, cfg(scheduler_type="cosine")) > lr_lambda(30, cfg(scheduler_type="linear"))


def test_label_smoothing_schedule():
    c = cfg(label_smoothing=0.1, label_smoothing_end=0.02, label_smoothing_decay_steps=40)
    assert label_smoothing_at(0, c) == pytest.approx(0.1)
    assert label_smoothing_at(20, c) == pytest.approx(0.06)
    assert label_smoothing_at(40, c) == pytest.approx(0.02)
    assert label_smoothing_at(99, c) == pytest.approx(0.02)
    const = cfg(label_smoothing=0.1, label_smoothing_end=0.0, label_smoothing_decay_steps=0)
    assert label_smoothing_at(0, const) == label_smoothing_at(99, const) == 0.1


def test_codebook_entropy_weight_schedule():
    c = cfg(codebook_entropy_weight=0.02, codebook_entropy_warmup_steps=50)
    assert codebook_entropy_weight_at(0, c) == pytest.approx(0.02)
    assert codebook_entropy_weight_at(25, c) == pytest.approx(0.01)
    assert codebook_entropy_weight_at(50, c) == 0.0
    assert codebook_entropy_weight_at(80, c) == 0.0
    assert codebook_entropy_weight_at(0, cfg(codebook_entropy_weight=0.0)) == 0.0
    no_decay = cfg(codebook_entropy_weight=0.03, codebook_entropy_warmup_steps=0)
    assert codebook_entropy_weight_at(90, no_decay) == pytest.approx(0.03)


def test_scheduled_sampling_ratio():
    off = cfg(scheduled_sampling=False)
    assert scheduled_sampling_ratio_at(99, off) == 1.0
    c = cfg(scheduled_sampling=True, scheduled_sampling_start=40,
            scheduled_sampling_ratio_start=0.9, scheduled_sampling_ratio_end=0.6)
    assert scheduled_sampling_ratio_at(39, c) == 1.0
    assert scheduled_sampling_ratio_at(40, c) == pytest.approx(0.9)
    assert scheduled_sampling_ratio_at(70, c) == pytest.approx(0.75)
    assert scheduled_sampling_ratio_at(100, c) == pytest.approx(0.6)


def test_grad_accum_reaches_end_values_at_optimizer_steps():
    """Simulate the trainer's micro-batch loop with grad_accum_steps=4: every schedule is evaluated
    at step = micro_step // grad_accum and hits its end value at the configured optimizer step."""
    accum = 4
    c = cfg(grad_accum_steps=accum, scheduler_type="linear", label_smoothing=0.1,
            label_smoothing_end=0.0, label_smoothing_decay_steps=30, codebook_entropy_weight=0.02,
            codebook_entropy_warmup_steps=60, scheduled_sampling=True, scheduled_sampling_start=20,
            scheduled_sampling_ratio_start=0.9, scheduled_sampling_ratio_end=0.5)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer({"attention": [p]}, c)
    sched = build_scheduler(opt, c)
    first_hit: dict[str, int] = {}
    updates = 0
    lr_at_update: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for micro in range(c.micro_steps_total):
            step = micro // accum
            vals = {"ls": label_smoothing_at(step, c), "ent": codebook_entropy_weight_at(step, c),
                    "ss": scheduled_sampling_ratio_at(step, c)}
            ends = {"ls": 0.0, "ent": 0.0, "ss": 0.5}
            for k, v in vals.items():
                if k not in first_hit and v == pytest.approx(ends[k]):
                    first_hit[k] = updates  # optimizer updates completed when first at end value
            if (micro + 1) % accum == 0:
                lr_at_update.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
                updates += 1
    assert first_hit == {"ls": 30, "ent": 60}
    assert updates == c.total_steps
    # scheduled sampling (like the LR) is defined to end *at* total_steps, one past the last update
    assert scheduled_sampling_ratio_at(updates - 1, c) > 0.5
    assert scheduled_sampling_ratio_at(updates, c) == pytest.approx(0.5)
    # warmup spans 10 optimizer updates (not 40, not 2.5)
    assert lr_at_update[9] == pytest.approx(c.lr) and lr_at_update[8] < c.lr
    # after total_steps optimizer updates the LR is exactly min_lr
    assert opt.param_groups[0]["lr"] == pytest.approx(c.min_lr, rel=1e-12)
