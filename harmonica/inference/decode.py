"""Decoding controls around the models' `generate`: length bounds and anti-loop heuristics.

Per-codebook temperature / top-k / top-p come from `eval.decode` (lists indexed by codebook, entry 0
for the AR; a short list repeats its last entry), the repetition penalty applies to the AR.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from harmonica.config.schema import DecodeConfig

MIN_LOOP_SECONDS = 0.6  # an exactly periodic stretch this long is a loop, not speech
MAX_LOOP_PERIOD = 40  # frames (0.53 s at 75 Hz): longer periods are rare in real loops


def max_frames_for_text(n_chars: int, decode: DecodeConfig, frame_rate: float, model_limit: int) -> int:
    """The AR's length bound: proportional to the text, never past the model's positions."""
    return max(1, min(model_limit, int(round(n_chars * decode.max_length_per_char * frame_rate))))


def find_loop(tokens: Tensor, frame_rate: float, min_seconds: float = MIN_LOOP_SECONDS,
              max_period: int = MAX_LOOP_PERIOD) -> tuple[int, int] | None:
    """(start, period) of the first exactly periodic stretch of >= min_seconds, else None.

    A degenerate AR repeats an n-gram forever (the "looping" failure); a repeated n-gram this long
    does not occur in codec tokens of real speech, so cutting there loses nothing real."""
    seq = tokens.cpu().numpy()
    n = len(seq)
    min_len = max(2, int(min_seconds * frame_rate))
    best: tuple[int, int] | None = None
    for period in range(1, min(max_period, min_len // 2) + 1):
        if n - period < min_len - period:
            break
        same = np.concatenate([[False], seq[period:] == seq[:-period], [False]])  # [n - p + 2]
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))  # run starts and ends, alternating
        for run_start, run_end in zip(edges[::2], edges[1::2]):
            # seq[i + p] == seq[i] for i in [run_start, run_end): periodic over [run_start, run_end + p)
            if run_end - run_start + period >= min_len:
                if best is None or run_start < best[0]:
                    best = (int(run_start), period)
                break
    return best


def cut_loops(tokens: Tensor, frame_rate: float) -> tuple[Tensor, bool]:
    """Truncate at a detected loop, keeping one period of it; (tokens, whether it was cut)."""
    loop = find_loop(tokens, frame_rate)
    if loop is None:
        return tokens, False
    start, period = loop
    return tokens[: start + period], True


def _ar_prompt(model: nn.Module, prompt: Tensor | None, device: torch.device) -> dict[str, Tensor]:
    """generate()'s prompt kwargs for a prompt-conditioned AR ({} for the others; a missing prompt
    is the model's error, which says what to pass)."""
    if getattr(getattr(model, "cfg", None), "speaker_condition", "none") != "prompt" or prompt is None:
        return {}
    cb0 = prompt[0] if prompt.dim() == 2 else prompt  # [P]
    return {"prompt": cb0[None].to(device), "prompt_lens": torch.tensor([cb0.numel()], device=device)}


