"""What one training / validation step of the AR and the NAR computes.

The trainer owns the loop; a task turns a batch into a loss plus tensors for the diagnostics
(per-codebook usage updates, attention entropy, token counts). Nothing here syncs with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harmonica.config.schema import TrainingConfig
from harmonica.models.layers import masked_mean_ce
from harmonica.training.data import prompt_kwargs
from harmonica.training.guided import guided_layers, guided_loss_from_probs, guided_weight_at
from harmonica.training.objectives import (
    compute_objective,
    embedding_regression,
    nearest_entries,
    scheduled_sampling_mix,
    text_dropout,
    token_noise,
)
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

    def __init__(self, cfg: TrainingConfig, codebook_size: int, n_q: int, neighbours: Tensor | None = None,
                 target_neighbours: Tensor | None = None, table: Tensor | None = None) -> None:
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.n_q = n_q
        self.neighbours = neighbours  # [V, k] codebook-0 entries a noised input may become (None = any)
        self.target_neighbours = target_neighbours  # [V, k'] entries sharing the target mass (neighbour_smoothing)
        self.table = table  # [V, D] codebook 0's codec embeddings (embedding_regression_weight)

    def train_step(
        self, model: nn.Module, batch: dict[str, Any], step: int, generator: torch.Generator, collect_attn: bool
    ) -> StepOutput:
        core = getattr(model, "module", model)  # DDP wraps the model
        text, text_lens = batch["text"], batch["text_lens"]  # [B, L], [B]
        audio, audio_lens = batch["audio"], batch["audio_lens"]  # [B, T], [B]
        # classifier-free guidance: some rows learn the empty text (the guided loss leaves them out)
        text, text_lens, dropped = text_dropout(text, text_lens, self.cfg.text_dropout, generator)  # [B, L], [B], [B]
        voice = prompt_kwargs(batch)
        inputs, _, mask = core.teacher_inputs(audio, audio_lens)  # [B, T+1]
        input_mask = mask & (torch.arange(mask.size(1), device=mask.device)[None] > 0)  # [B, T+1], no BOS
        override = None
        ratio = scheduled_sampling_ratio_at(step, self.cfg)
        if ratio < 1.0:
            with torch.no_grad():
                first, _, _ = model(text, text_lens, audio, audio_lens, **voice)  # [B, T+1, V+1]
            override = scheduled_sampling_mix(
                inputs, core.predicted_inputs(first), ratio, generator=generator, mask=input_mask
            )  # [B, T+1]
        if self.cfg.token_noise > 0:
            base = override if override is not None else inputs
            override = token_noise(base, self.cfg.token_noise, self.codebook_size, generator=generator, mask=input_mask,
                                   neighbours=self.neighbours)
        w_guided = guided_weight_at(step, self.cfg)
        layers = guided_layers(self.cfg, len(core.blocks)) if w_guided > 0 else []
        logits, _, aux = model(
            text, text_lens, audio, audio_lens, collect_attn=collect_attn, input_override=override, attn_layers=layers,
            attn_text_heads=self.cfg.guided_attention_heads if layers else None, **voice,
        )  # [B, T+1, V+1]
        loss, terms = compute_objective(logits, aux["targets"], aux["mask"], step, self.cfg, codebook_index=0, n_q=self.n_q,
                                        neighbours=self.target_neighbours)
        if self.cfg.embedding_regression_weight > 0:
            mse = embedding_regression(logits, aux["targets"], aux["mask"], self.table)
            loss = loss + self.cfg.embedding_regression_weight * mse
            terms["embedding_mse"] = mse.detach()
        if layers:
            guided = guided_loss_from_probs(aux["attn_probs"], layers, text_lens, aux["query_mask"] & ~dropped[:, None],
                                            self.cfg.guided_attention_sigma)
            loss = loss + w_guided * guided
            terms["guided_attn"], terms["guided_attn_weight"] = guided.detach(), torch.tensor(w_guided)
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
        logits, loss, aux = model(batch["text"], batch["text_lens"], batch["audio"], batch["audio_lens"],
                                  **prompt_kwargs(batch))
        return StepOutput(loss=loss, terms={"ce": loss}, usage=[_usage(logits, aux["targets"], aux["mask"], 0)])


class NARTask:
    """Codebook k (1..n_q-1) from text, codebooks < k and the speaker condition.

    Each micro-batch trains `nar_stages_per_step` stages (0 = all n_q-1; fewer = a random subset),
    in one forward: the text and speaker context are encoded once and shared by the stages. Each
    stage keeps its own objective (per-codebook label smoothing, usage entropy over its own
    predictions); the loss is their mean. (One random stage per step left each of 7 heads ~43
    updates in a 300-step demo run: the NAR ended below a count table p(codebook k | codebook 0).)
    """

    kind = "nar"

    def __init__(self, cfg: TrainingConfig, codebook_size: int, n_q: int) -> None:
        if n_q < 2:
            raise ValueError("the NAR needs a codec with n_q >= 2 (it predicts codebooks 1..n_q-1)")
        if cfg.text_dropout > 0:
            raise ValueError("training.nar.text_dropout must be 0: text dropout trains the AR's unconditional "
                             "model for eval.decode.text_guidance; the NAR is not guided")
        if cfg.embedding_regression_weight > 0:
            raise ValueError("training.nar.embedding_regression_weight must be 0: it regresses the AR's codebook-0 "
                             "expectation; the NAR's residual stages are decoded by their own expectations")
        if cfg.neighbour_smoothing > 0:
            raise ValueError("training.nar.neighbour_smoothing must be 0: it smooths the AR's codebook-0 "
                             "targets over codebook 0's nearest entries; residual entries have no such neighbours")
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.n_q = n_q
        n = cfg.nar_stages_per_step
        self.stages_per_step = n_q - 1 if n == 0 else min(n, n_q - 1)

    def _cond(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: batch.get(k) for k in ("prompt", "prompt_lens", "speaker")}

    def _stages(self, generator: torch.Generator) -> list[int]:
        if self.stages_per_step == self.n_q - 1:
            return list(range(1, self.n_q))
        return sorted(int(k) + 1 for k in torch.randperm(self.n_q - 1, generator=generator)[: self.stages_per_step])

    @staticmethod
    def _tiled(codes: Tensor, audio_lens: Tensor, stages: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """codes [B, n_q, T] -> stage-major copies [S*B, n_q, T], lens [S*B], stage per row [S*B]."""
        B, S = codes.size(0), len(stages)
        stage = torch.tensor(stages, device=codes.device).repeat_interleave(B)  # [S*B]
        return codes.repeat(S, 1, 1), audio_lens.repeat(S), stage

    def train_step(
        self, model: nn.Module, batch: dict[str, Any], step: int, generator: torch.Generator, collect_attn: bool
    ) -> StepOutput:
        codes, audio_lens = batch["codes"], batch["audio_lens"]  # [B, n_q, T], [B]
        B, stages = codes.size(0), self._stages(generator)
        codes, lens, stage = self._tiled(codes, audio_lens, stages)  # [S*B, n_q, T], [S*B], [S*B]
        if self.cfg.token_noise > 0:
            # noise only the lower codebooks each row's stage reads; the targets stay clean
            T = codes.size(2)
            valid = torch.arange(T, device=codes.device)[None] < lens[:, None]  # [S*B, T]
            below = torch.arange(self.n_q, device=codes.device)[None, :] < stage[:, None]  # [S*B, n_q]
            lower = below[:, :, None] & valid[:, None]  # [S*B, n_q, T]
            noisy = token_noise(codes, self.cfg.token_noise, self.codebook_size, generator=generator, mask=lower)
            codes = torch.where(lower, noisy, codes)  # [S*B, n_q, T]
        logits, _, aux = model(
            batch["text"], batch["text_lens"], codes, lens, stage, collect_attn=collect_attn,
            refine=self.cfg.nar_refine_train, generator=generator, context_repeats=len(stages), **self._cond(batch),
        )  # [S*B, T, V]; with refinement, the self-conditioned second pass
        losses, all_terms, usage = [], [], []
        for i, k in enumerate(stages):
            rows = slice(i * B, (i + 1) * B)
            tgt, mask = aux["targets"][rows], aux["mask"][rows]  # [B, T]
            loss, terms = compute_objective(logits[rows], tgt, mask, step, self.cfg, codebook_index=k, n_q=self.n_q)
            if "logits1" in aux:  # refinement: the first (unconditioned) pass is what inference starts from
                loss1, _ = compute_objective(aux["logits1"][rows], tgt, mask, step, self.cfg,
                                             codebook_index=k, n_q=self.n_q)
                loss = 0.5 * (loss + loss1)
            losses.append(loss)
            all_terms.append(terms)
            usage.append(_usage(logits[rows], tgt, mask, k, terms["ce"]))
        terms = {name: torch.stack([t[name] for t in all_terms]).mean() for name in all_terms[0]}
        terms["stages_per_step"] = torch.full((), float(len(stages)), device=logits.device)
        return StepOutput(
            loss=torch.stack(losses).mean(),
            terms=terms,
            usage=usage,
            attn_entropy=aux.get("attn_entropy"),
            tokens=audio_lens.sum(),
        )

    @torch.no_grad()
    def val_step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """Every stage of every batch (one shared-context forward), so validation covers all
        codebooks deterministically; the loss is the mean of the per-stage CEs."""
        B, stages = batch["codes"].size(0), list(range(1, self.n_q))
        codes, lens, stage = self._tiled(batch["codes"], batch["audio_lens"], stages)
        logits, _, aux = model(batch["text"], batch["text_lens"], codes, lens, stage,
                               context_repeats=len(stages), **self._cond(batch))  # [S*B, T, V]
        usage, losses = [], []
        for i, k in enumerate(stages):
            rows = slice(i * B, (i + 1) * B)
            usage.append(_usage(logits[rows], aux["targets"][rows], aux["mask"][rows], k))
            losses.append(masked_mean_ce(logits[rows], aux["targets"][rows], aux["mask"][rows]))
        loss = torch.stack(losses).mean()
        return StepOutput(loss=loss, terms={"ce": loss}, usage=usage)


def build_task(kind: str, cfg: TrainingConfig, codebook_size: int, n_q: int,
               stage0: Callable[[], Tensor] | None = None) -> ARTask | NARTask:
    """stage0: the codec's codebook-0 embeddings [V, D], asked for only when the AR's token noise picks
    neighbours (training.token_noise_neighbours), its targets share mass with them
    (training.neighbour_smoothing) or its expected embedding is regressed (embedding_regression_weight)."""
    if kind == "ar":
        k, smooth, reg = cfg.token_noise_neighbours, cfg.neighbour_smoothing > 0, cfg.embedding_regression_weight > 0
        table = None
        if k > 0 or smooth or reg:
            if stage0 is None:
                raise ValueError("training.ar.token_noise_neighbours / neighbour_smoothing / "
                                 "embedding_regression_weight need the codec's codebook-0 embeddings")
            table = stage0()  # [V, D]
        return ARTask(cfg, codebook_size, n_q, nearest_entries(table, k) if k > 0 else None,
                      nearest_entries(table, cfg.neighbour_smoothing_k) if smooth else None, table if reg else None)
    return NARTask(cfg, codebook_size, n_q)
