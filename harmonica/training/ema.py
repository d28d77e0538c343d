"""Exponential moving average of model weights (plan 4.3), audiocraft-style.

The shadow holds a float32 copy of every floating-point parameter and buffer (so a bf16/fp16 model
still gets a meaningful 0.999 average); integer buffers (counters) are copied as they are. Tied
weights are tracked once (named_parameters/named_buffers de-duplicate). The model must keep the same
parameter names between construction and update/swap -- wrap it (DDP, torch.compile) consistently.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


class EMA:
    """shadow <- d * shadow + (1 - d) * param after each optimizer step.

    With ``warmup=True`` (default) the decay of the n-th update (n = 0, 1, ...) is
    d_n = min(decay, (1 + n) / (10 + n)): 0.1, 0.18, 0.25, ... so the average forgets the random
    initialisation quickly. Without it, decay 0.999 would still weigh the init by e^-1 after 1000
    steps -- i.e. for the whole of a short research run the EMA model would be mostly untrained.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        with torch.no_grad():
            self.shadow: dict[str, Tensor] = {
                name: (t.detach().float().clone() if t.is_floating_point() else t.detach().clone())
                for name, t in _named_tensors(model).items()
            }

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _pairs(self, model: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
        live = _named_tensors(model)
        if live.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() ^ live.keys())[:5]
            raise KeyError(f"model and EMA shadow disagree on tensor names, e.g. {missing}")
        for name, s in self.shadow.items():
            yield s, live[name]

    def _lists(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]]:
        """(fp32 shadows, their fp32 live tensors, other pairs), cached per model: walking the
        module and pairing names every step costs more than the arithmetic on a small model."""
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] is model:
            return cached[1]
        shadows, lives, others = [], [], []
        for s, t in self._pairs(model):
            if s.is_floating_point() and t.dtype == torch.float32:
                shadows.append(s)
                lives.append(t)
            else:
                others.append((s, t))
        self._cache = (model, (shadows, lives, others))
        return shadows, lives, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the shadow (call after each optimizer step)."""
        d = self.current_decay()
        shadows, lives, others = self._lists(model)
        if shadows:
            torch._foreach_lerp_(shadows, [t.detach() for t in lives], 1.0 - d)  # s += (1-d)(t-s)
        for s, t in others:
            if s.is_floating_point():
                s.mul_(d).add_(t.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(t)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the shadow (cast to each tensor's dtype)."""
        for s, t in self._pairs(model):
            t.copy_(s)

    @contextmanager
    def swap(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run a block (validation, samples) with EMA weights in `model`; the raw weights are
        restored bit-exactly afterwards, also if the block raises."""
        with torch.no_grad():
            backup = {name: t.detach().clone() for name, t in _named_tensors(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                live = _named_tensors(model)
                for name, saved in backup.items():
                    live[name].copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise KeyError("EMA state does not match this model's tensor names")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
