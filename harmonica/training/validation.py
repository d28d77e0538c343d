"""Validation metrics beyond the teacher-forced CE: what the trainer adds after its own val pass.

AR: text use (harmonica/training/text_use.py: text gain, attention share on the text, diagonality),
for the raw and the EMA weights; usable as training.best_metric (e.g. val_ema/text_gain, max).
NAR: the count-table baseline p(codebook k | codebook 0) and the model's margin over it
(harmonica/training/count_table.py). Computed once per run (the table does not change), logged at
every validation next to the model's CE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from harmonica.config.schema import TrainingConfig
from harmonica.training.count_table import count_table_ce, margin_metrics
from harmonica.training.data import Example
from harmonica.training.text_use import text_use_metrics


class ValidationExtras:
    def __init__(self, kind: str, cfg: TrainingConfig, train: Sequence[Example], val: Sequence[Example],
                 contract: dict[str, Any]) -> None:
        self.kind, self.cfg = kind, cfg
        self.table_ce: dict[int, float] = {}
        if kind == "nar" and val:
            self.table_ce = count_table_ce([e.codes for e in train], [e.codes for e in val], contract["codebook_size"])

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
        return out
