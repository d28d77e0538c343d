"""The two-stage codec language model: ARModel (codebook 0) and NARModel (codebooks 1..n_q-1)."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn as nn

from harmonica.config.schema import ARModelConfig, ModelConfig, NARModelConfig
from harmonica.models.ar import ARModel
from harmonica.models.layers import attention_entropy, cap_audio
from harmonica.models.nar import NARModel
from harmonica.models.sampling import apply_repetition_penalty, per_codebook, sample_next

__all__ = [
    "ARModel", "NARModel", "apply_repetition_penalty", "attention_entropy", "build_model", "cap_audio",
    "per_codebook", "sample_next",
]

CONTRACT_KEYS = ("text_vocab_size", "codebook_size", "n_q", "max_text_len")


def build_model(kind: Literal["ar", "nar"], cfg: ModelConfig | ARModelConfig | NARModelConfig,
                contract: dict[str, Any]) -> nn.Module:
    """Build the `kind` model from its config section (or the whole ModelConfig) and the token-cache
    contract (text_vocab_size, codebook_size, n_q, max_text_len; max_audio_frames is checked
    against the model's max_seq_len - 1 when present)."""
    if kind not in ("ar", "nar"):
        raise ValueError(f"kind must be 'ar' or 'nar', got {kind!r}")
    section = getattr(cfg, kind) if isinstance(cfg, ModelConfig) else cfg
    expected = ARModelConfig if kind == "ar" else NARModelConfig
    if not isinstance(section, expected):
        raise TypeError(f"build_model({kind!r}) needs a {expected.__name__}, got {type(section).__name__}")
    missing = [k for k in CONTRACT_KEYS if k not in contract]
    if missing:
        raise KeyError(f"model contract is missing {missing} (have {sorted(contract)})")
    frames = contract.get("max_audio_frames")
    if frames is not None and int(frames) > section.max_seq_len - 1:
        raise ValueError(f"the token cache holds up to {frames} frames but model.{kind}.max_seq_len - 1 = "
                         f"{section.max_seq_len - 1}; raise max_seq_len or rebuild the cache")
    common = dict(text_vocab_size=int(contract["text_vocab_size"]), codebook_size=int(contract["codebook_size"]),
                  max_text_len=int(contract["max_text_len"]))
    if kind == "ar":
        return ARModel(section, **common)
    sizes = contract.get("codebook_sizes")  # absent in contracts written before per-stage sizes
    return NARModel(section, n_q=int(contract["n_q"]), codebook_sizes=sizes, **common)
