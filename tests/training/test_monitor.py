"""Collapse warnings, early stopping and the instability guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harmonica.config.schema import CollapseConfig
from harmonica.training.monitor import (
    CollapseMonitor,
    EarlyStopper,
    InstabilityGuard,
    weights_finite,
)


def healthy_metrics() -> dict[str, float]:
    return {"nar/cb1/util_pred": 0.4, "nar/cb3/util_pred": 0.3, "nar/util_pred_median": 0.35,
            "nar/cb3/util_target": 0.01, "nar/attn_entropy/layer0": 2.0,
            "nar/attn_entropy/layer0_min": 1.5, "nar/attn_entropy/layer2_min": 1.1, "nar/loss": 3.0}


def test_collapse_events_fire_for_low_values_only():
    mon = CollapseMonitor(CollapseConfig(util_floor=0.1, attn_entropy_floor=0.5))
    assert mon.check(100, healthy_metrics()) == []
    m = healthy_metrics() | {"nar/cb3/util_pred": 0.031, "nar/attn_entropy/layer2_min": 0.2,
                             "nar/util_pred_median": 0.01}  # median is not a codebook
    events = mon.check(120, m)
    assert {(e.kind, e.name) for e in events} == {("codebook", "nar/cb3"),
                                                  ("attention", "nar/attn_entropy/layer2")}
    cb = next(e for e in events if e.kind == "codebook")
    assert cb.message == "step 120: nar/cb3 predicted utilisation 0.031 < floor 0.10"
    assert str(cb) == cb.message
    assert cb.value == pytest.approx(0.031) and cb.floor == 0.1
    assert mon.collapsed == {"nar/cb3", "nar/attn_entropy/layer2"}


def test_collapse_grace_dedup_and_recovery():
    mon = CollapseMonitor(CollapseConfig(util_floor=0.1, grace_steps=50, stop_on_collapse=True),
                          repeat_every=100)
    low = {"ar/cb0/util_pred": 0.05}
    assert mon.check(10, low) == []  # grace period
    assert not mon.should_stop
    assert len(mon.check(50, low)) == 1
    assert mon.should_stop
    assert mon.check(60, low) == []  # sustained: de-duplicated
    assert mon.check(140, low) == []
    assert len(mon.check(150, low)) == 1  # reminder after repeat_every steps
    assert mon.check(160, {"ar/cb0/util_pred": 0.5}) == []  # recovered
    assert mon.collapsed == set()
    assert len(mon.check(170, low)) == 1  # a new collapse fires again
    no_repeat = CollapseMonitor(CollapseConfig(), repeat_every=0)
    assert len(no_repeat.check(0, low)) == 1 and no_repeat.check(10_000, low) == []


def test_early_stop_after_window_not_before():
    es = EarlyStopper(window=300)
    assert not es.update(100, 3.0, 0.2)
    assert not es.update(200, 3.1, 0.2)
    assert not es.update(300, 3.1, 0.19)
    assert es.update(400, 3.2, 0.18)  # 300 steps since the last improvement at 100


def test_early_stop_resets_on_either_signal():
    es = EarlyStopper(window=300)
    es.update(100, 3.0, 0.2)
    assert not es.update(350, 3.5, 0.25)  # loss worse, utilisation better -> reset
    assert not es.update(600, 3.5, 0.25)
    assert not es.update(640, 2.9, 0.1)  # loss better, utilisation worse -> reset
    assert not es.update(900, 3.0, 0.2)
    assert es.update(940, 3.0, 0.2)
    es2 = EarlyStopper(window=300)
    es2.load_state_dict(es.state_dict())
    assert es2.update(950, 3.0, 0.2)
    assert not es2.update(960, math.nan, 0.3)  # NaN loss ignored, util improved


def test_early_stop_window_zero_never_stops():
    es = EarlyStopper(window=0)
    es.update(0, 1.0, 0.5)
    assert not any(es.update(s, 2.0, 0.1) for s in range(100, 100_000, 1000))


def guard(**kw) -> InstabilityGuard:
    return InstabilityGuard(CollapseConfig(spike_factor=10.0, max_instability_events=3, **kw))


def test_guard_passes_normal_steps():
    g = guard()
    for i in range(50):
        v = g.check(torch.tensor(2.0), torch.tensor(1.0 + 0.1 * (i % 5)))
        assert not v.skip and v.reason is None and not v.reduce_lr
    assert g.events == 0


def test_guard_skips_nan_loss_and_inf_grad():
    g = guard()
    v = g.check(torch.tensor(float("nan")), torch.tensor(1.0))
    assert v.skip and "loss" in v.reason
    v = g.check(torch.tensor(1.0), torch.tensor(float("inf")))
    assert v.skip and "grad norm" in v.reason
    assert g.events == 2
    assert g.check(1.0, 1.0).skip is False  # floats accepted too


def test_guard_spike_after_warm_in_and_reduce_lr_every_third_event():
    g = guard()
    assert not g.check(torch.tensor(1.0), torch.tensor(100.0)).skip  # no median yet: warm-in
    for _ in range(10):
        g.check(torch.tensor(1.0), torch.tensor(1.0))
    v1 = g.check(torch.tensor(1.0), torch.tensor(50.0))
    assert v1.skip and "spike" in v1.reason and not v1.reduce_lr
    assert not g.check(torch.tensor(1.0), torch.tensor(5.0)).skip  # 5x median is fine
    v2 = g.check(torch.tensor(float("inf")), torch.tensor(1.0))
    assert v2.skip and not v2.reduce_lr
    v3 = g.check(torch.tensor(1.0), torch.tensor(1e4))
    assert v3.skip and v3.reduce_lr  # third event
    assert not g.check(torch.tensor(1.0), torch.tensor(1e5)).reduce_lr  # fourth
    g2 = guard()
    g2.load_state_dict(g.state_dict())
    assert g2.events == 4 and g2.check(torch.tensor(1.0), torch.tensor(1e5)).skip


def test_weights_finite():
    m = nn.Linear(3, 2)
    assert weights_finite(m)
    with torch.no_grad():
        m.bias[0] = float("nan")
    assert not weights_finite(m)


def test_the_default_grace_is_the_lr_warmup():
    """The demo AR's utilisation dips under the floor at step 20 of its 50 warmup steps and is 0.93 at the
    end: a warning then is about the initialisation (every demo run showed one); an explicit grace wins."""
    low = {"ar/cb0/util_pred": 0.05}
    warm = CollapseMonitor(CollapseConfig(), warmup_steps=50)
    assert warm.check(20, low) == [] and len(warm.check(50, low)) == 1
    assert len(CollapseMonitor(CollapseConfig(grace_steps=0), warmup_steps=50).check(20, low)) == 1
    assert len(CollapseMonitor(CollapseConfig()).check(0, low)) == 1  # no warmup: no grace
