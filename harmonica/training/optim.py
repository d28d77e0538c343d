"""Optimizer with per-module parameter groups (plan 4.2) and one LR-scheduler interface for every
``scheduler_type`` (plan 4.5, RCA cause 4).

All step counts are optimizer steps (see `schedules`). The trainer calls `Scheduler.step()` once
per optimizer update, `on_validation(metric)` after each validation, and `scale(f)` when the
instability guard asks for a persistent LR reduction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from harmonica.config.schema import ParamGroups, TrainingConfig
from harmonica.training.schedules import decay_factor, min_lr_ratio, warmup_factor

__all__ = ["GROUP_NAMES", "Scheduler", "build_optimizer", "build_scheduler"]

GROUP_NAMES: tuple[str, ...] = tuple(ParamGroups.model_fields)
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 3  # validations without improvement; the schema has no knob for it (yet)


def build_optimizer(named_groups: Mapping[str, Sequence[nn.Parameter]],
                    cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with one param group per name: lr = cfg.lr * lr_scale, weight_decay from
    cfg.param_groups.<name>; group["name"] and group["lr_scale"] are set for logging and the
    scheduler. Empty groups and frozen (requires_grad=False) parameters are skipped. An unknown
    group name or a parameter listed in two groups is an error, never silently merged.
    cfg.optimizer=muon: the 2D weights of cfg.muon_groups get their own groups "<name>/muon" (lr =
    cfg.muon_lr * lr_scale) stepped by Muon, the rest AdamW, in one `MuonAdamW`."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name, params in named_groups.items():
        if name not in GROUP_NAMES:
            raise KeyError(f"unknown parameter group {name!r}; expected one of {GROUP_NAMES}")
        trainable = [p for p in params if p.requires_grad]
        for p in trainable:
            if id(p) in seen:
                raise ValueError(f"a parameter of group {name!r} is also in another group")
            seen.add(id(p))
        if not trainable:
            continue
        gcfg = getattr(cfg.param_groups, name)
        by_muon = cfg.optimizer == "muon" and name in cfg.muon_groups
        matrices = [p for p in trainable if by_muon and p.ndim == 2]
        rest = [p for p in trainable if not (by_muon and p.ndim == 2)]
        if matrices:
            groups.append({"params": matrices, "name": f"{name}/muon", "lr_scale": gcfg.lr_scale, "muon": True,
                           "lr": cfg.muon_lr * gcfg.lr_scale, "weight_decay": gcfg.weight_decay})
        if rest:
            groups.append({"params": rest, "name": name, "lr_scale": gcfg.lr_scale,
                           "lr": cfg.lr * gcfg.lr_scale, "weight_decay": gcfg.weight_decay})
    if not groups:
        raise ValueError("no trainable parameters in any group")
    if cfg.optimizer == "muon":
        return MuonAdamW(groups, betas=tuple(cfg.betas), momentum=cfg.muon_momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (also torch.optim.Muon's)


def orthogonalise(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """~U V^T of each matrix g = U S V^T ([..., m, n], a batch of matrices of one shape) by a quintic
    Newton-Schulz iteration, in float32. torch.optim.Muon iterates in bfloat16, which CPUs without
    bf16 units emulate (the demo AR's steps took 6x as long) and one matrix at a time."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()  # [..., m, n]
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x  # [..., r, k], r <= k
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # [..., r, r]
        x = a * x + (b * gram + c * gram @ gram) @ x  # [..., r, k]
    return (x.mT if tall else x).to(g.dtype)  # [..., m, n]


def _closure_loss(closure: Any) -> Any:
    """torch's optimizer protocol: step(closure) re-evaluates the loss first (None: nothing to do)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz (Jordan et al. 2024) for 2D weights: Nesterov momentum,
    the update orthogonalised (`orthogonalise`, the weights of one shape as one batch) and scaled by
    sqrt(max(1, rows / cols)), decoupled weight decay lr * weight_decay: torch.optim.Muon's update
    with the iteration in float32."""

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple[int, ...], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError(f"Muon steps 2D weights only, got a parameter of shape {tuple(p.shape)}")
                by_shape.setdefault(tuple(p.shape), []).append(p)
            for (rows, cols), params in by_shape.items():
                grads = []
                for p in params:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - mom)
                    grads.append(p.grad.lerp(buf, mom))  # Nesterov
                updates = orthogonalise(torch.stack(grads))  # [n, rows, cols]
                for p, update in zip(params, updates, strict=True):
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """Muon (`Muon`) for the groups marked "muon", AdamW for the others,
    as one optimizer: the scheduler, gradient clipping and the checkpoint see all groups (the group
    dicts are shared with the two inner optimizers, so an LR the scheduler sets is the one stepped).
    state_dict() is {"muon": ..., "adamw": ...}, each the inner optimizer's own."""

    def __init__(self, groups: list[dict[str, Any]], *, betas: tuple[float, ...], momentum: float) -> None:
        muon = [g for g in groups if g.get("muon")]
        adamw = [g for g in groups if not g.get("muon")]
        self.parts: dict[str, torch.optim.Optimizer] = {}
        if muon:
            self.parts["muon"] = Muon(muon, momentum=momentum)
        if adamw:
            self.parts["adamw"] = torch.optim.AdamW(adamw, betas=betas)
        super().__init__([g for part in self.parts.values() for g in part.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _closure_loss(closure)
        for part in self.parts.values():
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if set(state_dict) != set(self.parts):
            raise ValueError(f"optimizer state holds {sorted(state_dict)}, this MuonAdamW has {sorted(self.parts)} "
                             "(a checkpoint of another training.optimizer)")
        for name, part in self.parts.items():
            part.load_state_dict(dict(state_dict[name]))
        # torch's load_state_dict gives each part new group dicts: share them again
        self.param_groups = [g for part in self.parts.values() for g in part.param_groups]


class Scheduler:
    """One interface over all scheduler types.

    group lr = cfg.lr * lr_scale * warmup(step) * max(decay(step) * scale * plateau, min_lr/lr)

    - cosine / linear / constant: `decay` from `schedules.decay_factor` through a LambdaLR;
    - plateau: linear warmup, then torch's ReduceLROnPlateau (mode min, factor 0.5, patience 3
      validations, min_lr floor) decides reductions from `on_validation(metric)`. It runs on a
      one-parameter proxy optimizer whose lr *is* the plateau multiplier: driving the real groups
      directly would be overwritten by the LambdaLR on the next step and would lose each group's
      lr_scale. Validations during warmup are ignored (the loss is still falling fast).
    - `scale(f)` multiplies every group's LR persistently (instability guard); it is part of the
      state, so it survives a checkpoint round trip.
    After warmup no group goes below min_lr * lr_scale.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainingConfig,
                 plateau_patience: int = PLATEAU_PATIENCE) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.kind = cfg.scheduler_type
        self._scale = 1.0
        self._floor = min_lr_ratio(cfg)
        self._plateau: ReduceLROnPlateau | None = None
        if self.kind == "plateau":
            proxy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            self._plateau = ReduceLROnPlateau(proxy, mode="min", factor=PLATEAU_FACTOR,
                                              patience=plateau_patience, min_lr=self._floor)
        # A plain closure (not a bound method) so LambdaLR.state_dict() stores nothing for it.
        self._lambda = LambdaLR(optimizer, lambda step: self._factor(step))

    def _plateau_mult(self) -> float:
        return 1.0 if self._plateau is None else float(self._plateau.optimizer.param_groups[0]["lr"])

    def _factor(self, step: int) -> float:
        body = decay_factor(step, self.cfg) * self._scale * self._plateau_mult()
        return warmup_factor(step, self.cfg.warmup_steps) * max(body, self._floor)

    def _apply(self) -> None:
        """Rewrite group LRs from the state (after a plateau reduction, scale() or a state load)."""
        f = self._factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self._lambda.base_lrs, strict=True):
            group["lr"] = base * f
        self._lambda._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (= the step whose LR the groups now hold)."""
        return int(self._lambda.last_epoch)

    def step(self) -> None:
        """Call once per optimizer update, after optimizer.step()."""
        self._lambda.step()

    def on_validation(self, metric: float) -> bool:
        """Feed a validation metric (lower is better). Returns True if the LR was reduced.
        A no-op for cosine/linear/constant."""
        if self._plateau is None or self.step_count < self.cfg.warmup_steps:
            return False
        before = self._plateau_mult()
        self._plateau.step(float(metric))
        if self._plateau_mult() < before:
            self._apply()
            return True
        return False

    def scale(self, factor: float) -> None:
        """Persistently multiply all group LRs by `factor` (still floored at min_lr after warmup)."""
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        self._scale *= factor
        self._apply()

    @property
    def lr_scale_factor(self) -> float:
        return self._scale

    def current_lrs(self) -> dict[str, float]:
        return {g.get("name", f"group{i}"): float(g["lr"])
                for i, g in enumerate(self.optimizer.param_groups)}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self._scale, "lambda": self._lambda.state_dict(),
                "plateau": None if self._plateau is None else self._plateau.state_dict(),
                "plateau_mult": self._plateau_mult()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint scheduler is {state['kind']!r}, config says {self.kind!r}")
        self._scale = float(state["scale"])
        self._lambda.load_state_dict(dict(state["lambda"]))
        if self._plateau is not None:
            self._plateau.load_state_dict(dict(state["plateau"]))
            self._plateau.optimizer.param_groups[0]["lr"] = float(state["plateau_mult"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig,
                    plateau_patience: int = PLATEAU_PATIENCE) -> Scheduler:
    """The scheduler for cfg.scheduler_type (every type is honoured; see `Scheduler`)."""
    return Scheduler(optimizer, cfg, plateau_patience=plateau_patience)
