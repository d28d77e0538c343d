"""Run-control checks on logged metrics (plan 4.4, 4.5, 5.1): collapse warnings, early stopping on
stalled loss *and* utilisation, and the instability guard that skips bad updates and lowers the LR.

All steps are optimizer steps. `CollapseMonitor` and `EarlyStopper` take host floats (the trainer
has synced them for logging anyway); `InstabilityGuard.check` takes device tensors and costs one
host sync per call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harmonica.config.schema import CollapseConfig

__all__ = ["CollapseEvent", "CollapseMonitor", "EarlyStopper", "InstabilityGuard", "Verdict",
           "weights_finite"]

_UTIL = re.compile(r"^(?P<name>.+/cb\d+)/util_pred$")
_ATTN = re.compile(r"^(?P<name>.+/attn_entropy/layer\d+)_min$")


@dataclass(frozen=True)
class CollapseEvent:
    step: int
    kind: Literal["codebook", "attention"]
    name: str  # e.g. "nar/cb3" or "nar/attn_entropy/layer2"
    value: float
    floor: float

    @property
    def message(self) -> str:
        if self.kind == "codebook":
            what = "predicted utilisation"
        else:
            what = "min-over-heads attention entropy"
        return f"step {self.step}: {self.name} {what} {self.value:.3f} < floor {self.floor:.2f}"

    def __str__(self) -> str:
        return self.message


class CollapseMonitor:
    """Finds codebooks with `*/cbK/util_pred` < util_floor and attention layers with
    `*/attn_entropy/layerI_min` < attn_entropy_floor, from step grace_steps (default: the LR warmup's end) on.

    De-duplication: a name fires once when it enters collapse, then again only every `repeat_every`
    optimizer steps while it stays collapsed (0 = never again); once its value is back at or above
    the floor it is cleared and a later collapse fires anew. `collapsed` holds the names currently
    below their floor (for stop_on_collapse and the collapse-free-tail gate)."""

    def __init__(self, cfg: CollapseConfig, repeat_every: int = 1000, warmup_steps: int = 0) -> None:
        """warmup_steps: the LR warmup, the grace when cfg.grace_steps is None."""
        self.cfg = cfg
        self.grace_steps = warmup_steps if cfg.grace_steps is None else cfg.grace_steps
        self.repeat_every = repeat_every
        self._last_fired: dict[str, int] = {}  # name -> step of the last event, while collapsed

    @property
    def collapsed(self) -> set[str]:
        return set(self._last_fired)

    @property
    def should_stop(self) -> bool:
        return self.cfg.stop_on_collapse and bool(self._last_fired)

    def check(self, step: int, metrics: Mapping[str, float]) -> list[CollapseEvent]:
        events: list[CollapseEvent] = []
        if step < self.grace_steps:
            return events
        for key, raw in metrics.items():
            if m := _UTIL.match(key):
                kind, floor = "codebook", self.cfg.util_floor
            elif m := _ATTN.match(key):
                kind, floor = "attention", self.cfg.attn_entropy_floor
            else:
                continue
            name, value = m["name"], float(raw)
            if not math.isfinite(value):
                continue  # non-finite metrics are the instability guard's business
            if value >= floor:
                self._last_fired.pop(name, None)  # recovered
                continue
            last = self._last_fired.get(name)
            if last is None or (self.repeat_every > 0 and step - last >= self.repeat_every):
                self._last_fired[name] = step
                events.append(CollapseEvent(step, kind, name, value, floor))  # type: ignore[arg-type]
        return events


class EarlyStopper:
    """Stop when, for `window` optimizer steps, neither val loss reached a new minimum nor the
    median predicted utilisation a new maximum (plan 4.5: a run whose loss still falls but whose
    utilisation is stuck is not stopped, and vice versa). window 0 = never stop. A None
    util_median (no codebook metrics) leaves only the loss; NaN never counts as improvement."""

    def __init__(self, window: int, min_delta: float = 0.0) -> None:
        self.window = window
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best_util = -math.inf
        self.last_improved: int | None = None

    def update(self, step: int, val_loss: float, util_median: float | None = None) -> bool:
        improved = False
        if math.isfinite(val_loss) and val_loss < self.best_loss - self.min_delta:
            self.best_loss, improved = val_loss, True
        if util_median is not None and math.isfinite(util_median) \
                and util_median > self.best_util + self.min_delta:
            self.best_util, improved = util_median, True
        if improved or self.last_improved is None:
            self.last_improved = step
        return self.window > 0 and step - self.last_improved >= self.window

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_util": self.best_util,
                "last_improved": self.last_improved}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.best_util = float(state["best_util"])
        self.last_improved = state["last_improved"]


@dataclass(frozen=True)
class Verdict:
    skip: bool
    reason: str | None = None
    reduce_lr: bool = False


@dataclass
class InstabilityGuard:
    """Per optimizer step, after backward and clip_grad_norm_ (whose return value -- the pre-clip
    total norm -- is `grad_norm`) and before optimizer.step(): skip the update if the loss or grad
    norm is non-finite, or the grad norm exceeds spike_factor x the median of the last `history`
    accepted norms (spike test only once `warm_in` norms are recorded). Every skip is an
    instability event; every max_instability_events-th event sets reduce_lr, and the trainer then
    calls scheduler.scale(cfg.lr_reduce_factor).

    Host syncs: one bool per call on the healthy path (the verdict); the reason string of a skipped
    step costs a few more, which is fine because skips are rare. History stays on device."""

    cfg: CollapseConfig
    history: int = 100
    warm_in: int = 10
    events: int = field(default=0, init=False)
    _buf: Tensor | None = field(default=None, init=False, repr=False)
    _n: int = field(default=0, init=False)  # accepted norms so far; ring-buffer slot = _n % history

    def _median(self) -> Tensor:
        assert self._buf is not None
        return self._buf[: min(self._n, self.history)].median()

    def check(self, loss: Tensor | float, grad_norm: Tensor | float) -> Verdict:
        loss_t = torch.as_tensor(loss).detach().float()
        gn = torch.as_tensor(grad_norm).detach().float().to(loss_t.device)
        if self._buf is None or self._buf.device != gn.device:
            self._buf = torch.zeros(self.history, device=gn.device)
        finite = torch.isfinite(loss_t) & torch.isfinite(gn)
        bad = ~finite
        spiking = self._n >= self.warm_in
        if spiking:
            limit = self.cfg.spike_factor * self._median()
            bad = bad | (gn > limit)
        if not bool(bad):  # the one host sync of a healthy step
            self._buf[self._n % self.history] = gn
            self._n += 1
            return Verdict(skip=False)
        if not bool(torch.isfinite(loss_t)):
            reason = f"non-finite loss ({float(loss_t)})"
        elif not bool(torch.isfinite(gn)):
            reason = f"non-finite grad norm ({float(gn)})"
        else:
            reason = (f"grad-norm spike {float(gn):.3g} > {self.cfg.spike_factor:g} x running "
                      f"median {float(self._median()):.3g}")
        self.events += 1
        reduce = self.events % self.cfg.max_instability_events == 0
        return Verdict(skip=True, reason=reason, reduce_lr=reduce)

    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "n": self._n,
                "buf": None if self._buf is None else self._buf.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.events, self._n = int(state["events"]), int(state["n"])
        self._buf = None if state["buf"] is None else state["buf"].clone()


@torch.no_grad()
def weights_finite(model: nn.Module) -> bool:
    """True if every parameter is finite (one host sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