@torch.no_grad()
def decode_ar(model: nn.Module, text: Tensor, decode: DecodeConfig, frame_rate: float,
              generator: torch.Generator | None = None,
              prompt: Tensor | None = None,
              probs_out: dict[int, Tensor] | None = None) -> tuple[Tensor, dict[str, float]]:
    """text [L] -> first-codebook tokens [T] plus decoding facts (length bound hit, loop cut, the AR's
    mean log-probability of the kept tokens). prompt [n_q, P] (or [P]): the speaker's acoustic prompt,
    used when the AR is prompt-conditioned. decode.ar_candidates > 1 samples that many sequences in
    one batch and keeps the one the AR is surest of (`pick_candidate`).
    probs_out receives probs_out[0]: the AR's distribution over codebook 0 at each kept frame [T, V]
    (at decode.ar_coarse_temperature; for decode.ar_coarse=expected)."""
    device = next(model.parameters()).device
    limit = model.max_audio_len if hasattr(model, "max_audio_len") else model.cfg.max_seq_len - 1
    budget = max_frames_for_text(int(text.numel()), decode, frame_rate, int(limit))
    n = decode.ar_candidates
    dists: list[Tensor] | None = [] if probs_out is not None else None
    scores: list[float] = []
    kwargs = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in _ar_prompt(model, prompt, device).items()}
    candidates = model.generate(
        text[None].to(device).repeat(n, 1), torch.full((n,), text.numel(), device=device), max_new_tokens=budget,
        temperature=decode.temperature[0], top_k=decode.top_k[0], top_p=decode.top_p[0],
        repetition_penalty=decode.repetition_penalty, generator=generator, text_guidance=decode.text_guidance,
        text_window=decode.text_window, text_window_heads=decode.text_window_heads, probs_out=dists,
        probs_temperature=decode.ar_coarse_temperature, scores_out=scores, **kwargs,
    )  # n x [T_i]
    facts = []
    for tokens in candidates:
        tokens = tokens.cpu()
        hit_bound = tokens.numel() >= budget
        kept, looped = cut_loops(tokens, frame_rate)
        facts.append((kept, hit_bound, looped))
    best = pick_candidate(scores, [hit or looped for _, hit, looped in facts])
    tokens, hit_bound, looped = facts[best]
    if probs_out is not None and dists is not None:
        probs_out[0] = dists[best][: tokens.numel()].cpu()  # [T, V]
    return tokens, {"ar_frames": float(tokens.numel()), "ar_hit_length_bound": float(hit_bound),
                    "ar_loop_cut": float(looped), "ar_logprob": float(scores[best])}


def pick_candidate(scores: list[float], faulty: list[bool]) -> int:
    """The index of the candidate with the highest score among those without a fault (a loop cut or the
    length bound hit), or among all when every one has one."""
    pool = [i for i, bad in enumerate(faulty) if not bad] or list(range(len(scores)))
    return max(pool, key=lambda i: scores[i])


@torch.no_grad()
def decode_nar(model: nn.Module, text: Tensor, cb0: Tensor, decode: DecodeConfig, *,
               prompt: Tensor | None = None, speaker: int | None = None,
               generator: torch.Generator | None = None,
               probs_out: dict[int, Tensor] | None = None) -> Tensor:
    """text [L], cb0 [T], prompt [n_q, P] -> codes [n_q, T] (codebooks 1.. filled by the NAR).
    probs_out receives stage k's predicted distribution [T, K_k] (for decode.nar_residual=expected)."""
    device = next(model.parameters()).device
    cond = model.cfg.speaker_condition
    kwargs: dict = {}
    if cond == "prompt":
        if prompt is None:
            raise ValueError("this NAR is conditioned on an acoustic prompt: pass --prompt-wav or a speaker prompt")
        kwargs = {"prompt": prompt[None].to(device), "prompt_lens": torch.tensor([prompt.size(1)], device=device)}
    elif cond == "embedding":
        kwargs = {"speaker": torch.tensor([speaker or 0], device=device)}
    codes = model.generate(
        text[None].to(device), torch.tensor([text.numel()], device=device), cb0[None].to(device),
        torch.tensor([cb0.numel()], device=device), refine_steps=decode.nar_refine_steps,
        temperature=decode.temperature, top_k=decode.top_k, top_p=decode.top_p, generator=generator,
        probs_out=probs_out, **kwargs,
    )  # [1, n_q, T]
    if probs_out is not None:
        probs_out.update({k: p[0].cpu() for k, p in probs_out.items()})  # [1, T, K_k] -> [T, K_k]
    return codes[0].cpu()


def limit_peak(wav: np.ndarray, ceiling_db: float) -> tuple[np.ndarray, float]:
    """Attenuate a decoded waveform so its peak is at most ceiling_db dBFS -> (samples, gain in dB).

    Never amplifies: a faint output stays faint (the silence detector must still see it), only
    over-ceiling output is scaled down, as the corpus was peak-normalised to the same level. The
    gain (<= 0 dB) is returned so callers record it instead of clipping silently."""
    wav = np.asarray(wav, dtype=np.float32)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    ceiling = 10 ** (ceiling_db / 20)
    if not np.isfinite(peak):
        raise ValueError("the codec decoded non-finite samples: the checkpoint or its codec state is broken")
    if peak <= ceiling:
        return wav, 0.0
    gain = ceiling / peak
    return (wav * np.float32(gain)).astype(np.float32, copy=False), float(20 * np.log10(gain))
