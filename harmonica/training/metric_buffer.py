"""Metrics reach the tracking run only once a checkpoint covers their step.

MLflow keeps every value ever logged for a (key, step); a run killed between two checkpoints and
resumed from the older one would log the steps in between twice -- and the first copy would come
from a trajectory the resumed weights no longer follow. So the trainer's metrics are held here and
sent when the checkpoint of their step is on disk (`commit`); after a kill the held ones are simply
recomputed by the resumed run, and every history ends up with unique steps, equal to an
uninterrupted run's. The price: the live curves advance once per checkpoint (`ckpt_every`), not per
`log_every`. Tags, texts and artifacts are not buffered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CheckpointAlignedMetrics:
    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.pending: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.pending.append((dict(metrics), step))

    def commit(self, step: int | None = None) -> None:
        """Send everything held up to `step` (all when None)."""
        keep = []
        for metrics, at in self.pending:
            if step is None or at is None or at <= step:
                self.sink.log_metrics(metrics, step=at)
            else:
                keep.append((metrics, at))
        self.pending = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)
