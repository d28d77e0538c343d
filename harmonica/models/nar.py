"""Non-autoregressive stage: codebooks 1..n_q-1, one stage k per pass, all frames at once.

One non-causal transformer over [text ; speaker context ; target audio] (key padding only):

    text     text_encoder (text_layers plain blocks) over text embeddings + text positions
    context  "prompt":    codes of another utterance of the speaker [B, n_q, P<=prompt_frames], each
                          frame = sum of the n_q codebook embeddings (shared with the target) + prompt pos
             "embedding": one token from a learned speaker table (max_speakers)
             "none":      nothing
    audio    sum over codebooks 0..k-1 of per-codebook embeddings + audio positions
             + self-conditioning: embedding of a previous estimate of codebook k (per-codebook
               table), or a learned per-stage "no estimate" vector when there is none

Every block is AdaLN-conditioned on a stage embedding; head k-1 (of n_q-1) predicts codebook k.
The audio limit matches the AR: T <= max_seq_len - 1 (ValueError beyond; `cap_audio` truncates).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from harmonica.config.schema import NARModelConfig
from harmonica.models.layers import (
    Block, PositionalEmbedding, cap_audio, init_weights, lengths_to_mask, masked_mean_ce,
    partition_params, run_blocks, scale_residual_init,
)
from harmonica.models.sampling import per_codebook, sample_next, uniform


@dataclass
class Context:
    """Encoded [text ; speaker context], shared by every stage / refinement pass of a batch."""

    x: Tensor  # [B, C, D]
    mask: Tensor  # [B, C] bool
    entropies: list[Tensor]  # text-encoder layers, [H] each

    def tile(self, repeats: int, rows: int) -> Context:
        """The context of B items repeated stage-major for `rows` = repeats * B audio rows."""
        if repeats < 1 or self.x.size(0) * repeats != rows:
            raise ValueError(f"context of {self.x.size(0)} items x context_repeats={repeats} does not match "
                             f"{rows} audio rows (codes must hold context_repeats * B rows, stage-major)")
        if repeats == 1:
            return self
        return Context(self.x.repeat(repeats, 1, 1), self.mask.repeat(repeats, 1), self.entropies)  # [R*B, C, D]


class NARModel(nn.Module):
    def __init__(self, cfg: NARModelConfig, *, text_vocab_size: int, codebook_size: int, n_q: int,
                 max_text_len: int, pos_embedding: str = "learned", codebook_sizes: list[int] | None = None) -> None:
        super().__init__()
        if n_q < 2:
            raise ValueError(f"the NAR model needs n_q >= 2 codebooks, got {n_q}")
        self.cfg = cfg
        self.text_vocab_size, self.codebook_size, self.n_q = text_vocab_size, codebook_size, n_q
        # per-stage sizes (mel_rvq codebook_sizes): tables and heads keep codebook_size (the largest)
        # entries; generate() never emits an id at or beyond a stage's own size
        self.codebook_sizes = [int(s) for s in codebook_sizes] if codebook_sizes else [codebook_size] * n_q
        if len(self.codebook_sizes) != n_q or max(self.codebook_sizes) > codebook_size:
            raise ValueError(f"codebook_sizes={codebook_sizes} must have n_q={n_q} entries <= {codebook_size}")
        self.max_text_len, self.max_seq_len = max_text_len, cfg.max_seq_len
        self.speaker_condition, self.pos_embedding = cfg.speaker_condition, pos_embedding
        D = cfg.d_model
        self.text_emb = nn.Embedding(text_vocab_size, D)
        self.text_pos = PositionalEmbedding(max_text_len, D, pos_embedding)
        block = partial(Block, D, cfg.n_heads, cfg.ff_mult, cfg.dropout, attn_dropout=cfg.attn_dropout)
        self.text_encoder = nn.ModuleList(block() for _ in range(cfg.text_layers))
        # Target inputs use codebooks 0..n_q-2; the prompt also uses n_q-1, so that table only
        # exists with a prompt (no parameter without a gradient path).
        n_tables = n_q if cfg.speaker_condition == "prompt" else n_q - 1
        self.audio_embs = nn.ModuleList(nn.Embedding(codebook_size, D) for _ in range(n_tables))
        self.audio_pos = PositionalEmbedding(cfg.max_seq_len, D, pos_embedding)
        self.stage_emb = nn.Embedding(n_q - 1, D)  # row k-1 = stage k
        self.self_cond_embs = nn.ModuleList(nn.Embedding(codebook_size, D) for _ in range(n_q - 1))
        self.no_estimate = nn.Parameter(torch.zeros(n_q - 1, D))  # [n_q-1, D]
        if cfg.speaker_condition == "prompt":
            self.prompt_pos = PositionalEmbedding(cfg.prompt_frames, D, pos_embedding)
        elif cfg.speaker_condition == "embedding":
            self.speaker_emb = nn.Embedding(cfg.max_speakers, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(block(cond_dim=D) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, codebook_size) for _ in range(n_q - 1))  # head k-1 -> codebook k
        if cfg.count_prior:  # row [k-1, i] = log p(codebook k | codebook 0 = i); zeros until set_count_prior
            self.register_buffer("count_prior", torch.zeros(n_q - 1, codebook_size, codebook_size))
        self.apply(init_weights)
        nn.init.normal_(self.no_estimate, mean=0.0, std=0.02)
        scale_residual_init(self, cfg.n_layers + cfg.text_layers)

    # ----------------------------------------------------------------------------------- helpers

    @staticmethod
    def cap_audio(tokens: Tensor, max_seq_len: int) -> Tensor:
        """Truncate audio (last axis) to max_seq_len - 1 frames, the same budget as the AR."""
        return cap_audio(tokens, max_seq_len)

    @property
    def max_audio_len(self) -> int:
        return self.max_seq_len - 1

    def _stages(self, stage: int | Tensor, B: int, device: torch.device) -> Tensor:
        """int or LongTensor [B] -> LongTensor [B]. Tensor values are not range-checked (no host sync)."""
        if isinstance(stage, Tensor):
            if stage.dim() == 0:
                stage = stage.expand(B)
            if stage.shape != (B,):
                raise ValueError(f"stage tensor must be [B]={B}, got {tuple(stage.shape)}")
            return stage.to(device=device, dtype=torch.long)
        if not 1 <= stage <= self.n_q - 1:
            raise ValueError(f"stage must be in 1..{self.n_q - 1} (codebook predicted), got {stage}")
        return torch.full((B,), stage, dtype=torch.long, device=device)

    def _check(self, text: Tensor | None, T: int) -> None:
        if T > self.max_audio_len:
            raise ValueError(
                f"audio has {T} frames but the NAR model takes at most max_seq_len - 1 = {self.max_audio_len}; "
                "truncate with NARModel.cap_audio(tokens, max_seq_len) or lower data.max_duration")
        if text is not None and text.size(1) > self.max_text_len:
            raise ValueError(f"text has {text.size(1)} tokens, more than max_text_len={self.max_text_len}")

    def encode_context(self, text: Tensor, text_lens: Tensor, *, prompt: Tensor | None = None,
                       prompt_lens: Tensor | None = None, speaker: Tensor | None = None,
                       collect_attn: bool = False) -> Context:
        """Text encoder + speaker context -> Context ([B, L + S, D]). The prompt is cut to its first
        prompt_frames frames (choose the crop before calling)."""
        B, L, dev = text.size(0), text.size(1), text.device
        text_mask = lengths_to_mask(text_lens, L)  # [B, L]
        tok = text.masked_fill(~text_mask, 0)  # [B, L] any pad value is safe to embed
        x = self.drop(self.text_emb(tok) + self.text_pos(torch.arange(L, device=dev)))  # [B, L, D]
        x, _, ents = run_blocks(self.text_encoder, x, text_mask[:, None, None, :], query_mask=text_mask,
                                collect_attn=collect_attn)  # [B, L, D]
        parts, masks = [x], [text_mask]
        if self.speaker_condition == "prompt":
            if prompt is None:
                raise ValueError("speaker_condition='prompt' needs prompt codes [B, n_q, P]")
            if prompt.dim() != 3 or prompt.size(1) != self.n_q:
                raise ValueError(f"prompt must be [B, n_q={self.n_q}, P], got {tuple(prompt.shape)}")
            prompt = prompt[..., : self.cfg.prompt_frames]  # [B, n_q, P]
            P = prompt.size(-1)
            plens = torch.full((B,), P, device=dev) if prompt_lens is None else prompt_lens.to(dev).clamp(max=P)
            pmask = lengths_to_mask(plens, P)  # [B, P]
            prompt = prompt.masked_fill(~pmask[:, None, :], 0).long()  # [B, n_q, P]
            p = self.prompt_pos(torch.arange(P, device=dev))  # [P, D]
            for q in range(self.n_q):
                p = p + self.audio_embs[q](prompt[:, q])  # [B, P, D]
            parts.append(self.drop(p.expand(B, P, -1)))
            masks.append(pmask)
        elif self.speaker_condition == "embedding":
            if speaker is None:
                raise ValueError("speaker_condition='embedding' needs speaker indices [B]")
            parts.append(self.drop(self.speaker_emb(speaker.to(dev).long())[:, None, :]))  # [B, 1, D]
            masks.append(torch.ones(B, 1, dtype=torch.bool, device=dev))
        return Context(torch.cat(parts, dim=1), torch.cat(masks, dim=1), ents)  # [B, C, D], [B, C]

    def decode(self, ctx: Context, codes: Tensor, audio_lens: Tensor, stage: int | Tensor, *,
               self_cond: Tensor | None = None, collect_attn: bool = False) -> tuple[Tensor, list[Tensor]]:
        """codes [B, n_q, T] (only codebooks < stage are read), stage int or LongTensor [B], self_cond
        [B, T] estimate of codebook `stage` or None -> (logits [B, T, codebook_size], decoder entropies).

        Stage handling: an int uses head / self-cond table stage-1 directly; a LongTensor [B] gathers
        them per sample from stacked weights (no host sync, memory B x V x D for the heads)."""
        B, _, T = codes.shape
        dev = codes.device
        self._check(None, T)
        single = None if isinstance(stage, Tensor) else int(stage)
        stage = self._stages(stage, B, dev)  # [B]
        amask = lengths_to_mask(audio_lens, T)  # [B, T]
        codes = codes.masked_fill(~amask[:, None, :], 0).long()  # [B, n_q, T]
        x = self.audio_pos(torch.arange(T, device=dev)).expand(B, T, -1)  # [B, T, D]
        for q in range(self.n_q - 1):  # codebook n_q-1 is never an input
            use = (stage > q)[:, None, None]  # [B, 1, 1] codebook q is below the stage
            x = x + torch.where(use, self.audio_embs[q](codes[:, q]), 0.0)  # [B, T, D]
        if self_cond is None:
            x = x + self.no_estimate[stage - 1][:, None, :]  # [B, T, D]
        elif single is not None:
            x = x + self.self_cond_embs[single - 1](self_cond.masked_fill(~amask, 0).long())  # [B, T, D]
        else:
            # per-sample table: flat index into the stacked per-codebook tables
            table = torch.cat([e.weight for e in self.self_cond_embs], dim=0)  # [(n_q-1)*V, D]
            sc = self_cond.masked_fill(~amask, 0).long()  # [B, T]
            x = x + table[(stage - 1)[:, None] * self.codebook_size + sc]  # [B, T, D]
        x = self.drop(x)  # [B, T, D]
        C = ctx.x.size(1)
        key_valid = torch.cat([ctx.mask, amask], dim=1)  # [B, C+T]
        h, _, ents = run_blocks(self.blocks, torch.cat([ctx.x, x], dim=1), key_valid[:, None, None, :],
                                cond=self.stage_emb(stage - 1), query_mask=key_valid,
                                collect_attn=collect_attn)  # [B, C+T, D]
        h = self.ln_f(h[:, C:])  # [B, T, D]
        if single is not None:
            return self._with_prior(self.heads[single - 1](h), stage, codes[:, 0]), ents  # [B, T, V]
        # head gather: per-sample head k-1 via stacked weights and a batched matmul
        W = torch.stack([hd.weight for hd in self.heads])[stage - 1]  # [B, V, D]
        bias = torch.stack([hd.bias for hd in self.heads])[stage - 1]  # [B, V]
        logits = torch.bmm(h, W.transpose(1, 2)) + bias[:, None, :]  # [B, T, V]
        return self._with_prior(logits, stage, codes[:, 0]), ents

    def _with_prior(self, logits: Tensor, stage: Tensor, cb0: Tensor) -> Tensor:
        """logits [B, T, V] + the count table's log p(codebook stage_b | codebook 0) (no-op without a prior)."""
        if not self.cfg.count_prior:
            return logits
        V = self.codebook_size
        rows = (stage - 1)[:, None] * V + cb0  # [B, T] flat row of (stage, codebook-0 entry)
        return logits + self.count_prior.view(-1, V)[rows].to(logits.dtype)  # [B, T, V]

    @torch.no_grad()
    def set_count_prior(self, log_probs: Tensor) -> None:
        """log_probs [n_q, V, V] (count_table.fit_table; row 0, codebook 0 itself, is not used)."""
        if not self.cfg.count_prior:
            raise ValueError("this NAR was built with count_prior=false")
        self.count_prior.copy_(log_probs[1:])

    def _targets(self, codes: Tensor, audio_lens: Tensor, stage: Tensor) -> tuple[Tensor, Tensor]:
        B, _, T = codes.shape
        mask = lengths_to_mask(audio_lens, T)  # [B, T]
        tgt = codes.long().gather(1, stage[:, None, None].expand(B, 1, T)).squeeze(1)  # [B, T]
        return tgt.masked_fill(~mask, 0), mask

    # ----------------------------------------------------------------------------------- forward

    def forward(self, text: Tensor, text_lens: Tensor, codes: Tensor, audio_lens: Tensor,
                stage: int | Tensor, *, prompt: Tensor | None = None, prompt_lens: Tensor | None = None,
                speaker: Tensor | None = None, self_cond: Tensor | None = None,
                collect_attn: bool = False, refine: bool = False, refine_gt_fraction: float | Tensor = 0.5,
                generator: torch.Generator | None = None,
                context_repeats: int = 1) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Predict codebook `stage` (int, or LongTensor [B] per sample) of codes [B, n_q, T].

        Returns logits [B, T, codebook_size], loss (masked mean CE vs codes[b, stage_b]) and aux:
        targets [B, T], mask [B, T], stage [B], attn_entropy [text_layers + n_layers, H] (text
        encoder first) when collect_attn. refine=True runs `forward_refine` (through forward, so a
        DistributedDataParallel wrapper sees it) and returns pass-2 logits, aux["logits1"] = pass 1.

        context_repeats R > 1: several stages of one batch in one pass. codes/audio_lens/stage hold
        R * B rows, stage-major (row r * B + b is item b), while text/prompt/speaker hold the B items:
        the text encoder and the speaker context run once and are shared by the R copies."""
        if refine:
            logits1, logits2, loss, aux = self.forward_refine(
                text, text_lens, codes, audio_lens, stage, prompt=prompt, prompt_lens=prompt_lens,
                speaker=speaker, gt_fraction=refine_gt_fraction, generator=generator, collect_attn=collect_attn,
                context_repeats=context_repeats)
            aux["logits1"] = logits1
            return logits2, loss, aux
        B, _, T = codes.shape
        self._check(text, T)
        st = self._stages(stage, B, codes.device)  # [B]
        ctx = self.encode_context(text, text_lens, prompt=prompt, prompt_lens=prompt_lens, speaker=speaker,
                                  collect_attn=collect_attn).tile(context_repeats, B)
        logits, ents = self.decode(ctx, codes, audio_lens, stage, self_cond=self_cond,
                                   collect_attn=collect_attn)
        targets, mask = self._targets(codes, audio_lens, st)
        loss = masked_mean_ce(logits, targets, mask)
        aux: dict[str, Any] = {"targets": targets, "mask": mask, "stage": st}
        if collect_attn:
            aux["attn_entropy"] = torch.stack(ctx.entropies + ents)  # [n_blocks_total, H]
        return logits, loss, aux

    def forward_refine(self, text: Tensor, text_lens: Tensor, codes: Tensor, audio_lens: Tensor,
                       stage: int | Tensor, *, prompt: Tensor | None = None, prompt_lens: Tensor | None = None,
                       speaker: Tensor | None = None, gt_fraction: float | Tensor = 0.5,
                       generator: torch.Generator | None = None, collect_attn: bool = False,
                       context_repeats: int = 1) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        """Two-pass refinement training. Pass 1: no estimate (teacher-forced lower codebooks). Pass 2:
        self_cond = pass-1 argmax (detached) with each valid position replaced by the ground truth
        with probability gt_fraction (float or [B]). Text/context is encoded once and shared.

        Returns (logits1, logits2, loss = (ce1 + ce2) / 2, aux) with aux as in forward plus
        loss1, loss2 and self_cond [B, T]; attn_entropy (when collect_attn) is from pass 2."""
        B, _, T = codes.shape
        self._check(text, T)
        st = self._stages(stage, B, codes.device)  # [B]
        ctx = self.encode_context(text, text_lens, prompt=prompt, prompt_lens=prompt_lens, speaker=speaker,
                                  collect_attn=collect_attn).tile(context_repeats, B)
        targets, mask = self._targets(codes, audio_lens, st)
        logits1, _ = self.decode(ctx, codes, audio_lens, stage)  # [B, T, V]
        estimate = logits1.detach().argmax(dim=-1)  # [B, T]
        frac = torch.as_tensor(gt_fraction, dtype=torch.float32, device=codes.device)
        frac = frac[:, None] if frac.dim() == 1 else frac  # [B, 1] or scalar
        use_gt = uniform((B, T), generator, codes.device) < frac  # [B, T]
        self_cond = torch.where(use_gt, targets, estimate)  # [B, T]
        logits2, ents = self.decode(ctx, codes, audio_lens, stage, self_cond=self_cond,
                                    collect_attn=collect_attn)
        loss1 = masked_mean_ce(logits1, targets, mask)
        loss2 = masked_mean_ce(logits2, targets, mask)
        aux: dict[str, Any] = {"targets": targets, "mask": mask, "stage": st, "self_cond": self_cond,
                               "loss1": loss1, "loss2": loss2}
        if collect_attn:
            aux["attn_entropy"] = torch.stack(ctx.entropies + ents)  # [n_blocks_total, H]
        return logits1, logits2, 0.5 * (loss1 + loss2), aux

    # -------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, text: Tensor, text_lens: Tensor, cb0: Tensor, audio_lens: Tensor, *,
                 prompt: Tensor | None = None, prompt_lens: Tensor | None = None, speaker: Tensor | None = None,
                 refine_steps: int = 1, temperature: float | list[float] = 0.0, top_k: int | list[int] = 0,
                 top_p: float | list[float] = 1.0,
                 generator: torch.Generator | None = None, probs_out: dict[int, Tensor] | None = None) -> Tensor:
        """Fill codebooks 1..n_q-1 in order given codebook 0 (cb0 [B, T]) -> codes [B, n_q, T]
        (padding = 0). Each stage runs refine_steps passes; pass r > 1 feeds pass r-1's tokens as
        self_cond. temperature/top_k/top_p: scalars or per-codebook lists indexed by codebook id
        (entry 0 belongs to the AR; short lists repeat their last entry); temperature 0 = argmax.
        probs_out: a dict that receives stage k's predicted distribution [B, T, codebook_sizes[k]]
        (the last pass's softmax, before any sampling temperature), for a soft codec decode."""
        if refine_steps < 1:
            raise ValueError(f"refine_steps must be >= 1, got {refine_steps}")
        was_training = self.training
        self.eval()
        try:
            B, T = cb0.shape
            self._check(text, T)
            amask = lengths_to_mask(audio_lens, T)  # [B, T]
            codes = torch.zeros(B, self.n_q, T, dtype=torch.long, device=cb0.device)  # [B, n_q, T]
            codes[:, 0] = cb0.long().masked_fill(~amask, 0)
            ctx = self.encode_context(text, text_lens, prompt=prompt, prompt_lens=prompt_lens, speaker=speaker)
            for k in range(1, self.n_q):
                estimate: Tensor | None = None
                for _ in range(refine_steps):
                    logits, _ = self.decode(ctx, codes, audio_lens, k, self_cond=estimate)  # [B, T, V]
                    logits[..., self.codebook_sizes[k]:] = float("-inf")  # ids beyond stage k's size
                    tok = sample_next(logits.reshape(B * T, -1), per_codebook(temperature, k),
                                      per_codebook(top_k, k), per_codebook(top_p, k), generator)  # [B*T]
                    estimate = tok.view(B, T).masked_fill(~amask, 0)  # [B, T]
                codes[:, k] = estimate
                if probs_out is not None:
                    probs_out[k] = logits[..., : self.codebook_sizes[k]].softmax(dim=-1)  # [B, T, K_k]
            return codes
        finally:
            self.train(was_training)

    # ----------------------------------------------------------------------------- introspection

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Partition of all parameters (non-empty groups only). Codebook tables shared by target and
        prompt sit in embeddings; speaker_encoder = prompt positions or the speaker table."""
        return partition_params(self, {
            "text_emb": "embeddings", "text_pos": "embeddings", "audio_embs": "embeddings",
            "audio_pos": "embeddings", "stage_emb": "embeddings", "self_cond_embs": "embeddings",
            "no_estimate": "embeddings", "prompt_pos": "speaker_encoder", "speaker_emb": "speaker_encoder",
            "text_encoder": "text_encoder", "blocks": "attention", "ln_f": "output_heads", "heads": "output_heads",
        })

    def contract(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "kind": "nar", "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
            "ff_mult": c.ff_mult, "text_layers": c.text_layers, "codebook_size": self.codebook_size,
            "codebook_sizes": self.codebook_sizes,
            "n_q": self.n_q, "max_seq_len": self.max_seq_len, "max_audio_len": self.max_audio_len,
            "max_text_len": self.max_text_len, "text_vocab_size": self.text_vocab_size,
            "speaker_condition": self.speaker_condition, "prompt_frames": c.prompt_frames,
            "max_speakers": c.max_speakers, "pos_embedding": self.pos_embedding, "count_prior": c.count_prior,
        }
