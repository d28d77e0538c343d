"""Validation metrics beyond the teacher-forced CE: what the trainer adds after its own val pass.

AR: text use (harmonica/training/text_use.py: text gain, attention share on the text, diagonality),
for the raw and the EMA weights; usable as training.best_metric (e.g. val_ema/text_gain, max).
Both, with training.val_asr_utterances > 0: a free-running check transcribed by the evaluation ASR
(harmonica/training/val_asr.py: val/asr_wer), every val_asr_every steps, on the main rank.
NAR: the count-table baseline p(codebook k | codebook 0) and the model's margin over it
(harmonica/training/count_table.py). Computed once per run (the table does not change), logged at
every validation next to the model's CE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from harmonica.config.schema import HarmonicaConfig
from harmonica.data.cache import TokenCache
from harmonica.training.count_table import count_table_ce, margin_metrics
from harmonica.training.data import Example
from harmonica.training.text_use import text_use_metrics
from harmonica.training.val_asr import FreeRunningASR, asr_due


class ValidationExtras:
    def __init__(self, cfg: HarmonicaConfig, kind: str, cache: TokenCache, table: Tensor | None,
                 val: Sequence[Example], speakers: dict[str, int], codec: Any, world_size: int = 1) -> None:
        """table: the NAR's count table of the training split (count_table.fit_table), None for the AR;
        codec: None on ranks that do not render audio (no free-running check there)."""
        self.kind, self.cfg = kind, getattr(cfg.training, kind)
        self.table_ce: dict[int, float] = {}
        contract = cache.contract
        if table is not None:
            self.table_ce = count_table_ce(table, [e.codes for e in val])
        self.asr: FreeRunningASR | None = None
        if self.cfg.val_asr_utterances and val:
            if world_size > 1 and self.cfg.best_metric.startswith("val/asr_"):
                raise ValueError("best_metric val/asr_* is computed on rank 0 only; under torchrun pick another")
            if codec is not None:
                texts = {row["id"]: row["text"] for row in cache.load_split("val").index}
                self.asr = FreeRunningASR(kind, cfg, codec, val, texts, speakers, contract,
                                          self.cfg.val_asr_utterances, self.cfg.seed + 4242)

    def __call__(self, core: nn.Module, ema: Any, batches: list[dict[str, Any]], metrics: dict[str, float],
                 step: int) -> dict[str, float]:
        """Extra metrics of this validation; `metrics` holds the val/ and val_ema/ ones so far."""
        out: dict[str, float] = {}
        if self.table_ce:
            out.update(margin_metrics(metrics, self.table_ce))
        if self.kind == "ar" and batches:
            sigma = self.cfg.guided_attention_sigma
            out.update(text_use_metrics(core, batches, "val", sigma))
            with ema.swap(core):
                out.update(text_use_metrics(core, batches, "val_ema", sigma))
        if self.asr is not None and asr_due(step, self.cfg.total_steps, self.cfg.val_asr_every):
            with ema.swap(core):
                out.update(self.asr(core, next(core.parameters()).device))
        return out
