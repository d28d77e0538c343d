"""Shared building blocks of the AR and NAR models.

Pre-LN transformer blocks (optionally AdaLN-conditioned), masked self-attention with an explicit
probability path for attention-entropy stats, positional tables that clamp positions, and the
parameter-group partition both models use. Masks are boolean "allowed" masks: True = may attend.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

KV = tuple[Tensor, Tensor]  # cached (keys, values) of one attention layer, each [B, H, S, hd]
GROUP_NAMES = ("embeddings", "attention", "output_heads", "text_encoder", "speaker_encoder")


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """[B] lengths -> [B, max_len] bool, True on valid positions (no host sync)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # [B, T]


def cap_audio(tokens: Tensor, max_seq_len: int) -> Tensor:
    """Truncate the last (time) axis to max_seq_len - 1 frames: one position is the stop token.

    Works on [T], [n_q, T], [B, T] or [B, n_q, T]. Lengths must be capped by the caller too
    (`lens.clamp(max=max_seq_len - 1)`)."""
    return tokens[..., : max_seq_len - 1]


def masked_mean_ce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Plain mean cross-entropy over valid positions; padding excluded with torch.where (no sync)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    safe = torch.where(mask, targets, torch.zeros_like(targets))  # [B, T] padding -> any valid id
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return torch.where(mask, nll, torch.zeros_like(nll)).sum() / mask.sum().clamp_min(1)


def attention_entropy(probs: Tensor, query_mask: Tensor | None = None) -> Tensor:
    """Per-head attention entropy in nats.

    probs [B, H, Tq, Tk]: rows sum to 1; masked keys hold probability 0 and contribute 0 (0 log 0).
    query_mask [B, Tq] bool (None = all valid). The entropy of each query row is averaged over all
    valid (batch, query) pairs pooled together. Returns [H]. Differentiable (detach for logging).
    """
    ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # [B, H, Tq] clamp keeps grads finite at p=0
    if query_mask is None:
        return ent.mean(dim=(0, 2))  # [H]
    w = query_mask[:, None, :].to(ent.dtype)  # [B, 1, Tq]
    return (ent * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1.0)  # [H]


class PositionalEmbedding(nn.Module):
    """Learned or sinusoidal position table. Positions are clamped to the table size.

    Why clamp: RCA -- a stop token appended to a 1024-frame utterance made a 1025-long sequence
    against a 1024 table ("1025 vs 1024"). The models reject over-long audio with a ValueError up
    front; the clamp makes a position overflow impossible anywhere else (e.g. finished sequences
    still stepping in batched generation)."""

    def __init__(self, max_len: int, d_model: int, kind: str = "learned") -> None:
        super().__init__()
        if kind not in ("learned", "sinusoidal"):
            raise ValueError(f"positional embedding kind must be learned|sinusoidal, got {kind!r}")
        self.max_len, self.kind = max_len, kind
        if kind == "learned":
            self.table = nn.Embedding(max_len, d_model)
        else:
            pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # [N, 1]
            div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
            pe = torch.zeros(max_len, d_model)  # [N, D]
            pe[:, 0::2] = torch.sin(pos * div)
            pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
            self.register_buffer("pe", pe, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        positions = positions.clamp(0, self.max_len - 1)  # [...]
        return self.table(positions) if self.kind == "learned" else self.pe[positions]  # [..., D]


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale/shift come from a condition vector (the NAR stage embedding).

    The projection is zero-initialised, so at init it is a plain (affine-free) LayerNorm."""

    def __init__(self, d_model: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.proj = nn.Linear(cond_dim, 2 * d_model)

    def reset_modulation(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.proj(cond).chunk(2, dim=-1)  # [B, D] each
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]  # [B, T, D]


@dataclass(frozen=True)
class TextProbe:
    """A slice of a block's attention computed on its own, so the block keeps the fused kernel: the first
    `heads` heads (0 = all), queries from row `queries_from` on, over keys 0..keys-1 only, softmax over
    those keys -> [B, h, Tq - queries_from, keys]. For the AR's guided-attention loss, which reads the
    shape of the audio queries' attention over the text (its softmax over the text keys alone equals the
    full attention restricted to the text and renormalised, which is what the loss takes)."""

    heads: int
    keys: int
    queries_from: int

    def probs(self, q: Tensor, k: Tensor, allowed: Tensor) -> Tensor:
        """q [B, H, Tq, hd], k [B, H, Tk, hd], allowed [B|1, 1, Tq, Tk] -> [B, h, Tq', keys]."""
        h = self.heads or q.size(1)
        scores = (q[:, :h, self.queries_from:] @ k[:, :h, : self.keys].transpose(-2, -1)) / math.sqrt(q.size(-1))  # [B, h, Tq', keys]
        ok = allowed[..., self.queries_from:, : self.keys]  # [B|1, 1, Tq', keys]
        ok = ok | ~ok.any(dim=-1, keepdim=True)  # a row without a valid key (padding) attends everywhere
        return scores.masked_fill(~ok, float("-inf")).softmax(dim=-1)  # [B, h, Tq', keys]


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, attn_dropout: float | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout if attn_dropout is None else attn_dropout  # on the attention probabilities
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, *, query_mask: Tensor | None = None,
                collect_attn: bool = False, past: KV | None = None, use_cache: bool = False,
                probs_out: list[Tensor] | None = None,
                probe: TextProbe | None = None) -> tuple[Tensor, KV | None, Tensor | None]:
        """x [B, Tq, D]; allowed [B|1, 1, Tq|1, Tk] bool where Tk = past length + Tq. probs_out: a
        list that receives the attention probabilities [B, H, Tq, Tk] (explicit, differentiable path),
        or with `probe` only that slice of them (`TextProbe`; the output keeps the fused kernel)."""
        B, T, D = x.shape
        hd = D // self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # [B, T, D] each
        q = q.view(B, T, self.n_heads, hd).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_heads, hd).transpose(1, 2)  # [B, H, T, hd]
        v = v.view(B, T, self.n_heads, hd).transpose(1, 2)  # [B, H, T, hd]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, H, S, hd]
            v = torch.cat([past[1], v], dim=2)  # [B, H, S, hd]
        present = (k, v) if use_cache else None
        # A query row with no allowed key would give NaN; let it attend everywhere instead. Only
        # padding queries can be in that state and their outputs are never used.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # [B|1, 1, Tq|1, Tk]
        p_drop = self.dropout if self.training else 0.0
        entropy = None
        if probe is not None and probs_out is not None:
            probs_out.append(probe.probs(q, k, allowed))  # [B, h, Tq', keys]
            probs_out = None
        if collect_attn or probs_out is not None:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # [B, H, Tq, Tk]
            probs = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # [B, H, Tq, Tk]
            if collect_attn:
                entropy = attention_entropy(probs, query_mask)  # [H]
            if probs_out is not None:
                probs_out.append(probs)
            y = F.dropout(probs, p_drop, self.training) @ v  # [B, H, Tq, hd]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p_drop)  # [B, H, Tq, hd]
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # [B, T, D]
        return self.resid_drop(self.proj(y)), present, entropy


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, ff_mult * d_model)
        self.proj = nn.Linear(ff_mult * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))  # [B, T, D]


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)); x + FFN(LN(x)). With cond_dim, both LNs are AdaLN."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float,
                 cond_dim: int | None = None, attn_dropout: float | None = None) -> None:
        super().__init__()
        self.adaln = cond_dim is not None
        self.ln1 = AdaLayerNorm(d_model, cond_dim) if cond_dim else nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, attn_dropout)
        self.ln2 = AdaLayerNorm(d_model, cond_dim) if cond_dim else nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, ff_mult, dropout)

    def _norm(self, ln: nn.Module, x: Tensor, cond: Tensor | None) -> Tensor:
        if self.adaln:
            if cond is None:
                raise ValueError("an AdaLN block needs a condition vector")
            return ln(x, cond)  # [B, T, D]
        return ln(x)  # [B, T, D]

    def forward(self, x: Tensor, allowed: Tensor, *, cond: Tensor | None = None,
                query_mask: Tensor | None = None, collect_attn: bool = False, past: KV | None = None,
                use_cache: bool = False, probs_out: list[Tensor] | None = None,
                probe: TextProbe | None = None) -> tuple[Tensor, KV | None, Tensor | None]:
        a, present, ent = self.attn(self._norm(self.ln1, x, cond), allowed, query_mask=query_mask,
                                    collect_attn=collect_attn, past=past, use_cache=use_cache, probs_out=probs_out,
                                    probe=probe)
        x = x + a  # [B, T, D]
        x = x + self.mlp(self._norm(self.ln2, x, cond))  # [B, T, D]
        return x, present, ent


