"""The trainer's window between two log steps: the step terms summed on the device (no host sync until
the trainer logs them), tokens, the last attention entropies and the time spent outside training."""

from __future__ import annotations

import time

import torch

from harmonica.training.steps import StepOutput


class StepWindow:
    """Sums of step terms on the device between two log steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # averaged over the window's micro-steps
        self.instant: dict[str, torch.Tensor] = {}  # values of the log step itself (grad norms, ratios)
        self.n = 0
        self.tokens = torch.zeros((), device=self.device)
        self.attn: torch.Tensor | None = None
        self.started = time.perf_counter()
        self.excluded = 0.0  # seconds of validation / samples / checkpoints inside the window

    def add(self, out: StepOutput) -> None:
        for k, v in out.terms.items():
            v = v.detach().float().to(self.device)
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        if "loss" not in out.terms:
            self.sums["loss"] = self.sums.get("loss", torch.zeros((), device=self.device)) + out.loss.detach().float()
        self.n += 1
        if out.tokens is not None:
            self.tokens = self.tokens + out.tokens
        if out.attn_entropy is not None:
            self.attn = out.attn_entropy.detach()
