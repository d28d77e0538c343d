"""Autoregressive stage: codebook 0 of the codec, as a prefix language model over [text ; audio].

Layout of one sequence (S = L + P + T + 1):

    text:   t_0 .. t_{L-1}                (text_encoder: non-causal, text only; then the blocks)
    prompt: p_0 .. p_{P-1}                (speaker_condition=prompt only: codebook 0 of another
                                           utterance of the speaker, audio table + prompt positions)
    audio:  BOS a_0 .. a_{T-1}            (input, positions 0..T in the audio table)
    target:     a_0 .. a_{T-1} STOP       (logits [B, T+1, codebook_size + 1])

Text and prompt form the prefix: their queries attend to the whole valid prefix; audio queries
attend to the prefix and causally to audio. Text keys stay at 0..L-1, so attention to the text is
probs[..., :L] with or without a prompt; audio queries start at `aux["audio_offset"]` = L + P.
Audio ids: 0..codebook_size-1 tokens, codebook_size = STOP, codebook_size + 1 =
BOS (input only). The audio table has max_seq_len positions, so T <= max_seq_len - 1 (BOS..a_{T-1}
is T+1 inputs); longer audio is a ValueError, `ARModel.cap_audio` truncates.

Reduction factor r = frames_per_step (Tacotron's r): audio position g reads the frames of the group
before it (position 0: r BOS) and predicts the r targets g*r .. g*r + r-1, so the audio part has
G = ceil((T+1)/r) positions. A group's frames are embedded by slot (a table of r x (codebook_size + 2)
entries) and summed; the head gives r x (codebook_size + 1) logits per position, unfolded to the same
per-frame logits [B, T+1, V+1] as r = 1. Attention probabilities and `aux["query_mask"]` [B, G] are
per position. r = 1 is exactly the one-frame-per-position model.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from harmonica.config.schema import ARModelConfig
from harmonica.models.acoustic_head import AcousticHead
from harmonica.models.layers import (
    Block, PositionalEmbedding, TextProbe, cap_audio, init_weights, lengths_to_mask, masked_mean_ce,
    partition_params, run_blocks, scale_residual_init,
)
from harmonica.models.monotonic import advance, windowed_allowed
from harmonica.models.sampling import apply_repetition_penalty, sample_next


def empty_text(text: Tensor, text_lens: Tensor) -> Tensor:
    """The encoding of the empty text for each row: its first and last valid token (BOS, EOS) [B, 2].
    What text dropout trains on and what classifier-free guidance decodes as the unconditional model."""
    rows = torch.arange(text.size(0), device=text.device)  # [B]
    return torch.stack([text[:, 0], text[rows, (text_lens - 1).clamp(min=0)]], dim=1)  # [B, 2]


def blank_text(text: Tensor, text_lens: Tensor) -> Tensor:
    """Each row replaced by the empty text (`empty_text`) padded to the width of `text` [B, L >= 2]."""
    blank = torch.zeros_like(text)  # [B, L]
    blank[:, :2] = empty_text(text, text_lens)
    return blank


def prefix_lm_mask(text_mask: Tensor, audio_mask: Tensor) -> Tensor:
    """text_mask [B, L], audio_mask [B, Ta] -> allowed [B, 1, L+Ta, L+Ta] for [text ; audio]."""
    L, Ta = text_mask.size(1), audio_mask.size(1)
    idx = torch.arange(L + Ta, device=text_mask.device)  # [S]
    # key is text (any query may see text) or key <= query (audio causal; for a text query k <= q
    # only selects text keys, so text never sees audio)
    structure = (idx[None, :] < L) | (idx[None, :] <= idx[:, None])  # [S, S]
    key_valid = torch.cat([text_mask, audio_mask], dim=1)  # [B, S]
    return structure[None, None] & key_valid[:, None, None, :]  # [B, 1, S, S]


class ARModel(nn.Module):
    def __init__(self, cfg: ARModelConfig, *, text_vocab_size: int, codebook_size: int, max_text_len: int,
                 pos_embedding: str = "learned") -> None:
        super().__init__()
        self.cfg = cfg
        self.text_vocab_size, self.codebook_size, self.max_text_len = text_vocab_size, codebook_size, max_text_len
        self.max_seq_len = cfg.max_seq_len
        self.stop_id = codebook_size  # output class and audio input id
        self.bos_id = codebook_size + 1  # audio input id only
        self.pos_embedding = pos_embedding
        D = cfg.d_model
        self.text_emb = nn.Embedding(text_vocab_size, D)
        self.text_pos = PositionalEmbedding(max_text_len, D, pos_embedding)
        self.frames_per_step = r = cfg.frames_per_step
        self.audio_emb = nn.Embedding(r * (codebook_size + 2), D)  # slot i of a group: ids + i * (V + 2)
        self.audio_pos = PositionalEmbedding(cfg.max_seq_len, D, pos_embedding)
        self.prompted = cfg.speaker_condition == "prompt"
        if self.prompted:
            self.prompt_pos = PositionalEmbedding(cfg.prompt_frames, D, pos_embedding)
        self.drop = nn.Dropout(cfg.dropout)
        block = partial(Block, D, cfg.n_heads, cfg.ff_mult, cfg.dropout, attn_dropout=cfg.attn_dropout)
        self.text_encoder = nn.ModuleList(block() for _ in range(cfg.text_layers))
        self.blocks = nn.ModuleList(block() for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, r * (codebook_size + 1))  # tokens + STOP, per frame of the group
        self.acoustic = AcousticHead(D, r, codebook_size, cfg.acoustic_dim, inputs=cfg.acoustic_input) \
            if cfg.acoustic_dim else None
        self.apply(init_weights)
        scale_residual_init(self, cfg.n_layers + cfg.text_layers)

    # ----------------------------------------------------------------------------------- helpers

    @staticmethod
    def cap_audio(tokens: Tensor, max_seq_len: int) -> Tensor:
        """Truncate audio (last axis) to max_seq_len - 1 frames so T + 1 (incl. STOP) fits."""
        return cap_audio(tokens, max_seq_len)

    @property
    def max_audio_len(self) -> int:
        return self.max_seq_len - 1

    def _check_lengths(self, text: Tensor, audio_len: int) -> None:
        if audio_len > self.max_audio_len:
            raise ValueError(
                f"audio has {audio_len} frames but the AR model takes at most max_seq_len - 1 = "
                f"{self.max_audio_len} (max_seq_len={self.max_seq_len} positions include BOS/STOP); "
                "truncate with ARModel.cap_audio(tokens, max_seq_len) or lower data.max_duration")
        if text.size(1) > self.max_text_len:
            raise ValueError(f"text has {text.size(1)} tokens, more than max_text_len={self.max_text_len}")

    def _encode_text(self, text: Tensor, text_lens: Tensor,
                     collect_attn: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """-> (hidden [B, L, D], text_mask [B, L], per-layer entropies)."""
        L = text.size(1)
        text_mask = lengths_to_mask(text_lens, L)  # [B, L]
        tok = text.masked_fill(~text_mask, 0)  # [B, L] any pad value is safe to embed
        pos = torch.arange(L, device=text.device)  # [L]
        x = self.drop(self.text_emb(tok) + self.text_pos(pos))  # [B, L, D]
        x, _, ents = run_blocks(self.text_encoder, x, text_mask[:, None, None, :], query_mask=text_mask,
                                collect_attn=collect_attn)  # [B, L, D]
        return x, text_mask, ents

    def _embed_audio(self, groups: Tensor, positions: Tensor) -> Tensor:
        """groups [B, G, r] frame ids per position (`group_inputs`) -> [B, G, D]."""
        slot = torch.arange(self.frames_per_step, device=groups.device) * (self.codebook_size + 2)  # [r]
        x = self.audio_emb(groups + slot).sum(dim=2) + self.audio_pos(positions)  # [B, G, D]
        return x + self.acoustic.embed(groups) if self.cfg.acoustic_input else x  # [B, G, D]

    def group_inputs(self, inputs: Tensor) -> Tensor:
        """Per-frame inputs [B, S] (BOS a_0 ..) -> position inputs [B, ceil(S/r), r]: position 0 is r BOS,
        position g the frames a_{(g-1)r} .. a_{gr-1} (0-padded past the row)."""
        B, S = inputs.shape
        r = self.frames_per_step
        G = math.ceil(S / r)
        body = inputs[:, 1: 1 + (G - 1) * r]  # [B, <= (G-1)r]
        body = nn.functional.pad(body, (0, (G - 1) * r - body.size(1)))  # [B, (G-1)r]
        bos = torch.full((B, 1, r), self.bos_id, dtype=inputs.dtype, device=inputs.device)  # [B, 1, r]
        return torch.cat([bos, body.view(B, G - 1, r)], dim=1)  # [B, G, r]

    def _logits(self, h: Tensor) -> Tensor:
        """Hidden [B, G, D] -> per-frame logits [B, G*r, V+1] (frame g*r + i from position g, slot i)."""
        B, G, _ = h.shape
        z = self.ln_f(h)  # [B, G, D]
        logits = self.head(z).view(B, G * self.frames_per_step, self.codebook_size + 1)  # [B, G*r, V+1]
        if self.acoustic is None:
            return logits
        return logits + nn.functional.pad(self.acoustic(z), (0, 1))  # [B, G*r, V+1], STOP from the plain head

    def _prefix(self, text: Tensor, text_lens: Tensor, prompt: Tensor | None, prompt_lens: Tensor | None,
                collect_attn: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Text (+ acoustic prompt) -> (hidden [B, L+P, D], prefix mask [B, L+P], text-encoder entropies).
        prompt: [B, P] codebook-0 ids or [B, n_q, P] codes (codebook 0 is used), cut to prompt_frames."""
        h, mask, ents = self._encode_text(text, text_lens, collect_attn)  # [B, L, D], [B, L]
        if not self.prompted:
            return h, mask, ents
        if prompt is None:
            raise ValueError("this AR is conditioned on an acoustic prompt (model.ar.speaker_condition=prompt): "
                             "pass the prompt's codes (--prompt-wav, or a speaker prompt)")
        prompt = prompt[:, 0] if prompt.dim() == 3 else prompt  # [B, P]
        prompt = prompt[:, : self.cfg.prompt_frames]  # [B, P]
        P = prompt.size(1)
        plens = torch.full((prompt.size(0),), P, device=prompt.device) if prompt_lens is None \
            else prompt_lens.to(prompt.device).clamp(max=P)  # [B]
        pmask = lengths_to_mask(plens, P)  # [B, P]
        tok = prompt.masked_fill(~pmask, 0).long()  # [B, P] padding (PAD_ID) embeds as entry 0
        hp = self.audio_emb(tok) + self.prompt_pos(torch.arange(P, device=prompt.device))  # [B, P, D]
        hp = self.drop(hp + self.acoustic.embed(tok) if self.cfg.acoustic_input else hp)  # [B, P, D]
        return torch.cat([h, hp], dim=1), torch.cat([mask, pmask], dim=1), ents  # [B, L+P, D], [B, L+P]

    def teacher_inputs(self, audio: Tensor, audio_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (inputs [B, T+1] = BOS a_0..a_{T-1}, targets [B, T+1] = a_0..a_{T-1} STOP,
        mask [B, T+1] valid targets = positions 0..audio_lens). Padding holds 0."""
        B, T = audio.shape
        audio = audio.masked_fill(~lengths_to_mask(audio_lens, T), 0)  # [B, T]
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=audio.device)  # [B, 1]
        inputs = torch.cat([bos, audio.long()], dim=1)  # [B, T+1]
        targets = torch.cat([audio.long(), torch.zeros_like(bos)], dim=1)  # [B, T+1]
        targets = targets.scatter(1, audio_lens[:, None].long(), self.stop_id)  # [B, T+1] STOP at a_len
        mask = lengths_to_mask(audio_lens + 1, T + 1)  # [B, T+1]
        return inputs, targets.masked_fill(~mask, 0), mask

    def predicted_inputs(self, logits: Tensor) -> Tensor:
        """Model-predicted input sequence for scheduled sampling: [BOS, argmax(logits[:, :-1])]
        ([B, T+1]); argmax at t predicts a_t, the input at t+1. May contain STOP ids (valid inputs)."""
        pred = logits[:, :-1].detach().argmax(dim=-1)  # [B, T]
        bos = torch.full_like(pred[:, :1], self.bos_id)  # [B, 1]
        return torch.cat([bos, pred], dim=1)  # [B, T+1]

    # ----------------------------------------------------------------------------------- forward

    def forward(self, text: Tensor, text_lens: Tensor, audio: Tensor, audio_lens: Tensor, *,
                collect_attn: bool = False, input_override: Tensor | None = None,
                attn_layers: Collection[int] = (), prompt: Tensor | None = None,
                prompt_lens: Tensor | None = None,
                attn_text_heads: int | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """text [B, L], text_lens [B], audio [B, T] codebook-0 ids (padded), audio_lens [B]; prompt
        [B, P] (or [B, n_q, P]) and prompt_lens [B] when speaker_condition=prompt.

        Returns logits [B, T+1, codebook_size+1], loss (masked mean CE vs targets) and aux with
        inputs/targets/mask [B, T+1], input_mask [B, T+1] (real audio inputs, excludes BOS: the
        positions noise / scheduled sampling may touch) and attn_entropy [text_layers + n_layers, H]
        (text encoder first) when collect_attn. input_override [B, T+1] replaces the teacher-forced
        inputs (keep BOS at index 0); its padding is ignored. attn_layers: decoder blocks whose
        attention probabilities aux["attn_probs"][i] [B, H, S, S] (S = L+P+G, G = T+1 when r = 1) are
        returned (with gradients, e.g. for a guided-attention loss); empty = the fused attention kernel
        everywhere. aux["audio_offset"] = L + P: the row of the first audio query in those
        probabilities; aux["query_mask"] [B, G]: the valid audio queries (= mask when r = 1).
        attn_text_heads h (not None): aux["attn_probs"][i] holds only the audio queries' attention
        over the text of the first h heads (0 = all), softmax over the text keys, [B, h, G, L]
        (`TextProbe`: what the guided-attention loss reads), and every block keeps the fused kernel."""
        B, T = audio.shape
        self._check_lengths(text, T)
        inputs, targets, mask = self.teacher_inputs(audio, audio_lens)
        input_mask = mask & (torch.arange(T + 1, device=audio.device)[None, :] > 0)  # [B, T+1]
        if input_override is not None:
            if input_override.shape != inputs.shape:
                raise ValueError(f"input_override must be [B, T+1] = {tuple(inputs.shape)} incl. BOS, "
                                 f"got {tuple(input_override.shape)}")
            inputs = torch.where(mask, input_override.long(), torch.zeros_like(inputs))  # [B, T+1]
        h_pre, pre_mask, ents = self._prefix(text, text_lens, prompt, prompt_lens, collect_attn)  # [B, L+P, D]
        offset = h_pre.size(1)  # L + P
        groups = self.group_inputs(inputs)  # [B, G, r]
        G = groups.size(1)
        gmask = lengths_to_mask(torch.div(audio_lens + self.frames_per_step, self.frames_per_step,
                                          rounding_mode="floor"), G)  # [B, G] positions with a valid target
        x_audio = self.drop(self._embed_audio(groups, torch.arange(G, device=audio.device)))  # [B, G, D]
        x = torch.cat([h_pre, x_audio], dim=1)  # [B, L+P+G, D]
        query_mask = torch.cat([pre_mask, gmask], dim=1)  # [B, L+P+G]
        probs: dict[int, Tensor] = {}
        probe = None if attn_text_heads is None else TextProbe(attn_text_heads, text.size(1), offset)
        x, _, ents_dec = run_blocks(self.blocks, x, prefix_lm_mask(pre_mask, gmask), query_mask=query_mask,
                                    collect_attn=collect_attn, keep_probs=attn_layers, probs_out=probs,
                                    probe=probe)  # [B, L+P+G, D]
        logits = self._logits(x[:, offset:])[:, : T + 1]  # [B, T+1, V+1]
        loss = masked_mean_ce(logits, targets, mask)
        aux: dict[str, Any] = {"inputs": inputs, "targets": targets, "mask": mask, "input_mask": input_mask,
                               "audio_offset": offset, "query_mask": gmask}
        if collect_attn:
            aux["attn_entropy"] = torch.stack(ents + ents_dec)  # [n_blocks_total, H]
        if attn_layers:
            aux["attn_probs"] = probs
        return logits, loss, aux

    # -------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, text: Tensor, text_lens: Tensor, *, prefix: Tensor | None = None,
                 prefix_lens: Tensor | None = None, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 generator: torch.Generator | None = None, text_guidance: float = 1.0,
                 prompt: Tensor | None = None, prompt_lens: Tensor | None = None,
                 text_window: int = 0, text_window_heads: int = 0, probs_out: list[Tensor] | None = None,
                 probs_temperature: float = 1.0, scores_out: list[float] | None = None) -> list[Tensor]:
        """Sample codebook-0 continuations. prompt [B, P] / [B, n_q, P]: the speaker's acoustic prompt
        (speaker_condition=prompt); `prefix` is another thing: audio the output continues.
        Returns one LongTensor [T_i] per item: the new tokens only (prefix excluded, STOP excluded).
        With frames_per_step r > 1 each step samples r frames (a STOP ends the item there) and a
        prefix must be a whole number of groups (its lengths multiples of r).
        Stops per item at STOP, after max_new_tokens, or when prefix + new reaches max_seq_len - 1.
        Text (+ prompt) + BOS + prefix go through the model once; then one token per step against a
        KV cache. The repetition penalty covers the item's new tokens.
        text_guidance s != 1: classifier-free guidance on the text -- each step's logits are
        empty + s * (text - empty), `empty` the same model given the empty text (`empty_text`; the
        model must have trained with text dropout to know it); the two run as one batch of 2B.
        text_window w > 0: the first `text_window_heads` heads of every block (0 = all) see only the
        text keys c-1 .. c+w around each item's text position c, which follows their attention and
        never moves back (`harmonica.models.monotonic`); 0 = off.
        probs_out: receives one [T_i, V] tensor per item, the distribution over codebook 0 (STOP left
        out, renormalised, at probs_temperature) each of its new tokens was sampled from.
        Runs in eval mode (restores the previous mode)."""
        was_training = self.training
        self.eval()
        try:
            return self._generate(text, text_lens, prefix, prefix_lens, max_new_tokens, temperature,
                                  top_k, top_p, repetition_penalty, generator, text_guidance, prompt, prompt_lens,
                                  text_window, text_window_heads, probs_out, probs_temperature, scores_out)
        finally:
            self.train(was_training)

    def _generate(self, text: Tensor, text_lens: Tensor, prefix: Tensor | None, prefix_lens: Tensor | None,
                  max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  repetition_penalty: float, generator: torch.Generator | None,
                  text_guidance: float = 1.0, prompt: Tensor | None = None,
                  prompt_lens: Tensor | None = None, text_window: int = 0,
                  text_window_heads: int = 0, probs_out: list[Tensor] | None = None,
                  probs_temperature: float = 1.0, scores_out: list[float] | None = None) -> list[Tensor]:
        B, dev = text.size(0), text.device
        if prefix is None:
            prefix = torch.zeros(B, 0, dtype=torch.long, device=dev)  # [B, 0]
        P, r = prefix.size(1), self.frames_per_step
        self._check_lengths(text, P)
        prefix_lens = torch.full((B,), P, device=dev) if prefix_lens is None else prefix_lens.to(dev)
        if r > 1 and bool((prefix_lens % r).any()):
            raise ValueError(f"this AR predicts {r} frames per step (model.ar.frames_per_step): a prefix it "
                             f"continues must be a multiple of {r} frames, got lengths {prefix_lens.tolist()}")
        budget = (self.max_audio_len - prefix_lens).clamp(min=0, max=max(max_new_tokens, 0))  # [B]
        guided = text_guidance != 1.0
        if guided:  # rows B..2B-1: the same items given the empty text
            text = nn.functional.pad(text, (0, max(2 - text.size(1), 0)))  # [B, L >= 2]
            text = torch.cat([text, blank_text(text, text_lens)], dim=0)  # [2B, L]
            text_lens = torch.cat([text_lens.to(dev), torch.full_like(text_lens.to(dev), 2)])  # [2B]
            prefix, prefix_lens = prefix.repeat(2, 1), prefix_lens.repeat(2)  # [2B, P], [2B]
            if prompt is not None:  # the unconditional rows keep the voice, only the text is empty
                prompt = torch.cat([prompt, prompt], dim=0)  # [2B, (n_q,) Pp]
                prompt_lens = None if prompt_lens is None else prompt_lens.repeat(2)  # [2B]

        def combine(logits: Tensor) -> Tensor:  # [R, r, V+1] -> [B, r, V+1]
            if not guided:
                return logits
            cond, uncond = logits[:B], logits[B:]  # [B, r, V+1] each
            return uncond + text_guidance * (cond - uncond)  # [B, V+1]

        R = text.size(0)  # rows run through the model (B, or 2B guided)

        inputs, _, _ = self.teacher_inputs(prefix, prefix_lens)  # [R, P+1] BOS + prefix
        groups = self.group_inputs(inputs)  # [R, Gp, r] Gp = P/r + 1
        gp_lens = torch.div(prefix_lens, r, rounding_mode="floor")  # [R] prefix positions after BOS
        in_mask = lengths_to_mask(gp_lens + 1, groups.size(1))  # [R, Gp]
        h_pre, pre_mask, _ = self._prefix(text, text_lens, prompt, prompt_lens)  # [R, L+Pp, D] text (+ prompt)
        offset = h_pre.size(1)  # L + Pp
        positions = torch.arange(groups.size(1), device=dev)  # [Gp]
        x = torch.cat([h_pre, self._embed_audio(groups, positions)], dim=1)  # [R, L+Pp+Gp, D]
        x, cache, _ = run_blocks(self.blocks, x, prefix_lm_mask(pre_mask, in_mask), use_cache=True)
        key_valid = torch.cat([pre_mask, in_mask], dim=1)  # [R, L+Pp+Gp]
        last = x[torch.arange(R, device=dev), offset + gp_lens]  # [R, D] hidden of the last valid input
        logits = combine(self._logits(last[:, None]))  # [B, r, V+1]

        steps = int(budget.max().item()) if B else 0
        out = torch.zeros(B, steps, dtype=torch.long, device=dev)  # [B, steps]
        dist = torch.zeros(B, steps if probs_out is not None else 0, self.stop_id, device=dev)  # [B, steps|0, V]
        n_new = torch.zeros(B, dtype=torch.long, device=dev)  # [B]
        logp = torch.zeros(B, device=dev)  # [B] summed log-probability of the item's sampled tokens
        n_scored = torch.zeros(B, device=dev)  # [B] tokens in it (STOP included)
        done = budget == 0  # [B]
        pos = gp_lens + 1  # [R] audio position of the next input
        text_pos = torch.zeros(R, dtype=torch.long, device=dev)  # [R] monotonic text position (text_window)
        window = dict(text_len=text.size(1), heads=text_window_heads)  # text keys 0..L-1
        t = 0
        while t < steps:
            group = torch.zeros(B, r, dtype=torch.long, device=dev)  # [B, r] the frames this step sampled
            for i in range(min(r, steps - t)):
                slot = apply_repetition_penalty(logits[:, i], out[:, :t], repetition_penalty)  # [B, V+1]
                tok = sample_next(slot, temperature, top_k, top_p, generator)  # [B]
                if probs_out is not None:
                    dist[:, t] = (logits[:, i, : self.stop_id].float() / probs_temperature).softmax(-1)  # [B, V]
                if scores_out is not None:
                    lp = logits[:, i].float().log_softmax(-1).gather(1, tok[:, None]).squeeze(1)  # [B]
                    logp, n_scored = logp + torch.where(done, 0.0, lp), n_scored + (~done).float()
                emit = ~done & (tok != self.stop_id)  # [B]
                out[:, t] = torch.where(emit, tok, torch.zeros_like(tok))
                n_new = n_new + emit.long()
                done = done | ~emit | (n_new >= budget)  # [B]
                group[:, i] = tok
                t += 1
            if bool(done.all()) or t >= steps:
                break
            # finished items keep stepping (their outputs are ignored); positions past the table clamp
            x = self._embed_audio(group.repeat(R // B, 1)[:, None], pos[:, None])  # [R, 1, D]
            key_valid = torch.cat([key_valid, torch.ones_like(key_valid[:, :1])], dim=1)  # [R, S+1]
            allowed = windowed_allowed(key_valid, text_pos, n_heads=self.cfg.n_heads, forward=text_window, **window) \
                if text_window > 0 else key_valid[:, None, None, :]  # [R, H|1, 1, S+1]
            probs: dict[int, Tensor] = {}
            x, cache, _ = run_blocks(self.blocks, x, allowed, past=cache, use_cache=True, probs_out=probs,
                                     keep_probs=range(len(self.blocks)) if text_window > 0 else ())  # [R, 1, D]
            if text_window > 0:
                text_pos = advance(text_pos, list(probs.values()), **window)  # [R]
            logits = combine(self._logits(x))  # [B, r, V+1]
            pos = pos + 1
        if probs_out is not None:
            probs_out.extend(dist[b, : int(n_new[b])] for b in range(B))  # [T_b, V] each
        if scores_out is not None:
            scores_out.extend((logp / n_scored.clamp(min=1)).tolist())
        return [out[b, : int(n_new[b])] for b in range(B)]

    # ----------------------------------------------------------------------------- introspection

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Partition of all parameters (non-empty groups only; no speaker_encoder in the AR)."""
        return partition_params(self, {
            "text_emb": "embeddings", "text_pos": "embeddings", "audio_emb": "embeddings",
            "audio_pos": "embeddings", "prompt_pos": "embeddings", "text_encoder": "text_encoder", "blocks": "attention",
            "ln_f": "output_heads", "head": "output_heads", "acoustic": "output_heads",
        })

    def contract(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "kind": "ar", "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
            "ff_mult": c.ff_mult, "text_layers": c.text_layers, "codebook_size": self.codebook_size,
            "max_seq_len": self.max_seq_len, "max_audio_len": self.max_audio_len,
            "max_text_len": self.max_text_len, "text_vocab_size": self.text_vocab_size,
            "stop_id": self.stop_id, "audio_bos_id": self.bos_id, "n_classes": self.codebook_size + 1,
            "pos_embedding": self.pos_embedding, "speaker_condition": c.speaker_condition,
            **({"prompt_frames": c.prompt_frames} if self.prompted else {}),
            **({"frames_per_step": self.frames_per_step} if self.frames_per_step > 1 else {}),
            **({"acoustic_dim": c.acoustic_dim} if c.acoustic_dim else {}),
            **({"acoustic_input": True} if c.acoustic_input else {}),
        }
