"""What one training / validation step of the AR and the NAR computes.

The trainer owns the loop; a task turns a batch into a loss plus tensors for the diagnostics
(per-codebook usage updates, attention entropy, token counts). Nothing here syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harmonica.config.schema import TrainingConfig
from harmonica.training.objectives import compute_objective, scheduled_sampling_mix, token_noise
from harmonica.training.schedules import scheduled_sampling_ratio_at


@dataclass
class UsageUpdate:
    codebook: int
    pred: Tensor  # [B, T]
    target: Tensor  # [B, T]
    mask: Tensor  # [B, T]
    ce_sum: Tensor  # 0-d


@dataclass
class StepOutput:
    loss: Tensor  # 0-d, the optimised objective
    terms: dict[str, Tensor]  # detached 0-d tensors, namespaced by the trainer
    usage: list[UsageUpdate] = field(default_factory=list)
    attn_entropy: Tensor | None = None  # [n_blocks, H]
    tokens: Tensor | None = None  # 0-d, audio tokens in the batch


def _usage(logits: Tensor, targets: Tensor, mask: Tensor, codebook: int, ce_mean: Tensor | None = None) -> UsageUpdate:
    """ce_mean: the objective's plain masked-mean CE of this batch, so it is not computed twice."""
    with torch.no_grad():
        if ce_mean is None:
            ce = nn.functional.cross_entropy(logits.detach().transpose(1, 2).float(), targets, reduction="none")  # [B, T]
            ce_sum = torch.where(mask, ce, torch.zeros_like(ce)).sum()
        else:
            ce_sum = ce_mean.detach() * mask.sum()
        return UsageUpdate(codebook, logits.detach().argmax(-1), targets, mask, ce_sum)


class ARTask:
    """Text -> first codebook with a stop token; scheduled sampling and teacher-forcing noise."""

    kind = "ar"

    def __init__(self, cfg: TrainingConfig, codebook_size: int, n_q: int) -> None:
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.n_q = n_q

    def train_step(
        self, model: nn.Module, batch: dict[str, Any], step: int, generator: torch.Generator, collect_attn: bool
    ) -> StepOutput:
        core = getattr(model, "module", model)  # DDP wraps the model
        text, text_lens = batch["text"], batch["text_lens"]  # [B, L], [B]
        audio, audio_lens = batch["audio"], batch["audio_lens"]  # [B, T], [B]
        inputs, _, mask = core.teacher_inputs(audio, audio_lens)  # [B, T+1]
        input_mask = mask & (torch.arange(mask.size(1), device=mask.device)[None] > 0)  # [B, T+1], no BOS
        override = None
        ratio = scheduled_sampling_ratio_at(step, self.cfg)
        if ratio < 1.0:
            with torch.no_grad():
                first, _, _ = model(text, text_lens, audio, audio_lens)  # [B, T+1, V+1]
            override = scheduled_sampling_mix(
                inputs, core.predicted_inputs(first), ratio, generator=generator, mask=input_mask
            )  # [B, T+1]
        if self.cfg.token_noise > 0:
            base = override if override is not None else inputs
            override = token_noise(base, self.cfg.token_noise, self.codebook_size, generator=generator, mask=input_mask)
        logits, _, aux = model(
            text, text_lens, audio, audio_lens, collect_attn=collect_attn, input_override=override
        )  # [B, T+1, V+1]
        loss, terms = compute_objective(logits, aux["targets"], aux["mask"], step, self.cfg, codebook_index=0, n_q=self.n_q)
        terms["teacher_forcing_ratio"] = torch.tensor(ratio)
        return StepOutput(
            loss=loss,
            terms=terms,
            usage=[_usage(logits, aux["targets"], aux["mask"], 0, terms["ce"])],
            attn_entropy=aux.get("attn_entropy"),
            tokens=audio_lens.sum(),
        )

    @torch.no_grad()
    def val_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        logits, loss, aux = model(batch["text"], batch["text_lens"], batch["audio"], batch["audio_lens"])
        return StepOutput(loss=loss, terms={"ce": loss}, usage=[_usage(logits, aux["targets"], aux["mask"], 0)])


class NARTask:
    """Codebook k (1..n_q-1) from text, codebooks < k and the speaker condition.

    One stage per micro-batch, drawn uniformly, so per-codebook label smoothing applies exactly.
    """

    kind = "nar"

    def __init__(self, cfg: TrainingConfig, codebook_size: int, n_q: int) -> None:
        if n_q < 2:
            raise ValueError("the NAR needs a codec with n_q >= 2 (it predicts codebooks 1..n_q-1)")
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.n_q = n_q

    def _cond(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: batch.get(k) for k in ("prompt", "prompt_lens", "speaker")}

    def train_step(
        self, model: nn.Module, batch: dict[str, Any], step: int, generator: torch.Generator, collect_attn: bool
    ) -> StepOutput:
        codes, audio_lens = batch["codes"], batch["audio_lens"]  # [B, n_q, T], [B]
        stage = int(torch.randint(1, self.n_q, (1,), generator=generator))
        if self.cfg.token_noise > 0:
            # noise only the lower codebooks the model reads; the targets stay clean
            T = codes.size(2)
            valid = torch.arange(T, device=codes.device)[None] < audio_lens[:, None]  # [B, T]
            lower = (torch.arange(self.n_q, device=codes.device) < stage)[None, :, None] & valid[:, None]  # [B, n_q, T]
            noisy = token_noise(codes, self.cfg.token_noise, self.codebook_size, generator=generator, mask=lower)
            codes = torch.where(lower, noisy, codes)  # [B, n_q, T]
        logits, _, aux = model(
            batch["text"], batch["text_lens"], codes, audio_lens, stage, collect_attn=collect_attn,
            refine=self.cfg.nar_refine_train, generator=generator, **self._cond(batch),
        )  # [B, T, V]; with refinement, the self-conditioned second pass
        loss, terms = compute_objective(logits, aux["targets"], aux["mask"], step, self.cfg, codebook_index=stage, n_q=self.n_q)
        if "logits1" in aux:  # refinement: the first (unconditioned) pass is what inference starts from
            loss1, _ = compute_objective(aux["logits1"], aux["targets"], aux["mask"], step, self.cfg, codebook_index=stage, n_q=self.n_q)
            loss = 0.5 * (loss + loss1)
        return StepOutput(
            loss=loss,
            terms=terms,
            usage=[_usage(logits, aux["targets"], aux["mask"], stage, terms["ce"])],
            attn_entropy=aux.get("attn_entropy"),
            tokens=audio_lens.sum(),
        )

    @torch.no_grad()
    def val_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """Every stage of every batch, so validation covers all codebooks deterministically."""
        usage, losses = [], []
        for stage in range(1, self.n_q):
            logits, loss, aux = model(
                batch["text"], batch["text_lens"], batch["codes"], batch["audio_lens"], stage, **self._cond(batch)
            )
            usage.append(_usage(logits, aux["targets"], aux["mask"], stage))
            losses.append(loss)
        loss = torch.stack(losses).mean()
        return StepOutput(loss=loss, terms={"ce": loss}, usage=usage)


def build_task(kind: str, cfg: TrainingConfig, codebook_size: int, n_q: int) -> ARTask | NARTask:
    return {"ar": ARTask, "nar": NARTask}[kind](cfg, codebook_size, n_q)