def run_blocks(blocks: nn.ModuleList, x: Tensor, allowed: Tensor, *, cond: Tensor | None = None,
               query_mask: Tensor | None = None, collect_attn: bool = False,
               past: list[KV] | None = None, use_cache: bool = False, keep_probs: Collection[int] = (),
               probs_out: dict[int, Tensor] | None = None,
               probe: TextProbe | None = None) -> tuple[Tensor, list[KV], list[Tensor]]:
    """Run a stack of blocks; returns (x [B, T, D], per-layer KV caches, per-layer entropies [H]).
    keep_probs: layer indices whose attention probabilities [B, H, T, S] go into probs_out (the
    explicit attention path for those layers; the others keep the fused kernel); with `probe`, only
    that slice of them, and every layer keeps the fused kernel."""
    presents: list[KV] = []
    entropies: list[Tensor] = []
    for i, block in enumerate(blocks):
        probs: list[Tensor] | None = [] if i in keep_probs and probs_out is not None else None
        x, present, ent = block(x, allowed, cond=cond, query_mask=query_mask, collect_attn=collect_attn,
                                past=None if past is None else past[i], use_cache=use_cache, probs_out=probs,
                                probe=probe)
        if probs:
            probs_out[i] = probs[0]
        if present is not None:
            presents.append(present)
        if ent is not None:
            entropies.append(ent)
    return x, presents, entropies


def init_weights(module: nn.Module) -> None:
    """nanoGPT init: N(0, 0.02) weights, zero biases; AdaLN modulation starts at identity."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, AdaLayerNorm):  # visited after its Linear child by Module.apply
        module.reset_modulation()


def scale_residual_init(model: nn.Module, n_residual_layers: int) -> None:
    """GPT-2: residual projections get std 0.02/sqrt(2 * layers) so the stream does not grow with depth."""
    std = 0.02 / math.sqrt(2 * max(n_residual_layers, 1))
    for name, p in model.named_parameters():
        if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
            nn.init.normal_(p, mean=0.0, std=std)


def partition_params(model: nn.Module, top_level_groups: dict[str, str]) -> dict[str, list[nn.Parameter]]:
    """Assign every parameter by its top-level submodule name; an unmapped name is a KeyError
    (a new module must be placed in a group deliberately). Empty groups are left out."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUP_NAMES}
    for name, p in model.named_parameters():  # shared parameters are yielded once
        top = name.split(".")[0]
        if top not in top_level_groups:
            raise KeyError(f"parameter {name!r} has no param group; add {top!r} to the group map")
        groups[top_level_groups[top]].append(p)
    return {g: ps for g, ps in groups.items() if ps}
